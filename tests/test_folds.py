"""Folds are scikit-learn's own splits; grouped folds never split a group; masks partition the rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from spatial_probing.probes.folds import (
    fold_masks,
    grouped_folds,
    inner_folds,
    stratified_folds,
    target_folds,
)


def _sklearn_ids(splits, n):
    ids = np.full(n, -1)
    for k, (_, test) in enumerate(splits):
        ids[test] = k
    return ids


@pytest.mark.parametrize("seed", [0, 42])
def test_stratified_folds_equal_sklearn(seed):
    y = np.random.default_rng(seed).random(203) < 0.15
    want = _sklearn_ids(StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(203), y), 203)
    np.testing.assert_array_equal(stratified_folds(y, 5, seed), want)


def test_grouped_folds_equal_sklearn_and_never_split_a_group():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 60, 300)
    y = rng.random(300) < 0.3
    ids = grouped_folds(y, groups, 5, 42)
    want = _sklearn_ids(
        StratifiedGroupKFold(5, shuffle=True, random_state=42).split(np.zeros(300), y, groups), 300
    )
    np.testing.assert_array_equal(ids, want)
    for g in np.unique(groups):
        assert len(np.unique(ids[groups == g])) == 1


def test_target_folds_split_each_target_on_its_own_rows():
    rng = np.random.default_rng(2)
    Y = (rng.random((120, 3)) < [0.2, 0.4, 0.5]).astype(int)
    row_mask = rng.random((120, 3)) < 0.8
    ids = target_folds(Y, row_mask, 4, 7)
    for t in range(3):
        rows = np.flatnonzero(row_mask[:, t])
        assert (ids[~row_mask[:, t], t] == -1).all()
        np.testing.assert_array_equal(ids[rows, t], stratified_folds(Y[rows, t], 4, 7))


def test_fold_masks_partition_usable_rows():
    ids = np.array([[0, 1], [1, -1], [2, 0], [0, 2], [1, 1]])
    valid = np.array([True, True, True, False, True])
    train, test = fold_masks(ids, valid)
    assert train.shape == test.shape == (3, 5, 2)
    assert not (train & test).any()
    usable = (ids >= 0) & valid[:, None]
    np.testing.assert_array_equal(test.sum(0), usable)  # every usable row is tested exactly once
    np.testing.assert_array_equal((train | test).all(0), usable)
    assert test[0, 0, 0] and train[1, 0, 0] and not train[0, 3, 0]


def test_inner_folds_split_outer_training_rows():
    rng = np.random.default_rng(3)
    Y = (rng.random((150, 2)) < 0.3).astype(int)
    train, _ = fold_masks(target_folds(Y, n_splits=5, seed=42))
    inner_train, inner_test = inner_folds(Y, train, n_splits=3, seed=42)
    assert inner_train.shape == (5, 3, 150, 2)
    np.testing.assert_array_equal(inner_test.sum(1), train)  # inner tests partition the outer train rows
    assert not (inner_train & ~train[:, None]).any()
    rows = np.flatnonzero(train[2, :, 1])
    want = stratified_folds(Y[rows, 1], 3, 42)
    np.testing.assert_array_equal(inner_test[2, :, rows, 1].argmax(1), want)


def test_repeated_labels_reuse_their_split_and_the_copy_handed_out_is_the_callers(monkeypatch):
    y = np.random.default_rng(7).random(157) < 0.3
    first = stratified_folds(y, 5, 3)
    split = StratifiedKFold.split
    calls = []
    monkeypatch.setattr(StratifiedKFold, "split", lambda self, *a: (calls.append(1), split(self, *a))[1])
    first[:] = -9  # the caller's array: the kept split is not touched
    again = stratified_folds(y.copy(), 5, 3)
    assert calls == []
    np.testing.assert_array_equal(again, _sklearn_ids(StratifiedKFold(5, shuffle=True, random_state=3).split(np.zeros(157), y), 157))
    assert again.dtype == np.int64
    stratified_folds(y, 5, 4)  # another seed, another split
    stratified_folds(y.astype(np.int64), 5, 3)  # the same labels in another dtype are other bytes
    assert len(calls) == 3  # the reference split above, then the two new keys
