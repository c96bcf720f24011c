"""Tiny feature-cache entries in the store's on-disk format, for probe and report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.features.entry import seal_meta
from spatial_probing.features.key import FORMAT_VERSION, sha256_file

RELATIONS = ("left of", "above", "near")


def toy_rows(per_relation: int = 30, relations: tuple[str, ...] = RELATIONS) -> SpatialRows:
    """``per_relation`` captions per relation, two captions per image, labels alternating."""
    rels = [r for r in relations for _ in range(per_relation)]
    n = len(rels)
    return SpatialRows(
        name="toy/train",
        captions=tuple(f"The thing {i} is {r} the other." for i, r in enumerate(rels)),
        relations=tuple(rels),
        labels=np.arange(n) % 2,
        images=tuple(f"img{i // 2}.jpg" for i in range(n)),
        image_links=(None,) * n,
        source="generated",
    )


def toy_features(rows: SpatialRows, dim: int = 8, signal: float = 1.0, seed: int = 0) -> np.ndarray:
    """Noise plus a per-relation direction of strength ``signal``: probes score between chance and 1."""
    rng = np.random.default_rng(seed)
    names = sorted(set(rows.relations))
    codes = np.array([names.index(r) for r in rows.relations])
    directions = rng.normal(size=(len(names), dim))
    return (rng.normal(size=(len(rows), dim)) + signal * directions[codes]).astype(np.float32)


def write_entry(
    path: Path,
    rows: SpatialRows,
    features: np.ndarray,
    valid: np.ndarray | None = None,
    encoder: str = "toy:enc",
    view: str = "text",
) -> Path:
    """Write a complete entry (one part holding ``features``, valid, rows, failures, meta with checksums)."""
    (path / "parts").mkdir(parents=True)
    valid = np.ones(len(features), dtype=bool) if valid is None else valid
    failures = [{"row": int(r), "image": rows.images[r], "reason": "not_found"} for r in np.flatnonzero(~valid)]
    np.save(path / "parts" / f"{view}.npy", features)
    np.save(path / "valid.npy", valid)
    rows.to_jsonl(path / "rows.jsonl")
    (path / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    files = (f"parts/{view}.npy", "valid.npy", "rows.jsonl", "failures.jsonl")
    meta = seal_meta({
        "key": {"encoder": encoder, "view": view, "dataset": rows.name, "format_version": FORMAT_VERSION},
        "encoder": encoder,
        "view": view,
        "view_parts": [[view, [view]]],
        "parts": {view: int(features.shape[1]) if features.ndim == 2 else 0},
        "dataset": rows.name,
        "failures": failures,
        "sha256": {name: sha256_file(path / name) for name in files},
    })
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def toy_entry(root: Path, name: str = "enc", signal: float = 1.0, seed: int = 0, **kwargs) -> Path:
    """A complete toy entry of `toy_rows` at ``root/name``."""
    rows = toy_rows()
    return write_entry(root / name, rows, toy_features(rows, signal=signal, seed=seed), **kwargs)
