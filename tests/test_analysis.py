"""Zero-shot scoring, odd-one-out, RSA, the scene baselines and the analyze subcommand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from probe_entries import write_entry

from spatial_probing.analysis.features import geometry, pixels, unit_rows
from spatial_probing.analysis.representation import (
    odd_one_out_scores,
    odd_one_out_trials,
    rdm_upper,
    rsa_sample,
)
from spatial_probing.analysis.stats import STATS_COLUMNS
from spatial_probing.analysis.structure import zero_shot_scores
from spatial_probing.cli import main
from spatial_probing.data.derived import structure_rows
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.scenes import write_scenes
from spatial_probing.data.vsr import load_vsr


def test_zero_shot_picks_the_caption_more_similar_to_the_image():
    # rows aligned as in a derived dataset: the image of row `cap[k]` against text rows `cap[k]` and `con[k]`
    image = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    text = unit_rows(np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.8, 0.2], [1.0, 0.0], [0.0, 1.0]]))
    cap, con = np.array([0, 1, 4]), np.array([3, 2, 5])
    assert zero_shot_scores(image, text, cap, con).tolist() == [1.0, 0.0, 0.5]


def _caption_rows(per_relation: dict[str, int]) -> SpatialRows:
    pairs = [(f"The thing{i} is {r} the other.", r) for r, n in per_relation.items() for i in range(n)]
    pairs.append(pairs[0])  # a repeated caption (another image) counts once
    n = len(pairs)
    return SpatialRows(name="toy/test", captions=tuple(c for c, _ in pairs), relations=tuple(r for _, r in pairs),
                       labels=np.ones(n, np.int8), images=tuple(f"i{k}.jpg" for k in range(n)),
                       image_links=(None,) * n, source="memory")


def test_odd_one_out_trials_follow_the_first_study_rules():
    rows = _caption_rows({"left of": 3, "above": 1, "near": 4})
    trials = odd_one_out_trials(rows, n_trials=300, seed=42)
    assert np.array_equal(trials, odd_one_out_trials(rows, n_trials=300, seed=42))
    rel = np.asarray(rows.relations, dtype=object)
    assert (rel[trials[:, 0]] == rel[trials[:, 1]]).all() and (trials[:, 0] != trials[:, 1]).all()
    assert (rel[trials[:, 2]] != rel[trials[:, 0]]).all()
    assert set(rel[trials[:, 0]]) == {"left of", "near"}  # "above" has one caption: never the anchor relation
    assert len(rows) - 1 not in trials  # the repeated caption's second row is never drawn
    one_hot = np.eye(3, dtype=np.float32)[[["left of", "above", "near"].index(r) for r in rows.relations]]
    assert odd_one_out_scores(one_hot, trials).tolist() == [1.0] * 300


def test_rsa_sample_is_balanced_and_rdms_of_one_encoder_agree():
    rows = _caption_rows({"left of": 10, "above": 3})
    sample = rsa_sample(rows, per_relation=7, seed=42)
    assert sorted(np.unique(np.asarray(rows.relations)[sample], return_counts=True)[1].tolist()) == [3, 7]
    x = unit_rows(np.random.default_rng(0).normal(size=(len(rows), 5)))
    assert rdm_upper(x[sample]).shape == (len(sample) * (len(sample) - 1) // 2,)
    np.testing.assert_allclose(rdm_upper(x[:2]), [1 - float(x[0] @ x[1])], rtol=1e-6)


def test_scene_baselines_read_boxes_and_images(tmp_path: Path):
    out = write_scenes(tmp_path / "scenes", n_per_relation=2, seed=0)
    rows = load_vsr(str(out), "train")
    geo = geometry(rows, 96)
    assert geo.x.shape[0] == len(rows) and np.isfinite(geo.x).all()
    left = np.asarray(rows.relations) == "left of"
    truth = rows.labels[left] == 1
    assert (geo.x[left, 12][truth] >= 0).all()  # the gap obj.x0 - subj.x1 of a true "left of" is never negative
    px = pixels(rows, side=4)
    assert px.x.shape == (len(rows), 48) and 0 <= px.x.min() and px.x.max() <= 1


def test_analyze_writes_schema_stats_of_every_analysis(tmp_path: Path):
    base = _caption_rows({"left of": 6, "above": 6, "inside": 6})
    derived = structure_rows(base)
    rng = np.random.default_rng(0)
    root = tmp_path / "features"
    write_entry(root / "a", derived, rng.normal(size=(len(derived), 8)).astype(np.float32), encoder="toy:enc")
    write_entry(root / "b", derived, rng.normal(size=(len(derived), 8)).astype(np.float32), encoder="toy:enc",
                view="image")
    write_entry(root / "c", base, rng.normal(size=(len(base), 8)).astype(np.float32), encoder="toy:enc")
    config = {
        "feature_root": str(root), "out_dir": str(tmp_path / "out"),
        "analyses": [
            {"class_path": "spatial_probing.analysis.structure.Structure", "init_args": {"dataset": derived.name}},
            {"class_path": "spatial_probing.analysis.structure.ZeroShot", "init_args": {"dataset": derived.name}},
            {"class_path": "spatial_probing.analysis.representation.OddOneOut",
             "init_args": {"dataset": "toy/test", "trials": 200}},
            {"class_path": "spatial_probing.analysis.representation.RSA", "init_args": {"dataset": "toy/test"}},
        ],
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(config))
    assert main(["analyze", "--config", str(tmp_path / "a.yaml")]) == 0
    stats = pd.read_csv(tmp_path / "out" / "stats.csv")
    assert tuple(stats.columns) == STATS_COLUMNS
    assert set(stats.task) == {"structure", "zero_shot", "odd_one_out", "rsa"}
    bow = stats[stats.encoder.eq("baseline:bow") & stats.task.eq("structure") & stats.target.eq("all")]
    assert bow.set_index("metric").estimate.to_dict() == {"converse_score": 0.5, "swap_score": 0.0,
                                                          "pair_probe_accuracy": 0.5}
    assert stats[stats.task.eq("rsa")].target.tolist() == ["vs:baseline:bow"]
    assert not (tmp_path / "out" / "published.csv").exists()  # VSR's published figures go with truth results
