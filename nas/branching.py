"""``python -m nas.branching``: the former name of ``python -m nas.bmtas`` (kept for one release)."""

import sys

from nas.bmtas import *  # noqa: F401,F403
from nas.bmtas.command import main

if __name__ == "__main__":
    sys.exit(main())
