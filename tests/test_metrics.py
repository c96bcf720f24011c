"""Vectorised probe metrics equal scikit-learn's and torchmetrics'; nested CV picks the best inner C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchmetrics.functional.classification as tmf
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from spatial_probing.probes.folds import fold_masks, inner_folds, target_folds
from spatial_probing.probes.metrics import METRICS, binary_metrics, confusion, fit_metrics
from spatial_probing.probes.selection import select_C
from spatial_probing.probes.solver import fit_logreg
from spatial_probing.probes.solver.predict import predict


def _case(seed=0, F=3, C=2, n=150, T=4):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, T)) < [0.1, 0.3, 0.5, 0.02]).astype(np.int8)
    Y[:3, 3] = 1
    pred = torch.from_numpy(rng.random((F, C, n, T)) < 0.3)
    pred[0, 0, :, 2] = False  # a probe that never says positive: F1 of class 1 is 0, not NaN
    test = rng.random((F, n, T)) < 0.4
    return pred, Y, test


def test_metrics_equal_sklearn():
    pred, Y, test = _case()
    got = binary_metrics(pred, Y, test)
    assert set(got) == set(METRICS)
    for f in range(3):
        for c in range(2):
            for t in range(4):
                rows = test[f, :, t]
                y, p = Y[rows, t], pred[f, c, rows, t].numpy()
                want = {
                    "f1_macro": f1_score(y, p, average="macro", labels=[0, 1], zero_division=0),
                    "f1_pos": f1_score(y, p, zero_division=0),
                    "accuracy": accuracy_score(y, p),
                    "balanced_accuracy": balanced_accuracy_score(y, p) if len(np.unique(y)) == 2 else None,
                }
                for name, value in want.items():
                    if value is not None:
                        assert got[name][f, c, t].item() == _approx(value), (name, f, c, t)


def test_metrics_equal_torchmetrics():
    pred, Y, test = _case(1)
    got = binary_metrics(pred, Y, test)
    rows = torch.from_numpy(test[1, :, 1])
    y, p = torch.from_numpy(Y[:, 1])[rows], pred[1, 0, :, 1][rows].long()
    assert got["f1_macro"][1, 0, 1].item() == _approx(
        tmf.multiclass_f1_score(p, y.long(), num_classes=2, average="macro").item(), 1e-6
    )
    assert got["f1_pos"][1, 0, 1].item() == _approx(tmf.binary_f1_score(p, y).item(), 1e-6)
    assert got["accuracy"][1, 0, 1].item() == _approx(tmf.binary_accuracy(p, y).item(), 1e-6)
    assert got["balanced_accuracy"][1, 0, 1].item() == _approx(
        tmf.multiclass_recall(p, y.long(), num_classes=2, average="macro").item(), 1e-6
    )


def _approx(value, tol=1e-12):
    return pytest.approx(value, abs=tol)


def _probe_data(seed=0, n=300, d=10, T=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = ((X[:, :T] + rng.standard_normal((n, T))) > 1.0).astype(np.int8)
    train, test = fold_masks(target_folds(Y, n_splits=3, seed=42))
    return X, Y, train, test


def test_fit_metrics_scores_test_rows_of_each_fold():
    X, Y, train, test = _probe_data()
    fit = fit_logreg(X, Y, train, [0.1, 1.0])
    got = fit_metrics(X, Y, test, fit)
    torch.testing.assert_close(got["f1_macro"], binary_metrics(predict(X, fit), Y, test)["f1_macro"])


def test_fit_metrics_of_repeated_rows_equal_every_row_predicted():
    # VSR holds every caption twice: fit_metrics predicts each distinct feature row once
    X, Y, train, _ = _probe_data(2)
    X2, Y2 = np.concatenate([X, X[::-1]]), np.concatenate([Y, Y[::-1]])
    fit = fit_logreg(X, Y, train, [0.1, 1.0])
    test = np.random.default_rng(0).random((3, len(X2), Y.shape[1])) < 0.3
    got = fit_metrics(X2, Y2, test, fit)
    want = binary_metrics(predict(X2, fit), Y2, test)
    assert all(torch.equal(got[name], want[name]) for name in METRICS)


def test_select_C_picks_the_best_mean_inner_macro_f1():
    X, Y, train, test = _probe_data(1)
    Cs = [1e-3, 0.1, 10.0]
    sel = select_C(X, Y, train, test, Cs, inner_splits=3, seed=42)
    inner_train, inner_test = inner_folds(Y, train, n_splits=3, seed=42)
    for f in range(3):
        fit = fit_logreg(X, Y, inner_train[f], Cs)  # the 3 inner folds of outer fold f
        inner = fit_metrics(X, Y, inner_test[f], fit)["f1_macro"].mean(0)  # [C, T]
        torch.testing.assert_close(sel.inner_f1_macro[f], inner, atol=1e-12, rtol=0)
        np.testing.assert_array_equal(sel.best_index[f].numpy(), inner.numpy().argmax(0))
    refit = fit_logreg(X, Y, train, Cs)
    torch.testing.assert_close(sel.refit.W, refit.W, atol=1e-7, rtol=0)
    outer = fit_metrics(X, Y, test, refit)
    torch.testing.assert_close(sel.outer["f1_macro"], outer["f1_macro"])
    chosen = sel.selected()
    assert chosen.shape == (3, 3)
    assert chosen[0, 1].item() == outer["f1_macro"][0, sel.best_index[0, 1], 1].item()
    assert set(sel.best_C.unique().tolist()) <= set(Cs)


def test_confusion_of_a_single_problem_matches_hand_counts():
    # one fold, one C, one target: torchmetrics alone would squeeze the lone sample away
    pred = torch.tensor([True, False, True, True]).reshape(1, 1, 4, 1)
    y = np.array([[1], [1], [0], [1]])
    test = np.array([[[True], [True], [True], [False]]])
    counts = {k: int(v) for k, v in confusion(pred, y, test).items()}
    assert counts == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}
    # predictions of distinct rows: rows 0 and 3 share features (row 3's prediction is row 0's)
    merged = confusion(pred[:, :, :3], y, test, row_of=torch.tensor([0, 1, 2, 0]))
    assert {k: int(v) for k, v in merged.items()} == counts
