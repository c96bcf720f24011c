"""Decision values, exact-sign predictions and probabilities of a fit, for every row and problem."""

from __future__ import annotations

import numpy as np
import torch

from spatial_probing.probes.solver import LogRegFit
from spatial_probing.probes.solver.basis import SPARSE_MIN_COLUMNS, ArrayLike, csr, held_sparse, rows64


def _block(X: ArrayLike, start: int, stop: int, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` of X (numpy, memory map or torch) as a ``dtype`` tensor on ``dev``.

    A slice, converted once: no row gather and no float64 detour for the float32 products.
    """
    rows = X[start:stop]
    if not isinstance(rows, torch.Tensor):  # copied: a memory map is read-only, torch wants writable arrays
        rows = torch.from_numpy(np.array(rows))
    return rows.to(dev, dtype)


def sparse_rows(X: ArrayLike) -> ArrayLike:
    """X as `predict` and `decision_values` multiply it fastest: a float64 CSR copy where the solver holds
    such features sparse too (the word n-grams: 17 of 2,327 entries per row; `basis.held_sparse`), whose products
    read the stored entries only and are float64 from the start; else X itself. Convert once, predict often."""
    if X.ndim != 2 or X.shape[1] < SPARSE_MIN_COLUMNS or _is_csr(X):
        return X
    Xt = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.asarray(X))
    if not held_sparse(int(torch.count_nonzero(Xt)), *Xt.shape):
        return X
    return csr(Xt.to(torch.float64).to_sparse())


def _is_csr(X: ArrayLike) -> bool:
    return isinstance(X, torch.Tensor) and X.layout == torch.sparse_csr


def decision_values(X: ArrayLike, W: torch.Tensor, b: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Float64 decision values ``x.w + b`` of every row under problems ``W [P, d]``, ``b [P]``: ``[n, P]``.

    X is converted in row blocks, so no float64 copy of it is made; a CSR X (`sparse_rows`) is multiplied as it is.
    """
    if _is_csr(X):
        return (X.to(W.device) @ W.T.contiguous()).add_(b)
    out = torch.empty(X.shape[0], W.shape[0], dtype=torch.float64, device=W.device)
    for i in range(0, X.shape[0], block):
        out[i : i + block] = _block(X, i, i + block, torch.float64, W.device) @ W.T
    return out.add_(b)


def decision_function(X: ArrayLike, fit: LogRegFit, block: int = 4096) -> torch.Tensor:
    """Float64 decision values ``x.w + b`` of every row under every problem: ``[F, len(Cs), n, T]``."""
    F, nC, T, d = fit.W.shape
    out = decision_values(X, fit.W.reshape(-1, d), fit.b.reshape(-1), block)
    return out.T.reshape(F, nC, T, -1).transpose(2, 3)


def predict(X: ArrayLike, fit: LogRegFit, block: int = 4096) -> torch.Tensor:
    """Predicted class (True = positive) of every row under every problem: ``[F, len(Cs), n, T]``.

    Exactly the sign of the float64 decision value, at float32 GEMM speed: values within the
    float32 rounding bound of 0 (``2 (d + 3) eps (|x| |w| + |b|)``, from the dot product's error
    bound) are recomputed in float64. A CSR X (`sparse_rows`) is multiplied in float64 directly.
    """
    F, nC, T, d = fit.W.shape
    W = fit.W.reshape(-1, d)
    b = fit.b.reshape(-1)
    if _is_csr(X):
        return (decision_values(X, W, b) > 0).T.reshape(F, nC, T, -1).transpose(2, 3)
    W32, b32 = W.float().T, b.float()
    # The bound is computed in float32: its own rounding (~1e-7 relative) is far inside its
    # factor-2 slack, and float64 [block, P] arrays would cost more than the GEMM itself.
    k = 2 * (d + 3) * torch.finfo(torch.float32).eps
    w_bound, b_bound = W.norm(dim=1).float() * k, b32.abs() * k  # bound = |x| w_bound + b_bound
    out = torch.empty(X.shape[0], W.shape[0], dtype=torch.bool, device=W.device)
    for i in range(0, X.shape[0], block):
        x = _block(X, i, i + block, torch.float32, W.device)
        dec = torch.addmm(b32, x, W32)
        out[i : i + block] = dec > 0
        unsure = torch.nonzero(dec.abs_() <= torch.outer(x.norm(dim=1), w_bound).add_(b_bound))
        if len(unsure):
            r, p = unsure[:, 0], unsure[:, 1]
            out[i + r, p] = (rows64(X, i + r.cpu().numpy(), W.device) * W[p]).sum(1) + b[p] > 0
    return out.T.reshape(F, nC, T, -1).transpose(2, 3)


def predict_proba(X: ArrayLike, fit: LogRegFit) -> torch.Tensor:
    """Positive-class probability of every row under every problem: ``[F, len(Cs), n, T]``."""
    return torch.sigmoid(decision_function(X, fit))
