"""Where a dataset's rows and images come from: ``scenes`` (generated once into the cache), a hub id or a dir.

Kept free of Lightning and torch so a cache lookup can resolve rows without importing the training stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from spatial_probing.data.derived import derive, split_name
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.scenes import write_scenes
from spatial_probing.data.vsr import load_vsr
from spatial_probing.errors import DataError


def cache_root() -> Path:
    """Where generated scenes, downloaded images and run records live (``SPATIAL_PROBING_CACHE`` overrides)."""
    return Path(os.environ.get("SPATIAL_PROBING_CACHE", "~/.cache/spatial_probing")).expanduser()


def dataset_location(dataset: str, image_root: str | None, scenes_per_relation: int, scenes_seed: int
                     ) -> tuple[str, str | None]:
    """The rows' source (hub id or directory) and image root; synthetic scenes are written on first use."""
    if (derived := split_name(dataset)) is not None:  # derived rows keep their base dataset's images
        return dataset_location(derived[1], image_root, scenes_per_relation, scenes_seed)
    if dataset != "scenes":
        return dataset, image_root
    out = write_scenes(cache_root() / "scenes" / f"n{scenes_per_relation}-seed{scenes_seed}",
                       n_per_relation=scenes_per_relation, seed=scenes_seed)
    return str(out), str(Path(out) / "images")


def load_rows(dataset: str, split: str, relations: list[str] | None, scenes_per_relation: int,
              scenes_seed: int) -> SpatialRows:
    """The validated rows of one split of ``dataset``; a split without rows is an error (nothing to extract)."""
    if (derived := split_name(dataset)) is not None:
        return derive(derived[0], load_rows(derived[1], split, None, scenes_per_relation, scenes_seed), relations)
    source, _ = dataset_location(dataset, None, scenes_per_relation, scenes_seed)
    rows = load_vsr(source, split, relations=relations)
    if not len(rows):
        raise DataError(f"split {split!r} of {source} has no rows (its file is empty or blank); nothing to extract")
    return rows
