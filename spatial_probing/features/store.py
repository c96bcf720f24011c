"""The feature cache root: where entries and shards live, one lock per entry, per-batch shards, one atomic merge.

Layout (CLIP_benchmark-style ``feature_root/<dataset>/<encoder>/``)::

    <root>/<dataset>/<encoder slug>/<key>/          complete entry (`features.entry`); meta.json is written last
    <root>/<dataset>/<encoder slug>/<key>.partial/  shards of an unfinished extraction (resume point)
    <root>/<dataset>/<encoder slug>/<key>.lock      held while one extraction of the entry runs

An entry directory only ever appears by ``os.rename`` of a fully written temp directory, and
``load_entry`` verifies the sha256 of every file against meta.json, so a killed run can never leave
something that reads as complete.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.encoders import views as view_recipes
from spatial_probing.errors import CacheError
from spatial_probing.features.entry import (
    ENTRY_FILES,
    PARTS_DIR,
    FeatureEntry,
    load_entry,
    part_file,
    seal_meta,
)
from spatial_probing.features.key import CacheKey, sha256_file
from spatial_probing.io import atomic_path, atomic_write

_LIBRARIES = ("spatial_probing", "torch", "lightning", "transformers", "open_clip_torch", "sentence-transformers")
#: errno values that mean "this cannot be written here" rather than a bug.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, None}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


@contextmanager
def writing(what: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a failed write under ``what`` (disk full, not writable) into one CacheError naming the path.

    ``cleanup`` (a temporary directory) is removed on failure, so a failed write leaves no debris.
    """
    try:
        yield
    except OSError as exc:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        if exc.errno not in _NO_SPACE | _NO_ACCESS:
            raise
        target = exc.filename or what
        if exc.errno in _NO_ACCESS:
            raise CacheError(f"cannot write {target}: {exc.strerror}; choose a writable --feature_root") from exc
        raise CacheError(
            f"cannot write {target}: {exc.strerror or exc} (disk full?); free space (or choose another "
            "--feature_root) and rerun the same command: the batches already written are kept and reused"
        ) from exc


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+@-]+", "_", text).strip("_")


def _encoder_dirname(encoder: str) -> str:
    """A readable directory name for an encoder spec: local model paths shrink to their last component.

    The entry below it is named by the full key digest, so two models with the same base name never mix.
    """
    family, _, rest = encoder.partition(":")
    model, at, view = rest.rpartition("@")
    if model.startswith(("/", "~", ".")):
        model = Path(model).name
    return _slug(f"{family}_{model}{at}{view}")


class FeatureStore:
    """One cache root; hands out entry and shard locations for a key and merges shards into entries."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def entry_dir(self, key: CacheKey) -> Path:
        return self.root / _slug(key.dataset) / _encoder_dirname(key.encoder) / key.digest

    def partial_dir(self, key: CacheKey) -> Path:
        entry = self.entry_dir(key)
        return entry.with_name(entry.name + ".partial")

    @contextmanager
    def locked(self, key: CacheKey) -> Iterator[None]:
        """Hold the entry's lock (``<key>.lock``, an flock) for the block: one extraction per entry at a time.

        A second identical extraction waits here, then finds the first one's entry (a cache hit) or
        its shards (a resume). The holder deletes the lock file before releasing it, so a waiter that
        wakes up on a deleted file takes the lock again on the current one; no lock file is left behind.
        Also the first write of a run, so an unwritable ``--feature_root`` fails before any model loads.
        """
        lock = self.entry_dir(key).with_name(f"{key.digest}.lock")
        announced = False
        while True:
            with writing(lock):
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not announced:
                    print(f"waiting for another extraction of the same entry to finish (it holds {lock})", flush=True)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the previous holder deleted this file on release: lock the current one
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            os.close(fd)

    def lookup(self, key: CacheKey) -> FeatureEntry | None:
        """The complete, verified entry for ``key``, or None. A corrupt entry is an error, not a miss."""
        path = self.entry_dir(key)
        if not (path / "meta.json").is_file():
            return None
        return load_entry(path)

    # -- shards -------------------------------------------------------------------------------
    def prepare_partial(self, key: CacheKey, plan: dict) -> Path:
        """Create (or reuse) the shard directory; shards from a different batch plan are discarded.

        Batches are a fixed function of the rows and batch size, so a resumed run recomputes exactly the
        batches that are missing and the merged cache is bit-identical to an uninterrupted one.
        """
        partial = self.partial_dir(key)
        plan_path = partial / "plan.json"
        if partial.exists() and (not plan_path.is_file() or json.loads(plan_path.read_text()) != plan):
            shutil.rmtree(partial)
        with writing(partial):
            partial.mkdir(parents=True, exist_ok=True)
            if not plan_path.is_file():
                atomic_write(plan_path, json.dumps(plan, sort_keys=True))
        return partial

    @staticmethod
    def shard_path(partial: Path, stream: str, batch_id: int) -> Path:
        return partial / f"{stream}-{batch_id:06d}.npz"

    @staticmethod
    def write_shard(path: Path, indices: np.ndarray, parts: dict[str, np.ndarray], failures: list[dict]) -> None:
        """Save one batch's parts with the row (or image) indices they belong to, atomically."""
        arrays = {f"part:{name}": values for name, values in parts.items()}
        with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, indices=indices, failures=json.dumps(failures), **arrays)

    @staticmethod
    def read_shard(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]] | None:
        """A shard's contents (indices, parts, failures), or None when it is unreadable (it is then recomputed)."""
        try:
            with np.load(path) as data:
                parts = {key.partition(":")[2]: data[key] for key in data.files if key.startswith("part:")}
                return data["indices"], parts, json.loads(str(data["failures"]))
        except Exception:  # noqa: BLE001 - any damage means "not done"; the batch is simply redone
            return None

    def completed_batches(self, partial: Path, stream: str) -> set[int]:
        done = set()
        for path in partial.glob(f"{stream}-*.npz"):
            if self.read_shard(path) is None:
                path.unlink()
            else:
                done.add(int(path.stem.split("-")[1]))
        return done

    # -- merge --------------------------------------------------------------------------------
    def _gather(self, partial: Path, stream: str, n: int, names: list[str]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Merge one stream's shards into an [n, d] array per part; duplicates (DDP padding) collapse by index.

        A part no batch produced (every image failed) is one NaN column: its rows are all invalid.
        """
        out: dict[str, np.ndarray] = {}
        seen = np.zeros(n, dtype=bool)
        failed: dict[int, str] = {}
        for path in sorted(partial.glob(f"{stream}-*.npz")):
            shard = self.read_shard(path)
            if shard is None:
                raise CacheError(f"shard {path} is unreadable; rerun the same command to recompute it")
            indices, parts, failures = shard
            if len(indices):
                for name in names:
                    if name not in out:
                        out[name] = np.full((n, parts[name].shape[1]), np.nan, dtype=np.float32)
                    out[name][indices] = parts[name]
                seen[indices] = True
            for failure in failures:
                failed[int(failure["index"])] = failure["reason"]
                seen[int(failure["index"])] = True
        missing = np.flatnonzero(~seen)
        if len(missing):
            raise CacheError(f"{stream} stream is missing {len(missing)} items (first: {missing[:5].tolist()}); rerun")
        return {name: out.get(name, np.full((n, 1), np.nan, np.float32)) for name in names}, failed

    def finalize(self, key: CacheKey, rows: SpatialRows, parts: dict[str, list[str]], extra_meta: dict) -> FeatureEntry:
        """Merge the shards of ``key`` into a complete entry, atomically, then drop the shards.

        ``parts`` maps each stream ("text", "image") to the parts its shards hold. Every part is stored
        per row, L2-normalised; rows whose image failed are NaN and invalid, never zero-filled.
        """
        partial = self.partial_dir(key)
        image_names, row_to_image = rows.unique_images()
        merged, valid, failures = {}, np.ones(len(rows), dtype=bool), []
        for stream, names in parts.items():
            if stream == "text":
                feats, _ = self._gather(partial, "text", len(rows), names)
                merged |= feats
                continue
            feats, failed = self._gather(partial, "image", len(image_names), names)
            merged |= {name: values[row_to_image] for name, values in feats.items()}
            failed_rows = np.isin(row_to_image, np.fromiter(failed, dtype=np.int64, count=len(failed)))
            valid &= ~failed_rows
            failures = [
                {"row": int(r), "image": image_names[row_to_image[r]], "reason": failed[int(row_to_image[r])]}
                for r in np.flatnonzero(failed_rows)
            ]
        stored = {}
        for name, values in merged.items():
            values = view_recipes.l2_rows(values).astype(key.dtype)
            if name in parts.get("image", ()):
                values[~valid] = np.nan  # a failed image is never silently zero-filled
            stored[name] = values
        return self._publish(key, rows, stored, valid, failures, extra_meta)

    def _publish(self, key, rows, parts, valid, failures, extra_meta) -> FeatureEntry:
        final = self.entry_dir(key)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(final, cleanup=tmp):  # a full disk leaves no half-written temp entry behind
            (tmp / PARTS_DIR).mkdir(parents=True)
            for name, values in parts.items():
                np.save(tmp / part_file(name), values)
            np.save(tmp / "valid.npy", valid)
            rows.to_jsonl(tmp / "rows.jsonl")
            (tmp / "failures.jsonl").write_text("".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
            meta = seal_meta({
                "key": key.as_dict(),
                "digest": key.digest,
                "n_rows": len(rows),
                "parts": {name: int(values.shape[1]) for name, values in parts.items()},
                "n_valid": int(valid.sum()),
                "failures": failures,
                "sha256": {name: sha256_file(tmp / name) for name in [*ENTRY_FILES, *map(part_file, parts)]},
                "versions": _library_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra_meta,
            })
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if (final / "meta.json").is_file():  # a concurrent run finished first; entries for one key are identical
            shutil.rmtree(tmp)
        else:
            # Without meta.json a directory there is the remains of a delete that was killed (--overwrite).
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)
        return load_entry(final)

    def discard(self, key: CacheKey) -> None:
        """Delete the entry and any shards for ``key`` (``--overwrite``)."""
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)

    def clean_stale(self, key: CacheKey) -> None:
        """Remove what killed runs left: merge temp dirs of dead processes, shards of a finished entry."""
        final = self.entry_dir(key)
        for tmp in final.parent.glob(f"{final.name}.tmp-*"):
            if not _pid_alive(tmp.name.rpartition("-")[2]):  # a live one belongs to a concurrent merge
                shutil.rmtree(tmp, ignore_errors=True)
        if (final / "meta.json").is_file():  # killed between the rename and the shard clean-up
            shutil.rmtree(self.partial_dir(key), ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
