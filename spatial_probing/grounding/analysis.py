"""Scores and statistics of the grounding study: structure tests on caption features, seed x item bootstraps.

Structure tests (per held-out scene, on the features of its four captions):

* ``structure``: the converse paraphrase ("The B is R' the A.") is nearer (cosine) to the caption
  ("The A is R the B.") than the contradiction ("The A is R' the B."). The two hold the same words,
  so a bag of words ties: exactly 0.5 (ties count one half).
* ``swap``: the converse paraphrase is nearer than the argument swap ("The B is R the A."), which
  shares every word *and* the relation word with the caption: a bag of words scores 0, and so does
  any encoder that only tracks which words occur.

Uncertainty: a two-level bootstrap resamples seeds (training runs) and then items (scenes or folds),
so intervals include run-to-run variation, not only the finite test set. Arms are compared paired:
the same resampled seeds (same seed = same initial text weights and data order) and the same items.
The two-sided p-value is twice the smaller bootstrap tail of the difference (at least 1/B), and Holm's
step-down correction runs over the targets of one comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spatial_probing.data.rows import SpatialRows
from spatial_probing.probes.stats import percentile_interval

KINDS = ("caption", "converse", "contradiction", "swap")
TESTS = {"structure": "contradiction", "swap": "swap"}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def triplet_scores(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per item and test, 1 / 0.5 (tie) / 0: is the converse nearer (cosine) the caption than the test's foil?

    ``features``: one ``[items, d]`` array per caption kind of ``KINDS``, rows aligned by scene. The one
    scoring rule of the study and of the training-time learning curves.
    """
    unit = {k: _unit(features[k]) for k in KINDS}
    near = (unit["caption"] * unit["converse"]).sum(1)
    out = {}
    for test, foil in TESTS.items():
        far = (unit["caption"] * unit[foil]).sum(1)
        out[test] = np.where(np.isclose(near, far, rtol=0, atol=1e-9), 0.5, (near > far).astype(float))
    return out


def structure_items(features: np.ndarray, rows: SpatialRows) -> pd.DataFrame:
    """One row per (scene, test): ``relation`` of the caption and ``score`` in {0, 0.5, 1}."""
    scene = np.asarray(rows.extra["scene"])
    kind = np.asarray(rows.extra["kind"])
    order = {k: np.argsort(scene[kind == k], kind="stable") for k in KINDS}
    scores = triplet_scores({k: np.asarray(features[kind == k])[order[k]] for k in KINDS})
    relation = np.asarray(rows.relations, dtype=object)[kind == "caption"][order["caption"]]
    return pd.concat([pd.DataFrame({"item": np.arange(len(score)), "relation": relation, "test": test,
                                    "score": score}) for test, score in scores.items()], ignore_index=True)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Two-level bootstrap of the mean of ``values`` [seeds, items]: seeds, then items, resampled."""
    n_seeds, n_items = values.shape
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    return np.stack([values[s][:, i].mean() for s, i in zip(seeds, items, strict=True)])


def interval(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """Estimate (mean over seeds and items) and the percentile bootstrap interval."""
    low, high = percentile_interval(bootstrap_means(values, n_boot, np.random.default_rng(seed)), level)
    return float(values.mean()), float(low), float(high)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int, level: float, seed: int
                      ) -> tuple[float, float, float, float]:
    """Mean of a - b (both [seeds, items], paired), its bootstrap interval and two-sided p-value."""
    boots = bootstrap_means(a - b, n_boot, np.random.default_rng(seed))
    tail = min((boots <= 0).mean(), (boots >= 0).mean())
    p = 1.0 if np.allclose(a, b) else min(1.0, max(2 * tail, 1 / n_boot))
    low, high = percentile_interval(boots, level)
    return float((a - b).mean()), float(low), float(high), p
