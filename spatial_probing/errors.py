"""User-facing errors: each names the file, row or option at fault and says how to fix it."""

from __future__ import annotations

import signal


class SpatialProbingError(Exception):
    """Base class for errors a user can act on; the CLI prints these without a traceback."""

    #: The process exit status the CLI returns for this error.
    exit_code = 2


class ConfigError(SpatialProbingError, ValueError):
    """An option value outside its valid range (named with the option and the range)."""


class DataError(SpatialProbingError):
    """Invalid dataset input (a bad row, a missing split, an unknown relation)."""


class EncoderError(SpatialProbingError):
    """An encoder name that cannot be resolved, or weights that cannot be found offline."""


class CacheError(SpatialProbingError):
    """A feature-cache entry that is incomplete, corrupt or written by an incompatible version."""


class FeatureError(SpatialProbingError):
    """Features that cannot be probed (row count mismatch, NaN/inf values)."""


class Stopped(SpatialProbingError):
    """A run stopped on request (SIGTERM) at a safe point; the message says what was kept and how to resume."""

    # 128 + signal number, as a shell reports a process ended by that signal.
    exit_code = 128 + signal.SIGTERM
