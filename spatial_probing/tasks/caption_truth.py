"""VSR's own label as a probe target: is the caption true of its image?"""

from __future__ import annotations

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.tasks.base import ProbeTask, Task, check_relations, image_groups


class CaptionTruth(Task):
    """One target, ``caption_truth``: the row's True/False label.

    Args:
        relations: keep only rows with these relations in the problem (via the row mask); None: all.
    """

    name = "caption_truth"

    def __init__(self, relations: list[str] | None = None) -> None:
        self.relations = relations

    def build(self, rows: SpatialRows) -> ProbeTask:
        mask = np.ones(len(rows), dtype=bool)
        if self.relations is not None:
            check_relations(rows, self.relations, "data.task.relations")
            mask = np.isin(np.asarray(rows.relations, dtype=object), list(self.relations))
        return ProbeTask(
            name=self.name,
            targets=np.asarray(rows.labels, dtype=np.int8).reshape(-1, 1),
            target_names=(self.name,),
            row_mask=mask.reshape(-1, 1),
            groups=image_groups(rows),
            captions=rows.captions,
        )
