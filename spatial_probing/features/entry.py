"""A complete cache entry: its files, meta.json and its checksum, reading it (memory-mapped), its views.

An entry directory holds ``parts/<part>.npy  valid.npy  rows.jsonl  failures.jsonl  meta.json``: the
*parts* one extraction pass computed (``text``, ``image``, ``text-pooled``, ``text@6``, ...; one row per
dataset row, L2-normalised, NaN where the row's image failed). Its views are derived from the parts when
read (``FeatureEntry.view`` / ``feature_sets``), by the one recipe in ``spatial_probing.encoders.views``:
text, image and concat of one encoder are one entry, not three. ``load_entry`` verifies the sha256 of
every file against meta.json, and meta.json against its own checksum, before anything is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.encoders import views as view_recipes
from spatial_probing.errors import CacheError
from spatial_probing.features.key import FORMAT_VERSION, sha256_file

ENTRY_FILES = ("valid.npy", "rows.jsonl", "failures.jsonl")
PARTS_DIR = "parts"


def part_file(name: str) -> str:
    return f"{PARTS_DIR}/{name}.npy"


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
    files = [*ENTRY_FILES, *(part_file(name) for name in meta.get("parts", {}))]
    if verify:
        for name in files:
            expected = meta["sha256"].get(name)
            if not (path / name).is_file() or sha256_file(path / name) != expected:
                raise CacheError(f"{path / name} does not match the checksum in meta.json; delete {path} and rerun")
    parts = {name: np.load(path / part_file(name), mmap_mode="r" if mmap else None) for name in meta["parts"]}
    valid = np.load(path / "valid.npy")
    rows = SpatialRows.from_jsonl(path / "rows.jsonl")
    for name, part in parts.items():
        if part.ndim != 2 or part.shape[0] != len(rows) or valid.shape != (len(rows),):
            raise CacheError(f"{path / part_file(name)} has shape {part.shape} but rows.jsonl has {len(rows)} rows")
    return FeatureEntry(path=path, parts=parts, valid=valid, rows=rows, meta=meta)
