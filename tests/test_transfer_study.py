"""The transfer study (studies/transfer.py): its item scores, retention, arms and options, and one tiny run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spatial_probing.analysis.features import bag_of_words
from spatial_probing.data.derived import structure_rows
from spatial_probing.data.rows import SpatialRows
from spatial_probing.grounding.arms import CONFIGS
from spatial_probing.studies import transfer as T

CAPTIONS = [("The dog is left of the cat.", "left of"), ("The cat is on top of the bed.", "on top of"),
            ("The person is above the unicorn.", "above"), ("The person is near the car.", "near")]


def _rows() -> SpatialRows:
    return SpatialRows(name="tiny", captions=tuple(c for c, _ in CAPTIONS), relations=tuple(r for _, r in CAPTIONS),
                       labels=(1, 1, 0, 1), images=("a.jpg",) * 4, image_links=(None,) * 4, source="test")


def test_noun_groups_follow_the_held_out_and_training_nouns() -> None:
    assert T.noun_group("The dog is left of the cat.", "left of") == "held_out"  # dog is held out
    assert T.noun_group("The cat is on top of the bed.", "on top of") == "seen"
    assert T.noun_group("The person is above the unicorn.", "above") == "other"  # a plural the scenes never name


def test_structure_items_score_the_bag_of_words_at_its_construction_values() -> None:
    rows = structure_rows(_rows())  # "near" has no converse: three triplets
    items = T.structure_items(bag_of_words(rows).x, rows, "tiny dev")
    every = items[items.subset == "tiny dev/all"].groupby("test")["value"].mean()
    assert every["structure"] == 0.5 and every["swap"] == 0.0  # same words tie; the swap shares every word
    groups = items[(items.test == "structure") & (items.subset != "tiny dev/all")]
    assert dict(zip(groups.subset, groups.item, strict=True)) == {"tiny dev/held_out": 0, "tiny dev/seen": 1,
                                                                   "tiny dev/other": 2}
    pooled = T.pooled(pd.concat([items.assign(subset=items.subset.str.replace("tiny dev", name))
                                 for name in ("random dev", "zeroshot test")]))
    assert sorted(pooled[pooled.test == "swap"].groupby("subset").size().items()) == [
        ("pooled/held_out", 2), ("pooled/other", 2), ("pooled/seen", 2)]


def test_retention_is_one_for_the_same_similarities_and_low_for_unrelated_ones() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    np.testing.assert_allclose(T.retention_items(3 * x, x), 1.0)  # cosine is scale-free
    unrelated = T.retention_items(rng.normal(size=(40, 8)), x)
    assert abs(unrelated.mean()) < 0.1 and unrelated.shape == (40,)


def test_transfer_arms_differ_only_in_objective_and_tower() -> None:
    shared = yaml.safe_load((CONFIGS / "transfer" / "base.yaml").read_text())
    assert not {"objective", "tower"} & set(shared["model"])  # the shared file never sets an arm's ingredient
    for arm in T.TRANSFER_ARMS:
        config = yaml.safe_load((CONFIGS / f"{arm}.yaml").read_text())
        assert set(config) == {"model"} and set(config["model"]) <= {"objective", "tower"}, arm


@pytest.mark.parametrize(("options", "named"), [
    (["--arms", "world_state"], "--arms \\['world_state'\\]: not a transfer arm"),
    (["--arms", "mlm", "mlm"], "--arms lists \\['mlm'\\] more than once"),
    (["--model", "/nonexistent"], "--model /nonexistent: not minilm, mpnet or a sentence-transformers directory"),
    (["--vsr", "/nonexistent"], "--vsr /nonexistent: no random/dev.jsonl"),
])
def test_bad_options_are_refused_before_training(options, named, tmp_path, capsys) -> None:
    assert T.main([*options, "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(named, err), err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_a_tiny_transfer_study_writes_its_report_and_tables(tmp_path, minilm_dir, vsr_dir) -> None:
    out = tmp_path / "study"
    assert T.main(["--arms", "mlm", "contrastive", "--seeds", "0", "--steps", "2", "--eval_rows", "80",
                   "--n_boot", "50", "--vsr", str(vsr_dir), "--out_dir", str(out), "--train_args",
                   "--data.batch_size 4 --data.n_train 40 --data.n_val 8 --data.n_probe 8 "
                   "--trainer.val_check_interval 2 --model.warmup_steps 1"]) == 0
    stats = pd.read_csv(out / "tables" / "structure_stats.csv")
    untouched = stats[(stats.arm == "untouched") & (stats.test == "swap")]
    assert set(untouched.subset) >= {"pooled/held_out", "pooled/seen", "random dev/all", "zeroshot test/all"}
    bow = stats[(stats.arm == "bag of words") & (stats.subset == "random dev/all")].set_index("test").estimate
    assert bow["structure"] == 0.5 and bow["swap"] == 0.0
    measures = pd.read_csv(out / "tables" / "measure_stats.csv").set_index(["arm", "measure"]).estimate
    assert measures["untouched", "retention"] == pytest.approx(1.0)
    assert 0 < measures["mlm", "retention"] <= 1
    comparisons = pd.read_csv(out / "tables" / "structure_comparisons.csv")
    assert {("untouched", "mlm"), ("untouched", "contrastive"), ("mlm", "contrastive")} <= set(
        zip(comparisons.arm_a, comparisons.arm_b, strict=True))
    report = (out / "report.md").read_text()
    assert "Retention" in report and "held-out nouns" in report
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert set(runs.arm) == {"mlm", "contrastive"} and all((Path(p) / "modules.json").is_file() for p in runs.sbert)
