"""SpatialRows: the columnar row table of one dataset split that every later stage indexes by row number."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from spatial_probing.data.relations import meta_category
from spatial_probing.errors import DataError
from spatial_probing.io import atomic_path

ROWS_FORMAT = 1


def _as_tuple(value: Any) -> Any:
    """Lists (from JSON) become tuples, so extra values such as boxes are immutable and round-trip exactly."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


# eq=False: numpy columns make field-wise equality ambiguous; compare `fingerprint` instead.
@dataclass(frozen=True, eq=False, kw_only=True)
class SpatialRows:
    """Equal-length columns of one split of one dataset (row i of every column is one caption).

    Args:
        name: dataset/split, e.g. ``vsr_random/train`` or ``scenes/train``.
        captions: caption text per row.
        relations: relation phrase per row (``left of``).
        labels: 1 if the caption is true of its image, else 0 (stored as a read-only int8 array).
        images: image file name per row: the key that identifies an image.
        image_links: URL per row, or None where the image is only available locally.
        extra: further per-row columns (e.g. scene boxes), each as long as ``captions``.
        source: where the rows came from (file, directory or hub id).
    """

    name: str
    captions: tuple[str, ...]
    relations: tuple[str, ...]
    labels: np.ndarray
    images: tuple[str, ...]
    image_links: tuple[str | None, ...]
    source: str
    extra: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = np.asarray(self.labels).reshape(-1)
        if raw.size and not np.isin(raw, (0, 1)).all():  # checked before the cast, which could wrap values
            raise DataError(f"{self.name}: labels must be 0 or 1")
        labels = raw.astype(np.int8)
        labels.setflags(write=False)  # the table is immutable: its fingerprint is cached
        object.__setattr__(self, "labels", labels)
        for column in ("captions", "relations", "images", "image_links"):
            object.__setattr__(self, column, tuple(getattr(self, column)))
        object.__setattr__(self, "extra", {k: tuple(_as_tuple(x) for x in v) for k, v in self.extra.items()})
        n = len(self.captions)
        lengths = {"relations": len(self.relations), "labels": len(labels), "images": len(self.images),
                   "image_links": len(self.image_links)} | {f"extra[{k}]": len(v) for k, v in self.extra.items()}
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise DataError(f"{self.name}: columns differ in length from captions ({n}): {wrong}")

    def __len__(self) -> int:
        return len(self.captions)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex over the canonical JSON ``[caption, relation, label, image]`` of every row, in order.

        Names, links, sources and extra columns are left out: they do not change what an encoder sees.
        """
        digest = hashlib.sha256()
        for row in zip(self.captions, self.relations, self.labels.tolist(), self.images, strict=True):
            digest.update(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def unique_images(self) -> tuple[tuple[str, ...], np.ndarray]:
        """Unique image names in first-seen order, and for each row the index of its image there."""
        index: dict[str, int] = {}
        row_to_image = np.fromiter((index.setdefault(name, len(index)) for name in self.images),
                                   dtype=np.int64, count=len(self.images))
        return tuple(index), row_to_image

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> SpatialRows:
        """The rows at ``indices`` (integer positions, or a boolean mask over all rows), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DataError(f"{self.name}: boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"{self.name}: row index out of range for {len(self)} rows")
        pick = idx.tolist()
        return SpatialRows(
            name=name or self.name,
            captions=tuple(self.captions[i] for i in pick),
            relations=tuple(self.relations[i] for i in pick),
            labels=self.labels[idx],
            images=tuple(self.images[i] for i in pick),
            image_links=tuple(self.image_links[i] for i in pick),
            source=self.source,
            extra={k: tuple(v[i] for i in pick) for k, v in self.extra.items()},
        )

    def repeated_rows(self) -> np.ndarray:
        """Indices of rows identical (caption, relation, label, image) to an earlier row."""
        seen: set[tuple] = set()
        repeated = []
        for i, row in enumerate(zip(self.captions, self.relations, self.labels.tolist(), self.images, strict=True)):
            if row in seen:
                repeated.append(i)
            seen.add(row)
        return np.array(repeated, dtype=np.int64)

    def relation_counts(self) -> Counter[str]:
        """Number of rows per relation."""
        return Counter(self.relations)

    def meta_categories(self) -> tuple[str, ...]:
        """VSR meta-category of every row's relation (``Unallocated`` for relations VSR does not map)."""
        return tuple(meta_category(r) for r in self.relations)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the table as JSON lines: a header (name, source, fingerprint, n_rows), then one row per line.

        The file is written to a temporary name and renamed, so a reader never sees half a table.
        """
        path = Path(path)
        header = {"format": ROWS_FORMAT, "name": self.name, "source": self.source, "n_rows": len(self),
                  "fingerprint": self.fingerprint, "extra_columns": sorted(self.extra)}
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for i in range(len(self)):
                row = {"caption": self.captions[i], "relation": self.relations[i],
                       "label": int(self.labels[i]), "image": self.images[i],
                       "image_link": self.image_links[i],
                       "extra": {k: v[i] for k, v in self.extra.items()}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_jsonl(cls, path: str | Path) -> SpatialRows:
        """Read a table written by `to_jsonl`; the row count and fingerprint must match the header."""
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as f:
                header = json.loads(f.readline())
                records = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read row table: {exc}") from exc
        if not isinstance(header, dict) or header.get("format") != ROWS_FORMAT:
            raise DataError(f"{path}: not a row table of format {ROWS_FORMAT} (header: {header!r:.200})")
        try:
            rows = cls(
                name=header["name"],
                captions=tuple(r["caption"] for r in records),
                relations=tuple(r["relation"] for r in records),
                labels=np.array([r["label"] for r in records], dtype=np.int8),
                images=tuple(r["image"] for r in records),
                image_links=tuple(r["image_link"] for r in records),
                source=header["source"],
                extra={k: tuple(r["extra"][k] for r in records) for k in header["extra_columns"]},
            )
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: row table is missing field {exc}") from exc
        if len(rows) != header["n_rows"] or rows.fingerprint != header["fingerprint"]:
            raise DataError(f"{path}: rows do not match the header's row count or fingerprint; the file is "
                            "damaged, delete it (or its cache entry) and extract again")
        return rows
