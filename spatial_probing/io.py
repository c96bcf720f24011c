"""Atomic file writes: the one way the project writes a file that a reader may open concurrently.

A writer fills a unique temporary file beside the target, flushes it to disk, then renames it over the
target, so a reader sees either the old file or the complete new one, never a truncated one (a full
disk or a kill in the middle leaves only the temporary file, which is removed when the error is seen).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spatial_probing.errors import ConfigError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    The caller writes the temporary path however it likes (``np.save``, ``DataFrame.to_parquet``, ...).
    On an exception the temporary file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes must be on disk before the rename makes them visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a cache file gets the ordinary mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def check_writable(directory: Path, option: str = "--out_dir") -> None:
    """Refuse a ``directory`` that cannot be written (created if missing) before anything is computed."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {directory} is not writable ({exc.strerror}); choose another {option}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
