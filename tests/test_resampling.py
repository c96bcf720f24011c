"""The one resampling module: its draws are the ones each bootstrap of the project made before it existed."""

from __future__ import annotations

import numpy as np
import pytest

from spatial_probing.resampling import (
    bootstrap_means,
    generator,
    interval,
    paired_difference,
    percentile_interval,
    resample_weights,
    swap_draws,
)


def _two_level_reference(values, n_boot, seed):
    """The grounding study's seeds x items bootstrap as first written: every index drawn in one call."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = values.shape
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    return np.stack([values[s][:, i].mean() for s, i in zip(seeds, items, strict=True)])


def _one_level_reference(scores, n_boot, seed):
    """The analyses' item bootstrap as first written: blocks of 100 resamples."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 100):
        stop = min(n_boot, start + 100)
        means[start:stop] = scores[rng.integers(0, scores.size, size=(stop - start, scores.size))].mean(axis=1)
    return means


@pytest.mark.parametrize(("shape", "n_boot"), [((3, 41), 250), ((1, 17), 100), ((5, 8), 1), ((2, 300), 1000)])
def test_two_level_draws_are_the_grounding_studys(shape, n_boot):
    values = np.random.default_rng(0).random(shape)
    for seed in (0, 11):
        assert np.array_equal(bootstrap_means(values, n_boot, seed), _two_level_reference(values, n_boot, seed))


@pytest.mark.parametrize(("n", "n_boot"), [(1, 10), (57, 250), (1000, 1000)])
def test_one_level_draws_are_the_analyses(n, n_boot):
    scores = np.random.default_rng(1).random(n)
    assert np.array_equal(bootstrap_means(scores, n_boot, 3), _one_level_reference(scores, n_boot, 3))
    # one level is the two-level bootstrap of one seed: drawing the only seed consumes no randomness
    assert np.array_equal(bootstrap_means(scores, n_boot, 3), bootstrap_means(scores[None], n_boot, 3))


def test_interval_and_paired_difference():
    rng = np.random.default_rng(2)
    a = rng.random((3, 200))
    b = a - 0.2 + 0.05 * rng.standard_normal(a.shape)
    est, lo, hi = interval(a, 500, 0.95, seed=0)
    assert est == a.mean() and lo < est < hi
    diff, lo, hi, p = paired_difference(a, b, 500, 0.95, seed=0)
    assert lo < diff < hi and 0.15 < diff < 0.25 and p == 1 / 500  # never below one resample's share
    assert paired_difference(a, a, 500, 0.95, seed=0)[3] == 1.0
    assert all(np.isnan(interval(np.array([]), 500, 0.95, seed=0)))
    lo, hi = percentile_interval(np.arange(101.0)[:, None].repeat(2, 1), 0.9)
    assert np.allclose(lo, [5.0, 5.0]) and np.allclose(hi, [95.0, 95.0])


def test_weights_and_swaps_resample_whole_units():
    groups = np.array([7, 7, 3, 3, 3, 9])
    w = resample_weights(groups, "group", 400, seed=0)
    assert w.shape == (400, 6) and w.dtype == np.float32
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 4]).all()
    assert (w[:, [0, 2, 5]].sum(1) == 3).all()  # three groups drawn three times
    assert (resample_weights(groups, "row", 400, seed=0).sum(1) == 6).all()
    # the counts of bootstrap_means' index draws from the same seed: both forms give the same resample means
    values = np.random.default_rng(1).random(6)
    rows = resample_weights(np.arange(6), "row", 250, seed=4)
    np.testing.assert_allclose(rows @ values / 6, bootstrap_means(values, 250, seed=4), rtol=1e-6)
    s = swap_draws(groups, "group", 300, seed=0)
    assert set(np.unique(s)) == {0.0, 1.0} and (s[:, 2] == s[:, 3]).all()
    # resamples from default_rng(seed), swaps from default_rng([seed, 1]): one seeding rule
    assert np.array_equal(generator(5).random(3), np.random.default_rng(5).random(3))
    assert np.array_equal(generator(5, stream=1).random(3), np.random.default_rng([5, 1]).random(3))
