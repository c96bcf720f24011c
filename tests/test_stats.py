"""Statistics over held-out predictions: calibration of the paired permutation test, Holm, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from spatial_probing.probes.folds import fold_masks, target_folds
from spatial_probing.probes.metrics import binary_metrics
from spatial_probing.probes.stats import (
    SetOutputs,
    StatsOptions,
    aggregate_weights,
    comparisons_table,
    holm,
    paired_test,
    stats_table,
)


def _outputs(label, encoder, y, decision, test, task="relation_type", targets=None):
    n, T = y.shape
    info = {"dataset": "toy", "entry": label, "encoder": encoder, "view": "text", "layer": "final", "task": task,
            "targets": targets or [f"t{i}" for i in range(T)]}
    return SetOutputs(info=info, label=label, rows=np.arange(n), groups=np.arange(n) // 2, y=y.astype(bool),
                      test=test, decision=decision)


def _task(n=400, T=40, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, T)) < 0.3).astype(np.int8)
    _, test = fold_masks(target_folds(y, n_splits=5, seed=1))
    return rng, y, test


def _noisy(rng, y, accuracy):
    """Decision values whose sign is right with probability ``accuracy``, independently per row."""
    right = rng.random(y.shape) < accuracy
    sign = np.where(right, 2 * y - 1, 1 - 2 * y)
    return sign * (0.5 + rng.random(y.shape))


def test_permutation_p_values_are_uniform_for_two_identical_encoders():
    """Two encoders drawn from one distribution: p-values spread over [0, 1] (calibration)."""
    rng, y, test = _task(T=200)
    a = _outputs("a", "enc:a", y, _noisy(rng, y, 0.8), test)
    b = _outputs("b", "enc:b", y, _noisy(rng, y, 0.8), test)
    out = paired_test(a, b, StatsOptions(resamples=10, permutations=500, seed=3))
    p = out[out["target"].str.startswith("t")]["p_value"].to_numpy()
    assert len(p) == 200
    assert scipy_stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.01 <= (p < 0.05).mean() <= 0.12  # about 5% false positives at 0.05
    wins = out[out["target"] == "wins"].iloc[0]
    assert wins["significant"] <= 2  # Holm keeps family-wise errors rare


def test_permutation_finds_a_planted_difference():
    rng, y, test = _task(T=10, n=600)
    a = _outputs("good", "enc:good", y, _noisy(rng, y, 0.9), test)
    b = _outputs("poor", "enc:poor", y, _noisy(rng, y, 0.6), test)
    out = paired_test(a, b, StatsOptions(resamples=200, permutations=500))
    per_target = out[out["target"].str.startswith("t")]
    assert (per_target["p_value"] < 0.01).all() and (per_target["diff"] > 0.15).all()
    assert (per_target["ci_low"] > 0).all()
    wins = out[out["target"] == "wins"].iloc[0]
    assert wins["diff"] == 10 and wins["significant"] == 10  # every target won by "good"


def test_holm_matches_a_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.5, 0.2])), [0.5, 0.4])  # 0.2*2, then max(0.4, 0.5*1)


def test_bootstrap_estimate_is_the_fold_mean_and_ci_covers_it():
    rng, y, test = _task(T=3)
    dec = _noisy(rng, y, 0.75)
    out = _outputs("a", "enc:a", y, dec, test, targets=["left of", "near", "on"])
    table = stats_table([out], StatsOptions(resamples=300, seed=5))
    f1 = table[table["metric"] == "f1_macro"].set_index("target")
    pred = np.broadcast_to(dec > 0, (5, 1, *dec.shape))
    want = binary_metrics(__import__("torch").from_numpy(pred.copy()), y, test)["f1_macro"][:, 0].mean(0).numpy()
    np.testing.assert_allclose(f1.loc[["left of", "near", "on"], "estimate"], want)
    assert (f1["ci_low"] <= f1["estimate"]).all() and (f1["estimate"] <= f1["ci_high"]).all()
    assert (f1["ci_high"] - f1["ci_low"]).gt(0).all()
    # meta-categories of the relations, the mean over targets, all with CIs
    assert {"mean", "meta:Projective", "meta:Proximity", "meta:Topological"} <= set(f1.index)
    np.testing.assert_allclose(f1.loc["mean", "estimate"], want.mean())
    np.testing.assert_allclose(f1.loc["meta:Projective", "estimate"], want[0])
    again = stats_table([out], StatsOptions(resamples=300, seed=5))
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_row_weighting_counts_relations_by_their_rows():
    y = np.zeros((10, 3), dtype=bool)
    y[:6, 0], y[6:8, 1], y[8:, 2] = True, True, True
    w = aggregate_weights(["left of", "right of", "near"], y, "row")
    np.testing.assert_allclose(w["meta:Projective"], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(aggregate_weights(["left of", "right of", "near"], y, "relation")["mean"], [1 / 3] * 3)


def test_selectivity_is_task_minus_control_and_random_init_pairs():
    rng, y, test = _task(T=4)
    task = _outputs("e", "sbert:m", y, _noisy(rng, y, 0.9), test)
    control = _outputs("e", "sbert:m", y, _noisy(rng, y, 0.6), test, task="relation_type/control")
    rand = _outputs("r", "sbert:m+random-init", y, _noisy(rng, y, 0.6), test)
    table = stats_table([task, control], StatsOptions(resamples=50))
    est = table.set_index(["task", "metric", "target"])["estimate"]
    np.testing.assert_allclose(
        est["relation_type", "selectivity_f1_macro", "mean"],
        est["relation_type", "f1_macro", "mean"] - est["relation_type/control", "f1_macro", "mean"],
    )
    comparisons = comparisons_table([task, rand, control], StatsOptions(resamples=50, permutations=100))
    assert set(zip(comparisons["label_a"], comparisons["label_b"], strict=True)) == {("e", "r")}
    assert list(comparisons["target"]) == ["t0", "t1", "t2", "t3", "mean", "wins"]


def test_fit_cli_writes_stats_and_comparisons(tmp_path, monkeypatch):
    """The credibility options end to end: baselines, control, CIs, MDL, a random-init pair; seeded."""
    from probe_entries import toy_entry

    from spatial_probing.cli.fit import run_fit
    from spatial_probing.report.tables import credibility_table

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    trained = toy_entry(tmp_path, "m", signal=1.0, encoder="toy:m@text")
    random = toy_entry(tmp_path, "r", signal=0.2, seed=1, encoder="toy:m@text+random-init")
    args = ["--config", "configs/probe/credibility.yaml", "--data.feature_root", "null",
            "--data.dataset", "null", "--data.features", f"[{trained},{random}]", "--data.task.min_count", "20",
            "--model.Cs", "[0.1,1.0,10.0]", "--model.stats.resamples", "200", "--model.stats.permutations", "200",
            "--data.n_splits", "3", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    outs = []
    for run in ("a", "b"):
        assert run_fit([*args, "--out_dir", str(tmp_path / run)]) == 0
        outs.append(tmp_path / run)
    stats = pd.read_csv(outs[0] / "stats.csv")
    assert list(stats.columns) == ["dataset", "entry", "encoder", "view", "layer", "task", "target", "metric",
                                   "estimate", "ci_low", "ci_high", "level", "method"]
    encoders = set(stats["encoder"])
    assert {"toy:m@text", "toy:m@text+random-init", "baseline:majority", "baseline:ngrams",
            "baseline:ngrams-masked"} == encoders
    assert {"relation_type", "relation_type/control"} == set(stats["task"])
    controlled = set(stats.loc[stats["task"] == "relation_type/control", "encoder"])
    assert controlled == {"toy:m@text", "toy:m@text+random-init"}  # baselines get no control
    metrics = set(stats["metric"])
    assert {"f1_macro", "selectivity_f1_macro", "mdl_compression", "mdl_online_bits", "mdl_uniform_bits"} <= metrics
    assert {"left of", "mean", "meta:Projective", "meta:Proximity"} <= set(stats["target"])
    comparisons = pd.read_csv(outs[0] / "comparisons.csv")
    assert set(comparisons["label_b"]) == {"toy:m@text+random-init"}
    for task in ("relation_type", "relation_type/control"):  # the task's pair and the control's
        targets = comparisons.loc[comparisons["task"] == task, "target"]
        assert sorted(targets) == ["above", "left of", "mean", "near", "wins"]
    # the same config gives the same numbers, byte for byte
    assert (outs[0] / "stats.csv").read_bytes() == (outs[1] / "stats.csv").read_bytes()
    assert (outs[0] / "comparisons.csv").read_bytes() == (outs[1] / "comparisons.csv").read_bytes()
    table = credibility_table(stats)
    assert "toy:m@text f1_macro" in table.columns and "mean" in table.index
