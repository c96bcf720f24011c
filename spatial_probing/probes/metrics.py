"""Binary probe metrics per (fold, C, target), vectorised over problems.

"macro-F1" is the original study's number: the mean of the F1 of class 0 and of class 1 of each
one-vs-rest probe (``f1_score(average="macro")`` on a test fold holding both classes). Positive-
class F1, accuracy and balanced accuracy sit beside it. All come from one confusion count, which
torchmetrics' ``binary_stat_scores`` computes samplewise: one "sample" per (fold, C, target) problem,
rows outside the problem's test fold marked with ``ignore_index``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_stat_scores

from spatial_probing.probes.solver import LogRegFit
from spatial_probing.probes.solver.basis import ArrayLike
from spatial_probing.probes.solver.predict import predict

METRICS = ("f1_macro", "f1_pos", "accuracy", "balanced_accuracy")


_IGNORE = -1  # target value of rows outside a problem's test fold


def confusion(pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike) -> dict[str, torch.Tensor]:
    """True/false positive/negative counts over each problem's test rows.

    ``pred [F, C, n, T]`` bool, ``Y [n, T]`` in {0, 1}, ``test_mask [F, n, T]``: counts ``[F, C, T]``.
    """
    y = _tensor(Y).to(pred.device).long()
    test = _tensor(test_mask).to(pred.device, torch.bool)
    n_folds, n_c, n, n_targets = pred.shape
    # one torchmetrics sample per (fold, C, target): its rows, with non-test rows ignored
    target = torch.where(test, y, _IGNORE)[:, None].expand(n_folds, n_c, n, n_targets)
    samples = (pred.transpose(2, 3).reshape(-1, n).long(), target.transpose(2, 3).reshape(-1, n))
    n_samples = samples[0].shape[0]
    if n_samples == 1:  # torchmetrics squeezes a lone sample's dimension away: give it a twin, keep one
        samples = tuple(s.repeat(2, 1) for s in samples)
    scores = binary_stat_scores(
        *samples, multidim_average="samplewise", ignore_index=_IGNORE, validate_args=False
    )[:n_samples].reshape(n_folds, n_c, n_targets, 5)
    return {name: scores[..., i] for i, name in enumerate(("tp", "fp", "tn", "fn"))}


def binary_metrics(pred: torch.Tensor, Y: ArrayLike, test_mask: ArrayLike) -> dict[str, torch.Tensor]:
    """`METRICS` per problem, ``[F, C, T]`` float64, from predictions on the test rows (see `confusion`).

    An F1 or recall with an empty denominator is 0, as scikit-learn's ``zero_division`` default.
    """
    return count_metrics(**confusion(pred, Y, test_mask))


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


def fit_metrics(X: ArrayLike, Y: ArrayLike, test_mask: ArrayLike, fit: LogRegFit) -> dict[str, torch.Tensor]:
    """`binary_metrics` of a fit on its test rows, one fold at a time (bounded memory)."""
    test = _tensor(test_mask)
    per_fold = [binary_metrics(predict(X, fold(fit, f)), Y, test[f : f + 1]) for f in range(fit.W.shape[0])]
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
