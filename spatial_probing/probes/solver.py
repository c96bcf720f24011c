"""Batched L2 logistic regression: every (fold, C, target) problem solved at once, to scikit-learn's optimum.

Each problem minimises scikit-learn's objective
``0.5 ||w||^2 + C * sum_i s_i log(1 + exp(-y_i (w.x_i + b)))`` (intercept unpenalised) over the
rows its train mask selects. All problems share the feature matrix, so the work of an iteration is
a few GEMMs of the matrix with one column per problem; everything else is elementwise.

Algorithm (truncated Newton, vectorised over problems):

* Reparametrise once: centre the features (the intercept absorbs the shift, which decouples it
  from the weights) and rotate them into the eigenbasis of the centred Gram matrix
  ``Xc^T Xc = V diag(lam) V^T``. Rotation keeps ``||w||``, hence the objective. In the new basis
  ``Z = Xc V`` the Hessian ``I + C Z^T D Z`` is close to ``I + C mean(D) diag(lam)``: the
  per-problem diagonal preconditioner.
* Newton system with the intercept eliminated exactly (Schur complement): its curvature is large
  and coupled to the weights, and left in the CG system it dominates the residual.
* Per problem: preconditioned CG to a relative residual that tightens as the gradient shrinks
  (inexact Newton), then its own backtracking line search (trial points are elementwise work:
  margins are affine in the step and ``Z @ step`` is accumulated during CG), then a few exact 1-D
  Newton steps on the intercept alone, whose gradient the quadratic model predicts worst.
* Problems meeting the tolerance leave the working set.
* Warm start: each (C, target) is first solved loosely on the union of its folds' training rows;
  every fold starts from that answer (it differs from it by a fifth of the rows).
* Mixed precision: Hessian-vector products (the bulk of the work) run in ``dtype``; gradients,
  margins and line searches in float64, so the optimum is float64-accurate either way.

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
) -> LogRegFit:
    """Fit every (fold, C, target) L2 logistic regression to scikit-learn's optimum.

    ``X [n, d]`` features (any float dtype, numpy or torch, may be a memory map; converted once),
    ``Y [n, T]`` binary targets, ``train_mask [F, n, T]`` training rows of each fold and target,
    ``sample_weight`` ``[n]`` or ``[n, T]``, ``class_weight`` None or ``"balanced"`` (computed per
    problem on its own training rows, as scikit-learn does on the data it is fitted on).
    ``tol`` is scikit-learn's ``gtol`` (max abs gradient of the scaled objective); ``max_iter``
    bounds Newton steps. ``dtype`` is the precision of the Hessian-vector products (float32 is
    faster; the answer stays float64-accurate). ``max_problems`` bounds how many problems are
    solved together (memory grows by a few ``[n, max_problems]`` arrays; by default about twice
    the feature matrix). ``warm_start`` first solves each (C, target) on the union of its folds.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    Yt = _as_tensor(Y).to(dev)
    mask = _as_tensor(train_mask).to(dev, torch.bool)
    n_folds, n, n_targets = mask.shape
    Cs = tuple(float(c) for c in Cs)
    basis = _Basis.build(X, mask.any(dim=(0, 2)), dtype)
    d = basis.Z.shape[1]
    sw = _sample_weights(sample_weight, n, n_targets, dev)
    if max_problems is None:
        # ~6 float64 [n, P] working arrays: keep them within about twice the float32 features.
        max_problems = max(16, (2 * d * 4) // (6 * 8))
    solve = _ChunkedSolver(basis, Yt, sw, class_weight, Cs, max_problems)
    gemm_size = basis.Z.numel() * min(max_problems, n_folds * len(Cs) * n_targets)
    with _threads(1 if gemm_size < _SMALL_GEMM and dev.type == "cpu" else torch.get_num_threads()):
        W0 = b0 = None
        if warm_start and n_folds > 1:
            union = mask.any(0, keepdim=True)
            # Loose is enough: fold answers differ from the union's by far more than this.
            anchor = solve(union, None, None, tol=max(tol, 1e-6), max_iter=max_iter)
            W0, b0 = anchor.Wrot.expand(n_folds, -1, -1, -1), anchor.brot.expand(n_folds, -1, -1)
        res = solve(mask, W0, b0, tol=tol, max_iter=max_iter)

    # Back to the original coordinates: w = V u, b = b' - mu.w.
    W = res.Wrot @ basis.V.T
    b = res.brot - W @ basis.mu
    return LogRegFit(
        W=W, b=b, Cs=Cs, n_iter=res.n_iter, converged=res.converged, grad_max=res.grad_max, solver="batched"
    )


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


def predict(X: ArrayLike, fit: LogRegFit) -> torch.Tensor:
    """Predicted class (True = positive) of every row under every problem: ``[F, len(Cs), n, T]``."""
    return decision_function(X, fit) > 0


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
        r = _loss_slope(Xt @ W + fit.b[f].reshape(-1), ap, an)
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
    """The distinct used rows of X, centred and rotated: ``Z = (X_u - mu) V`` (stored in the HVP dtype).

    Rows with identical features are merged (their weights add up per label), which leaves every
    objective unchanged: VSR repeats each caption and image across rows. ``row_of[i]`` is row
    i's index in Z, -1 for rows no problem trains on (they may hold NaN, e.g. a failed image).
    """

    Z: torch.Tensor  # [u, d]
    mu: torch.Tensor  # [d] float64
    V: torch.Tensor  # [d, d] float64
    lam: torch.Tensor  # [d] float64, eigenvalues of the count-weighted centred Gram matrix
    row_of: torch.Tensor  # [n] int64
    n_rows: int  # rows behind Z, with multiplicity
    block: int = 2048  # rows per float64 block product when Z is stored in lower precision

    @classmethod
    def build(cls, X: ArrayLike, used: torch.Tensor, dtype: torch.dtype, block: int = 2048) -> _Basis:
        """Merge, centre and rotate X in row blocks; Z is the only full-size copy made."""
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
        gram = sum(
            ((xb - mu) * counts[sl, None].sqrt()).T @ ((xb - mu) * counts[sl, None].sqrt())
            for sl, xb in blocks()
        )
        lam, V = _eigh_single_thread(gram)
        Z = torch.empty(len(first), len(mu), dtype=dtype, device=dev)
        for sl, xb in blocks():
            Z[sl] = ((xb - mu) @ V).to(dtype)
        return cls(Z=Z, mu=mu, V=V, lam=lam.clamp_min(0), row_of=row_of, n_rows=int(n_rows), block=block)

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
    same = np.concatenate(
        [
            (
                _rows64(X, rows[i : i + block], torch.device("cpu"))
                == _rows64(X, rows[rep[i : i + block]], torch.device("cpu"))
            )
            .all(1)
            .numpy()
            for i in range(0, len(rows), block)
        ]
    )
    rep = np.where(same, rep, np.arange(len(rows)))
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


def _eigh_single_thread(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh`` on one thread: multithreaded LAPACK eigensolvers of a d x d matrix gain little and
    stall for seconds when other processes hold the cores."""
    with _threads(1):
        return torch.linalg.eigh(gram)


def _sample_weights(
    sample_weight: ArrayLike | None, n: int, n_targets: int, dev: torch.device
) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, n_targets, dtype=torch.float64, device=dev)
    sw = _as_tensor(sample_weight).to(dev, torch.float64)
    return sw.reshape(n, 1).expand(n, n_targets) if sw.ndim == 1 else sw


def _label_weights(
    Y: torch.Tensor, mask: torch.Tensor, sw: torch.Tensor, class_weight: str | None, t_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``[n, P]`` float64 weights of positive rows and of negative rows (0 off the training rows).

    ``mask [n, P]`` is each problem's training rows, ``t_idx [P]`` its target.
    """
    pos = Y[:, t_idx] > 0
    a = sw[:, t_idx] * mask
    w_pos = a * pos
    w_neg = a - w_pos
    n_pos, n_neg = w_pos.sum(0), w_neg.sum(0)
    if bool(((n_pos <= 0) | (n_neg <= 0)).any()):
        bad = torch.nonzero((n_pos <= 0) | (n_neg <= 0)).squeeze(1).tolist()
        raise ValueError(f"problems {bad} (of this chunk) have training rows of only one class")
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


class _ChunkedSolver:
    """Solves all (fold, C, target) problems of a ``[F, n, T]`` mask, ``max_problems`` at a time."""

    def __init__(self, basis: _Basis, Y, sw, class_weight, Cs: tuple[float, ...], max_problems: int):
        self.basis, self.Y, self.sw, self.class_weight = basis, Y, sw, class_weight
        self.Cs, self.max_problems = Cs, max_problems

    def __call__(self, mask, W0, b0, tol: float, max_iter: int) -> _Solved:
        n_folds, n, n_targets = mask.shape
        dev, d = mask.device, self.basis.Z.shape[1]
        shape = (n_folds, len(self.Cs), n_targets)
        out = _Solved(
            Wrot=torch.zeros(*shape, d, dtype=torch.float64, device=dev),
            brot=torch.zeros(shape, dtype=torch.float64, device=dev),
            n_iter=torch.zeros(shape, dtype=torch.int64, device=dev),
            converged=torch.zeros(shape, dtype=torch.bool, device=dev),
            grad_max=torch.zeros(shape, dtype=torch.float64, device=dev),
        )
        grids = torch.meshgrid(*(torch.arange(k, device=dev) for k in shape), indexing="ij")
        f_all, c_all, t_all = (g.reshape(-1) for g in grids)
        Cs = torch.tensor(self.Cs, dtype=torch.float64, device=dev)
        for start in range(0, f_all.numel(), self.max_problems):
            f, c, t = (g[start : start + self.max_problems] for g in (f_all, c_all, t_all))
            w_pos, w_neg = _label_weights(self.Y, mask[f, :, t].T, self.sw, self.class_weight, t)
            w_pos, w_neg = self.basis.merge(w_pos), self.basis.merge(w_neg)
            init = (W0[f, c, t].T, b0[f, c, t]) if W0 is not None else None
            W, b, n_iter, converged, grad_max = _newton_cg(
                self.basis, w_pos, w_neg, Cs[c], init, tol, max_iter
            )
            out.Wrot[f, c, t], out.brot[f, c, t] = W.T, b
            out.n_iter[f, c, t], out.converged[f, c, t], out.grad_max[f, c, t] = n_iter, converged, grad_max
        return out


def _newton_cg(basis: _Basis, ap, an, Cp, init, tol: float, max_iter: int, cg_max: int = 50):
    """Truncated Newton on problems with positive / negative row weights ``ap, an [u, P]``, ``Cp [P]``."""
    u, d = basis.Z.shape
    P = ap.shape[1]
    dev = ap.device
    if init is None:
        W = torch.zeros(d, P, dtype=torch.float64, device=dev)
        # The intercept's optimum at w = 0 (features are centred): the weighted log-odds. Starting
        # there puts the curvature of rare positives at the right scale.
        b = torch.log(ap.sum(0) / an.sum(0))
        m = b.expand(u, P).clone()
    else:
        W, b = init[0].clone(), init[1].clone()
        m = basis.mm64(W) + b
    out_W, out_b = W.clone(), b.clone()
    n_iter = torch.zeros(P, dtype=torch.int64, device=dev)
    converged = torch.zeros(P, dtype=torch.bool, device=dev)
    grad_max = torch.full((P,), float("inf"), dtype=torch.float64, device=dev)

    ids = torch.arange(P, device=dev)
    scale = Cp * (ap + an).sum(0)  # C * sum of weights: scikit-learn's loss scaling
    for it in range(max_iter + 1):
        r, D = _loss_derivatives(m, ap, an)
        gw = W + Cp * basis.tmm64(r)
        gb = Cp * r.sum(0)
        gmax = _orig_grad_max(basis, gw, gb) / scale
        grad_max[ids], out_W[:, ids], out_b[ids], n_iter[ids] = gmax, W, b, it
        done = gmax <= tol
        converged[ids[done]] = True
        if it == max_iter or bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            ids, W, b, m, ap, an, D, gw, gb, Cp, scale, gmax = (
                x[..., keep] for x in (ids, W, b, m, ap, an, D, gw, gb, Cp, scale, gmax)
            )
        # The last steps need only tol / |g| of relative residual, not the quadratic-rate sqrt(|g|).
        gnorm = torch.sqrt((gw * gw).sum(0) + gb * gb)
        eta = torch.clamp(torch.maximum(torch.sqrt(gmax), 0.5 * tol * scale / gnorm), max=0.1)
        sw_, sb_, zs = _pcg(basis, D.to(basis.Z.dtype), Cp, gw, gb, eta, cg_max)
        W, b, m = _line_search(W, b, m, sw_, sb_, zs, gw, gb, ap, an, Cp)
        b, m = _polish_intercept(b, m, ap, an)
    return out_W, out_b, n_iter, converged, grad_max


def _loss_derivatives(m, ap, an):
    """First and second derivatives of the weighted loss in each margin: ``r, D [u, P]``."""
    p = torch.sigmoid(m)
    return an * p - ap * (1 - p), (ap + an) * p * (1 - p)


def _loss_slope(m, ap, an):
    """First derivative of the weighted loss in each margin: ``r [u, P]``."""
    p = torch.sigmoid(m)
    return an * p - ap * (1 - p)


def _loss(m, ap, an):
    """Weighted logistic loss per row: ``ap log(1 + e^-m) + an log(1 + e^m)``."""
    sp = torch.nn.functional.softplus
    return ap * sp(-m) + an * sp(m)


def _orig_grad_max(basis: _Basis, gw: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Max abs gradient in the original coordinates: d/dw = V g_u + mu g_b, d/db = g_b."""
    g = basis.V @ gw + basis.mu[:, None] * gb
    return torch.maximum(g.abs().amax(0), gb.abs())


def _pcg(basis: _Basis, D, Cp, gw, gb, eta, cg_max):
    """Per-problem preconditioned CG on the Newton system with the intercept eliminated.

    The Hessian is ``[[A, c], [c^T, h]]`` with ``A = I + C Z^T D Z``, ``c = C Z^T D 1`` and
    ``h = C sum(D)``; CG runs on the Schur complement ``A - c c^T / h`` in the HVP dtype, and the
    intercept step follows exactly. Returns the float64 step and ``Z s_w + s_b`` (accumulated
    from CG's products, so it costs no GEMM).
    """
    Z = basis.Z
    dt = Z.dtype
    Cq = Cp.to(dt)
    h = Cq * D.sum(0)
    c = Cq * (Z.T @ D)
    # In the rotated basis Z^T Z = diag(lam), so Z^T D Z ~ mean(D) diag(lam) where D is flat.
    M = (1 + (Cq * D.sum(0) / basis.n_rows)[None, :] * basis.lam.to(dt)[:, None] - c * c / h).clamp_min(1.0)
    x = torch.zeros_like(c)
    zx = torch.zeros_like(D)
    r = (-gw + c.double() * (gb / h.double())).to(dt)
    z = r / M
    p = z.clone()
    rz = (r * z).sum(0)
    r0 = torch.sqrt((r * r).sum(0))
    active = torch.ones_like(rz, dtype=torch.bool)
    for _ in range(cg_max):
        q = Z @ p
        Sp = p + Cq * (Z.T @ (D * q)) - c * ((c * p).sum(0) / h)
        alpha = torch.where(active, rz / (p * Sp).sum(0), torch.zeros_like(rz))
        x += alpha * p
        zx += alpha * q
        r -= alpha * Sp
        active &= torch.sqrt((r * r).sum(0)) > eta.to(dt) * r0
        if not bool(active.any()):
            break
        z = r / M
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    x = x.double()
    xb = -(gb + (c.double() * x).sum(0)) / h.double()
    return x, xb, zx.double() + xb


def _line_search(W, b, m, sw_, sb_, zs, gw, gb, ap, an, Cp, c1=1e-4, max_halvings=30):
    """Per-problem backtracking from the full Newton step.

    A step is accepted when the objective's slope along the direction is still <= 0 there (the
    problem is convex, so the objective decreased all the way), or on Armijo's sufficient
    decrease. The slope test is what works near the optimum, where objective differences drown
    in rounding but the slope, a sum of small terms, does not.
    """
    slope = (gw * sw_).sum(0) + gb * sb_
    wsw, sws = (W * sw_).sum(0), (sw_ * sw_).sum(0)
    base = _loss(m, ap, an)
    t = torch.ones_like(gb)
    pending = torch.ones_like(gb, dtype=torch.bool)
    for _ in range(max_halvings):
        trial = m + t * zs
        slope_t = wsw + t * sws + Cp * (_loss_slope(trial, ap, an) * zs).sum(0)
        delta = t * wsw + 0.5 * t * t * sws + Cp * (_loss(trial, ap, an) - base).sum(0)
        pending &= (slope_t > 0) & (delta > c1 * t * slope)
        if not bool(pending.any()):
            break
        t = torch.where(pending, t * 0.5, t)
    t = torch.where(pending, torch.zeros_like(t), t)  # no decrease at all: rounding floor, stay
    return W + t * sw_, b + t * sb_, m + t * zs


def _polish_intercept(b, m, ap, an, steps: int = 2):
    """A few exact 1-D Newton steps on the intercept alone (elementwise work only).

    Its gradient sums the margin changes of every row, so it is the component a Newton step
    predicts worst; fixing it costs no GEMM.
    """
    for _ in range(steps):
        r, D = _loss_derivatives(m, ap, an)
        step = -r.sum(0) / D.sum(0)
        b = b + step
        m = m + step
    return b, m
