"""What the analyses read: cache entries by (dataset, label), and the baselines computed from the rows.

A `Features` is one matrix over one dataset split's rows, L2-normalised per row, with a validity mask
and the identity columns its stats.csv rows carry. Encoders come from the feature cache, one per (view, layer)
feature set of an entry (label = ``<short encoder>@<view>[layer]``, e.g. ``sbert:all-mpnet-base-v2@text`` or
``openclip:ViT-B-32+random-init@image``); baselines are computed from the rows themselves:

- ``baseline:bow`` bag of words (unigram counts): paraphrase and contradiction share their bag exactly.
- ``baseline:relation`` one-hot of the caption's relation (the text side of the scene baselines).
- ``baseline:geometry`` the objects' true boxes (scenes' ``extra``): the geometric skyline.
- ``baseline:pixels`` the image downsampled to ``PIXEL_SIDE`` x ``PIXEL_SIDE`` RGB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from spatial_probing.data.rows import SpatialRows
from spatial_probing.encoders.spec import short_encoder
from spatial_probing.errors import DataError, FeatureError
from spatial_probing.features.entry import FeatureSet, load_entry

PIXEL_SIDE = 8
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Features:
    """Row-normalised features of one source over ``rows``; ``valid`` False where the source has none."""

    label: str
    x: np.ndarray
    valid: np.ndarray
    rows: SpatialRows
    identity: dict = field(default_factory=dict)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); float32."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _identity(rows: SpatialRows, label: str, view: str, entry: str = "") -> dict:
    return {"dataset": rows.name, "entry": entry, "encoder": label, "view": view, "layer": "final"}


def from_entry(entry: FeatureSet, label: str) -> Features:
    meta = entry.meta
    identity = {"dataset": str(meta.get("dataset", entry.rows.name)), "entry": entry.path.name, "encoder": label,
                "view": str(meta.get("view", "")), "layer": str(meta.get("layer", "final"))}
    return Features(label, unit_rows(entry.features), np.asarray(entry.valid, dtype=bool), entry.rows, identity)


# -- baselines ---------------------------------------------------------------------------------------

def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def bag_of_words(rows: SpatialRows, vocabulary: Sequence[str] | None = None) -> Features:
    """Unigram counts over ``vocabulary`` (default: every word of ``rows``); unknown words are dropped."""
    vocab = {w: i for i, w in enumerate(vocabulary or sorted({w for c in rows.captions for w in words(c)}))}
    x = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, caption in enumerate(rows.captions):
        for w in words(caption):
            if w in vocab:
                x[i, vocab[w]] += 1
    return Features("baseline:bow", unit_rows(x), np.ones(len(rows), bool), rows, _identity(rows, "baseline:bow", "text"))


def relation_onehot(rows: SpatialRows, relations: Sequence[str]) -> Features:
    index = {r: i for i, r in enumerate(relations)}
    x = np.zeros((len(rows), len(relations)), dtype=np.float32)
    for i, r in enumerate(rows.relations):
        if r in index:
            x[i, index[r]] = 1
    return Features("baseline:relation", x, np.ones(len(rows), bool), rows, _identity(rows, "baseline:relation", "text"))


def _boxes(rows: SpatialRows, column: str) -> np.ndarray:
    if column not in rows.extra:
        raise DataError(f"{rows.name} has no {column!r} column: the geometric skyline needs scene rows (boxes)")
    return np.asarray(rows.extra[column], dtype=np.float64)


def geometry(rows: SpatialRows, image_size: float) -> Features:
    """The skyline's features: both boxes, their signed gaps and overlaps, containment and draw order.

    Everything the scene rules read (`data.scenes.relation_holds`) is here as a feature or the sign of one,
    scaled by the image size, so a linear probe on them is the most a geometry-aware reader can do.
    """
    a, b = _boxes(rows, "subj_box") / image_size, _boxes(rows, "obj_box") / image_size
    gaps = np.stack([b[:, 0] - a[:, 2], a[:, 0] - b[:, 2], b[:, 1] - a[:, 3], a[:, 1] - b[:, 3]], axis=1)
    dx, dy = np.maximum(gaps[:, 0], gaps[:, 1]), np.maximum(gaps[:, 2], gaps[:, 3])
    within_ab = np.all([b[:, 0] <= a[:, 0], b[:, 1] <= a[:, 1], a[:, 2] <= b[:, 2], a[:, 3] <= b[:, 3]], axis=0)
    within_ba = np.all([a[:, 0] <= b[:, 0], a[:, 1] <= b[:, 1], b[:, 2] <= a[:, 2], b[:, 3] <= a[:, 3]], axis=0)
    front = (np.asarray(rows.extra["subj_z"], float) > np.asarray(rows.extra["obj_z"], float))
    flags = np.column_stack([gaps >= 0, np.isclose(gaps, 0), dx < 0, dy < 0, (dx < 0) & (dy < 0), within_ab,
                             within_ba, front, np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))])
    x = np.column_stack([a, b, a - b, gaps, dx, dy, flags]).astype(np.float32)
    return Features("baseline:geometry", x, np.ones(len(rows), bool), rows, _identity(rows, "baseline:geometry", "image"))


def pixels(rows: SpatialRows, side: int = PIXEL_SIDE) -> Features:
    """Each row's image (``<rows.source>/images/<name>``) box-downsampled to ``side`` x ``side`` RGB in [0, 1]."""
    root = Path(rows.source) / "images"
    cache: dict[str, np.ndarray] = {}
    x = np.zeros((len(rows), side * side * 3), dtype=np.float32)
    for i, name in enumerate(rows.images):
        if name not in cache:
            path = root / name
            if not path.is_file():
                raise DataError(f"pixel baseline: image {path} (row {i} of {rows.name}) not found")
            with Image.open(path) as img:
                small = img.convert("RGB").resize((side, side), Image.Resampling.BOX)
            cache[name] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
        x[i] = cache[name]
    return Features("baseline:pixels", x, np.ones(len(rows), bool), rows, _identity(rows, "baseline:pixels", "image"))


# -- the feature cache -------------------------------------------------------------------------------

def entry_label(meta: dict) -> str:
    """``short_encoder(encoder)@view`` plus ``[layer]`` for a layer other than the final one (a feature set's meta)."""
    layer = str(meta.get("layer", "final"))
    return short_encoder(f"{meta['encoder']}@{meta['view']}") + ("" if layer == "final" else f"[{layer}]")


def view_of(label: str) -> str:
    """The view in an entry label: ``openclip:ViT-B-32+random-init@image`` -> ``image``."""
    return label.rpartition("@")[2].split("+")[0].split("[")[0] if "@" in label else ""


def extract_command(dataset: str, root: Path, view: str | None = None) -> str:
    """The ``spatial-probing extract`` command line that writes an entry of ``dataset`` (``<name>/<split>``)."""
    name, _, split = dataset.rpartition("/")
    if not name:  # a dataset given without its split (the truth analysis reads train, dev and test)
        name, split = dataset, "{train,dev,test}"
    # a VSR split is named after its hub dataset (vsr_random/train <- cambridgeltl/vsr_random)
    source = re.sub(r"(^|:)(vsr_)", r"\1cambridgeltl/\2", name)
    view_option = f" --model.view {view}" if view and view != "text" else ""
    return (f"`spatial-probing extract --config configs/extract/<encoder>.yaml --data.dataset {source} "
            f"--data.split {split}{view_option} --feature_root {root}`")


def _depth_order(label: str) -> tuple[str, int]:
    """Sort key: the label without ``[layer]``, then the layer number (the final layer, unbracketed, last)."""
    base, _, layer = label.partition("[")
    return (base, int(layer.rstrip("]")) if layer else 10**6)


class FeatureIndex:
    """Every (view, layer) feature set of the complete cache entries under ``feature_root`` by (dataset name,
    label), optionally kept to ``encoders``."""

    def __init__(self, feature_root: str | Path, encoders: Sequence[str] | None = None) -> None:
        self.root = Path(feature_root).expanduser()
        if not self.root.is_dir():
            raise FeatureError(f"--feature_root {self.root} is not a directory; pass the --feature_root the "
                               "extractions wrote (default outputs/features)")
        self.paths: dict[tuple[str, str], tuple[Path, str, str]] = {}  # -> (entry, view, layer)
        clashes: dict[tuple[str, str], list[str]] = {}
        for meta_path in sorted(self.root.rglob("meta.json")):
            if any(p.endswith(".partial") or ".tmp-" in p for p in meta_path.relative_to(self.root).parts):
                continue
            for feature_set in load_entry(meta_path.parent, verify=False).feature_sets():  # checked when loaded
                key = (str(feature_set.meta["dataset"]), entry_label(feature_set.meta))
                if encoders is not None and key[1] not in encoders:
                    continue
                if key in self.paths:
                    clashes.setdefault(key, [str(self.paths[key][0])]).append(str(meta_path.parent))
                self.paths[key] = (meta_path.parent, feature_set.view, feature_set.layer)
        if clashes:
            key, paths = next(iter(clashes.items()))
            raise FeatureError(f"{len(paths)} cache entries of {key[1]} on {key[0]} ({', '.join(paths)}); "
                               "keep one (another precision or dtype?) or use another feature_root")
        self._loaded: dict[tuple[str, str], Features] = {}

    def labels(self, dataset: str) -> list[str]:
        """Labels of the entries of ``dataset``, sorted (an encoder's layers in depth order: 2 before 10)."""
        return sorted((label for ds, label in self.paths if ds == dataset), key=_depth_order)

    def missing(self, dataset: str, what: str, view: str | None = None) -> FeatureError:
        """The error for ``what`` (e.g. "text entries") of ``dataset`` absent here, with the command that extracts it."""
        return FeatureError(f"no {what} of {dataset} under {self.root} (entries of it: "
                            f"{', '.join(self.labels(dataset)) or 'none'}); extract one first: "
                            f"{extract_command(dataset, self.root, view)}")

    def get(self, dataset: str, label: str) -> Features:
        key = (dataset, label)
        if key not in self.paths:
            raise self.missing(dataset, f"cache entry of {label}", view_of(label))
        if key not in self._loaded:
            path, view, layer = self.paths[key]
            self._loaded[key] = from_entry(load_entry(path).view(view, layer), label)
        return self._loaded[key]
