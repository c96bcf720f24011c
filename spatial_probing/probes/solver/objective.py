"""The problems of one fit: scikit-learn's weighted L2 logistic objective per (fold, C, target).

Row weights (sample and ``balanced`` class weights, per problem on its own training rows), the
per-row loss and its derivatives in the margin, and `Problems`: the flat order of the problems of a
``[F, n, T]`` mask, whose weights are built on demand onto the basis's merged rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spatial_probing.probes.solver.basis import ArrayLike, Basis, as_tensor, columns


def sample_weights(
    sample_weight: ArrayLike | None, n: int, n_targets: int, dev: torch.device
) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, n_targets, dtype=torch.float64, device=dev)
    sw = as_tensor(sample_weight).to(dev, torch.float64)
    return sw.reshape(n, 1).expand(n, n_targets) if sw.ndim == 1 else sw


def label_weights(
    pos: torch.Tensor,
    a: torch.Tensor,
    class_weight: str | None,
    where: list[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``[P, n]`` float64 weights of positive rows and of negative rows (0 off the training rows).

    ``pos [P, n]`` marks each problem's positive rows, ``a [P, n]`` is each row's sample weight on the
    problem's training rows and 0 elsewhere; ``where`` names each problem's (fold, target), for errors.
    One problem per row of the arrays: its rows are contiguous, so building them is row gathers.
    """
    w_pos = a * pos
    w_neg = a - w_pos
    n_pos, n_neg = w_pos.sum(1, keepdim=True), w_neg.sum(1, keepdim=True)
    one_class = ((n_pos <= 0) | (n_neg <= 0)).squeeze(1)
    if bool(one_class.any()):
        named = [where[i] for i in torch.nonzero(one_class).squeeze(1).tolist()] if where is not None else []
        raise ValueError(
            f"{int(one_class.sum())} problem(s) have training rows (of positive weight) of only one class"
            + (f": (fold, target) {named[:10]}" if named else "")
            + "; drop those targets or use fewer folds"
        )
    if class_weight == "balanced":
        # scikit-learn: weight_k = sum(sw) / (2 * sum(sw of class k)) over the rows it is fitted on.
        total = n_pos + n_neg
        w_pos, w_neg = w_pos * (total / (2 * n_pos)), w_neg * (total / (2 * n_neg))
    elif class_weight is not None:
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    return w_pos, w_neg


def loss_derivatives(m, ap, a):
    """First and second derivatives of the weighted loss in each margin: ``r, D [u, P]``.

    ``ap`` is the positive rows' weight, ``a`` every row's (positive plus negative).
    """
    p = torch.sigmoid(m)
    D = torch.addcmul(p, p, p, value=-1).mul_(a)
    return p.mul_(a).sub_(ap), D


def loss_slope(m, ap, a):
    """First derivative of the weighted loss in each margin: ``r [u, P]``."""
    return torch.sigmoid(m).mul_(a).sub_(ap)


def loss(m, ap, a):
    """Weighted logistic loss per row: ``ap log(1 + e^-m) + (a - ap) log(1 + e^m)``."""
    sp = torch.nn.functional.softplus
    return sp(-m).mul_(ap).add_(sp(m).mul_(a - ap))


@dataclass
class Solved:
    Wrot: torch.Tensor  # [F, nC, T, d] float64, rotated coordinates
    brot: torch.Tensor  # [F, nC, T] float64, intercept of the centred features
    n_iter: torch.Tensor
    converged: torch.Tensor
    grad_max: torch.Tensor
    margins: torch.Tensor | None = None  # [u, N] margins Z W + b of the answers, flat order (where kept)


class Problems:
    """The (fold, C, target) problems of a ``[F, n, T]`` mask, in a flat order, weights built on demand."""

    def __init__(self, basis: Basis, Y, sw, class_weight, Cs: tuple[float, ...], mask: torch.Tensor):
        self.basis, self.class_weight = basis, class_weight
        # (fold, target)-major copies: a problem's rows are contiguous, so `weights` gathers whole rows
        self.rows = mask.permute(0, 2, 1).contiguous()  # [F, T, n]
        self.pos, self.sw = (Y > 0).T.contiguous(), sw.T.contiguous()  # [T, n]
        self.shape = (mask.shape[0], len(Cs), mask.shape[2])
        grids = torch.meshgrid(*(torch.arange(k, device=mask.device) for k in self.shape), indexing="ij")
        self.f, self.c, self.t = (g.reshape(-1) for g in grids)
        self.C = torch.tensor(Cs, dtype=torch.float64, device=mask.device)[self.c]

    def __len__(self) -> int:
        return self.f.numel()

    def weights(self, idx: torch.Tensor, cols: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive / negative row weights of problems ``idx`` summed onto Z's rows: ``[u, len(idx)]`` each.

        The weights depend on the (fold, target) pair, not on C, so each pair among ``idx`` is built
        once (a C grid shares them), ``cols`` pairs at a time: the per-row ``[n, P]`` intermediates
        would otherwise be the largest arrays of the whole solve.
        """
        pairs, of = torch.unique(self.f[idx] * self.shape[2] + self.t[idx], return_inverse=True)
        parts = []
        for j in range(0, len(pairs), cols):
            f, t = pairs[j : j + cols] // self.shape[2], pairs[j : j + cols] % self.shape[2]
            where = list(zip(f.tolist(), t.tolist(), strict=True))
            w_pos, w_neg = label_weights(self.pos[t], self.sw[t] * self.rows[f, t], self.class_weight, where)
            parts.append((self.basis.merge(w_pos), self.basis.merge(w_neg)))
        ap, an = torch.cat([p for p, _ in parts], 1), torch.cat([q for _, q in parts], 1)
        return columns(ap, of), columns(an, of)

    def solved(self, W, b, n_iter, converged, grad_max, margins=None) -> Solved:
        """Results over the flat order (``W [d, N]``) reshaped to ``[F, nC, T, ...]``; ``margins`` stay ``[u, N]``."""
        return Solved(W.T.reshape(*self.shape, -1), b.reshape(self.shape), n_iter.reshape(self.shape),
                       converged.reshape(self.shape), grad_max.reshape(self.shape), margins)  # fmt: skip
