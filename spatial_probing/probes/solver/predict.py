"""Decision values, exact-sign predictions and probabilities of a fit, for every row and problem."""

from __future__ import annotations

import numpy as np
import torch

from spatial_probing.probes.solver import LogRegFit
from spatial_probing.probes.solver.basis import ArrayLike, rows64


def decision_function(X: ArrayLike, fit: LogRegFit, block: int = 4096) -> torch.Tensor:
    """Float64 decision values ``x.w + b`` of every row under every problem: ``[F, len(Cs), n, T]``.

    X is converted in row blocks, so no float64 copy of it is made.
    """
    F, nC, T, d = fit.W.shape
    W = fit.W.reshape(-1, d).T
    n = X.shape[0]
    out = torch.empty(n, F * nC * T, dtype=torch.float64, device=W.device)
    for i in range(0, n, block):
        out[i : i + block] = rows64(X, np.arange(i, min(i + block, n)), W.device) @ W
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
        x = rows64(X, idx, W.device).float()
        dec = torch.addmm(b32, x, W32)
        out[i : i + block] = dec > 0
        unsure = torch.nonzero(dec.abs_() <= torch.outer(x.norm(dim=1), w_bound).add_(b_bound))
        if len(unsure):
            r, p = unsure[:, 0], unsure[:, 1]
            out[i + r, p] = (rows64(X, idx[r.cpu().numpy()], W.device) * W[p]).sum(1) + b[p] > 0
    return out.T.reshape(F, nC, T, -1).transpose(2, 3)


def predict_proba(X: ArrayLike, fit: LogRegFit) -> torch.Tensor:
    """Positive-class probability of every row under every problem: ``[F, len(Cs), n, T]``."""
    return torch.sigmoid(decision_function(X, fit))
