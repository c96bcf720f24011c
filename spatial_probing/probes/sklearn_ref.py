"""The scikit-learn reference: one ``LogisticRegression`` per (fold, C, target) problem.

It reproduces the original study exactly (``LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000,
random_state=42)`` at scikit-learn's default ``tol=1e-4``, which stops lbfgs early; that answer is
the study's 0.7097 mean macro-F1) and, with ``tol=1e-10``, is the converged yardstick for the
batched solver. With ``n_jobs``, ``warm_start`` and ``solver="newton-cholesky"`` it is also the
strongest scikit-learn set-up the speed benchmark times. Its output has the batched solver's
`LogRegFit` layout so both feed the same downstream code.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Literal

import numpy as np
import sklearn
import torch
from joblib import Parallel, delayed
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from spatial_probing.probes.solver import LogRegFit, scaled_gradient_max
from spatial_probing.probes.solver.basis import ArrayLike


def fit_sklearn(
    X: ArrayLike,
    Y: ArrayLike,
    train_mask: ArrayLike,
    Cs: Sequence[float],
    sample_weight: ArrayLike | None = None,
    class_weight: str | None = None,
    tol: float = 1e-4,
    max_iter: int = 100,
    random_state: int | None = 42,
    solver: Literal["lbfgs", "newton-cholesky"] = "lbfgs",
    n_jobs: int = 1,
    warm_start: bool = False,
    progress: bool = False,
) -> LogRegFit:
    """Fit ``LogisticRegression(C, solver, tol, max_iter, class_weight, random_state)`` per problem.

    Same arguments as `fit_logreg` (``tol`` and ``max_iter`` default to scikit-learn's;
    ``random_state`` is the original study's, which lbfgs does not use: it is pinned so the
    reference is the study's estimator verbatim). X is passed to scikit-learn in its own dtype
    (float32 features stay float32, as in the original study); a scipy sparse X stays sparse (the n-gram
    baselines: scikit-learn's products then cost per stored entry). ``n_jobs > 1`` runs the (C, target)
    groups in that many joblib worker processes with one BLAS thread each; ``warm_start`` starts
    each fold of a group from the previous fold's answer (scikit-learn's ``warm_start``).

    ``stopped_at_cap`` is where scikit-learn ran into ``max_iter`` (``n_iter_ >= max_iter``) rather
    than stopping on its tolerance; ``converged`` is the batched solver's test, ``grad_max <= tol``,
    with ``grad_max`` the scaled gradient at the answer measured in float64, so both solvers are
    graded alike.
    """
    Xn = X if sparse.issparse(X) else X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    Yn = np.asarray(Y)
    mask = np.asarray(train_mask, dtype=bool)
    n_folds, n, n_targets = mask.shape
    # [n, T] per-target weights whether given per row or per (row, target)
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(n, -1) * np.ones(n_targets)
    Cs = tuple(float(c) for c in Cs)
    model = LogisticRegression(
        solver=solver, tol=tol, max_iter=max_iter, class_weight=class_weight, random_state=random_state,
        warm_start=warm_start,
    )  # fmt: skip
    groups = [(c, t) for c in range(len(Cs)) for t in range(n_targets)]
    fit_group = delayed(_fit_group) if n_jobs > 1 else _fit_group
    calls = (
        fit_group(model, Cs[c], Xn, Yn[:, t], mask[:, :, t], None if sw is None else sw[:, t], n_jobs > 1)
        for c, t in groups
    )
    results = Parallel(n_jobs=n_jobs, return_as="generator")(calls) if n_jobs > 1 else calls
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(groups), desc="scikit-learn probes")
    W = np.zeros((n_folds, len(Cs), n_targets, Xn.shape[1]))
    b = np.zeros((n_folds, len(Cs), n_targets))
    n_iter = np.zeros((n_folds, len(Cs), n_targets), dtype=np.int64)
    for (c, t), (w_g, b_g, it_g) in zip(groups, results, strict=True):
        W[:, c, t], b[:, c, t], n_iter[:, c, t] = w_g, b_g, it_g
    fit = LogRegFit(
        W=torch.from_numpy(W),
        b=torch.from_numpy(b),
        Cs=Cs,
        n_iter=torch.from_numpy(n_iter),
        converged=torch.zeros(b.shape, dtype=torch.bool),
        grad_max=torch.zeros(b.shape, dtype=torch.float64),
        solver="sklearn",
        stopped_at_cap=torch.from_numpy(n_iter >= max_iter),
    )
    dense = Xn.toarray() if sparse.issparse(Xn) else Xn
    fit.grad_max = scaled_gradient_max(dense, Yn, mask, fit, sample_weight, class_weight)
    fit.converged = fit.grad_max <= tol
    return fit


def _fit_group(model: LogisticRegression, C: float, X, y, mask, sw, one_thread: bool) -> tuple[np.ndarray, ...]:
    """Every fold of one (C, target), in order: weights ``[F, d]``, intercepts and iterations ``[F]``.

    ``one_thread``: BLAS gets one thread (in a worker process, so workers do not oversubscribe the cores).
    """
    model = sklearn.clone(model).set_params(C=C)
    W, b, n_iter = np.zeros((mask.shape[0], X.shape[1])), np.zeros(mask.shape[0]), np.zeros(mask.shape[0], np.int64)
    with warnings.catch_warnings(), threadpool_limits(1) if one_thread else nullcontext():
        # Non-convergence is the point of the default-tolerance protocol; it is reported per
        # problem in `stopped_at_cap` instead of once per problem on stderr.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for f in range(mask.shape[0]):
            rows = mask[f]
            weights = None if sw is None else sw[rows]
            model.fit(X[rows], y[rows], sample_weight=weights)
            W[f], b[f], n_iter[f] = model.coef_[0], model.intercept_[0], model.n_iter_[0]
    return W, b, n_iter


def sklearn_version() -> str:
    """The installed scikit-learn's version: it draws the folds and is the reference solver."""
    return sklearn.__version__
