"""Binary probe metrics per (fold, C, target), vectorised over problems.

"macro-F1" is the original study's number: the mean of the F1 of class 0 and of class 1 of each
one-vs-rest probe (``f1_score(average="macro")`` on a test fold holding both classes). Positive-
class F1, accuracy and balanced accuracy sit beside it. All come from one confusion count, which
torchmetrics' ``binary_stat_scores`` computes samplewise: one "sample" per (fold, C, target) problem,
its test rows padded to a common length with ``ignore_index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_stat_scores

from spatial_probing.probes.solver import LogRegFit
from spatial_probing.probes.solver.basis import ArrayLike
from spatial_probing.probes.solver.predict import predict, sparse_rows

METRICS = ("f1_macro", "f1_pos", "accuracy", "balanced_accuracy")


_IGNORE = -1  # target value of the padding after a problem's test rows


def confusion(
    pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike, row_of: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """True/false positive/negative counts over each problem's test rows.

    ``pred [F, C, n, T]`` bool, ``Y [n, T]`` in {0, 1}, ``test_mask [F, n, T]``: counts ``[F, C, T]``.
    With ``row_of [n]``, ``pred [F, C, u, T]`` holds distinct rows and row i's prediction is its row ``row_of[i]``.
    """
    rows, target = _test_rows(_tensor(Y).to(pred.device), _tensor(test_mask).to(pred.device, torch.bool))
    if row_of is not None:
        rows = row_of.to(pred.device)[rows]
    n_folds, n_c, _, n_targets = pred.shape
    m = rows.shape[-1]
    # one torchmetrics sample per (fold, C, target): its test rows only (a fold holds ~1/k of the rows),
    # padded with ignored entries; bool / int8 inputs, as the counts need no wider type
    picked = pred.transpose(2, 3).gather(3, rows[:, None].expand(n_folds, n_c, n_targets, m))
    samples = (picked.reshape(-1, m), target[:, None].expand(n_folds, n_c, n_targets, m).reshape(-1, m))
    n_samples = samples[0].shape[0]
    if n_samples == 1:  # torchmetrics squeezes a lone sample's dimension away: give it a twin, keep one
        samples = tuple(s.repeat(2, 1) for s in samples)
    scores = binary_stat_scores(
        *samples, multidim_average="samplewise", ignore_index=_IGNORE, validate_args=False
    )[:n_samples].reshape(n_folds, n_c, n_targets, 5)
    return {name: scores[..., i] for i, name in enumerate(("tp", "fp", "tn", "fn"))}


def _test_rows(y: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (fold, target)'s test rows, in row order and padded to the longest: row indices ``[F, T, m]``
    and their labels as int8, ``_IGNORE`` in the padding (``y [n, T]``, ``test [F, n, T]``)."""
    by_problem = test.transpose(1, 2)  # [F, T, n]
    m = max(int(by_problem.sum(-1).max()), 1)
    slot = by_problem.cumsum(-1) - 1  # position of each test row among its problem's test rows
    f, t, i = torch.nonzero(by_problem, as_tuple=True)
    rows = torch.zeros(*by_problem.shape[:2], m, dtype=torch.int64, device=test.device)
    target = torch.full(rows.shape, _IGNORE, dtype=torch.int8, device=test.device)
    rows[f, t, slot[f, t, i]] = i
    target[f, t, slot[f, t, i]] = y[i, t].to(torch.int8)
    return rows, target


def binary_metrics(
    pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike, row_of: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """`METRICS` per problem, ``[F, C, T]`` float64, from predictions on the test rows (see `confusion`).

    An F1 or recall with an empty denominator is 0, as scikit-learn's ``zero_division`` default.
    """
    return count_metrics(**confusion(pred, Y, test_mask, row_of))


def count_metrics(tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """`METRICS` from confusion counts of any shape (bootstrap resamples reuse this with weighted counts)."""
    tp, fp, tn, fn = (k.double() for k in (tp, fp, tn, fn))
    f1_pos = _ratio(2 * tp, 2 * tp + fp + fn)
    f1_neg = _ratio(2 * tn, 2 * tn + fn + fp)
    return {
        "f1_macro": (f1_pos + f1_neg) / 2,
        "f1_pos": f1_pos,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2,
    }


@dataclass
class DistinctRows:
    """The distinct rows of a feature matrix, as `predict` multiplies them fastest (`sparse_rows`), and
    each row's index among them: what `fit_metrics` predicts on, built once for several calls."""

    X: ArrayLike  # [u, d]
    row_of: torch.Tensor  # [n] int64

    @classmethod
    def of(cls, X: ArrayLike) -> DistinctRows:
        distinct, row_of = torch.unique(_tensor(X), dim=0, return_inverse=True)
        return cls(sparse_rows(distinct), row_of)


def fit_metrics(
    X: ArrayLike | DistinctRows, Y: ArrayLike, test_mask: ArrayLike, fit: LogRegFit
) -> dict[str, torch.Tensor]:
    """`binary_metrics` of a fit on its test rows, one fold at a time (bounded memory).

    Each distinct feature row is predicted once (a prediction is exact, so a function of the row's
    features): VSR holds every caption twice, with a true and a false image, so text features repeat.
    ``X`` may come as its `DistinctRows`, taken once for several fits of the same features.
    """
    test = _tensor(test_mask)
    rows = X if isinstance(X, DistinctRows) else DistinctRows.of(X)
    per_fold = [
        binary_metrics(predict(rows.X, fold(fit, f)), Y, test[f : f + 1], rows.row_of) for f in range(fit.W.shape[0])
    ]
    return {name: torch.cat([m[name] for m in per_fold]) for name in METRICS}


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _tensor(a: ArrayLike) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def fold(fit: LogRegFit, f: int) -> LogRegFit:
    """The problems of fold ``f`` of ``fit`` (W ``[1, C, T, d]``)."""
    return folds(fit, slice(f, f + 1))


def folds(fit: LogRegFit, sl: slice) -> LogRegFit:
    """The problems of the folds ``sl`` of ``fit``."""
    return LogRegFit(
        W=fit.W[sl],
        b=fit.b[sl],
        Cs=fit.Cs,
        n_iter=fit.n_iter[sl],
        converged=fit.converged[sl],
        grad_max=fit.grad_max[sl],
        solver=fit.solver,
        stopped_at_cap=fit.stopped_at_cap[sl],
    )
