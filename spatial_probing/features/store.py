"""The feature cache: keys, per-batch shards, one atomic merge, checksummed entries read memory-mapped.

Layout (CLIP_benchmark-style ``feature_root/<dataset>/<encoder>/``)::

    <root>/<dataset>/<encoder slug>/<key>/          complete entry; meta.json is written last
        parts/<part>.npy  valid.npy  rows.jsonl  failures.jsonl  meta.json
    <root>/<dataset>/<encoder slug>/<key>.partial/  shards of an unfinished extraction (resume point)

An entry holds the *parts* one extraction pass computed (``text``, ``image``, ``text-pooled``,
``text@6``, ...; one row per dataset row, L2-normalised, NaN where the row's image failed). Its views
are derived from the parts when read (``FeatureEntry.view`` / ``feature_sets``), by the one recipe in
``spatial_probing.encoders.views``: text, image and concat of one encoder are one entry, not three.

An entry directory only ever appears by ``os.rename`` of a fully written temp directory, and
``load_entry`` verifies the sha256 of every file against meta.json, so a killed run can never leave
something that reads as complete.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.sources import cache_root
from spatial_probing.encoders import views as view_recipes
from spatial_probing.encoders.registry import adapter_code
from spatial_probing.errors import CacheError
from spatial_probing.io import atomic_path, atomic_write

#: Bump when the on-disk layout or the meaning of a field changes; older entries are refused.
#: 3: meta.json carries ``meta_sha256`` over all its other fields; the key has ``image_orientation``.
FORMAT_VERSION = 3
STORAGE_DTYPES = ("float32", "float16")
_ENTRY_FILES = ("valid.npy", "rows.jsonl", "failures.jsonl")
_PARTS_DIR = "parts"
_LIBRARIES = ("spatial_probing", "torch", "lightning", "transformers", "open_clip_torch", "sentence-transformers")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed so large feature files do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised by (path, inode, size, mtime, ctime) so multi-GB weights are hashed once.

    ctime is in the memo key because no user call can set it back: a file rewritten in place with its
    size and mtime restored still gets a new ctime, so it is hashed again (docs/reliability.md).
    """
    stat = path.stat()
    memo = cache_root() / "file-digests" / hashlib.sha256(
        f"{path.resolve()}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}".encode()).hexdigest()
    if memo.is_file():
        return memo.read_text()
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, digest)
    return digest


def model_source_fingerprint(model: str) -> str | None:
    """Content hash of a local model (directory or checkpoint file), or None for hub ids and tags.

    A changed tokenizer config, preprocessing config or weight file in a local model must change the
    cache key; weights are hashed once and memoised, so cache hits stay fast.
    """
    candidates = [Path(model).expanduser()]
    if "/" in model:  # openclip "<arch>/<checkpoint path>"
        candidates.append(Path(model.split("/", 1)[1]).expanduser())
    for path in candidates:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.exists():
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file.relative_to(path).as_posix() if path.is_dir() else file.name}:".encode())
                digest.update(_file_digest(file).encode())
            return digest.hexdigest()
    return None


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes the numbers in an entry; its digest names the entry directory."""

    encoder: str
    view: str
    dataset: str
    fingerprint: str
    dtype: str
    precision: str
    model_source: str | None = None
    layers: str = view_recipes.FINAL
    image_orientation: str = "stored"
    adapter: str = ""  # the encoder family's adapter code version (registry.adapter_code)
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "adapter": self.adapter,
            "view": self.view,
            "layers": self.layers,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype,
            "precision": self.precision,
            "model_source": self.model_source,
            "image_orientation": self.image_orientation,
            "format_version": self.format_version,
        }

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_key(encoder: str, view: str, model: str, rows: SpatialRows, dtype: str, precision: str,
             layers: str = view_recipes.FINAL, image_orientation: str = "stored", uses_images: bool = False
             ) -> CacheKey:
    """The key of extracting ``rows`` with ``encoder`` (canonical spec string), computed without any weights.

    ``view`` is the spec's (comma-separated) views, ``layers`` the requested layers (``final``, ``all``, ``0,6``).
    ``image_orientation`` joins the key only when a view reads images (``uses_images``): text
    features do not depend on it, so they keep one entry whatever it is set to.
    """
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"--dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}")
    return CacheKey(encoder=encoder, view=view, dataset=rows.name, fingerprint=rows.fingerprint, dtype=dtype,
                    precision=precision, model_source=model_source_fingerprint(model), layers=layers,
                    image_orientation=image_orientation if uses_images else "stored", adapter=adapter_code(encoder))


def meta_digest(meta: dict) -> str:
    """sha256 of every field of an entry's meta.json except ``meta_sha256`` itself (canonical JSON)."""
    fields = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_meta(path: str | Path) -> dict:
    """An entry's meta.json, checked for shape and against its own checksum; a CacheError names the fault.

    The checksum covers every field (encoder, view, dataset, key, ...), so an edited label never
    relabels results silently.
    """
    entry = Path(path)
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        raise CacheError(f"{entry} is not a complete feature-cache entry (no meta.json); rerun the extraction")
    fix = f"delete {entry} and rerun the extraction"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{meta_path} is corrupt ({exc}); {fix}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
        raise CacheError(f"{meta_path} is not an entry's meta.json (expected a JSON object with a 'key'); {fix}")
    version = meta["key"].get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(
            f"{entry} was written with cache format {version}, this version reads format {FORMAT_VERSION}; "
            f"delete it (or use another --feature_root) and rerun the extraction"
        )
    if not isinstance(meta.get("sha256"), dict) or meta.get("meta_sha256") != meta_digest(meta):
        raise CacheError(f"{meta_path} does not match its checksum (meta_sha256: a field was edited or "
                         f"removed); {fix}")
    return meta


def seal_meta(meta: dict) -> dict:
    """``meta`` with its ``meta_sha256`` set (the last step before meta.json is written)."""
    return {**meta, "meta_sha256": meta_digest(meta)}


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


def _part_file(name: str) -> str:
    return f"{_PARTS_DIR}/{name}.npy"


@dataclass
class FeatureEntry:
    """A complete cache entry: the stored parts (possibly memory-mapped) with their rows and provenance.

    ``view(name, layer)`` derives one feature set from the parts; ``feature_sets()`` lists every
    (view, layer) set the entry offers; ``features`` is the first one's features (the entry's own view).
    """

    path: Path
    parts: dict[str, np.ndarray]
    valid: np.ndarray  # rows whose image loaded (all rows when the entry has no image part)
    rows: SpatialRows
    meta: dict

    @property
    def failures(self) -> list[dict]:
        return list(self.meta.get("failures", []))

    @property
    def recipes(self) -> dict[str, view_recipes.View]:
        """The entry's views by name, as recorded at extraction (``meta["view_parts"]``), in order."""
        return {name: view_recipes.View(name, tuple(parts), "") for name, parts in self.meta["view_parts"]}

    @property
    def views(self) -> tuple[str, ...]:
        """The entry's view names, in the order they were requested."""
        return tuple(self.recipes)

    def view(self, name: str, layer: str | int = view_recipes.FINAL) -> FeatureSet:
        """The features of view ``name`` at ``layer`` (``final`` or a layer number), derived from the parts."""
        if (name, str(layer)) not in self.offered():
            offered = ", ".join(f"{v}[{lay}]" for v, lay in self.offered())
            raise CacheError(f"{self.path} has no view {name!r} at layer {layer} (it holds {offered})")
        return FeatureSet(entry=self, view=name, layer=str(layer))

    def offered(self) -> list[tuple[str, str]]:
        """The (view, layer) pairs this entry offers, final layers first."""
        return view_recipes.feature_sets(list(self.recipes.values()), self.parts)

    def feature_sets(self) -> list[FeatureSet]:
        """Every (view, layer) feature set of the entry: what the probes iterate."""
        return [FeatureSet(entry=self, view=v, layer=layer) for v, layer in self.offered()]

    @property
    def features(self) -> np.ndarray:
        """The final-layer features of the entry's first view."""
        return self.feature_sets()[0].features

    def describe(self) -> str:
        """``<path> (<rows> rows: <view> <dim>, ...; <dtype>; <k> failed rows)``, as the CLI reports an entry."""
        sets = self.feature_sets()
        dims = ", ".join(f"{s.view} {s.dim}" for s in sets if s.layer == view_recipes.FINAL)
        layers = [s.layer for s in sets if s.layer != view_recipes.FINAL]
        depth = f"; layers {layers[0]}..{layers[-1]} and final" if layers else ""
        return (f"{self.path} ({len(self.rows)} rows: {dims}{depth}; {self.meta['key']['dtype']}; "
                f"{len(self.failures)} failed rows)")


@dataclass
class FeatureSet:
    """One (view, layer) of an entry: what one probe set reads. Offers the entry's rows, valid mask and
    provenance, with ``view`` and ``layer`` set in its ``meta``."""

    entry: FeatureEntry
    view: str
    layer: str

    @property
    def _parts(self) -> list[np.ndarray]:
        return [self.entry.parts[p] for p in self.entry.recipes[self.view].parts_at(self.layer)]

    @property
    def dim(self) -> int:
        return sum(part.shape[1] for part in self._parts)

    @cached_property
    def features(self) -> np.ndarray:
        """``[n_rows, dim]``: a one-part view is its stored (memory-mapped) part; others are combined in memory, once."""
        parts = self._parts
        return parts[0] if len(parts) == 1 else view_recipes.combine(parts)

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def rows(self) -> SpatialRows:
        return self.entry.rows

    @property
    def _has_image(self) -> bool:
        return "image" in self.entry.recipes[self.view].streams

    @property
    def valid(self) -> np.ndarray:
        """Rows with features: a view with an image part loses the rows whose image failed, a text view none."""
        return self.entry.valid if self._has_image else np.ones_like(self.entry.valid)

    @property
    def failures(self) -> list[dict]:
        return self.entry.failures if self._has_image else []

    @property
    def meta(self) -> dict:
        return {**self.entry.meta, "view": self.view, "layer": self.layer}


def load_entry(path: str | Path, verify: bool = True, mmap: bool = True) -> FeatureEntry:
    """Open a complete entry; refuse partial, corrupt or incompatible ones with a CacheError."""
    path = Path(path)
    meta = read_meta(path)
    files = [*_ENTRY_FILES, *(_part_file(name) for name in meta.get("parts", {}))]
    if verify:
        for name in files:
            expected = meta["sha256"].get(name)
            if not (path / name).is_file() or sha256_file(path / name) != expected:
                raise CacheError(f"{path / name} does not match the checksum in meta.json; delete {path} and rerun")
    parts = {name: np.load(path / _part_file(name), mmap_mode="r" if mmap else None) for name in meta["parts"]}
    valid = np.load(path / "valid.npy")
    rows = SpatialRows.from_jsonl(path / "rows.jsonl")
    for name, part in parts.items():
        if part.ndim != 2 or part.shape[0] != len(rows) or valid.shape != (len(rows),):
            raise CacheError(f"{path / _part_file(name)} has shape {part.shape} but rows.jsonl has {len(rows)} rows")
    return FeatureEntry(path=path, parts=parts, valid=valid, rows=rows, meta=meta)


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
            (tmp / _PARTS_DIR).mkdir(parents=True)
            for name, values in parts.items():
                np.save(tmp / _part_file(name), values)
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
                "sha256": {name: sha256_file(tmp / name) for name in [*_ENTRY_FILES, *map(_part_file, parts)]},
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
