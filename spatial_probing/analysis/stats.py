"""stats.csv rows (SCHEMA.md) and the seeded percentile bootstrap the analyses use for their CIs.

The credibility issue's shared statistics module had not landed on main when this package was written,
so the analyses carry this one small bootstrap (per-item scores resampled with replacement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spatial_probing.io import atomic_path
from spatial_probing.probes.stats import percentile_interval

STATS_COLUMNS = ("dataset", "entry", "encoder", "view", "layer", "task", "target", "metric", "estimate",
                 "ci_low", "ci_high", "level", "method")
N_BOOT = 1000
LEVEL = 0.95
BOOT_METHOD = f"bootstrap-percentile-{N_BOOT}"


def bootstrap_mean(scores: np.ndarray, seed: int = 0, n_boot: int = N_BOOT, level: float = LEVEL
                   ) -> tuple[float, float, float]:
    """Mean of per-item ``scores`` and its percentile-bootstrap CI (items resampled with replacement)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 100):  # blocks of resamples keep memory at 100 x n
        stop = min(n_boot, start + 100)
        means[start:stop] = scores[rng.integers(0, scores.size, size=(stop - start, scores.size))].mean(axis=1)
    low, high = percentile_interval(means, level)
    return float(scores.mean()), float(low), float(high)


def stat_row(identity: dict, task: str, target: str, metric: str, scores: np.ndarray | float,
             method: str | None = None, seed: int = 0) -> dict:
    """One stats.csv row: per-item ``scores`` get a bootstrap CI; a single number gets none (NaN)."""
    if np.ndim(scores) == 0:
        estimate, low, high, level = float(scores), float("nan"), float("nan"), float("nan")
        method = method or "point"
    else:
        (estimate, low, high), level = bootstrap_mean(np.asarray(scores), seed), LEVEL
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
