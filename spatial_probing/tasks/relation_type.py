"""The first study's task: one-vs-rest "is this caption's relation r?" for every frequent relation."""

from __future__ import annotations

from collections import Counter

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError
from spatial_probing.tasks.base import ProbeTask, Task, check_relations, image_groups


class RelationType(Task):
    """One-vs-rest relation classification (a lexical task: the relation words are in the caption).

    Args:
        min_count: relations with fewer rows are not probed (the first study: 50, giving 36 relations
            on VSR random train).
        relations: probe only these relations (None: every relation with ``min_count`` rows). Every
            row stays in every problem, since the negatives of a one-vs-rest probe are all other captions.
    """

    name = "relation_type"

    def __init__(self, min_count: int = 50, relations: list[str] | None = None) -> None:
        if min_count < 1:
            raise DataError(f"data.task.min_count must be >= 1, got {min_count}")
        self.min_count = min_count
        self.relations = relations

    def build(self, rows: SpatialRows) -> ProbeTask:
        """Targets ordered by descending row count, ties by name (the first study's order)."""
        counts = Counter(rows.relations)
        if self.relations is not None:
            check_relations(rows, self.relations, "data.task.relations")
            too_rare = {r: counts[r] for r in self.relations if counts[r] < self.min_count}
            if too_rare:
                raise DataError(f"relations {too_rare} have fewer than min_count={self.min_count} rows in {rows.name}")
            counts = Counter({r: counts[r] for r in self.relations})
        names = tuple(r for r, c in sorted(counts.items(), key=lambda rc: (-rc[1], rc[0])) if c >= self.min_count)
        if not names:
            raise DataError(
                f"no relation in {rows.name} has min_count={self.min_count} rows; lower data.task.min_count"
            )
        relation_col = np.asarray(rows.relations, dtype=object)
        targets = np.stack([relation_col == r for r in names], axis=1).astype(np.int8)
        return ProbeTask(
            name=self.name,
            targets=targets,
            target_names=names,
            row_mask=np.ones(targets.shape, dtype=bool),
            groups=image_groups(rows),
            captions=rows.captions,
        )
