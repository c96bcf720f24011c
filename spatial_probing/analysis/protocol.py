"""VSR's protocol on fixed splits: fit on train, choose C on dev, score test once; and joint features.

The fit sees only the training rows (the dev and test matrices are never passed to the solver), C is
the grid value with the best dev accuracy (ties: the smallest C, i.e. the strongest regularisation),
and test is scored once with that C. One target gives a binary probe (decision > 0); several give one
one-vs-rest probe per target and the prediction is the arg-max.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from spatial_probing.probes.solver import LogRegFit, fit_logreg
from spatial_probing.probes.solver.predict import decision_function

Combine = Literal["concat", "product", "absdiff", "outer"]
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


def combine(a: np.ndarray, b: np.ndarray, modes: Sequence[Combine]) -> np.ndarray:
    """Joint features of two aligned matrices, the ``modes`` side by side.

    ``concat`` [a, b]; ``product`` a * b and ``absdiff`` |a - b| (equal widths; a CLIP encoder's text and
    image features share one space); ``outer`` the flattened a ⊗ b (any widths; what the scene baselines
    use to tie the caption's relation to the geometry or pixels).
    """
    parts = []
    for mode in modes:
        if mode == "concat":
            parts.append(np.concatenate([a, b], axis=1))
        elif mode == "outer":
            parts.append(np.einsum("ni,nj->nij", a, b).reshape(len(a), -1))
        elif a.shape[1] != b.shape[1]:
            raise ValueError(f"joint mode {mode!r} needs equal widths, got {a.shape[1]} and {b.shape[1]}")
        else:
            parts.append(a * b if mode == "product" else np.abs(a - b))
    if not parts:
        raise ValueError("no joint mode given")
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class SplitFit:
    """The answer of `fit_dev_test`: the fit (train rows only), dev accuracy per C, chosen C, test predictions."""

    fit: LogRegFit
    dev_accuracy: np.ndarray  # [len(Cs)]
    chosen: int  # index into Cs
    test_pred: np.ndarray  # [n_test] predicted class (0/1 for one target, target index for several)

    @property
    def C(self) -> float:
        return self.fit.Cs[self.chosen]


def predictions(x: np.ndarray, fit: LogRegFit, fold: int = 0) -> np.ndarray:
    """[len(Cs), n] predicted class per C of ``fold``: sign for one target, arg-max over targets for several."""
    dec = decision_function(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), fit)[fold]  # [C, n, T]
    return (dec[..., 0] > 0).long().numpy() if dec.shape[-1] == 1 else dec.argmax(-1).numpy()


def classes(y: np.ndarray) -> np.ndarray:
    """The class each row belongs to, in `predictions`' coding: the label, or the index of the 1."""
    return y[:, 0].astype(np.int64) if y.shape[1] == 1 else y.argmax(1)


def fit_dev_test(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray], test_x: np.ndarray,
                 Cs: Sequence[float] = DEFAULT_CS, class_weight: Literal["balanced"] | None = "balanced",
                 tol: float = 1e-6) -> SplitFit:
    """Fit every C on ``train`` = (X, Y [n, T]) only, choose C by accuracy on ``dev``, predict ``test_x``."""
    x_train, y_train = train
    fit = fit_logreg(x_train, y_train, np.ones((1, *y_train.shape), dtype=bool), sorted(Cs),
                     class_weight=class_weight, tol=tol)
    dev_acc = (predictions(dev[0], fit) == classes(dev[1])[None]).mean(axis=1)
    chosen = int(np.flatnonzero(dev_acc == dev_acc.max())[0])
    return SplitFit(fit=fit, dev_accuracy=dev_acc, chosen=chosen, test_pred=predictions(test_x, fit)[chosen])
