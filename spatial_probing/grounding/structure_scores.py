"""The structure and argument-swap tests on caption features: the one scoring rule of the grounding study
and of the training-time learning curves.

Structure tests (per held-out scene, on the features of its four captions):

* ``structure``: the converse paraphrase ("The B is R' the A.") is nearer (cosine) to the caption
  ("The A is R the B.") than the contradiction ("The A is R' the B."). The two hold the same words,
  so a bag of words ties: exactly 0.5 (ties count one half).
* ``swap``: the converse paraphrase is nearer than the argument swap ("The B is R the A."), which
  shares every word *and* the relation word with the caption: a bag of words scores 0, and so does
  any encoder that only tracks which words occur.

"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spatial_probing.data.rows import SpatialRows

KINDS = ("caption", "converse", "contradiction", "swap")
TESTS = {"structure": "contradiction", "swap": "swap"}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` as float64 with every row scaled to unit length (cosine = dot product)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def triplet_scores(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per item and test, 1 / 0.5 (tie) / 0: is the converse nearer (cosine) the caption than the test's foil?

    ``features``: one ``[items, d]`` array per caption kind of ``KINDS``, rows aligned by scene. The one
    scoring rule of the study and of the training-time learning curves.
    """
    unit = {k: unit_rows(features[k]) for k in KINDS}
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
