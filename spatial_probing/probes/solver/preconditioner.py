"""The preconditioner of the Newton loop's CG: a diagonal in the rotated basis plus exact leading blocks."""

from __future__ import annotations

import torch

from spatial_probing.probes.solver.basis import Basis, columns, matmul

LEAD = 48  # leading rotated directions whose curvature block the preconditioner takes exactly


class Preconditioner:
    """Approximate inverse of the Schur complement ``S = I + C Z^T D Z - c c^T / h``, per problem.

    In the rotated basis ``Z^T Z = diag(lam)``, so ``Z^T D Z ~ mean(D) diag(lam)`` where D is
    flat. It is not (rare positives; at large C most rows are fitted and carry no curvature), and
    the error concentrates in the leading directions: there the leading block of the problem's
    anchor (`lead_blocks`, computed once per anchor and shared by its folds), scaled to the
    problem's current total curvature, replaces the diagonal. A fold differs from its anchor by
    a fifth of the rows, so the block stays close; rebuilding it from the problem's own
    curvature costs about five CG iterations and saved fewer. Cold starts use the diagonal.
    """

    def __init__(self, basis: Basis, D, Cq, c, h, lead, lead_dsum):
        lam = basis.lam.to(D.dtype)
        self.diag = (1 + (Cq * D.sum(0) / basis.n_rows)[None, :] * lam[:, None] - c * c / h).clamp_min(1.0)
        self.lead = basis.lead_index(lead.shape[0])
        has = lead_dsum > 0
        S = (
            lead.permute(2, 0, 1)
            * torch.where(has, Cq * D.sum(0) / lead_dsum.clamp_min(1e-30), 0)[:, None, None]
        )
        S.diagonal(dim1=1, dim2=2).add_(torch.where(has[:, None], 1.0, self.diag[self.lead].T))
        self.chol, info = torch.linalg.cholesky_ex(S)
        # A block scaled up a lot (a tiny MDL prefix block against its anchor's curvature) can lose
        # definiteness in rounding; such a problem keeps the diagonal, a valid if weaker preconditioner.
        lost = info > 0
        if lost.any():
            self.chol[lost] = torch.diag_embed(self.diag[self.lead].T[lost].sqrt())

    def __call__(self, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Apply to the residuals ``r [d, len(idx)]`` of problems ``idx``."""
        z = r / columns(self.diag, idx)
        z[self.lead] = torch.cholesky_solve(r[self.lead].T.unsqueeze(-1), self.chol[idx]).squeeze(-1).T
        return z


def lead_blocks(basis: Basis, D: torch.Tensor, k: int, rows: int = 256) -> torch.Tensor:
    """Leading ``k x k`` block of the intercept-eliminated curvature per column p of ``D [u, K]``: ``[k, k, K]``.

    ``Z_k^T D_p Z_k - c c^T / sum(D_p)`` with ``c = Z_k^T D_p 1``: a Schur complement of a
    positive semi-definite matrix, so positive semi-definite. One GEMM per row block against
    the pairwise products of the leading columns (upper triangle), instead of a ``[K, u, k]``
    batched product.
    """
    lead = basis.lead_columns(k)
    u = lead.shape[0]
    i, j = torch.triu_indices(k, k, device=lead.device)
    G = torch.zeros(i.numel(), D.shape[1], dtype=lead.dtype, device=lead.device)
    for r in range(0, u, rows):
        zb = lead[r : r + rows]
        G += matmul((zb[:, i] * zb[:, j]).T, D[r : r + rows])
    B = torch.empty(D.shape[1], k, k, dtype=lead.dtype, device=lead.device)
    B[:, i, j] = G.T
    B[:, j, i] = G.T
    c = matmul(lead.T, D).T
    return (B - c[:, :, None] * c[:, None, :] / D.sum(0)[:, None, None]).permute(1, 2, 0)
