"""The analysis plug-in interface and the per-row score -> stats.csv rows step every analysis shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from spatial_probing.analysis.features import FeatureIndex, view_of
from spatial_probing.analysis.stats import stat_row
from spatial_probing.data.relations import meta_category


class Analysis(ABC):
    """One analysis chosen in the analysis config by ``class_path``/``init_args``; returns stats.csv rows."""

    #: The ``task`` column of its stats rows.
    name: str = "analysis"

    @abstractmethod
    def run(self, index: FeatureIndex) -> list[dict]:
        """stats.csv rows (`analysis.stats.STATS_COLUMNS`) computed from the entries in ``index``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def with_view(label: str, view: str) -> str:
    """The same encoder's label for another view (``@image`` -> ``@text``)."""
    head, _, tail = label.rpartition("@")
    return f"{head}@{view}{tail[len(view_of(label)):]}"


def grouped_rows(identity: dict, task: str, metric: str, scores: np.ndarray, relations: Sequence[str],
                 by_meta: bool = True) -> list[dict]:
    """Rows for ``all`` items, each relation and (``by_meta``) each VSR meta-category ``meta:<category>``."""
    scores = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relations, dtype=object)
    out = [stat_row(identity, task, "all", metric, scores)]
    for r in sorted(set(relations)):
        out.append(stat_row(identity, task, r, metric, scores[rel == r]))
    if by_meta:
        meta = np.asarray([meta_category(r) for r in relations], dtype=object)
        for m in sorted(set(meta)):
            out.append(stat_row(identity, task, f"meta:{m}", metric, scores[meta == m]))
    return out
