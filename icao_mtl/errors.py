"""Error types. Every error a user can cause names the thing and the fix ("Fix: ...")."""

from __future__ import annotations

import functools
import sys


class IcaoMtlError(Exception):
    """Base class of this package's errors."""


class ConfigError(IcaoMtlError, ValueError):
    """An option, a path or a combination of them cannot work; raised before any long work."""


class ResumeError(ConfigError):
    """``--resume`` on a run directory that cannot be resumed with this configuration."""


class NonFiniteLossError(IcaoMtlError, FloatingPointError):
    """The training loss became NaN or infinite. The last good checkpoint is kept."""


class CollapsedModelError(IcaoMtlError):
    """The model says the same thing for every image (constant validation scores) and no earlier epoch
    gave a usable model: the run's result would be a table of 50% EERs. The checkpoints are kept."""


def command(main):
    """Decorate a command's ``main(argv) -> int``: this package's errors are printed as one line on
    stderr (``error: ...``, with its fix) and give exit code 2, not a traceback."""
    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except IcaoMtlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper
