"""stats.csv rows (SCHEMA.md): the analyses' per-item scores with their percentile bootstrap CIs.

The CI is `spatial_probing.resampling.interval` over the items (one level, resampled with replacement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spatial_probing.io import atomic_path
from spatial_probing.resampling import interval

STATS_COLUMNS = ("dataset", "entry", "encoder", "view", "layer", "task", "target", "metric", "estimate",
                 "ci_low", "ci_high", "level", "method")
N_BOOT = 1000
LEVEL = 0.95
BOOT_METHOD = f"bootstrap-percentile-{N_BOOT}"


def stat_row(identity: dict, task: str, target: str, metric: str, scores: np.ndarray | float,
             method: str | None = None, seed: int = 0) -> dict:
    """One stats.csv row: per-item ``scores`` get a bootstrap CI; a single number gets none (NaN)."""
    if np.ndim(scores) == 0:
        estimate, low, high, level = float(scores), float("nan"), float("nan"), float("nan")
        method = method or "point"
    else:
        (estimate, low, high), level = interval(np.ravel(scores), N_BOOT, LEVEL, seed), LEVEL
        method = method or BOOT_METHOD
    return {**{k: identity.get(k, "") for k in ("dataset", "entry", "encoder", "view", "layer")},
            "task": task, "target": target, "metric": metric, "estimate": estimate, "ci_low": low,
            "ci_high": high, "level": level, "method": method}


def write_stats(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` as stats.csv (atomically), columns in SCHEMA.md's order."""
    frame = pd.DataFrame(rows, columns=list(STATS_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)
