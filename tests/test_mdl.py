"""MDL online codelength: block layout, and codelengths of separable vs. random labels."""

from __future__ import annotations

import numpy as np

from spatial_probing.probes.mdl import FRACTIONS, MDLOptions, block_ends, online_codelength, order_ranks


def test_blocks_follow_the_standard_fractions():
    ends = block_ends(np.array([10000, 500]), list(FRACTIONS))
    assert list(ends[:, 0]) == [10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10000]
    assert ends[0, 1] == 1 and ends[-1, 1] == 500  # at least one row in the first block
    ranks = order_ranks(np.array([[True, False], [True, True], [True, True]]), seed=0)
    assert sorted(ranks[:, 0]) == [0, 1, 2] and ranks[0, 1] == -1 and sorted(ranks[1:, 1]) == [0, 1]


def _data(n=2000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    separable = (X[:, 0] > 0.3).astype(np.int8)  # a linear property of the features
    noise = (rng.random(n) < separable.mean()).astype(np.int8)  # same base rate, unrelated to X
    return X, np.stack([separable, noise], axis=1)


def test_separable_task_codes_far_below_uniform_and_noise_does_not():
    X, Y = _data()
    code = online_codelength(X, Y, np.ones(Y.shape, dtype=bool), MDLOptions(C=10.0), tol=1e-8)
    np.testing.assert_array_equal(code.uniform_bits, [2000, 2000])
    assert code.online_bits[0] < 0.15 * code.uniform_bits[0]  # compression above 6.7
    assert code.compression[0] > 6.7
    # random labels cost about their entropy (H(0.38) = 0.96 bits/row) or more: no compression
    assert code.compression[1] < 1.1


def test_row_mask_limits_a_target_to_its_rows():
    X, Y = _data(n=1000, d=64)
    mask = np.ones(Y.shape, dtype=bool)
    mask[500:, 0] = False
    code = online_codelength(X, Y, mask, MDLOptions(), tol=1e-8)
    np.testing.assert_array_equal(code.uniform_bits, [500, 1000])
    again = online_codelength(X, Y, mask, MDLOptions(), tol=1e-8)
    np.testing.assert_array_equal(code.online_bits, again.online_bits)  # seeded order
