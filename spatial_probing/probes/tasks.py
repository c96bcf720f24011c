"""Probe tasks: turn dataset rows into binary targets, per-target row masks and fold groups.

A task is just data — a ``[n, T]`` 0/1 target matrix, a ``[n, T]`` mask saying which rows take part in
each target, and one group id per row (the image, so grouped folds keep all captions of an image
together) — so the probe engine never needs to know what the targets mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError


@dataclass(frozen=True)
class ProbeTask:
    """Binary targets for one dataset split.

    ``targets`` [n, T] int8 in {0, 1}; ``row_mask`` [n, T] bool (False: the row is not part of that
    target's problem); ``groups`` [n] int64 (image id of each row); ``target_names`` one per column.
    """

    name: str
    targets: np.ndarray
    target_names: tuple[str, ...]
    row_mask: np.ndarray
    groups: np.ndarray

    def __post_init__(self) -> None:
        n, t = self.targets.shape
        if self.row_mask.shape != (n, t) or self.groups.shape != (n,) or len(self.target_names) != t:
            raise ValueError(
                f"task {self.name!r}: targets {self.targets.shape}, row_mask {self.row_mask.shape}, "
                f"groups {self.groups.shape} and {len(self.target_names)} target names disagree"
            )

    @property
    def n_targets(self) -> int:
        return self.targets.shape[1]

    def subset(self, indices: np.ndarray) -> ProbeTask:
        """The same task restricted to ``indices`` (rows), e.g. the rows whose features are valid."""
        return ProbeTask(
            name=self.name,
            targets=self.targets[indices],
            target_names=self.target_names,
            row_mask=self.row_mask[indices],
            groups=self.groups[indices],
        )


def _check_relations(rows: SpatialRows, relations: Sequence[str]) -> None:
    known = set(rows.relations)
    unknown = [r for r in relations if r not in known]
    if unknown:
        raise DataError(
            f"unknown relation(s) {unknown} in the relations filter; {rows.name} has: {sorted(known)}"
        )


def relation_type_task(
    rows: SpatialRows, min_count: int = 50, relations: Sequence[str] | None = None
) -> ProbeTask:
    """One-vs-rest "is this caption's relation r?" for every relation with >= ``min_count`` rows.

    Targets are ordered by descending row count, ties by name (the first study's order: 36 relations
    on VSR random train). ``relations`` restricts the targets; every row stays in every problem,
    since the negatives of a one-vs-rest probe are all other captions.
    """
    counts = Counter(rows.relations)
    if relations is not None:
        _check_relations(rows, relations)
        too_rare = {r: counts[r] for r in relations if counts[r] < min_count}
        if too_rare:
            raise DataError(f"relations {too_rare} have fewer than min_count={min_count} rows in {rows.name}")
        counts = Counter({r: counts[r] for r in relations})
    names = tuple(r for r, c in sorted(counts.items(), key=lambda rc: (-rc[1], rc[0])) if c >= min_count)
    if not names:
        raise DataError(f"no relation in {rows.name} has min_count={min_count} rows; lower --data.min_count")
    relation_col = np.asarray(rows.relations, dtype=object)
    targets = np.stack([relation_col == r for r in names], axis=1).astype(np.int8)
    return ProbeTask(
        name="relation_type",
        targets=targets,
        target_names=names,
        row_mask=np.ones(targets.shape, dtype=bool),
        groups=rows.unique_images()[1].astype(np.int64),
    )


def caption_truth_task(rows: SpatialRows, relations: Sequence[str] | None = None) -> ProbeTask:
    """One target, "caption_truth": is the caption true of its image (the row's label)?

    ``relations`` keeps only rows with those relations in the problem (via the row mask).
    """
    mask = np.ones(len(rows), dtype=bool)
    if relations is not None:
        _check_relations(rows, relations)
        mask = np.isin(np.asarray(rows.relations, dtype=object), list(relations))
    return ProbeTask(
        name="caption_truth",
        targets=np.asarray(rows.labels, dtype=np.int8).reshape(-1, 1),
        target_names=("caption_truth",),
        row_mask=mask.reshape(-1, 1),
        groups=rows.unique_images()[1].astype(np.int64),
    )


#: Task builders by the name a config uses; each takes (rows, min_count, relations).
TASKS: dict[str, Callable[[SpatialRows, int, Sequence[str] | None], ProbeTask]] = {
    "relation_type": lambda rows, min_count, relations: relation_type_task(rows, min_count, relations),
    # caption truth is a single balanced-ish target over all rows: min_count does not apply
    "caption_truth": lambda rows, min_count, relations: caption_truth_task(rows, relations),
}


def build_task(
    name: str, rows: SpatialRows, min_count: int = 50, relations: Sequence[str] | None = None
) -> ProbeTask:
    """The task registered under ``name`` built on ``rows``; unknown names are a DataError listing the known."""
    if name not in TASKS:
        raise DataError(f"unknown probe task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](rows, min_count, relations)
