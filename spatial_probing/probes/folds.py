"""Cross-validation folds identical to scikit-learn's, as fold ids and boolean train/test masks.

A fold id array holds, per row, the index of the fold in which the row is a *test* row, or -1 for
rows that take part in no fold (masked out for that target). The original protocol splits each
one-vs-rest target on its own (``StratifiedKFold`` on that target's y), so the per-target form is a
``[n, T]`` id matrix and ``[F, n, T]`` masks. scikit-learn itself computes the splits: matching its
shuffling exactly is the point, and re-implementing its RNG use would only add a way to drift.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from spatial_probing.probes.solver.basis import content_key


def stratified_folds(y: np.ndarray, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Fold id per row, as ``StratifiedKFold(n_splits, shuffle=True, random_state=seed).split``.

    Kept per distinct (labels, n_splits, seed), first in first out beyond `_KEPT_SPLITS`: a run's probe
    sets of one task share their targets, hence every outer and inner split (the credibility table asks
    for each three times: 0.9 s of scikit-learn splitting). Labels are keyed by `content_key`.
    """
    y = np.asarray(y)
    key = (content_key(y), n_splits, seed)
    ids = _SPLITS.get(key)
    if ids is None:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        ids = _ids_from_splits(splitter.split(np.zeros(len(y)), y), len(y))
        if len(_SPLITS) >= _KEPT_SPLITS:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = ids.astype(np.int8 if n_splits < 128 else np.int64)  # ~8 KB per VSR target
    return ids.astype(np.int64)


_KEPT_SPLITS = 2048
_SPLITS: dict[tuple[tuple, int, int], np.ndarray] = {}


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Fold id per row keeping every row of a group (e.g. an image) in one fold.

    ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)``: groups are assigned to
    folds so that class proportions stay as close to the whole as groups allow.
    """
    y = np.asarray(y)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return _ids_from_splits(splitter.split(np.zeros(len(y)), y, np.asarray(groups)), len(y))


def target_folds(
    Y: np.ndarray,
    row_mask: np.ndarray | None = None,
    n_splits: int = 5,
    seed: int = 42,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Per-target fold ids ``[n, T]``: each column split on its own rows (``row_mask[:, t]``).

    Rows outside a target's mask get -1. With ``groups`` the split is grouped (see `grouped_folds`).
    """
    Y = np.asarray(Y)
    n, n_targets = Y.shape
    mask = np.ones_like(Y, dtype=bool) if row_mask is None else np.asarray(row_mask, dtype=bool)
    ids = np.full((n, n_targets), -1, dtype=np.int64)
    for t in range(n_targets):
        rows = np.flatnonzero(mask[:, t])
        if groups is None:
            ids[rows, t] = stratified_folds(Y[rows, t], n_splits, seed)
        else:
            ids[rows, t] = grouped_folds(Y[rows, t], np.asarray(groups)[rows], n_splits, seed)
    return ids


def fold_masks(fold_ids: np.ndarray, valid_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test masks ``[F, *fold_ids.shape]`` from fold ids (``[n]`` or per-target ``[n, T]``).

    A row is in fold k's test set when its id is k, in its training set when its id is another
    fold's; rows with id -1 or ``valid_mask`` False (e.g. a failed image) are in neither.
    """
    fold_ids = np.asarray(fold_ids)
    n_folds = int(fold_ids.max()) + 1
    usable = fold_ids >= 0
    if valid_mask is not None:
        valid = np.asarray(valid_mask, dtype=bool)
        usable &= valid if valid.shape == fold_ids.shape else valid.reshape(-1, *[1] * (fold_ids.ndim - 1))
    ks = np.arange(n_folds).reshape(-1, *[1] * fold_ids.ndim)
    test = (fold_ids[None] == ks) & usable[None]
    train = (fold_ids[None] != ks) & usable[None]
    return train, test


def inner_folds(
    Y: np.ndarray, train_mask: np.ndarray, n_splits: int = 5, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Nested CV: inner train/test masks ``[F, K, n, T]`` splitting each outer fold's training rows.

    Each (outer fold, target) training set is split by `stratified_folds` on its own rows, the
    way ``cross_val_score(..., cv=StratifiedKFold(K, shuffle=True, random_state=seed))`` would
    split the outer training data.
    """
    n_outer, n, n_targets = train_mask.shape
    ids = np.full((n_outer, n, n_targets), -1, dtype=np.int64)
    for f in range(n_outer):
        ids[f] = target_folds(Y, train_mask[f], n_splits, seed)
    # fold_masks maps ids laid out [n, F, T] to masks [K, n, F, T]; reorder to [F, K, n, T].
    train, test = fold_masks(ids.transpose(1, 0, 2))
    return train.transpose(2, 0, 1, 3), test.transpose(2, 0, 1, 3)


def _ids_from_splits(splits, n: int) -> np.ndarray:
    ids = np.full(n, -1, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        ids[test] = k
    return ids
