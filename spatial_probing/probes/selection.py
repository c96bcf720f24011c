"""Model selection for the probe: C chosen per (outer fold, target) by nested cross-validation.

Choosing C is part of fitting a probe, not a metric: the inner folds, fits and scores are one
batched solve beside the probe (`LinearProbe` with ``select_C``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spatial_probing.probes.folds import inner_folds
from spatial_probing.probes.metrics import DistinctRows, fit_metrics, folds
from spatial_probing.probes.solver import LogRegFit, fit_logreg
from spatial_probing.probes.solver.basis import ArrayLike


@dataclass
class CSelection:
    """Nested cross-validation result: the C chosen per (outer fold, target) and its outer scores."""

    Cs: tuple[float, ...]
    best_index: torch.Tensor  # [F, T] index into Cs of the chosen C
    inner_f1_macro: torch.Tensor  # [F, len(Cs), T] mean inner-fold macro-F1 (the selection score)
    outer: dict[str, torch.Tensor]  # metric -> [F, len(Cs), T] on the outer test rows, every C
    refit: LogRegFit  # the outer-training-rows fits, every C: W [F, len(Cs), T, d]

    @property
    def best_C(self) -> torch.Tensor:
        """``[F, T]`` chosen C values."""
        return torch.tensor(self.Cs, dtype=torch.float64, device=self.best_index.device)[self.best_index]

    def selected(self, metric: str = "f1_macro") -> torch.Tensor:
        """``[F, T]`` outer-fold score of the chosen C."""
        return self.outer[metric].gather(1, self.best_index[:, None]).squeeze(1)


def nested_masks(
    Y: ArrayLike, train: np.ndarray, inner_splits: int = 5, seed: int = 42
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Every problem of a nested selection: training masks ``[F * K + F, n, T]`` (K inner training sets per
    outer fold, then the outer training sets), each fold's parent (`fit_logreg`'s ``parents``: an inner fit
    starts from its outer fold's, which holds (K-1)/K of its rows) and the inner test masks ``[F * K, n, T]``."""
    n_outer, K = train.shape[0], inner_splits
    inner_train, inner_test = inner_folds(np.asarray(Y), train, inner_splits, seed)
    masks = np.concatenate([inner_train.reshape(n_outer * K, *train.shape[1:]), train])
    parents = [n_outer * K + f for f in range(n_outer) for _ in range(K)] + [-1] * n_outer
    return masks, parents, inner_test.reshape(n_outer * K, *train.shape[1:])


def select_C(
    X: ArrayLike,
    Y: ArrayLike,
    train_mask: ArrayLike,
    test_mask: ArrayLike,
    Cs: Sequence[float],
    inner_splits: int = 5,
    seed: int = 42,
    **fit_kwargs,
) -> CSelection:
    """Choose C per (outer fold, target) by inner stratified CV on the outer training rows.

    For every outer fold, its training rows are split into ``inner_splits`` stratified folds; each
    C is scored by the mean inner macro-F1 and the best (first on ties, in ``Cs`` order) is chosen.
    All inner fits and the refits on the outer training rows (every C) are problems of one
    `fit_logreg` call (``fit_kwargs`` go to it), the inner ones warm-started from the refits.
    """
    train = np.asarray(train_mask, dtype=bool)
    n_outer, K = train.shape[0], inner_splits
    masks, parents, inner_test = nested_masks(Y, train, inner_splits, seed)
    fit = fit_logreg(X, Y, masks, Cs, parents=parents, **fit_kwargs)
    inner_fit, refit = folds(fit, slice(0, n_outer * K)), folds(fit, slice(n_outer * K, None))
    rows = DistinctRows.of(X)  # predicted on by the inner and the outer scores
    inner = fit_metrics(rows, Y, inner_test, inner_fit)["f1_macro"]
    inner = inner.reshape(n_outer, K, *inner.shape[1:]).mean(1)  # [F, C, T]
    return CSelection(
        Cs=fit.Cs,
        best_index=inner.argmax(1),
        inner_f1_macro=inner,
        outer=fit_metrics(rows, Y, test_mask, refit),
        refit=refit,
    )
