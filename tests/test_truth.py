"""VSR protocol on fixed splits: the fit sees only train rows, dev chooses C, test is scored once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from probe_entries import write_entry

from spatial_probing.analysis.features import FeatureIndex
from spatial_probing.analysis.protocol import combine, fit_dev_test
from spatial_probing.analysis.published import VSR_PUBLISHED
from spatial_probing.analysis.stats import STATS_COLUMNS
from spatial_probing.analysis.truth import Truth
from spatial_probing.cli import main
from spatial_probing.data.rows import SpatialRows
from spatial_probing.probes.solver import fit_logreg


def _split(n: int, seed: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int8)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 1.5 * (2 * y - 1)
    return x, (1 - y if flip else y).reshape(-1, 1)


def test_protocol_never_fits_on_dev_or_test_rows():
    train, dev, test = _split(80, 0), _split(40, 1), _split(40, 2)
    Cs = [0.001, 0.1, 10.0]
    result = fit_dev_test(train, dev, test[0], Cs)
    alone = fit_logreg(train[0], train[1], np.ones((1, 80, 1), bool), Cs, class_weight="balanced", tol=1e-6)
    assert torch.equal(result.fit.W, alone.W) and torch.equal(result.fit.b, alone.b)
    # other dev and test rows (labels flipped, features shuffled) leave the fitted weights exactly as they were
    flipped = fit_dev_test(train, _split(40, 1, flip=True), test[0][::-1].copy(), Cs)
    assert torch.equal(flipped.fit.W, result.fit.W)
    # ... dev rows are only scored: flipping their labels turns each C's dev accuracy into its complement
    np.testing.assert_allclose(flipped.dev_accuracy, 1 - result.dev_accuracy)
    assert result.chosen == int(np.argmax(result.dev_accuracy))
    assert result.test_pred.shape == (40,) and (result.test_pred == test[1][:, 0]).mean() > 0.8


def test_ties_on_dev_choose_the_smallest_C():
    train = _split(60, 0)
    x = np.zeros((4, 6), np.float32)
    x[:, 0] = [-20, 20, -20, 20]  # so far from the boundary that every C classifies them right
    result = fit_dev_test(train, (x, np.array([[0], [1], [0], [1]], np.int8)), x, [10.0, 1.0, 0.1])
    assert result.dev_accuracy.tolist() == [1.0, 1.0, 1.0]
    assert result.fit.Cs == (0.1, 1.0, 10.0) and result.C == 0.1


def test_joint_modes():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, 5.0]])
    assert combine(a, b, ["concat", "product", "absdiff"]).tolist() == [[1, 2, 3, 5, 3, 10, 2, 3]]
    assert combine(a, np.array([[1.0, 0.0, 2.0]]), ["outer"]).tolist() == [[1, 0, 2, 2, 0, 4]]
    with pytest.raises(ValueError, match="equal widths"):
        combine(a, np.ones((1, 3)), ["product"])


def _vsr_like(split: str, n: int, seed: int) -> tuple[SpatialRows, np.ndarray]:
    rng = np.random.default_rng(seed)
    relations = ["left of", "near"]
    rel = [relations[i % 2] for i in range(n)]
    labels = (rng.random(n) < 0.5).astype(np.int8)
    rows = SpatialRows(name=f"vsr_toy/{split}", captions=tuple(f"The a{i} is {r} the b." for i, r in enumerate(rel)),
                       relations=tuple(rel), labels=labels, images=tuple(f"i{i}.jpg" for i in range(n)),
                       image_links=(None,) * n, source="memory")
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += 2.0 * (2 * labels - 1)
    return rows, x


def _write_splits(root: Path) -> None:
    for k, (split, n) in enumerate((("train", 120), ("dev", 40), ("test", 60))):
        rows, x = _vsr_like(split, n, k)
        write_entry(root / split, rows, x, encoder="toy:enc")


def test_truth_analysis_reports_overall_relation_and_meta_rows(tmp_path: Path):
    _write_splits(tmp_path)
    stats = pd.DataFrame(Truth("vsr_toy", baselines=["majority", "bow"]).run(FeatureIndex(tmp_path)))
    assert tuple(stats.columns) == STATS_COLUMNS
    acc = stats[stats.metric.eq("accuracy")].set_index(["encoder", "target"])
    assert set(acc.index.get_level_values(0)) == {"toy:enc@text", "baseline:majority", "baseline:bow"}
    for target in ("all", "left of", "near", "meta:Projective", "meta:Proximity"):
        assert ("toy:enc@text", target) in acc.index
    enc = acc.loc[("toy:enc@text", "all")]
    assert enc.estimate > 0.8 and enc.ci_low <= enc.estimate <= enc.ci_high
    test_labels = _vsr_like("test", 60, 2)[0].labels
    majority = np.bincount(_vsr_like("train", 120, 0)[0].labels).argmax()
    assert acc.loc[("baseline:majority", "all")].estimate == pytest.approx((test_labels == majority).mean())
    assert (stats.dataset == "vsr_toy/test").all()


def test_analyze_sets_published_figures_apart_from_computed_ones(tmp_path: Path, capsys):
    _write_splits(tmp_path / "features")
    config = {"feature_root": str(tmp_path / "features"), "out_dir": str(tmp_path / "out"),
              "analyses": [{"class_path": "spatial_probing.analysis.truth.Truth", "init_args": {"dataset": "vsr_toy"}}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    assert main(["analyze", "--config", str(tmp_path / "t.yaml")]) == 0
    stats = pd.read_csv(tmp_path / "out" / "stats.csv")
    published = pd.read_csv(tmp_path / "out" / "published.csv")
    assert published.test_accuracy_pct.tolist() == [v for _, _, v in VSR_PUBLISHED]
    assert published.source.str.startswith("published: ").all()
    assert not stats.encoder.isin(published.model).any() and not stats.method.str.contains("published").any()
    assert "published (not computed here)" in capsys.readouterr().out
