"""MDL probing (Voita & Titov 2020): online codelength of each target's labels given the features.

The rows of a target are put in a seeded random order and cut at the standard fractions of their
number (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50, 100 %). The first block is sent with the
uniform code (1 bit per binary label); every later block is sent with the code of a probe trained
on all rows before it: ``-log2 p(y | x)`` per row. Online codelength = the sum; compression =
uniform codelength (``n`` bits) / online codelength. A probe that needs few examples to predict a
property compresses it well, which separates "easy to extract" from "extractable at all".

Every block's probes of every target are one batched `fit_logreg` solve: block k is a "fold" whose
training mask is the first rows of the order. L2 logistic regression at one C, no class weights
(codelengths need the probe's calibrated probabilities). A prefix holding only one class cannot
train a probe; its block is sent with the prefix's label frequencies instead (add-1/2 estimate), so
the code stays a valid, honest code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spatial_probing.probes.solver import fit_logreg
from spatial_probing.probes.solver.basis import ArrayLike
from spatial_probing.probes.solver.predict import decision_function, sparse_rows

FRACTIONS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)


@dataclass
class MDLOptions:
    """Online codelength settings (``model.mdl.*``).

    Args:
        C: inverse regularisation of every block's probe.
        seed: seed of the row order.
        fractions: block ends in percent of a target's rows, increasing, the last 100.
    """

    C: float = 1.0
    seed: int = 0
    fractions: list[float] = field(default_factory=lambda: list(FRACTIONS))

    def __post_init__(self) -> None:
        f = list(self.fractions)
        if len(f) < 2 or f[-1] != 100 or any(b <= a for a, b in zip(f, f[1:], strict=False)) or f[0] <= 0:
            raise ValueError(f"model.mdl.fractions must increase from > 0 to 100, got {f}")
        if self.C <= 0:
            raise ValueError(f"model.mdl.C must be > 0, got {self.C}")


@dataclass
class Codelength:
    """Per target: ``online_bits`` and ``uniform_bits`` ``[T]``; ``fallback_blocks`` used the frequency code."""

    online_bits: np.ndarray
    uniform_bits: np.ndarray
    fallback_blocks: np.ndarray

    @property
    def compression(self) -> np.ndarray:
        return self.uniform_bits / self.online_bits


def block_ends(n_rows: np.ndarray, fractions: list[float]) -> np.ndarray:
    """``[K, T]`` end (exclusive rank) of each block per target; the first block holds at least one row."""
    frac = np.asarray(fractions, dtype=float)[:, None] / 100
    ends = np.floor(frac * np.asarray(n_rows)[None]).astype(np.int64)
    ends[0] = np.maximum(ends[0], 1)
    return np.maximum.accumulate(ends, axis=0)


def order_ranks(row_mask: np.ndarray, seed: int) -> np.ndarray:
    """``[n, T]`` position of each row in its target's transmission order (-1 outside the target)."""
    n = row_mask.shape[0]
    position = np.empty(n, dtype=np.int64)
    position[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    ranks = np.full(row_mask.shape, -1, dtype=np.int64)
    for t in range(row_mask.shape[1]):
        rows = np.flatnonzero(row_mask[:, t])
        ranks[rows[np.argsort(position[rows], kind="stable")], t] = np.arange(len(rows))
    return ranks


def online_codelength(X: ArrayLike, Y: ArrayLike, row_mask: np.ndarray, options: MDLOptions, **fit_kwargs) -> Codelength:
    """Online codelength of every target of ``Y [n, T]`` over its rows ``row_mask [n, T]`` given ``X [n, d]``.

    ``fit_kwargs`` go to `fit_logreg` (tol, dtype, device); class weights are never used.
    """
    y = np.asarray(Y).astype(bool)
    mask = np.asarray(row_mask, dtype=bool)
    ranks = order_ranks(mask, options.seed)
    n_rows = mask.sum(0)
    ends = block_ends(n_rows, options.fractions)  # [K, T]
    train = ranks[None] < ends[:-1, None]  # [K-1, n, T] prefixes
    train &= mask[None]
    pos = (train & y[None]).sum(1)  # [K-1, T]
    neg = train.sum(1) - pos
    trainable = (pos > 0) & (neg > 0)
    # One batched solve needs a two-class mask for every problem: an untrainable prefix borrows the
    # first trainable one (its answer is not used: that block takes the frequency code instead).
    # (a target no prefix can train borrows all its rows).
    first = np.argmax(trainable, axis=0)
    borrowed = train[first, :, np.arange(train.shape[2])].T  # [n, T]
    borrowed = np.where(trainable.any(0)[None], borrowed, mask)
    masks = np.where(trainable[:, None], train, borrowed[None])
    fit_kwargs.pop("class_weight", None)
    fit = fit_logreg(X, y.astype(np.int8), masks, [options.C], class_weight=None, **fit_kwargs)
    decision = decision_function(sparse_rows(X), fit)[:, 0].cpu().numpy()  # [K-1, n, T]
    sign = np.where(y, 1.0, -1.0)[None]
    model_bits = np.logaddexp(0.0, -sign * decision) / math.log(2)
    p_pos = (pos + 0.5) / (pos + neg + 1.0)  # [K-1, T]
    freq_bits = -np.log2(np.where(y[None], p_pos[:, None], 1 - p_pos[:, None]))
    bits = np.where(trainable[:, None], model_bits, freq_bits)
    coded = (ranks[None] >= ends[:-1, None]) & (ranks[None] < ends[1:, None])  # [K-1, n, T]
    online = ends[0].astype(float) + (bits * coded).sum((0, 1))
    return Codelength(
        online_bits=online,
        uniform_bits=n_rows.astype(float),
        fallback_blocks=(~trainable).sum(0),
    )

