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
* Problems stream through a working set of fixed width: finished ones leave, queued ones enter.
* Warm starts: each (C, target) is first solved loosely on the union of its folds' training rows;
  every fold starts from that answer (a fifth of the rows away), or from a parent fold's answer
  (nested CV: inner folds from their outer fold). The union answer also gives the leading
  curvature blocks of the preconditioner.
* Mixed precision: Hessian-vector products run in ``dtype``; margins, line searches and, for
  tolerances below 1e-7, gradients and margin updates in float64, so the optimum is
  float64-accurate either way.

Stopping rule: scikit-learn's, ``max |grad| <= tol`` of the objective divided by ``C * sum(s_i)``
(its ``gtol`` on its scaled loss), measured in the original coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
_LEAD = 48  # leading rotated directions whose curvature block the preconditioner takes exactly
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
    dtype: torch.dtype = torch.float64,
    max_problems: int | None = None,
    warm_start: bool = True,
    parents: Sequence[int] | None = None,
) -> LogRegFit:
    """Fit every (fold, C, target) L2 logistic regression to scikit-learn's optimum.

    ``X [n, d]`` features (any float dtype, numpy or torch, may be a memory map; converted once),
    ``Y [n, T]`` binary targets, ``train_mask [F, n, T]`` training rows of each fold and target,
    ``sample_weight`` ``[n]`` or ``[n, T]``, ``class_weight`` None or ``"balanced"`` (computed per
    problem on its own training rows, as scikit-learn does on the data it is fitted on).
    ``tol`` is scikit-learn's ``gtol`` (max abs gradient of the scaled objective); ``max_iter``
    bounds Newton steps. ``dtype`` is the precision of the Hessian-vector products: float64,
    float32 (faster) or bfloat16 (fastest where the hardware multiplies bfloat16 natively, see
    `bf16_supported`; elsewhere it runs as float32); the answer stays float64-accurate. ``max_problems`` bounds how many problems are
    solved together (memory grows by ~20 ``[n, max_problems]`` float64 arrays; by default about
    the size of the float32 feature matrix). ``warm_start`` first solves each (C, target) loosely
    on the union of its folds and starts every fold there; ``parents[f] = g`` instead starts fold f from fold g's
    answer (g is solved first; nested CV: inner folds from their outer fold), -1 the union.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    Yt = _as_tensor(Y).to(dev)
    mask = _as_tensor(train_mask).to(dev, torch.bool)
    n_folds, n, n_targets = mask.shape
    Cs = tuple(float(c) for c in Cs)
    if dtype == torch.bfloat16 and not bf16_supported(dev):
        dtype = torch.float32
    basis = _Basis.build(X, mask.any(dim=(0, 2)), dtype)
    d = basis.Z.shape[1]
    sw = _sample_weights(sample_weight, n, n_targets, dev)
    if max_problems is None:
        # A problem's working set is ~20 float64 arrays over Z's rows (measured: peak RSS of
        # benchmarks/probe_memory.py): keep all of them within about the float32 feature matrix,
        # or 256 MiB where that is larger (narrow GEMMs waste most of their time reading Z).
        max_problems = max(16, max(n * d * 4, 2**28) // (20 * 8 * basis.Z.shape[0]))
    parents = _check_parents(parents, n_folds)
    shape = (n_folds, len(Cs), n_targets)
    res = _Solved(
        Wrot=torch.zeros(*shape, d, dtype=torch.float64, device=dev),
        brot=torch.zeros(shape, dtype=torch.float64, device=dev),
        n_iter=torch.zeros(shape, dtype=torch.int64, device=dev),
        converged=torch.zeros(shape, dtype=torch.bool, device=dev),
        grad_max=torch.zeros(shape, dtype=torch.float64, device=dev),
    )
    gemm_size = basis.Z.numel() * min(max_problems, n_folds * len(Cs) * n_targets)
    with _threads(1 if gemm_size < _SMALL_GEMM and dev.type == "cpu" else torch.get_num_threads()):
        anchor = None
        if warm_start and n_folds > 1:
            union = _Problems(basis, Yt, sw, class_weight, Cs, mask.any(0, keepdim=True))
            # Loose is enough: fold answers differ from the union's by far more than this.
            anchor = _solve(basis, union, None, max(tol, 1e-6), max_iter, max_problems)
            anchor = _anchor_bank(basis, union, anchor)
        for level in _levels(parents):
            problems = _Problems(basis, Yt, sw, class_weight, Cs, mask[level])
            init = None
            if anchor is not None:
                parent = torch.tensor([parents[f] for f in level], device=dev)[problems.f]
                flat_parent = (parent * len(Cs) + problems.c) * n_targets + problems.t
                init = _Init(
                    **anchor,
                    W_f=res.Wrot.view(-1, d).T,
                    b_f=res.brot.view(-1),
                    anchor_key=problems.c * n_targets + problems.t,
                    parent_key=torch.where(parent >= 0, flat_parent, -1),
                )
            out = _solve(basis, problems, init, tol, max_iter, max_problems)
            for name in ("Wrot", "brot", "n_iter", "converged", "grad_max"):
                getattr(res, name)[level] = getattr(out, name)

    # Back to the original coordinates: w = V u, b = b' - mu.w.
    W = res.Wrot @ basis.V.T
    b = res.brot - W @ basis.mu
    return LogRegFit(
        W=W, b=b, Cs=Cs, n_iter=res.n_iter, converged=res.converged, grad_max=res.grad_max, solver="batched"
    )


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports it, or a
    CPU with AMX-BF16 or AVX512-BF16 (elsewhere bfloat16 GEMMs are emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # private, but the only place torch reports these CPU flags
        flags = torch._C._cpu._get_cpu_capability()
    except AttributeError:
        return False
    return bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


def decision_function(X: ArrayLike, fit: LogRegFit, block: int = 4096) -> torch.Tensor:
    """Float64 decision values ``x.w + b`` of every row under every problem: ``[F, len(Cs), n, T]``.

    X is converted in row blocks, so no float64 copy of it is made.
    """
    F, nC, T, d = fit.W.shape
    W = fit.W.reshape(-1, d).T
    n = X.shape[0]
    out = torch.empty(n, F * nC * T, dtype=torch.float64, device=W.device)
    for i in range(0, n, block):
        out[i : i + block] = _rows64(X, np.arange(i, min(i + block, n)), W.device) @ W
    out += fit.b.reshape(-1)
    return out.T.reshape(F, nC, T, n).transpose(2, 3)


def predict(X: ArrayLike, fit: LogRegFit, block: int = 4096) -> torch.Tensor:
    """Predicted class (True = positive) of every row under every problem: ``[F, len(Cs), n, T]``.

    Exactly the sign of the float64 decision value, at float32 GEMM speed: values within the
    float32 rounding bound of 0 (``2 (d + 3) eps (|x| |w| + |b|)``, from the dot product's error
    bound) are recomputed in float64.
    """
    F, nC, T, d = fit.W.shape
    W = fit.W.reshape(-1, d)
    b = fit.b.reshape(-1)
    W32, b32 = W.float().T, b.float()
    # The bound is computed in float32: its own rounding (~1e-7 relative) is far inside its
    # factor-2 slack, and float64 [block, P] arrays would cost more than the GEMM itself.
    k = 2 * (d + 3) * torch.finfo(torch.float32).eps
    w_bound, b_bound = W.norm(dim=1).float() * k, b32.abs() * k  # bound = |x| w_bound + b_bound
    out = torch.empty(X.shape[0], W.shape[0], dtype=torch.bool, device=W.device)
    for i in range(0, X.shape[0], block):
        idx = np.arange(i, min(i + block, X.shape[0]))
        x = _rows64(X, idx, W.device).float()
        dec = torch.addmm(b32, x, W32)
        out[i : i + block] = dec > 0
        unsure = torch.nonzero(dec.abs_() <= torch.outer(x.norm(dim=1), w_bound).add_(b_bound))
        if len(unsure):
            r, p = unsure[:, 0], unsure[:, 1]
            out[i + r, p] = (_rows64(X, idx[r.cpu().numpy()], W.device) * W[p]).sum(1) + b[p] > 0
    return out.T.reshape(F, nC, T, -1).transpose(2, 3)


def predict_proba(X: ArrayLike, fit: LogRegFit) -> torch.Tensor:
    """Positive-class probability of every row under every problem: ``[F, len(Cs), n, T]``."""
    return torch.sigmoid(decision_function(X, fit))


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
    mask = _as_tensor(train_mask).to(fit.W.device, torch.bool)
    Xt = _as_tensor(X).to(fit.W.device, torch.float64)
    Xt = torch.where(mask.any(dim=(0, 2))[:, None], Xt, 0.0)  # unused rows may hold NaN
    Yt = _as_tensor(Y).to(fit.W.device)
    F, nC, T, d = fit.W.shape
    sw = _sample_weights(sample_weight, Xt.shape[0], T, Xt.device)
    t_idx = torch.arange(T, device=Xt.device).repeat(nC)
    Cp = torch.tensor(fit.Cs, dtype=torch.float64, device=Xt.device).repeat_interleave(T)
    out = torch.empty(F, nC, T, dtype=torch.float64, device=Xt.device)
    for f in range(F):
        ap, an = _label_weights(Yt, mask[f][:, t_idx], sw, class_weight, t_idx)
        W = fit.W[f].reshape(nC * T, d).T
        r = _loss_slope(Xt @ W + fit.b[f].reshape(-1), ap, ap + an)
        gw = W + Cp * (Xt.T @ r)
        gb = Cp * r.sum(0)
        out[f] = (torch.maximum(gw.abs().amax(0), gb.abs()) / (Cp * (ap + an).sum(0))).reshape(nC, T)
    return out


# --------------------------------------------------------------------------------------------
# internals


def _as_tensor(a: ArrayLike) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


@dataclass
class _Basis:
    """The distinct used rows of X, centred and rotated: ``Z = (X_u - mu) V``.

    Rows with identical features are merged (their weights add up per label), which leaves every
    objective unchanged: VSR repeats each caption and image across rows. ``row_of[i]`` is row
    i's index in Z, -1 for rows no problem trains on (they may hold NaN, e.g. a failed image).
    Z is stored in float64 or float32 (the problems are defined on these values); ``Zh`` is the
    copy the Hessian-vector products read: Z itself, or a bfloat16 copy.
    """

    Z: torch.Tensor  # [u, r]
    Zh: torch.Tensor  # [u, r] Z, or Z in bfloat16
    mu: torch.Tensor  # [d] float64
    V: torch.Tensor  # [d, r] float64: the r directions the rows vary in
    lam: torch.Tensor  # [r] float64, eigenvalues of the count-weighted centred Gram matrix
    row_of: torch.Tensor  # [n] int64
    n_rows: int  # rows behind Z, with multiplicity
    block: int  # rows per float64 block product when Z is stored in lower precision

    @classmethod
    def build(cls, X: ArrayLike, used: torch.Tensor, dtype: torch.dtype, block: int = 1024) -> _Basis:
        """Merge, centre and rotate X in row blocks; Z (and its bfloat16 copy) are the only full-size copies.

        ``dtype`` is the HVP precision: bfloat16 stores Z in float32 plus a bfloat16 copy.
        """
        dev = used.device
        rows = torch.nonzero(used).squeeze(1).cpu().numpy()
        first, inverse = _distinct_rows(X, rows, block)
        counts = torch.bincount(torch.as_tensor(inverse, device=dev), minlength=len(first)).double()
        row_of = torch.full((used.numel(),), -1, dtype=torch.int64, device=dev)
        row_of[torch.as_tensor(rows, device=dev)] = torch.as_tensor(inverse, device=dev)

        def blocks():  # (slice of Z's rows, their features as float64)
            for i in range(0, len(first), block):
                yield slice(i, i + block), _rows64(X, first[i : i + block], dev)

        n_rows = float(counts.sum())
        mu = sum((counts[sl, None] * xb).sum(0) for sl, xb in blocks()) / n_rows
        # float32 products suffice: the Gram matrix only sets the basis (orthogonal to float64
        # precision whatever its accuracy, as eigh runs in float64) and the preconditioner's scale.
        gram = sum(
            ((xb - mu) * counts[sl, None].sqrt()).float().T @ ((xb - mu) * counts[sl, None].sqrt()).float()
            for sl, xb in blocks()
        )
        lam, V = _eigh(gram.double())
        # Directions the used rows do not vary in (identical columns, as n-grams that always occur
        # together; eigenvalue at float64 rounding) carry no loss: the optimum's weight there is 0, so
        # the problems are solved without them (the masked n-gram baseline keeps 287 of 616).
        null = lam <= lam.max() * len(lam) * torch.finfo(torch.float64).eps
        null[-1] = False  # at least one direction, even for constant features
        lam, V = lam[~null], V[:, ~null]
        store = torch.float32 if dtype == torch.bfloat16 else dtype
        Z = torch.empty(len(first), len(lam), dtype=store, device=dev)
        for sl, xb in blocks():
            Z[sl] = ((xb - mu) @ V).to(store)
        Zh = Z.to(dtype)
        return cls(Z=Z, Zh=Zh, mu=mu, V=V, lam=lam.clamp_min(0), row_of=row_of, n_rows=int(n_rows), block=block)

    @property
    def vec_dtype(self) -> torch.dtype:
        """Precision of CG's vectors: Z's (bfloat16 is only ever the matrix side of a product)."""
        return self.Z.dtype

    def hz(self, P: torch.Tensor) -> torch.Tensor:
        """``Z @ P`` at HVP precision, returned in `vec_dtype`."""
        return (self.Zh @ P.to(self.Zh.dtype)).to(self.Z.dtype)

    def htz(self, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` at HVP precision, returned in `vec_dtype`."""
        return (self.Zh.T @ R.to(self.Zh.dtype)).to(self.Z.dtype)

    def mm(self, B: torch.Tensor) -> torch.Tensor:
        """``Z @ B`` at Z's precision, as float64 (B float64)."""
        return (self.Z @ B.to(self.Z.dtype)).double()

    def tmm(self, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` at Z's precision, as float64 (R float64)."""
        return (self.Z.T @ R.to(self.Z.dtype)).double()

    def mm64(self, B: torch.Tensor) -> torch.Tensor:
        """``Z @ B`` in float64 (Z's stored values, upcast block by block)."""
        if self.Z.dtype == torch.float64:
            return self.Z @ B
        out = torch.empty(self.Z.shape[0], B.shape[1], dtype=torch.float64, device=B.device)
        for i in range(0, self.Z.shape[0], self.block):
            out[i : i + self.block] = self.Z[i : i + self.block].double() @ B
        return out

    def tmm64(self, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` in float64 (Z's stored values, upcast block by block)."""
        if self.Z.dtype == torch.float64:
            return self.Z.T @ R
        out = torch.zeros(self.Z.shape[1], R.shape[1], dtype=torch.float64, device=R.device)
        for i in range(0, self.Z.shape[0], self.block):
            out += self.Z[i : i + self.block].double().T @ R[i : i + self.block]
        return out

    def merge(self, A: torch.Tensor) -> torch.Tensor:
        """Per-row ``[n, P]`` weights summed onto Z's rows: ``[u, P]``."""
        used = self.row_of >= 0
        out = torch.zeros(self.Z.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
        return out.index_add_(0, self.row_of[used], A[used])


def _rows64(X: ArrayLike, idx: np.ndarray, dev: torch.device) -> torch.Tensor:
    """Rows ``idx`` of X (numpy, memory map or torch; any float dtype) as a float64 tensor."""
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(idx, device=X.device)].to(dev, torch.float64)
    return torch.from_numpy(np.asarray(X[idx], dtype=np.float64)).to(dev)


def _distinct_rows(X: ArrayLike, rows: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct feature vectors among ``rows``: (a representative row of each, index of each row's).

    Rows are grouped by a random projection and every member is then checked bitwise against
    its group's representative; a row that differs (a projection tie) stays on its own, so the
    merge is exact whatever the hash does.
    """
    proj = torch.from_numpy(np.random.default_rng(0).standard_normal(X.shape[1]))
    h = np.concatenate(
        [
            (_rows64(X, rows[i : i + block], torch.device("cpu")) @ proj).numpy()
            for i in range(0, len(rows), block)
        ]
    )
    _, rep_pos, group = np.unique(h, return_index=True, return_inverse=True)
    rep = rep_pos[group]  # position (in rows) of each row's representative
    dup = np.flatnonzero(rep != np.arange(len(rows)))  # only these need the bitwise check
    cpu = torch.device("cpu")
    same = np.concatenate(
        [np.zeros(0, dtype=bool)]
        + [
            (_rows64(X, rows[dup[i : i + block]], cpu) == _rows64(X, rows[rep[dup[i : i + block]]], cpu)).all(1).numpy()
            for i in range(0, len(dup), block)
        ]
    )
    rep[dup[~same]] = dup[~same]
    first_pos, inverse = np.unique(rep, return_inverse=True)
    return rows[first_pos], inverse


@contextmanager
def _threads(n: int):
    """Run a block on ``n`` CPU threads. Small operations gain nothing from more, and on cores
    shared with other processes each multithreaded operation can stall for a scheduler quantum."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eigh(gram: torch.Tensor, threaded_from: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh``, multithreaded only for matrices of ``threaded_from`` rows or more.

    Measured on 2 cores: d = 768 takes 0.08-0.15 s either way, but a multithreaded eigensolver
    stalls for seconds when other processes hold the cores; d = 2,327 (the n-gram baseline) takes
    5-6 s on one thread and 3 s on two, a gain worth that risk.
    """
    with _threads(torch.get_num_threads() if gram.shape[0] >= threaded_from else 1):
        return torch.linalg.eigh(gram)


def _sample_weights(
    sample_weight: ArrayLike | None, n: int, n_targets: int, dev: torch.device
) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, n_targets, dtype=torch.float64, device=dev)
    sw = _as_tensor(sample_weight).to(dev, torch.float64)
    return sw.reshape(n, 1).expand(n, n_targets) if sw.ndim == 1 else sw


def _label_weights(
    Y: torch.Tensor,
    mask: torch.Tensor,
    sw: torch.Tensor,
    class_weight: str | None,
    t_idx: torch.Tensor,
    f_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``[n, P]`` float64 weights of positive rows and of negative rows (0 off the training rows).

    ``mask [n, P]`` is each problem's training rows, ``t_idx [P]`` its target, ``f_idx`` its fold
    (for error messages).
    """
    pos = Y[:, t_idx] > 0
    a = sw[:, t_idx] * mask
    w_pos = a * pos
    w_neg = a - w_pos
    n_pos, n_neg = w_pos.sum(0), w_neg.sum(0)
    one_class = (n_pos <= 0) | (n_neg <= 0)
    if bool(one_class.any()):
        where = (
            [(int(f), int(t)) for f, t in zip(f_idx[one_class], t_idx[one_class], strict=True)]
            if f_idx is not None
            else []
        )
        raise ValueError(
            f"{int(one_class.sum())} problem(s) have training rows (of positive weight) of only one class"
            + (f": (fold, target) {where[:10]}" if where else "")
            + "; drop those targets or use fewer folds"
        )
    if class_weight == "balanced":
        # scikit-learn: weight_k = sum(sw) / (2 * sum(sw of class k)) over the rows it is fitted on.
        total = n_pos + n_neg
        w_pos, w_neg = w_pos * (total / (2 * n_pos)), w_neg * (total / (2 * n_neg))
    elif class_weight is not None:
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    return w_pos, w_neg


@dataclass
class _Solved:
    Wrot: torch.Tensor  # [F, nC, T, d] float64, rotated coordinates
    brot: torch.Tensor  # [F, nC, T] float64, intercept of the centred features
    n_iter: torch.Tensor
    converged: torch.Tensor
    grad_max: torch.Tensor


class _Problems:
    """The (fold, C, target) problems of a ``[F, n, T]`` mask, in a flat order, weights built on demand."""

    def __init__(self, basis: _Basis, Y, sw, class_weight, Cs: tuple[float, ...], mask: torch.Tensor):
        self.basis, self.Y, self.sw, self.class_weight, self.mask = basis, Y, sw, class_weight, mask
        self.shape = (mask.shape[0], len(Cs), mask.shape[2])
        grids = torch.meshgrid(*(torch.arange(k, device=mask.device) for k in self.shape), indexing="ij")
        self.f, self.c, self.t = (g.reshape(-1) for g in grids)
        self.C = torch.tensor(Cs, dtype=torch.float64, device=mask.device)[self.c]

    def __len__(self) -> int:
        return self.f.numel()

    def weights(self, idx: torch.Tensor, cols: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive / negative row weights of problems ``idx`` summed onto Z's rows: ``[u, len(idx)]`` each.

        Built ``cols`` problems at a time: the per-row ``[n, P]`` intermediates would otherwise be
        the largest arrays of the whole solve.
        """
        parts = []
        for j in range(0, len(idx), cols):
            f, t = self.f[idx[j : j + cols]], self.t[idx[j : j + cols]]
            w_pos, w_neg = _label_weights(self.Y, self.mask[f, :, t].T, self.sw, self.class_weight, t, f)
            parts.append((self.basis.merge(w_pos), self.basis.merge(w_neg)))
        return torch.cat([p for p, _ in parts], 1), torch.cat([q for _, q in parts], 1)

    def solved(self, W, b, n_iter, converged, grad_max) -> _Solved:
        """Results over the flat order (``W [d, N]``) reshaped to ``[F, nC, T, ...]``."""
        return _Solved(W.T.reshape(*self.shape, -1), b.reshape(self.shape), n_iter.reshape(self.shape),
                       converged.reshape(self.shape), grad_max.reshape(self.shape))  # fmt: skip


@dataclass
class _Active:
    """State of the problems being iterated (float64 unless noted); the last axis is the problem."""

    ids: torch.Tensor  # [A] index into the flat problem order
    W: torch.Tensor  # [d, A] rotated weights
    b: torch.Tensor  # [A]
    m: torch.Tensor  # [u, A] margins Z W + b
    ap: torch.Tensor  # [u, A] weight of the positive rows
    an: torch.Tensor  # [u, A] weight of the negative rows
    a: torch.Tensor  # [u, A] ap + an
    C: torch.Tensor  # [A]
    scale: torch.Tensor  # [A] C * sum of weights: scikit-learn's loss scaling
    steps: torch.Tensor  # [A] Newton steps taken
    lead: torch.Tensor  # [k, k, A] HVP dtype: leading curvature block (see _Preconditioner)
    lead_dsum: torch.Tensor  # [A] HVP dtype: sum(D) it was taken at; 0 = none (cold start)
    exact: torch.Tensor  # [A] bool: gradients and margin updates in float64 (see `_solve`)
    gprev: torch.Tensor  # [A] scaled gradient max at the previous step (inf at the start)

    FIELDS = ("ids", "W", "b", "m", "ap", "an", "a", "C", "scale", "steps", "lead", "lead_dsum", "exact", "gprev")

    def select(self, keep: torch.Tensor) -> _Active:
        return _Active(*(getattr(self, k)[..., keep] for k in self.FIELDS))

    def join(self, other: _Active) -> _Active:
        return _Active(*(torch.cat([getattr(self, k), getattr(other, k)], -1) for k in self.FIELDS))


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


@dataclass
class _Init:
    """Warm starts: from the union anchors (``*_a``, by ``anchor_key``) or from solved folds
    (``*_f``, by ``parent_key``, -1 for none); leading blocks always from the anchors."""

    W_a: torch.Tensor  # [d, nC * T]
    b_a: torch.Tensor  # [nC * T]
    lead: torch.Tensor  # [k, k, nC * T]
    lead_dsum: torch.Tensor  # [nC * T]
    W_f: torch.Tensor  # [d, F * nC * T]
    b_f: torch.Tensor  # [F * nC * T]
    anchor_key: torch.Tensor  # [N]
    parent_key: torch.Tensor  # [N]


def _anchor_bank(basis: _Basis, union: _Problems, anchor: _Solved) -> dict[str, torch.Tensor]:
    """Anchor weights and the leading curvature blocks at them, for `_Init`."""
    d = basis.Z.shape[1]
    W_a, b_a = anchor.Wrot.reshape(-1, d).T, anchor.brot.reshape(-1)
    ap, an = union.weights(torch.arange(len(union), device=W_a.device))
    _, D = _loss_derivatives(basis.mm64(W_a) + b_a, ap, ap + an)
    D = D.to(basis.vec_dtype)
    return {"W_a": W_a, "b_a": b_a, "lead": _lead_blocks(basis, D, min(_LEAD, d)), "lead_dsum": D.sum(0)}


def _solve(basis: _Basis, problems: _Problems, init, tol: float, max_iter: int, capacity: int) -> _Solved:
    """Truncated Newton on every problem, ``capacity`` at a time, streaming.

    Converged problems leave the working set and queued ones take their place, so GEMMs keep
    their width until the queue is empty instead of a chunk idling on its slowest problem.
    ``init`` is None (cold starts) or an `_Init`.

    Precision: with Z in float32, gradients and margin updates are float32 GEMMs accumulated
    into float64 margins. For tolerances below 1e-7 a problem whose gradient passes the test, or
    stops falling (float32's rounding floor), is then certified in float64: its margins are recomputed
    and its gradient retaken from Z's values upcast; if that fails it continues with float64
    products (``exact``) from there.
    """
    u, d = basis.Z.shape
    N, dev = len(problems), basis.Z.device
    # Below 1e-7 the test itself needs float64 products (float32 rounding of a sum over rows).
    certify = tol < 1e-7 and basis.Z.dtype != torch.float64
    out_W = torch.zeros(d, N, dtype=torch.float64, device=dev)
    out_b = torch.zeros(N, dtype=torch.float64, device=dev)
    n_iter = torch.zeros(N, dtype=torch.int64, device=dev)
    converged = torch.zeros(N, dtype=torch.bool, device=dev)
    grad_max = torch.full((N,), float("inf"), dtype=torch.float64, device=dev)
    state, queued = None, 0
    while True:
        room = capacity - (0 if state is None else len(state.ids))
        if queued < N and room >= min(capacity // 4, N - queued):
            new = _start(basis, problems, torch.arange(queued, min(N, queued + room), device=dev), init)
            queued += len(new.ids)
            state = new if state is None else state.join(new)
        if state is None:
            break
        r, D, gw, gb, gmax = _gradient(basis, state)
        if certify:
            # A Newton step cuts the gradient by far more than 4x; where the float32 one stops
            # falling it has met its rounding floor (W + C Z^T r, two terms ~|W| that cancel).
            check = ((gmax <= tol) | (gmax > 0.25 * state.gprev)) & ~state.exact
            if bool(check.any()):
                state.exact |= check
                cols = torch.nonzero(check).squeeze(1)
                state.m[:, cols] = basis.mm64(state.W[:, cols]) + state.b[cols]
                r[:, cols], D[:, cols], gw[:, cols], gb[cols], gmax[cols] = _gradient(basis, state, cols)
        ids = state.ids
        state.gprev = gmax
        out_W[:, ids], out_b[ids], n_iter[ids], grad_max[ids] = state.W, state.b, state.steps, gmax
        ok = gmax <= tol
        converged[ids[ok]] = True
        done = ok | (state.steps >= max_iter)
        if bool(done.any()):
            keep = ~done
            state, D, gw, gb, gmax = state.select(keep), D[:, keep], gw[:, keep], gb[keep], gmax[keep]
            if not len(state.ids):
                state = None
                continue
        # The last steps need only tol / |g| of relative residual, not the quadratic-rate sqrt(|g|).
        gnorm = torch.sqrt((gw * gw).sum(0) + gb * gb)
        eta = torch.clamp(torch.maximum(torch.sqrt(gmax), 0.5 * tol * state.scale / gnorm), max=0.1)
        sw_, sb_, zs = _pcg(basis, D.to(basis.vec_dtype), state, gw, gb, eta)
        del D
        if zs is None:  # CG's products were bfloat16: the step's margins at Z's precision
            zs = basis.mm(sw_) + sb_
        if bool(state.exact.any()):  # margins of the step in float64, so they never drift from Z W + b
            cols = torch.nonzero(state.exact).squeeze(1)
            zs[:, cols] = basis.mm64(sw_[:, cols]) + sb_[cols]
        _line_search(state, sw_, sb_, zs, gw, gb)
        _polish_intercept(state)
        state.steps += 1
    return problems.solved(out_W, out_b, n_iter, converged, grad_max)


def _gradient(basis: _Basis, state: _Active, cols: torch.Tensor | None = None):
    """Loss derivatives ``r, D [u, P]``, gradient ``gw [d, P], gb [P]`` and scaled max ``[P]`` of
    the problems ``cols`` (all: None); float64 products where the problem is ``exact``."""
    sel = slice(None) if cols is None else cols
    W, m, C, exact = state.W[:, sel], state.m[:, sel], state.C[sel], state.exact[sel]
    r, D = _loss_derivatives(m, state.ap[:, sel], state.a[:, sel])
    if bool(exact.all()):
        zr = basis.tmm64(r)
    else:
        zr = basis.tmm(r)
        if bool(exact.any()):
            zr[:, exact] = basis.tmm64(r[:, exact])
    gw = W + C * zr
    gb = C * r.sum(0)
    return r, D, gw, gb, _orig_grad_max(basis, gw, gb) / state.scale[sel]


def _start(basis: _Basis, problems: _Problems, idx: torch.Tensor, init: _Init | None) -> _Active:
    """Working state of newly admitted problems: weights, and a cold or warm start."""
    ap, an = problems.weights(idx)
    C = problems.C[idx]
    a = ap + an
    dev, dt, k = ap.device, basis.vec_dtype, min(_LEAD, basis.Z.shape[1])
    if init is None:
        W = torch.zeros(basis.Z.shape[1], len(idx), dtype=torch.float64, device=dev)
        # The intercept's optimum at w = 0 (features are centred): the weighted log-odds. Starting
        # there puts the curvature of rare positives at the right scale.
        b = torch.log(ap.sum(0) / an.sum(0))
        m = b.expand_as(ap).clone()
        lead = torch.zeros(k, k, len(idx), dtype=dt, device=dev)
        lead_dsum = torch.zeros(len(idx), dtype=dt, device=dev)
    else:
        ka, kp = init.anchor_key[idx], init.parent_key[idx]
        W, b = init.W_a[:, ka].clone(), init.b_a[ka].clone()
        child = kp >= 0
        W[:, child], b[child] = init.W_f[:, kp[child]], init.b_f[kp[child]]
        m = basis.mm(W) + b
        lead, lead_dsum = init.lead[..., ka], init.lead_dsum[ka]
    steps = torch.zeros(len(idx), dtype=torch.int64, device=dev)
    exact = torch.full((len(idx),), basis.Z.dtype == torch.float64, device=dev)
    gprev = torch.full((len(idx),), float("inf"), dtype=torch.float64, device=dev)
    return _Active(idx, W, b, m, ap, an, a, C, C * a.sum(0), steps, lead, lead_dsum, exact, gprev)


def _loss_derivatives(m, ap, a):
    """First and second derivatives of the weighted loss in each margin: ``r, D [u, P]``.

    ``ap`` is the positive rows' weight, ``a`` every row's (positive plus negative).
    """
    p = torch.sigmoid(m)
    D = torch.addcmul(p, p, p, value=-1).mul_(a)
    return p.mul_(a).sub_(ap), D


def _loss_slope(m, ap, a):
    """First derivative of the weighted loss in each margin: ``r [u, P]``."""
    return torch.sigmoid(m).mul_(a).sub_(ap)


def _loss(m, ap, an):
    """Weighted logistic loss per row: ``ap log(1 + e^-m) + an log(1 + e^m)``."""
    sp = torch.nn.functional.softplus
    return sp(-m).mul_(ap).add_(sp(m).mul_(an))


def _orig_grad_max(basis: _Basis, gw: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Max abs gradient in the original coordinates: d/dw = V g_u + mu g_b, d/db = g_b."""
    g = basis.V @ gw + basis.mu[:, None] * gb
    return torch.maximum(g.abs().amax(0), gb.abs())


def _pcg(basis: _Basis, D, state: _Active, gw, gb, eta, cg_max: int = 6, cg_slow: int = 24, slow_after: int = 3):
    """Per-problem preconditioned CG on the Newton system with the intercept eliminated.

    The Hessian is ``[[A, c], [c^T, h]]`` with ``A = I + C Z^T D Z``, ``c = C Z^T D 1`` and
    ``h = C sum(D)``; CG runs on the Schur complement ``A - c c^T / h`` with its vectors in Z's
    dtype and its products at HVP precision (`_Basis.hz`), and the intercept step follows
    exactly. Problems whose residual is small enough drop out of the GEMMs (a few slow problems
    would otherwise keep every column iterating). A problem gets ``cg_max`` iterations per Newton
    step, ``cg_slow`` once it has taken ``slow_after`` steps: a problem still going by then is badly
    conditioned (large C on nearly separable, duplicated rows such as the masked n-gram baseline),
    where short CG runs give poor directions and Newton crawls (60+ steps at C = 1e4 with 6 iterations,
    12 with 24). Returns the float64 step and ``Z s_w + s_b``,
    accumulated from CG's products (so it costs no GEMM) when they are in Z's precision, else
    None (bfloat16 products would put their rounding into the margins).
    """
    dt = basis.vec_dtype
    Cq = state.C.to(dt)
    h = Cq * D.sum(0)
    c = Cq * basis.htz(D)
    precond = _Preconditioner(basis, D, Cq, c, h, state.lead, state.lead_dsum)
    x = torch.zeros_like(c)
    zx = torch.zeros_like(D) if basis.Zh is basis.Z else None
    r = (-gw + c.double() * (gb / h.double())).to(dt)
    target = eta.to(dt) * torch.sqrt((r * r).sum(0))
    idx = torch.arange(len(h), device=D.device)  # the problems still iterating
    Da, ca, ha, Ca, ra = D, c, h, Cq, r
    z = precond(ra, idx)
    p = z
    rz = (ra * z).sum(0)
    budget = torch.where(state.steps >= slow_after, cg_slow, cg_max)
    for it in range(int(budget.max())):
        q = basis.hz(p)
        Sp = p + Ca * basis.htz(Da * q) - ca * ((ca * p).sum(0) / ha)
        alpha = rz / (p * Sp).sum(0)
        x.index_add_(1, idx, alpha * p)
        if zx is not None:
            zx.index_add_(1, idx, alpha * q)
        ra = ra - alpha * Sp
        r[:, idx] = ra
        going = (torch.sqrt((ra * ra).sum(0)) > target[idx]) & (budget[idx] > it + 1)
        if not bool(going.all()):
            if not bool(going.any()):
                break
            idx, p, rz, ra = idx[going], p[:, going], rz[going], ra[:, going]
            Da, ca, ha, Ca = D[:, idx], c[:, idx], h[idx], Cq[idx]
        z = precond(ra, idx)
        rz_new = (ra * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    x = x.double()
    xb = -(gb + (c.double() * x).sum(0)) / h.double()
    return x, xb, None if zx is None else zx.double() + xb


class _Preconditioner:
    """Approximate inverse of the Schur complement ``S = I + C Z^T D Z - c c^T / h``, per problem.

    In the rotated basis ``Z^T Z = diag(lam)``, so ``Z^T D Z ~ mean(D) diag(lam)`` where D is
    flat. It is not (rare positives; at large C most rows are fitted and carry no curvature), and
    the error concentrates in the leading directions: there the leading block of the problem's
    anchor (`_lead_blocks`, computed once per anchor and shared by its folds), scaled to the
    problem's current total curvature, replaces the diagonal. A fold differs from its anchor by
    a fifth of the rows, so the block stays close; rebuilding it from the problem's own
    curvature costs about five CG iterations and saved fewer. Cold starts use the diagonal.
    """

    def __init__(self, basis: _Basis, D, Cq, c, h, lead, lead_dsum):
        lam = basis.lam.to(D.dtype)
        self.diag = (1 + (Cq * D.sum(0) / basis.n_rows)[None, :] * lam[:, None] - c * c / h).clamp_min(1.0)
        self.k = k = lead.shape[0]
        has = lead_dsum > 0
        S = (
            lead.permute(2, 0, 1)
            * torch.where(has, Cq * D.sum(0) / lead_dsum.clamp_min(1e-30), 0)[:, None, None]
        )
        S.diagonal(dim1=1, dim2=2).add_(torch.where(has[:, None], 1.0, self.diag[-k:].T))
        self.chol, info = torch.linalg.cholesky_ex(S)
        # A block scaled up a lot (a tiny MDL prefix block against its anchor's curvature) can lose
        # definiteness in rounding; such a problem keeps the diagonal, a valid if weaker preconditioner.
        lost = info > 0
        if lost.any():
            self.chol[lost] = torch.diag_embed(self.diag[-k:].T[lost].sqrt())

    def __call__(self, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Apply to the residuals ``r [d, len(idx)]`` of problems ``idx``."""
        z = r / self.diag[:, idx]
        z[-self.k :] = torch.cholesky_solve(r[-self.k :].T.unsqueeze(-1), self.chol[idx]).squeeze(-1).T
        return z


def _lead_blocks(basis: _Basis, D: torch.Tensor, k: int, rows: int = 256) -> torch.Tensor:
    """Leading ``k x k`` block of the intercept-eliminated curvature per column p of ``D [u, K]``: ``[k, k, K]``.

    ``Z_k^T D_p Z_k - c c^T / sum(D_p)`` with ``c = Z_k^T D_p 1``: a Schur complement of a
    positive semi-definite matrix, so positive semi-definite. One GEMM per row block against
    the pairwise products of the leading columns (upper triangle), instead of a ``[K, u, k]``
    batched product.
    """
    Z = basis.Z
    u, d = Z.shape
    i, j = torch.triu_indices(k, k, device=Z.device)
    G = torch.zeros(i.numel(), D.shape[1], dtype=Z.dtype, device=Z.device)
    lead = Z[:, d - k :]
    for r in range(0, u, rows):
        zb = lead[r : r + rows]
        G += (zb[:, i] * zb[:, j]).T @ D[r : r + rows]
    B = torch.empty(D.shape[1], k, k, dtype=Z.dtype, device=Z.device)
    B[:, i, j] = G.T
    B[:, j, i] = G.T
    c = (lead.T @ D).T
    return (B - c[:, :, None] * c[:, None, :] / D.sum(0)[:, None, None]).permute(1, 2, 0)


def _line_search(state: _Active, sw_, sb_, zs, gw, gb, c1: float = 1e-4, max_halvings: int = 30) -> None:
    """Per-problem backtracking from the full Newton step; updates ``state`` in place.

    A step is accepted when the objective's slope along the direction is still <= 0 there (the
    problem is convex, so the objective decreased all the way), or on Armijo's sufficient
    decrease. The slope test is what works near the optimum, where objective differences drown
    in rounding but the slope, a sum of small terms, does not.
    """
    W, m, C = state.W, state.m, state.C
    slope = (gw * sw_).sum(0) + gb * sb_
    wsw, sws = (W * sw_).sum(0), (sw_ * sw_).sum(0)
    t = torch.ones_like(gb)
    pending = torch.ones_like(gb, dtype=torch.bool)
    idx = torch.arange(len(t), device=t.device)  # problems still searching: only their columns are touched
    base = torch.full_like(t, float("nan"))  # loss at t = 0, computed only where Armijo's test runs
    for _ in range(max_halvings):
        cols = slice(None) if len(idx) == len(t) else idx  # all columns: views, not copies
        ap, a, zi, ti = state.ap[:, cols], state.a[:, cols], zs[:, cols], t[idx]
        trial = torch.addcmul(m[:, cols], zi, ti)
        slope_t = wsw[idx] + ti * sws[idx] + C[idx] * _loss_slope(trial, ap, a).mul_(zi).sum(0)
        up = slope_t > 0
        if bool(up.any()):  # Armijo only where the slope test failed: the loss costs two softplus passes
            j, tj = idx[up], ti[up]
            new = j[torch.isnan(base[j])]
            base[new] = _loss(m[:, new], state.ap[:, new], state.an[:, new]).sum(0)
            delta = tj * wsw[j] + 0.5 * tj * tj * sws[j] + C[j] * (
                _loss(trial[:, up], state.ap[:, j], state.an[:, j]).sum(0) - base[j]
            )
            up[up.clone()] = delta > c1 * tj * slope[j]
        pending[idx] = up
        idx = idx[up]
        if not len(idx):
            break
        t[idx] *= 0.5
    t = torch.where(pending, torch.zeros_like(t), t)  # no decrease at all: rounding floor, stay
    state.W = W + t * sw_
    state.b = state.b + t * sb_
    m.addcmul_(zs, t)


def _polish_intercept(state: _Active, steps: int = 1) -> None:
    """A few exact 1-D Newton steps on the intercept alone (elementwise work only), in place.

    Its gradient sums the margin changes of every row, so it is the component a Newton step
    predicts worst; fixing it costs no GEMM.
    """
    for _ in range(steps):
        r, D = _loss_derivatives(state.m, state.ap, state.a)
        step = -r.sum(0) / D.sum(0)
        state.b = state.b + step
        state.m += step
