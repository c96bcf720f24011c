"""Baselines probed beside every encoder, on the same rows and folds with the same probe.

* ``majority`` — every test row gets its training fold's majority class (an intercept-only probe:
  the decision value is the smoothed log-odds of the training rows' labels).
* ``ngrams`` — a bag of word 1-3-grams of the caption (binary counts, n-grams in at least two
  captions: one seen in a single caption cannot carry to a held-out row).
* ``ngrams-masked`` — the same with the relation phrase removed from each caption, so what is left
  is the objects and the sentence frame.

Each baseline is a feature entry built in memory from an encoder entry's rows (every row valid), so
`ProbeDataModule` gives it the task's folds exactly as it gives them to the encoders, and results
rows carry ``encoder = baseline:<name>``. The random-init encoder is not here: it is an ordinary cache
entry (``--model.random_init true`` at extraction) whose encoder name ends with ``+random-init``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer

from spatial_probing.data.rows import SpatialRows
from spatial_probing.features.entry import FeatureEntry, FeatureSet
from spatial_probing.probes.solver import LogRegFit
from spatial_probing.probes.solver.basis import ArrayLike

Baseline = Literal["majority", "ngrams", "ngrams-masked"]
BASELINES: tuple[str, ...] = ("majority", "ngrams", "ngrams-masked")
PREFIX = "baseline:"


def ngram_features(captions: list[str] | tuple[str, ...], min_df: int = 2) -> np.ndarray:
    """``[n, V]`` float32 binary bag of lower-cased word 1-3-grams occurring in at least ``min_df`` captions."""
    vectorizer = CountVectorizer(ngram_range=(1, 3), binary=True, min_df=min_df, dtype=np.float32)
    return vectorizer.fit_transform(captions).toarray()


def mask_relation(caption: str, relation: str) -> str:
    """The caption with its relation phrase (first whole-word occurrence) removed."""
    return f" {caption} ".replace(f" {relation} ", " ", 1).strip()


def baseline_features(name: str, rows: SpatialRows) -> np.ndarray:
    """The feature matrix of baseline ``name`` over ``rows``."""
    if name == "majority":
        return np.zeros((len(rows), 1), dtype=np.float32)  # no information: only the intercept is learnt
    if name == "ngrams":
        return ngram_features(rows.captions)
    if name == "ngrams-masked":
        return ngram_features([mask_relation(c, r) for c, r in zip(rows.captions, rows.relations, strict=True)])
    raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")


def baseline_set(name: str, like: FeatureEntry) -> FeatureSet:
    """Baseline ``name`` as an in-memory feature set over the rows of ``like`` (same dataset)."""
    meta = {
        "dataset": like.meta.get("dataset", like.rows.name),
        "encoder": PREFIX + name,
        "key": {"dtype": "float32", "precision": ""},
        "view_parts": [["text", ["text"]]],
    }
    entry = FeatureEntry(
        path=Path(f"baseline-{name}"),
        parts={"text": baseline_features(name, like.rows)},
        valid=np.ones(len(like.rows), dtype=bool),
        rows=like.rows,
        meta=meta,
    )
    return entry.view("text")


def is_majority(encoder: str) -> bool:
    return encoder == PREFIX + "majority"


def majority_fit(Y: ArrayLike, train_mask: ArrayLike, Cs: tuple[float, ...]) -> LogRegFit:
    """The intercept-only probe of every (fold, C, target): decision = log((pos + 1/2) / (neg + 1/2)).

    Its sign is the training fold's majority class (a tie predicts the negative class); C plays no part.
    """
    y = torch.as_tensor(np.asarray(Y)).double()
    train = torch.as_tensor(np.asarray(train_mask)).double()  # [F, n, T]
    pos = (train * y).sum(1)
    neg = train.sum(1) - pos
    b = torch.log((pos + 0.5) / (neg + 0.5))[:, None].expand(-1, len(Cs), -1).contiguous()  # [F, C, T]
    F, _, T = b.shape
    return LogRegFit(
        W=torch.zeros(F, len(Cs), T, 1, dtype=torch.float64),
        b=b,
        Cs=tuple(Cs),
        n_iter=torch.zeros(b.shape, dtype=torch.int64),
        converged=torch.ones(b.shape, dtype=torch.bool),
        grad_max=torch.zeros(b.shape, dtype=torch.float64),
        solver="majority",
    )
