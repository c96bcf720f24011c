"""Batched L2 logistic regression: every (fold, C, target) problem solved at once, to scikit-learn's optimum.

Each problem minimises scikit-learn's objective
``0.5 ||w||^2 + C * sum_i s_i log(1 + exp(-y_i (w.x_i + b)))`` (intercept unpenalised) over the
rows its train mask selects. All problems share the feature matrix, so the work of an iteration is
a few GEMMs of the matrix with one column per problem; everything else is elementwise.

Algorithm (truncated Newton, vectorised over problems):

* Rows with identical features are merged (weights add up per label; VSR repeats captions and
  images), which leaves every objective unchanged and halves the GEMMs on VSR.
* Reparametrise once: centre the features (the intercept absorbs the shift, which decouples it
  from the weights) and rotate them into the eigenbasis of the centred Gram matrix
  ``Xc^T Xc = V diag(lam) V^T``. Rotation keeps ``||w||``, hence the objective; directions with
  zero variance (lam = 0: identical columns) are dropped, as the optimum is 0 there. In the new basis
  ``Z = Xc V`` the Hessian ``I + C Z^T D Z`` is close to ``I + C mean(D) diag(lam)``, except in
  the leading directions: the preconditioner is that diagonal plus an exact leading block.
* Newton system with the intercept eliminated exactly (Schur complement): its curvature is large
  and coupled to the weights, and left in the CG system it dominates the residual.
* Per problem: at most a few preconditioned CG steps (to a relative residual that tightens as
  the gradient shrinks; longer CG runs cost more than the extra Newton steps they save), then
  its own backtracking line search (trial points are elementwise work: margins are affine in
  the step), then an exact 1-D Newton step on the intercept alone, whose gradient the
  quadratic model predicts worst.
* Problems stream through a working set of fixed width: finished ones leave, queued ones enter. On a
  CPU, worker threads each iterate a working set of their own on one intra-op thread (`newton.solve`).
* Warm starts: each (C, target) is first solved loosely on the union of its folds' training rows;
  every fold starts from that answer (a fifth of the rows away), or from a parent fold's answer
  (nested CV: inner folds from their outer fold), margins included. The union answer also gives the
  leading curvature blocks of the preconditioner.
* Mixed precision: Hessian-vector products run in ``dtype``; margins, line searches and, for
  tolerances below 1e-7, gradients and margin updates in float64, so the optimum is
  float64-accurate either way.

Stopping rule: scikit-learn's, ``max |grad| <= tol`` of the objective divided by ``C * sum(s_i)``
(its ``gtol`` on its scaled loss), measured in the original coordinates.

The pieces, one idea each: `basis` (the rotated, deduplicated feature matrix every problem shares),
`objective` (the problems: row weights, class weights, the loss and its derivatives), `newton` (the
truncated Newton-CG loop over a streaming working set), `preconditioner` (the CG preconditioner) and
`predict` (decision values and exact-sign predictions of a fit). This module is the entry point:
`fit_logreg` and the `LogRegFit` it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from spatial_probing.machine import bf16_supported
from spatial_probing.probes.solver.basis import ArrayLike, Basis, BasisCache, as_tensor, matmul, threads
from spatial_probing.probes.solver.newton import Init, anchor_bank, solve
from spatial_probing.probes.solver.objective import (
    Problems,
    Solved,
    label_weights,
    loss_slope,
    sample_weights,
)

# Basis entries below which dtype "auto" keeps float32 products: there a product takes ~1 ms and the
# solve is bound by per-iteration elementwise work, so bfloat16's casts cost more than its GEMMs save
# (on AVX512-BF16, `benchmarks/credibility_speed.py --dtypes float32 bfloat16`: the masked n-grams' nested
# selection, Z 1229 x 287, 18.9 s float32, 25.9 s bfloat16; mpnet's, Z 4006 x 764, 25.0 s and 17.2 s)
LOW_MIN_ENTRIES = 2**20
# Newton steps of the union anchors: they only start the folds, and a few badly conditioned ones (the
# masked n-grams at C = 1e4) otherwise hover near the tolerance for up to max_iter steps on a working set of
# one to three columns, where a step costs its fixed overhead (1.8 s of that set's 2.6 s anchor solve, measured)
ANCHOR_MAX_ITER = 20
_SMALL_GEMM = 2**24  # multiply-adds of a GEMM with every problem's column below which one thread is faster


@dataclass
class LogRegFit:
    """Weights of every (fold, C, target) problem, in the original feature coordinates."""

    W: torch.Tensor  # [F, len(Cs), T, d] float64
    b: torch.Tensor  # [F, len(Cs), T] float64
    Cs: tuple[float, ...]
    n_iter: torch.Tensor  # [F, len(Cs), T] int64: Newton steps (batched) or lbfgs iterations (sklearn)
    converged: torch.Tensor  # [F, len(Cs), T] bool: the tolerance was met within max_iter
    grad_max: torch.Tensor  # [F, len(Cs), T] max |scaled gradient| at the answer (sklearn's gtol sense)
    solver: str  # "batched" or "sklearn"
    # [F, len(Cs), T] bool: the solver stopped because it ran into max_iter, not on its own tolerance
    # (scikit-learn: n_iter_ >= max_iter). None: the batched solver's rule, which stops only there
    # or on the gradient test, so it is ~converged.
    stopped_at_cap: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.stopped_at_cap is None:
            self.stopped_at_cap = ~self.converged

    @property
    def max_grad(self) -> float:
        """Largest scaled gradient over all problems: how far the worst problem is from its optimum."""
        return float(self.grad_max.max()) if self.grad_max.numel() else 0.0


def fit_logreg(
    X: ArrayLike,
    Y: ArrayLike,
    train_mask: ArrayLike,
    Cs: Sequence[float],
    sample_weight: ArrayLike | None = None,
    class_weight: str | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
    device: str | torch.device | None = None,
    dtype: torch.dtype | Literal["auto"] = torch.float64,
    max_problems: int | None = None,
    warm_start: bool = True,
    parents: Sequence[int] | None = None,
    workers: int | None = None,
    bases: BasisCache | None = None,
) -> LogRegFit:
    """Fit every (fold, C, target) L2 logistic regression to scikit-learn's optimum.

    ``X [n, d]`` features (any float dtype, numpy or torch, may be a memory map; converted once),
    ``Y [n, T]`` binary targets, ``train_mask [F, n, T]`` training rows of each fold and target,
    ``sample_weight`` ``[n]`` or ``[n, T]``, ``class_weight`` None or ``"balanced"`` (computed per
    problem on its own training rows, as scikit-learn does on the data it is fitted on).
    ``tol`` is scikit-learn's ``gtol`` (max abs gradient of the scaled objective); ``max_iter``
    bounds Newton steps. ``dtype`` is the precision of the Hessian-vector products: float64,
    float32 (faster), bfloat16 (fastest where the hardware multiplies bfloat16 natively, see
    `bf16_supported`; elsewhere it runs as float32) or ``"auto"``: bfloat16 where that holds and the
    basis has at least `LOW_MIN_ENTRIES` entries, float32 otherwise; the answer stays float64-accurate. ``max_problems`` bounds how many problems are
    solved together (memory grows by ~20 ``[n, max_problems]`` float64 arrays; by default about
    the size of the float32 feature matrix). ``warm_start`` first solves each (C, target) loosely
    on the union of its folds and starts every fold there; ``parents[f] = g`` instead starts fold f from fold g's
    answer (g is solved first; nested CV: inner folds from their outer fold), -1 the union.
    ``workers`` threads iterate working sets of their own (`newton.solve`); None: `newton.default_workers`
    (one per CPU thread while each keeps at least `newton.MIN_WORKER_WIDTH` problems; one on a GPU). ``bases`` keeps the
    feature basis for later fits of the same rows of the same X (`BasisCache`); None builds it anew.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    Yt = as_tensor(Y).to(dev)
    mask = as_tensor(train_mask).to(dev, torch.bool)
    n_folds, n, n_targets = mask.shape
    Cs = tuple(float(c) for c in Cs)
    low_min_entries = LOW_MIN_ENTRIES if dtype == "auto" else 0
    if dtype == "auto" or (dtype == torch.bfloat16 and not bf16_supported(dev)):
        dtype = torch.bfloat16 if bf16_supported(dev) else torch.float32
    build = Basis.build if bases is None else bases.build
    basis = build(X, mask.any(dim=(0, 2)), dtype, low_min_entries=low_min_entries)
    d = basis.Z.shape[1]
    sw = sample_weights(sample_weight, n, n_targets, dev)
    if max_problems is None:
        # A problem's working set is ~20 float64 arrays over Z's rows (measured: peak RSS of
        # benchmarks/probe_memory.py): keep all of them within about the float32 feature matrix,
        # or 256 MiB where that is larger (narrow GEMMs waste most of their time reading Z).
        max_problems = max(16, max(n * d * 4, 2**28) // (20 * 8 * basis.Z.shape[0]))
    parents = _check_parents(parents, n_folds)
    shape = (n_folds, len(Cs), n_targets)
    res = Solved(
        Wrot=torch.zeros(*shape, d, dtype=torch.float64, device=dev),
        brot=torch.zeros(shape, dtype=torch.float64, device=dev),
        n_iter=torch.zeros(shape, dtype=torch.int64, device=dev),
        converged=torch.zeros(shape, dtype=torch.bool, device=dev),
        grad_max=torch.zeros(shape, dtype=torch.float64, device=dev),
    )
    gemm_size = basis.Z.shape[0] * d * min(max_problems, n_folds * len(Cs) * n_targets)
    with threads(1 if gemm_size < _SMALL_GEMM and dev.type == "cpu" else torch.get_num_threads()):
        anchor = None
        if warm_start and n_folds > 1:
            union = Problems(basis, Yt, sw, class_weight, Cs, mask.any(0, keepdim=True))
            # Loose is enough: fold answers differ from the union's by far more than this.
            anchor = solve(basis, union, None, max(tol, 1e-6), min(max_iter, ANCHOR_MAX_ITER), max_problems, workers)
            anchor = anchor_bank(basis, union, anchor)
        # margins of the answers that start other folds: their columns in m_f, by flat problem index
        m_f, m_col = [], torch.full((res.brot.numel(),), -1, dtype=torch.int64, device=dev)
        for level in _levels(parents):
            problems = Problems(basis, Yt, sw, class_weight, Cs, mask[level])
            init = None
            if anchor is not None:
                parent = torch.tensor([parents[f] for f in level], device=dev)[problems.f]
                flat_parent = (parent * len(Cs) + problems.c) * n_targets + problems.t
                init = Init(
                    **anchor,
                    W_f=res.Wrot.view(-1, d).T,
                    b_f=res.brot.view(-1),
                    m_f=torch.cat(m_f, 1) if m_f else anchor["m_a"][:, :0],
                    m_col=m_col,
                    anchor_key=problems.c * n_targets + problems.t,
                    parent_key=torch.where(parent >= 0, flat_parent, -1),
                )
            is_parent = anchor is not None and any(f in parents for f in level)
            out = solve(basis, problems, init, tol, max_iter, max_problems, workers, keep_margins=is_parent)
            if is_parent:
                flat = (torch.tensor(level, device=dev)[problems.f] * len(Cs) + problems.c) * n_targets + problems.t
                m_col[flat] = sum(m.shape[1] for m in m_f) + torch.arange(len(flat), device=dev)
                m_f.append(out.margins)
            for name in ("Wrot", "brot", "n_iter", "converged", "grad_max"):
                getattr(res, name)[level] = getattr(out, name)

    # Back to the original coordinates: w = V u, b = b' - mu.w.
    W = basis.to_original(res.Wrot)
    b = res.brot - matmul(W, basis.mu)
    return LogRegFit(
        W=W, b=b, Cs=Cs, n_iter=res.n_iter, converged=res.converged, grad_max=res.grad_max, solver="batched"
    )


def scaled_gradient_max(
    X: ArrayLike,
    Y: ArrayLike,
    train_mask: ArrayLike,
    fit: LogRegFit,
    sample_weight: ArrayLike | None = None,
    class_weight: str | None = None,
) -> torch.Tensor:
    """Max abs gradient of scikit-learn's scaled objective at ``fit``'s answer: ``[F, len(Cs), T]``, float64.

    Independent of either solver's bookkeeping, so it can grade both on the same scale.
    """
    mask = as_tensor(train_mask).to(fit.W.device, torch.bool)
    Xt = as_tensor(X).to(fit.W.device, torch.float64)
    Xt = torch.where(mask.any(dim=(0, 2))[:, None], Xt, 0.0)  # unused rows may hold NaN
    Yt = as_tensor(Y).to(fit.W.device)
    F, nC, T, d = fit.W.shape
    sw = sample_weights(sample_weight, Xt.shape[0], T, Xt.device)
    t_idx = torch.arange(T, device=Xt.device).repeat(nC)
    Cp = torch.tensor(fit.Cs, dtype=torch.float64, device=Xt.device).repeat_interleave(T)
    out = torch.empty(F, nC, T, dtype=torch.float64, device=Xt.device)
    pos, swT = (Yt > 0).T[t_idx], sw.T[t_idx]  # [nC * T, n]
    for f in range(F):
        ap, an = (w.T for w in label_weights(pos, swT * mask[f].T[t_idx], class_weight))
        W = fit.W[f].reshape(nC * T, d).T
        r = loss_slope(Xt @ W + fit.b[f].reshape(-1), ap, ap + an)
        gw = W + Cp * (Xt.T @ r)
        gb = Cp * r.sum(0)
        out[f] = (torch.maximum(gw.abs().amax(0), gb.abs()) / (Cp * (ap + an).sum(0))).reshape(nC, T)
    return out


def _check_parents(parents: Sequence[int] | None, n_folds: int) -> list[int]:
    parents = [-1] * n_folds if parents is None else [int(p) for p in parents]
    if len(parents) != n_folds or any(p >= n_folds or p == f for f, p in enumerate(parents)):
        raise ValueError(f"parents must give, per fold, another fold's index or -1; got {parents}")
    return parents


def _levels(parents: list[int]) -> list[list[int]]:
    """Folds in solving order: those starting from the union first, then their children, ..."""
    levels, placed = [], set()
    while len(placed) < len(parents):
        level = [f for f, p in enumerate(parents) if f not in placed and (p < 0 or p in placed)]
        if not level:
            raise ValueError(f"parents form a cycle: {parents}")
        levels.append(level)
        placed.update(level)
    return levels
