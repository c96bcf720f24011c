"""The feature-cache key: everything that changes the numbers of an entry, hashed into its directory name.

The key hashes the canonical encoder spec (with views and random-init), the requested layers, the
dataset name and row fingerprint, the storage dtype, the Trainer precision, the encoder family's adapter
code version, and for a local model the content of its files (weights hashed once, memoised by path,
inode, size, mtime and ctime). `make_key` computes it without loading any weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.sources import cache_root
from spatial_probing.encoders import views as view_recipes
from spatial_probing.encoders.registry import adapter_code
from spatial_probing.errors import CacheError
from spatial_probing.io import atomic_write

#: Bump when the on-disk layout or the meaning of a field changes; older entries are refused.
#: 3: meta.json carries ``meta_sha256`` over all its other fields; the key has ``image_orientation``.
FORMAT_VERSION = 3
STORAGE_DTYPES = ("float32", "float16")


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
