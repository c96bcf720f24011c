"""Binary probe metrics per (fold, C, target), vectorised over problems, and C selection by nested CV.

"macro-F1" is the original study's number: the mean of the F1 of class 0 and of class 1 of each
one-vs-rest probe (``f1_score(average="macro")`` on a test fold holding both classes). Positive-
class F1, accuracy and balanced accuracy sit beside it. All come from one confusion count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spatial_probing.probes.folds import inner_folds
from spatial_probing.probes.solver import ArrayLike, LogRegFit, fit_logreg, predict

METRICS = ("f1_macro", "f1_pos", "accuracy", "balanced_accuracy")


def confusion(pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike) -> dict[str, torch.Tensor]:
    """True/false positive/negative counts over each problem's test rows.

    ``pred [F, C, n, T]`` bool, ``Y [n, T]`` in {0, 1}, ``test_mask [F, n, T]``: counts ``[F, C, T]``.
    """
    y = torch.as_tensor(np.asarray(Y) if not isinstance(Y, torch.Tensor) else Y, device=pred.device) > 0
    test = torch.as_tensor(np.asarray(test_mask) if not isinstance(test_mask, torch.Tensor) else test_mask)
    test = test.to(pred.device, torch.bool)[:, None]  # [F, 1, n, T]
    pos, neg = test & y, test & ~y
    return {
        "tp": (pred & pos).sum(-2),
        "fn": (~pred & pos).sum(-2),
        "fp": (pred & neg).sum(-2),
        "tn": (~pred & neg).sum(-2),
    }


def binary_metrics(pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike) -> dict[str, torch.Tensor]:
    """`METRICS` per problem, ``[F, C, T]`` float64, from predictions on the test rows (see `confusion`).

    An F1 or recall with an empty denominator is 0, as scikit-learn's ``zero_division`` default.
    """
    k = {name: v.double() for name, v in confusion(pred, Y, test_mask).items()}
    tp, fn, fp, tn = k["tp"], k["fn"], k["fp"], k["tn"]
    f1_pos = _ratio(2 * tp, 2 * tp + fp + fn)
    f1_neg = _ratio(2 * tn, 2 * tn + fn + fp)
    return {
        "f1_macro": (f1_pos + f1_neg) / 2,
        "f1_pos": f1_pos,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2,
    }


def fit_metrics(X: ArrayLike, Y: ArrayLike, test_mask: ArrayLike, fit: LogRegFit) -> dict[str, torch.Tensor]:
    """`binary_metrics` of a fit on its test rows, one fold at a time (bounded memory)."""
    test = torch.as_tensor(np.asarray(test_mask) if not isinstance(test_mask, torch.Tensor) else test_mask)
    per_fold = [binary_metrics(predict(X, _fold(fit, f)), Y, test[f : f + 1]) for f in range(fit.W.shape[0])]
    return {name: torch.cat([m[name] for m in per_fold]) for name in METRICS}


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
    n_outer = train.shape[0]
    inner_train, inner_test = inner_folds(np.asarray(Y), train, inner_splits, seed)
    K = inner_splits
    # Problem masks: K inner training sets per outer fold, then the outer training sets; each
    # inner fit starts from its outer fold's (it holds (K-1)/K of those rows).
    masks = np.concatenate([inner_train.reshape(n_outer * K, *train.shape[1:]), train])
    parents = [n_outer * K + f for f in range(n_outer) for _ in range(K)] + [-1] * n_outer
    fit = fit_logreg(X, Y, masks, Cs, parents=parents, **fit_kwargs)
    inner_fit, refit = _folds(fit, slice(0, n_outer * K)), _folds(fit, slice(n_outer * K, None))
    inner = fit_metrics(X, Y, inner_test.reshape(n_outer * K, *train.shape[1:]), inner_fit)["f1_macro"]
    inner = inner.reshape(n_outer, K, *inner.shape[1:]).mean(1)  # [F, C, T]
    return CSelection(
        Cs=fit.Cs,
        best_index=inner.argmax(1),
        inner_f1_macro=inner,
        outer=fit_metrics(X, Y, test_mask, refit),
        refit=refit,
    )


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _fold(fit: LogRegFit, f: int) -> LogRegFit:
    return _folds(fit, slice(f, f + 1))


def _folds(fit: LogRegFit, sl: slice) -> LogRegFit:
    return LogRegFit(
        W=fit.W[sl],
        b=fit.b[sl],
        Cs=fit.Cs,
        n_iter=fit.n_iter[sl],
        converged=fit.converged[sl],
        grad_max=fit.grad_max[sl],
        solver=fit.solver,
    )
