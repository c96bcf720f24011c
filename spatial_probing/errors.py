"""User-facing errors: each names the file, row or option at fault and says how to fix it."""

from __future__ import annotations


class SpatialProbingError(Exception):
    """Base class for errors a user can act on; the CLI prints these without a traceback."""


class DataError(SpatialProbingError):
    """Invalid dataset input (a bad row, a missing split, an unknown relation)."""


class EncoderError(SpatialProbingError):
    """An encoder name that cannot be resolved, or weights that cannot be found offline."""


class CacheError(SpatialProbingError):
    """A feature-cache entry that is incomplete, corrupt or written by an incompatible version."""


class FeatureError(SpatialProbingError):
    """Features that cannot be probed (row count mismatch, NaN/inf values)."""
