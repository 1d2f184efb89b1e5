"""`python -m dsv4.lic` runs the `lic` command (the tests use it to run the real CLI)."""

import sys

from dsv4.lic.cli import main

sys.exit(main())
