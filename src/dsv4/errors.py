"""The one exception type that means "the user gave us something we cannot use".

The CLI catches `UserError` and prints its message on one line with exit code 2, no
traceback. Raise it for bad input (a malformed file, config, checkpoint or request);
let genuine bugs raise whatever they raise, so that they stay visible.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do."""
