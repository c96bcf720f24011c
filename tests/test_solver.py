"""The batched solver reaches scikit-learn's converged optimum on every (fold, C, target) problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from spatial_probing.data.vsr import load_vsr
from spatial_probing.machine import bf16_supported
from spatial_probing.probes.baselines import baseline_features
from spatial_probing.probes.folds import fold_masks, target_folds
from spatial_probing.probes.sklearn_ref import fit_sklearn
from spatial_probing.probes.solver import fit_logreg, newton, scaled_gradient_max
from spatial_probing.probes.solver.basis import Basis, BasisCache, counting_products
from spatial_probing.probes.solver.newton import default_workers, solve
from spatial_probing.probes.solver.objective import Problems, sample_weights
from spatial_probing.probes.solver.predict import decision_function, predict, predict_proba, sparse_rows

CS = (0.01, 1.0, 100.0)


def _data(seed=0, n=240, d=12, T=3):
    """Features with structure (a shared mean, per-target signal), duplicated rows, imbalanced targets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32) + 0.5
    X[n // 2 : n // 2 + 30] = X[:30]  # repeated captions / images: merged rows must not change anything
    w = rng.standard_normal((d, T))
    score = X @ w + rng.standard_normal((n, T)) * 2
    Y = (score > np.diag(np.quantile(score, [0.8, 0.6, 0.5], axis=0))).astype(np.int8)
    train, test = fold_masks(target_folds(Y, n_splits=3, seed=0))
    return X, Y, train, test


def _sklearn(X, Y, mask, C, class_weight=None, sample_weight=None):
    m = LogisticRegression(C=C, tol=1e-10, max_iter=20000, class_weight=class_weight)
    m.fit(
        X[mask].astype(np.float64),
        Y[mask],
        sample_weight=None if sample_weight is None else sample_weight[mask],
    )
    return m.coef_[0], m.intercept_[0]


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_matches_converged_sklearn(class_weight, dtype):
    X, Y, train, _ = _data()
    fit = fit_logreg(X, Y, train, CS, class_weight=class_weight, dtype=dtype)
    assert fit.W.shape == (3, 3, 3, 12) and fit.b.shape == (3, 3, 3)
    assert fit.converged.all() and fit.max_grad <= 1e-10
    pred = predict(X, fit)
    for f in range(3):
        for c, C in enumerate(CS):
            for t in range(3):
                coef, icpt = _sklearn(X, Y[:, t], train[f, :, t], C, class_weight)
                scale = max(1.0, np.abs(coef).max())
                np.testing.assert_allclose(fit.W[f, c, t].numpy(), coef, atol=1e-6 * scale)
                assert abs(fit.b[f, c, t].item() - icpt) <= 1e-6 * scale
                sk_pred = X.astype(np.float64) @ coef + icpt > 0
                np.testing.assert_array_equal(pred[f, c, :, t].numpy(), sk_pred)


def test_sample_weights_per_row_and_per_target():
    X, Y, train, _ = _data(1)
    sw = np.random.default_rng(1).uniform(0.2, 3.0, X.shape[0])
    fit = fit_logreg(X, Y, train, [1.0], sample_weight=sw, class_weight="balanced")
    per_target = fit_logreg(
        X, Y, train, [1.0], sample_weight=np.repeat(sw[:, None], 3, 1), class_weight="balanced"
    )
    torch.testing.assert_close(fit.W, per_target.W)
    coef, icpt = _sklearn(X, Y[:, 2], train[1, :, 2], 1.0, "balanced", sw)
    np.testing.assert_allclose(fit.W[1, 0, 2].numpy(), coef, atol=1e-6)
    assert abs(fit.b[1, 0, 2].item() - icpt) <= 1e-6


def test_rows_outside_the_masks_are_ignored():
    X, Y, train, _ = _data(2)
    unused = ~train.any(axis=(0, 2))
    unused[:5] = True
    train = train & ~unused[None, :, None]
    fit = fit_logreg(X, Y, train, [1.0])
    X2 = X.copy()
    X2[unused] = np.nan  # e.g. rows whose image failed
    Y2 = Y.copy()
    Y2[unused] = 1 - Y2[unused]
    fit2 = fit_logreg(X2, Y2, train, [1.0])
    torch.testing.assert_close(fit.W, fit2.W, atol=1e-9, rtol=0)
    assert torch.isfinite(scaled_gradient_max(X2, Y2, train, fit2)).all()


def test_options_do_not_change_the_optimum():
    X, Y, train, _ = _data(3)
    ref = fit_logreg(X, Y, train, CS)
    for kwargs in ({"warm_start": False}, {"max_problems": 4}, {"max_problems": 8, "workers": 2},
                   {"dtype": torch.float32}, {"dtype": torch.bfloat16}):
        other = fit_logreg(torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(train), CS, **kwargs)
        # both within tol = 1e-10 of the optimum: equal to what that tolerance resolves
        torch.testing.assert_close(other.W, ref.W, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.b, ref.b, atol=1e-6, rtol=0)


def test_kept_bases_serve_the_same_rows_of_the_same_features_only(monkeypatch):
    X, Y, train, _ = _data(4)
    builds = []
    build = Basis.build
    monkeypatch.setattr(Basis, "build", lambda *a, **k: (builds.append(a[1].shape), build(*a, **k))[1])
    bases = BasisCache(max_entries=2)
    ref = fit_logreg(X, Y, train, CS)
    first = fit_logreg(X, Y, train, CS, bases=bases)
    read_only = X.copy()
    read_only.setflags(write=False)  # as a memory map of the feature cache
    again = fit_logreg(read_only, 1 - Y, train, CS, bases=bases)  # same features and rows, other labels
    assert len(builds) == 2  # the uncached fit's, then one for both cached fits
    torch.testing.assert_close(first.W, ref.W, atol=0, rtol=0)
    torch.testing.assert_close(again.W, -ref.W, atol=1e-6, rtol=0)  # labels flipped: the mirrored optimum
    edited = X.copy()
    edited[0, 0] += 1.0
    fit_logreg(edited, Y, train, CS, bases=bases)  # other content: its own basis
    fit_logreg(X, Y, train & (np.arange(len(X)) < 200)[None, :, None], CS, bases=bases)  # other rows: its own
    assert len(builds) == 4
    fit_logreg(X, Y, train, CS, bases=bases)  # evicted: two entries are kept, this one was the oldest
    assert len(builds) == 5


def test_worker_threads_split_the_working_set_and_reach_the_same_optimum():
    X, Y, train, _ = _data(6)
    widths = {}
    for workers in (1, 2):
        with counting_products() as counts:
            fit = fit_logreg(X, Y, train, CS, dtype=torch.float32, max_problems=8, workers=workers)
        assert fit.converged.all()
        # the HVPs Z @ P of the Newton loop: [rows, r] x [r, problems of one working set]
        u, r = Basis.build(X, torch.from_numpy(train.any(axis=(0, 2))), torch.float32).Z.shape
        widths[workers] = max(n for (m, k, n, dt, tr, _) in counts if (m, k, dt, tr) == (u, r, torch.float32, False))
        if workers == 1:
            ref = fit
    assert widths == {1: 8, 2: 4}  # each of the two workers iterates its own half-width working set
    torch.testing.assert_close(fit.W, ref.W, atol=1e-6, rtol=0)
    torch.testing.assert_close(fit.b, ref.b, atol=1e-6, rtol=0)


def test_a_failing_worker_stops_the_others_and_its_error_reaches_the_caller(monkeypatch):
    X, Y, train, _ = _data(9)
    calls, real = [], newton._gradient

    def gradient(basis, state, cols=None, fail_at=None):
        calls.append(len(calls))
        if len(calls) == fail_at:
            raise RuntimeError("worker failed")
        return real(basis, state, cols)

    monkeypatch.setattr(newton, "_gradient", lambda *args: gradient(*args, fail_at=3))
    with pytest.raises(RuntimeError, match="worker failed"):
        fit_logreg(X, Y, train, CS, max_problems=8, workers=2, warm_start=False)
    # the other worker returned at its next Newton step instead of solving its share and the rest of the queue
    assert len(calls) <= 5
    calls.clear()
    monkeypatch.setattr(newton, "_gradient", gradient)
    fit_logreg(X, Y, train, CS, max_problems=8, workers=2, warm_start=False)
    assert len(calls) > 20  # what the same fit takes unhindered


def test_kept_margins_are_the_answers_margins_for_the_folds_they_start():
    X, Y, train, _ = _data(8)
    basis = Basis.build(X, torch.from_numpy(train.any(axis=(0, 2))), torch.float32)
    sw = sample_weights(None, len(X), Y.shape[1], torch.device("cpu"))
    problems = Problems(basis, torch.from_numpy(Y), sw, None, CS, torch.from_numpy(train))
    out = solve(basis, problems, None, 1e-10, 100, 8, workers=2, keep_margins=True)
    W, b = out.Wrot.reshape(-1, out.Wrot.shape[-1]).T, out.brot.reshape(-1)
    assert out.margins.shape == (basis.Z.shape[0], len(problems))
    torch.testing.assert_close(out.margins, basis.mm64(W) + b, atol=1e-9, rtol=0)
    assert solve(basis, problems, None, 1e-10, 100, 8).margins is None


def test_a_queue_admitted_at_once_mixes_the_C_values_in_every_workers_share():
    short = newton._order((1, 3, 4), 100, torch.device("cpu"))  # (fold, C, target): 12 problems, all admitted
    c_of = (short // 4) % 3
    assert sorted(short.tolist()) == list(range(12))
    assert c_of[:6].tolist() == [0, 1, 2, 0, 1, 2] and c_of[6:].tolist() == [0, 1, 2, 0, 1, 2]
    # more than a working set: one C after another, the largest (slowest) first, then fold, then target
    streaming = newton._order((5, 3, 4), 10, torch.device("cpu"))
    assert sorted(streaming.tolist()) == list(range(60))
    c_of, f_of = (streaming // 4) % 3, streaming // 12
    assert c_of.tolist() == [2] * 20 + [1] * 20 + [0] * 20
    assert f_of[:20].tolist() == [f for f in range(5) for _ in range(4)]


def test_default_workers_keep_working_sets_of_a_minimum_width():
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    assert default_workers(6300, 418, cpu) == min(threads, 3)  # at least MIN_WORKER_WIDTH columns each
    assert default_workers(360, 418, cpu) == min(threads, 3)
    assert default_workers(252, 418, cpu) == min(threads, 2)  # a selection's union anchors: 126 each
    assert default_workers(180, 418, cpu) == 1  # two halves would be narrower than the minimum
    assert default_workers(6300, 100, cpu) == 1
    assert default_workers(6300, 418, torch.device("meta")) == 1


def test_reports_the_scaled_gradient_like_an_independent_check():
    X, Y, train, _ = _data(4)
    fit = fit_logreg(X, Y, train, CS, tol=1e-4)
    assert (fit.grad_max <= 1e-4).all()
    torch.testing.assert_close(scaled_gradient_max(X, Y, train, fit), fit.grad_max, rtol=1e-3, atol=1e-12)


def test_max_iter_stops_and_reports_non_convergence():
    X, Y, train, _ = _data(5)
    fit = fit_logreg(X, Y, train, [100.0], max_iter=1, warm_start=False)
    assert not fit.converged.all() and (fit.n_iter <= 1).all()
    torch.testing.assert_close(fit.stopped_at_cap, ~fit.converged)


def test_bfloat16_products_where_the_hardware_has_them():
    """bfloat16 HVPs run only where bf16 GEMMs are native; elsewhere the same call runs in float32."""
    X, Y, train, _ = _data(9)
    fit = fit_logreg(X, Y, train, CS, dtype=torch.bfloat16)
    ref = fit_logreg(X, Y, train, CS, dtype=torch.float64)
    assert fit.converged.all() and fit.max_grad <= 1e-10
    torch.testing.assert_close(fit.W, ref.W, atol=1e-6, rtol=0)
    flags = torch._C._cpu._get_cpu_capability()
    assert bf16_supported("cpu") == bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


def test_auto_precision_takes_bfloat16_only_for_large_bases(monkeypatch):
    """dtype "auto": bfloat16 products where they are native and the basis reaches LOW_MIN_ENTRIES, float32
    below it; the optimum is the same either way."""
    import spatial_probing.probes.solver as solver_pkg

    X, Y, train, _ = _data(9)
    used = torch.ones(len(X), dtype=torch.bool)
    small = Basis.build(X, used, torch.bfloat16, low_min_entries=X.size + 1)
    assert small.Zh is small.Z and small.Z.dtype == torch.float32
    assert Basis.build(X, used, torch.bfloat16, low_min_entries=small.Z.numel()).Zh.dtype == torch.bfloat16

    def product_dtypes(threshold):
        monkeypatch.setattr(solver_pkg, "LOW_MIN_ENTRIES", threshold)
        with counting_products() as counts:
            fit = fit_logreg(X, Y, train, CS, dtype="auto")
        return fit, {shape[3] for shape in counts}

    ref = fit_logreg(X, Y, train, CS, dtype=torch.float64)
    for threshold, low in ((2**20, False), (0, bf16_supported("cpu"))):
        fit, dtypes = product_dtypes(threshold)
        assert (torch.bfloat16 in dtypes) == low and torch.float32 in dtypes
        assert fit.converged.all()
        torch.testing.assert_close(fit.W, ref.W, atol=1e-6, rtol=0)


def test_sklearn_reference_layout_and_defaults():
    X, Y, train, _ = _data(6)
    ref = fit_sklearn(X, Y, train, CS)  # scikit-learn's defaults: tol 1e-4, max_iter 100
    assert ref.solver == "sklearn" and ref.W.shape == (3, 3, 3, 12)
    m = LogisticRegression(C=100.0).fit(X[train[2, :, 1]], Y[train[2, :, 1], 1])
    np.testing.assert_array_equal(ref.W[2, 2, 1].numpy(), m.coef_[0])
    assert ref.n_iter[2, 2, 1] == m.n_iter_[0]
    torch.testing.assert_close(ref.stopped_at_cap, ref.n_iter >= 100)
    capped = fit_sklearn(X, Y, train, CS, max_iter=3)  # the cap, not the tolerance, stops these
    assert capped.stopped_at_cap.any() and (capped.n_iter <= 3).all()
    torch.testing.assert_close(capped.stopped_at_cap, capped.n_iter >= 3)
    assert not (capped.stopped_at_cap & capped.converged).any()
    # float64 features: scikit-learn runs lbfgs in the features' dtype, and float32 cannot reach 1e-10
    converged = fit_sklearn(X.astype(np.float64), Y, train, CS, tol=1e-10, max_iter=20000)
    batched = fit_logreg(X, Y, train, CS)
    torch.testing.assert_close(batched.W, converged.W, atol=1e-5, rtol=0)
    assert (converged.grad_max < 1e-7).all() and (ref.grad_max > converged.grad_max).all()
    torch.testing.assert_close(converged.converged, converged.grad_max <= 1e-10)  # the batched solver's test


def test_sklearn_parallel_warm_started_setups_reach_the_same_optimum():
    """The benchmark's scikit-learn set-ups: joblib workers, warm starts across folds, newton-cholesky."""
    X, Y, train, _ = _data(10)
    X64 = X.astype(np.float64)
    serial = fit_sklearn(X64, Y, train, [1.0], tol=1e-10, max_iter=20000)
    for solver in ("lbfgs", "newton-cholesky"):
        other = fit_sklearn(X64, Y, train, [1.0], tol=1e-10, max_iter=20000, solver=solver, n_jobs=2, warm_start=True)
        torch.testing.assert_close(other.W, serial.W, atol=1e-6, rtol=0)
        assert not other.stopped_at_cap.any()
    # warm starts take fewer iterations on the later folds than cold starts do
    warm = fit_sklearn(X64, Y, train, [1.0], tol=1e-10, max_iter=20000, warm_start=True)
    assert warm.n_iter[1:].sum() < serial.n_iter[1:].sum()


def test_predictions_of_every_row():
    X, Y, train, _ = _data(7)
    fit = fit_logreg(X, Y, train, CS)
    dec = decision_function(X, fit)
    assert dec.shape == (3, 3, X.shape[0], 3) and dec.dtype == torch.float64
    manual = X[5].astype(np.float64) @ fit.W[1, 2, 0].numpy() + fit.b[1, 2, 0].item()
    assert dec[1, 2, 5, 0].item() == pytest.approx(manual, abs=1e-12)
    torch.testing.assert_close(predict_proba(X, fit), torch.sigmoid(dec))
    # predict works in float32 but must return the float64 sign, also right at the boundary
    fit.b[0, 0, 0] += 1e-9 - dec[0, 0, 4, 0]
    fit.b[0, 0, 1] += -1e-9 - dec[0, 0, 4, 1]
    dec = decision_function(X, fit)
    assert dec[0, 0, 4, 0] > 0 > dec[0, 0, 4, 1]
    torch.testing.assert_close(predict(X, fit), dec > 0, rtol=0, atol=0)


def test_sparse_rows_multiply_as_float64_csr_with_the_dense_answers():
    X, Y, train, _ = _sparse_data()
    fit = fit_logreg(X, Y, train, [1.0], tol=1e-8)
    rows = sparse_rows(X)
    assert rows.layout == torch.sparse_csr and rows.dtype == torch.float64
    assert rows._nnz() == np.count_nonzero(X)
    dense = decision_function(X, fit)
    torch.testing.assert_close(decision_function(rows, fit), dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(predict(rows, fit), dense > 0, rtol=0, atol=0)
    encoder, narrow = _data()[0], X[:, :1000]  # dense features, and narrow ones, are left as they are
    assert sparse_rows(encoder) is encoder and sparse_rows(narrow) is narrow


def test_one_class_problem_is_an_error():
    X, Y, train, _ = _data(8)
    Y[:, 1] = 0
    with pytest.raises(ValueError, match="one class"):
        fit_logreg(X, Y, train, [1.0])


def test_preconditioner_keeps_the_diagonal_where_a_scaled_block_lost_definiteness():
    from types import SimpleNamespace

    from spatial_probing.probes.solver.preconditioner import Preconditioner

    d, k, P = 6, 3, 2
    basis = SimpleNamespace(lam=torch.linspace(3.0, 1.0, d, dtype=torch.float64), n_rows=10, lead_index=lambda k: slice(d - k, d))
    D = torch.ones(10, P, dtype=torch.float64)
    Cq, c, h = torch.ones(P, dtype=torch.float64), torch.zeros(d, P, dtype=torch.float64), torch.ones(P, dtype=torch.float64)
    lead = torch.eye(k, dtype=torch.float64)[:, :, None].repeat(1, 1, P)
    lead[0, 0, 1] = -5.0  # problem 1's block is indefinite once scaled (rounding does this to tiny MDL blocks)
    pre = Preconditioner(basis, D, Cq, c, h, lead, torch.full((P,), 10.0, dtype=torch.float64))
    r = torch.ones(d, P, dtype=torch.float64)
    z = pre(r, torch.arange(P))
    assert torch.allclose(z[-k:, 1], r[-k:, 1] / pre.diag[-k:, 1])  # the fallback: the diagonal
    assert torch.allclose(z[-k:, 0], r[-k:, 0] / 2.0)  # block I + 1 * I for the intact problem
    assert torch.isfinite(z).all()


def test_badly_conditioned_problem_gets_longer_cg_runs_and_few_newton_steps():
    """Large C on duplicated, nearly separable sparse rows (like the masked n-gram baseline): six CG
    iterations per Newton step crawl (123 steps here); longer runs after the third step take 15."""
    rng = np.random.default_rng(0)
    base = (rng.random((300, 80)) < 0.08).astype(np.float32)
    X = base[rng.integers(0, 300, 1200)]
    y = ((X @ rng.standard_normal(80) + 0.3 * rng.standard_normal(1200)) > 0.5).astype(np.int8)[:, None]
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    fit = fit_logreg(X, y, np.ones((1, 1200, 1), bool), [1e4], tol=1e-6, max_iter=200, class_weight="balanced")
    assert bool(fit.converged.all()) and int(fit.n_iter.max()) <= 20
    ref = LogisticRegression(C=1e4, tol=1e-10, max_iter=100000, class_weight="balanced").fit(X, y[:, 0])
    np.testing.assert_allclose(fit.W[0, 0, 0].numpy(), ref.coef_[0], rtol=1e-3, atol=1e-2 * np.abs(ref.coef_).max())


def test_directions_the_rows_do_not_vary_in_are_dropped_and_the_answer_is_unchanged():
    """Identical columns (n-grams that always occur together) leave null directions: solved without them,
    the weights still match scikit-learn's (which splits the weight equally over identical columns)."""
    from spatial_probing.probes.solver.basis import Basis

    rng = np.random.default_rng(1)
    core = (rng.random((400, 12)) < 0.3).astype(np.float64)
    X = np.concatenate([core, core[:, :3], np.ones((400, 1))], axis=1)  # 3 duplicated columns, 1 constant
    y = ((core @ rng.standard_normal(12)) > 0.2).astype(np.int8)[:, None]
    basis = Basis.build(X, torch.ones(400, dtype=torch.bool), torch.float64)
    assert basis.Z.shape[1] == 12 and basis.V.shape == (16, 12)
    fit = fit_logreg(X, y, np.ones((1, 400, 1), bool), [10.0], tol=1e-10)
    ref = LogisticRegression(C=10.0, tol=1e-12, max_iter=10000).fit(X, y[:, 0])
    np.testing.assert_allclose(fit.W[0, 0, 0].numpy(), ref.coef_[0], atol=1e-6)
    np.testing.assert_allclose(fit.b[0, 0, 0].item(), ref.intercept_[0], atol=1e-6)


def test_counting_products_records_every_product_of_a_fit_by_shape():
    X, Y, train, _ = _data()
    with counting_products() as counts:
        fit_logreg(X, Y, train, CS, tol=1e-8, dtype=torch.float32)
    d = X.shape[1]
    # the centred Gram matrix of the set-up: [d, rows] x [rows, d] in float32, A a transposed view
    assert any(k == d and n == d and dt == torch.float32 and tr for (k, _, n, dt, tr, _) in counts)
    # the back-rotation of every answer: [F * C * T, r] x [r, d]
    assert counts[(train.shape[0] * len(CS) * Y.shape[1], d, d, torch.float64, False, 0)] == 1
    assert all(calls > 0 for calls in counts.values())
    before = dict(counts)
    basis = Basis.build(X, torch.ones(len(X), dtype=torch.bool), torch.float32)
    basis.hz(torch.ones(basis.Z.shape[1], 2))
    assert dict(counts) == before  # outside the block nothing is counted


def test_stored_columns_get_z_precision_and_the_rest_bfloat16():
    X, _, _, _ = _data()
    basis = Basis.build(X, torch.ones(len(X), dtype=torch.bool), torch.bfloat16)
    P = torch.randn(basis.Z.shape[1], 4, generator=torch.Generator().manual_seed(0))
    R = torch.randn(basis.Z.shape[0], 4, generator=torch.Generator().manual_seed(1))
    stored = torch.tensor([True, False, True, False])
    exact, rounded = basis.Z @ P, (basis.Zh @ P.bfloat16()).float()
    q = basis.hz(P, stored)
    assert torch.equal(q[:, stored], exact[:, stored]) and torch.equal(q[:, ~stored], rounded[:, ~stored])
    assert not torch.equal(rounded, exact)  # the two precisions differ, so the test tells them apart
    assert torch.equal(basis.htz(R, stored)[:, stored], (basis.Z.T @ R)[:, stored])
    assert torch.equal(basis.hz(P), rounded) and torch.equal(basis.hz(P, torch.ones(4, dtype=torch.bool)), exact)


def test_a_stalled_bfloat16_problem_goes_on_at_z_precision(vsr_dir):
    """The relation-masked n-grams at C = 1e4 (nearly separable duplicated rows): bfloat16's rounding stalls
    CG, the line search cuts late steps back, and from there the problem's products are float32. With
    every product bfloat16 these problems ran into 100 Newton steps unconverged; here they converge."""
    rows = load_vsr(str(vsr_dir / "random"), "train")
    X = baseline_features("ngrams-masked", rows)
    Y = (np.asarray(rows.relations) == "perpendicular to")[:, None].astype(np.int8)
    train = fold_masks(target_folds(Y, n_splits=5, seed=42))[0][3:5]
    with counting_products() as counts:
        fit = fit_logreg(X, Y, train, [1e4], tol=1e-6, class_weight="balanced", dtype=torch.bfloat16)
    assert fit.converged.all() and int(fit.n_iter.max()) < 100
    assert float(scaled_gradient_max(X, Y, train, fit, class_weight="balanced").max()) < 1e-5  # float64 grade
    # CG's products Z @ P ran in bfloat16 and, once the problems stalled, at Z's float32
    u, r = Basis.build(X, torch.as_tensor(train).any(dim=(0, 2)), torch.float32).Z.shape
    hz = {dt for (m, k, _, dt, transposed, _) in counts if (m, k, transposed) == (u, r, False)}
    assert hz == ({torch.bfloat16, torch.float32} if bf16_supported("cpu") else {torch.float32})


def _sparse_data(n=900, d=1100, seed=0):
    """Word-count-like rows: about 1% of the entries nonzero, L2-normalised, with repeated rows."""
    rng = np.random.default_rng(seed)
    base = (rng.random((n // 3, d)) < 0.01).astype(np.float32)
    base[:, 0] = 1.0  # a word in every row, so none is empty
    X = base[rng.integers(0, len(base), n)]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = ((X @ rng.standard_normal((d, 2)) * 8 + rng.standard_normal((n, 2))) > 0.4).astype(np.int8)
    train, test = fold_masks(target_folds(Y, n_splits=3, seed=0))
    return X, Y, train, test


def test_wide_sparse_features_are_held_sparse_and_their_products_are_the_centred_ones():
    X, _, _, _ = _sparse_data()
    basis = Basis.build(X, torch.ones(len(X), dtype=torch.bool), torch.float32)
    assert basis.V is None and basis.Z.nnz < 0.02 * basis.Z.shape[0] * basis.Z.shape[1]
    dense = Basis.build(X, torch.ones(len(X), dtype=torch.bool), torch.float32, layout="dense")
    assert dense.V is not None and dense.Z.shape[1] < X.shape[1]  # never-used words leave null directions
    # Z = X_u - mu on the merged rows (any row of each merged group represents it)
    X64 = torch.from_numpy(X.astype(np.float64))
    rep = torch.zeros(basis.Z.shape[0], dtype=torch.int64).scatter_(0, basis.row_of, torch.arange(len(X)))
    Zc = X64[rep] - X64.mean(0)
    g = torch.Generator().manual_seed(0)
    P, R = torch.randn(X.shape[1], 5, generator=g), torch.randn(basis.Z.shape[0], 5, generator=g)
    torch.testing.assert_close(basis.hz(P), (Zc @ P.double()).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(basis.htz(R), (Zc.T @ R.double()).float(), rtol=1e-4, atol=1e-5)
    # float64 products read the stored (float32) entries exactly: only the rows' own rounding remains
    torch.testing.assert_close(basis.mm64(P.double()), Zc @ P.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(basis.tmm64(R.double()), Zc.T @ R.double(), rtol=1e-6, atol=1e-6)
    # lam: the diagonal of the centred Gram matrix over every row, repeats counted
    torch.testing.assert_close(basis.lam, ((X64 - X64.mean(0)) ** 2).sum(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_sparse_features_reach_scikit_learns_optimum_and_count_sparse_products(class_weight):
    X, Y, train, _ = _sparse_data()
    with counting_products() as counts:
        fit = fit_logreg(X, Y, train, [0.1, 10.0], tol=1e-10, dtype=torch.float32, class_weight=class_weight)
    assert bool(fit.converged.all())
    assert any(nnz > 0 for (*_, nnz) in counts)  # the CG and gradient products read the CSR rows
    assert float(scaled_gradient_max(X, Y, train, fit, class_weight=class_weight).max()) < 1e-8
    for f, c, t in [(0, 0, 0), (2, 1, 1), (1, 1, 0)]:
        coef, intercept = _sklearn(X, Y[:, t], train[f, :, t], [0.1, 10.0][c], class_weight=class_weight)
        np.testing.assert_allclose(fit.W[f, c, t].numpy(), coef, atol=2e-5 * max(1.0, np.abs(coef).max()))
        np.testing.assert_allclose(fit.b[f, c, t].item(), intercept, atol=2e-5)


def test_sklearn_reference_takes_sparse_features_to_the_same_answer():
    from scipy import sparse

    X, Y, train, _ = _data()
    X = np.where(X > 1.0, 1.0, 0.0).astype(np.float64)  # binary, like the n-gram baselines
    dense = fit_sklearn(X, Y, train, [1.0], tol=1e-10, max_iter=5000)
    csr = fit_sklearn(sparse.csr_matrix(X), Y, train, [1.0], tol=1e-10, max_iter=5000)
    assert torch.allclose(dense.W, csr.W, atol=1e-6) and torch.allclose(dense.b, csr.b, atol=1e-6)
    assert torch.allclose(dense.grad_max, csr.grad_max, atol=1e-7)  # graded on the dense features alike


def test_columns_and_set_columns_are_last_axis_indexing():
    from spatial_probing.probes.solver.basis import columns, set_columns

    g = torch.Generator().manual_seed(0)
    for shape in [(7,), (5, 7), (3, 4, 7)]:
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        mask = torch.tensor([True, False, True, True, False, False, True])
        idx = torch.tensor([6, 0, 3])
        assert torch.equal(columns(x, mask), x[..., mask]) and torch.equal(columns(x, idx), x[..., idx])
        y, values = x.clone(), torch.randn(*shape[:-1], 3, generator=g, dtype=torch.float64)
        set_columns(y, idx, values)
        expect = x.clone()
        expect[..., idx] = values
        assert torch.equal(y, expect)
