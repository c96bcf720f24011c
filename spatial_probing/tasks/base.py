"""The task plug-in interface: ``Task.build(rows) -> ProbeTask``.

A task is chosen in the probe config by ``class_path``/``init_args`` and carries its own options, so a
new task is one new module and no DataModule signature changes::

    data:
      task:
        class_path: spatial_probing.tasks.relation_type.RelationType
        init_args: {min_count: 50}

What a task builds is plain data — a ``[n, T]`` 0/1 target matrix, a ``[n, T]`` mask saying which rows
take part in each target, one group id per row (the image, so grouped folds keep all captions of an
image together) and optionally one lexical type per row (what a control task may key its labels on) —
so the probe engine never needs to know what the targets mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError


@dataclass(frozen=True)
class ProbeTask:
    """Binary targets for one dataset split.

    ``targets`` [n, T] int8 in {0, 1}; ``row_mask`` [n, T] bool (False: the row is not part of that
    target's problem); ``groups`` [n] int64 (image id of each row); ``target_names`` one per column;
    ``captions`` [n] the caption of each row (lexical baselines read them).
    """

    name: str
    targets: np.ndarray
    target_names: tuple[str, ...]
    row_mask: np.ndarray
    groups: np.ndarray
    captions: tuple[str, ...]

    def __post_init__(self) -> None:
        n, t = self.targets.shape
        if (self.row_mask.shape != (n, t) or self.groups.shape != (n,) or len(self.target_names) != t
                or len(self.captions) != n):
            raise ValueError(
                f"task {self.name!r}: targets {self.targets.shape}, row_mask {self.row_mask.shape}, "
                f"groups {self.groups.shape}, {len(self.captions)} captions and {len(self.target_names)} "
                "target names disagree"
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
            captions=tuple(self.captions[i] for i in np.asarray(indices)),
        )


class Task(ABC):
    """A probe task plug-in; subclasses take their options as ``__init__`` arguments (``init_args``)."""

    #: The task's name in results tables (the ``task`` column) and metric names.
    name: str = "task"

    @abstractmethod
    def build(self, rows: SpatialRows) -> ProbeTask:
        """Targets, row masks and groups for ``rows``; a DataError names what in the rows or options is wrong."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


def image_groups(rows: SpatialRows) -> np.ndarray:
    """One group id per row: the row's image, numbered in first-seen order."""
    return rows.unique_images()[1].astype(np.int64)


def check_relations(rows: SpatialRows, relations: Sequence[str], option: str) -> None:
    """Refuse relation names that ``rows`` does not have, naming the ``option`` that listed them."""
    known = set(rows.relations)
    unknown = [r for r in relations if r not in known]
    if unknown:
        raise DataError(f"unknown relation(s) {unknown} in {option}; {rows.name} has: {sorted(known)}")
