"""The scikit-learn reference: one ``LogisticRegression(lbfgs)`` per (fold, C, target) problem.

It reproduces the original study exactly (scikit-learn's defaults ``tol=1e-4, max_iter=100`` stop
lbfgs early; that early-stopped answer is the study's 0.7097 mean macro-F1) and, with
``tol=1e-10``, is the converged yardstick for the batched solver. Its output has the batched
solver's `LogRegFit` layout so both feed the same downstream code.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from spatial_probing.probes.solver import ArrayLike, LogRegFit, scaled_gradient_max


def fit_sklearn(
    X: ArrayLike,
    Y: ArrayLike,
    train_mask: ArrayLike,
    Cs: Sequence[float],
    sample_weight: ArrayLike | None = None,
    class_weight: str | None = None,
    tol: float = 1e-4,
    max_iter: int = 100,
    progress: bool = False,
) -> LogRegFit:
    """Fit ``LogisticRegression(C, l2, lbfgs, tol, max_iter, class_weight)`` on each problem's rows.

    Same arguments as `fit_logreg`. X is passed to scikit-learn in its own dtype (float32
    features stay float32, as in the original study). ``converged`` is False where lbfgs hit
    ``max_iter``; ``grad_max`` is the scaled gradient at the answer, measured in float64.
    """
    Xn = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    Yn = np.asarray(Y)
    mask = np.asarray(train_mask, dtype=bool)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    n_folds, n, n_targets = mask.shape
    Cs = tuple(float(c) for c in Cs)
    W = np.zeros((n_folds, len(Cs), n_targets, Xn.shape[1]))
    b = np.zeros((n_folds, len(Cs), n_targets))
    n_iter = np.zeros((n_folds, len(Cs), n_targets), dtype=np.int64)
    problems = [(f, c, t) for f in range(n_folds) for c in range(len(Cs)) for t in range(n_targets)]
    if progress:
        from tqdm.auto import tqdm

        problems = tqdm(problems, desc="scikit-learn probes")
    with warnings.catch_warnings():
        # Non-convergence is the point of the default-tolerance protocol; it is reported per
        # problem in `converged` instead of once per problem on stderr.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for f, c, t in problems:
            rows = mask[f, :, t]
            weights = None if sw is None else (sw[rows] if sw.ndim == 1 else sw[rows, t])
            model = LogisticRegression(C=Cs[c], tol=tol, max_iter=max_iter, class_weight=class_weight)
            model.fit(Xn[rows], Yn[rows, t], sample_weight=weights)
            W[f, c, t], b[f, c, t], n_iter[f, c, t] = model.coef_[0], model.intercept_[0], model.n_iter_[0]
    fit = LogRegFit(
        W=torch.from_numpy(W),
        b=torch.from_numpy(b),
        Cs=Cs,
        n_iter=torch.from_numpy(n_iter),
        converged=torch.from_numpy(n_iter < max_iter),
        grad_max=torch.zeros(b.shape, dtype=torch.float64),
        solver="sklearn",
    )
    fit.grad_max = scaled_gradient_max(Xn, Yn, mask, fit, sample_weight, class_weight)
    return fit
