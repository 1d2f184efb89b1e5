"""dsv4: DeepSeek-V4, open and end to end.

`import dsv4` stays light on purpose (no torch): the `lic` agent and the sandbox import
from this package and must start fast. Heavy modules live in subpackages
(`dsv4.model`, `dsv4.train`, ...) and are imported only where they are used.
"""

__version__ = "0.1.0"
