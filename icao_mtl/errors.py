"""Error types. Every error a user can cause names the thing and the fix ("Fix: ...")."""

from __future__ import annotations


class IcaoMtlError(Exception):
    """Base class of this package's errors."""


class ConfigError(IcaoMtlError, ValueError):
    """An option, a path or a combination of them cannot work; raised before any long work."""


class ResumeError(ConfigError):
    """``--resume`` on a run directory that cannot be resumed with this configuration."""


class NonFiniteLossError(IcaoMtlError, FloatingPointError):
    """The training loss became NaN or infinite. The last good checkpoint is kept."""
