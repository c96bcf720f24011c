"""Clean stops on SIGTERM (what schedulers such as SLURM send before they kill a job).

``spatial-probing extract`` and ``fit`` record the signal instead of dying at once; the running job
checks `requested` at its safe points (after each written batch shard, after each fitted entry) and
raises `Stopped` there, so nothing already computed is lost and a rerun of the same command resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from spatial_probing.errors import Stopped

_received: list[int] = []


def _record(signum: int, _frame: object) -> None:
    _received.append(signum)


def requested() -> bool:
    """Whether a stop signal arrived since `stop_on_signal` was entered."""
    return bool(_received)


def check(done: str, resume: str) -> None:
    """Raise `Stopped` (saying what is ``done`` and how to ``resume``) when a stop was requested."""
    if _received:
        raise Stopped(f"stopped by {signal.Signals(_received[0]).name}: {done}; {resume}")


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Record SIGTERM during the block instead of dying; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _record)
    _received.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()
