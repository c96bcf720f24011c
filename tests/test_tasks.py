"""Probe tasks: targets, masks and groups built from rows."""

from __future__ import annotations

import numpy as np
import pytest

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError
from spatial_probing.tasks.caption_truth import CaptionTruth
from spatial_probing.tasks.relation_type import RelationType


def _rows() -> SpatialRows:
    relations = ["left of"] * 3 + ["above"] * 3 + ["near"] * 2 + ["on"] * 1
    return SpatialRows(
        name="toy/train",
        captions=tuple(f"caption {i}" for i in range(len(relations))),
        relations=tuple(relations),
        labels=np.array([1, 0, 1, 1, 1, 0, 0, 1, 0], dtype=np.int8),
        images=("a.jpg", "b.jpg", "a.jpg", "c.jpg", "b.jpg", "d.jpg", "a.jpg", "e.jpg", "c.jpg"),
        image_links=(None,) * len(relations),
        source="memory",
    )


def test_relation_type_orders_by_count_then_name_and_drops_rare():
    task = RelationType(min_count=2).build(_rows())
    assert task.target_names == ("above", "left of", "near")  # 3, 3 (tie: by name), 2; "on" has 1
    assert task.targets.dtype == np.int8
    assert task.targets[:, 1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert task.targets[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert task.row_mask.all()
    assert task.groups.tolist() == [0, 1, 0, 2, 1, 3, 0, 4, 2]  # image id, first-seen order


def test_relation_filter_restricts_targets_and_rejects_unknown_or_rare():
    assert RelationType(min_count=2, relations=["near"]).build(_rows()).target_names == ("near",)
    with pytest.raises(DataError, match="'lft of'"):
        RelationType(min_count=2, relations=["lft of"]).build(_rows())
    with pytest.raises(DataError, match="fewer than min_count=2"):
        RelationType(min_count=2, relations=["on"]).build(_rows())


def test_caption_truth_is_the_label_masked_by_relation_filter():
    task = CaptionTruth(relations=["above", "on"]).build(_rows())
    assert task.target_names == ("caption_truth",)
    assert task.targets[:, 0].tolist() == [1, 0, 1, 1, 1, 0, 0, 1, 0]
    assert task.row_mask[:, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 2 + [True]


def test_subset_keeps_rows_and_captions():
    task = RelationType(min_count=3).build(_rows())
    assert task.target_names == ("above", "left of")
    sub = task.subset(np.array([0, 3]))
    assert sub.targets.tolist() == [[0, 1], [1, 0]] and sub.groups.tolist() == [0, 2]
    assert sub.captions == ("caption 0", "caption 3")


def test_task_options_are_checked_and_name_the_option():
    with pytest.raises(DataError, match="data.task.min_count must be >= 1"):
        RelationType(min_count=0)
    with pytest.raises(DataError, match="unknown relation.*'lft of'.*data.task.relations"):
        CaptionTruth(relations=["lft of"]).build(_rows())


def test_task_is_chosen_by_class_path_in_the_probe_config(tmp_path):
    from jsonargparse import ArgumentParser

    from spatial_probing.probes.data import ProbeDataModule

    parser = ArgumentParser()
    parser.add_class_arguments(ProbeDataModule, "data")
    cfg = parser.parse_args(["--data.task", "spatial_probing.tasks.caption_truth.CaptionTruth",
                             "--data.task.relations", "[above]"])  # fmt: skip
    init = parser.instantiate_classes(cfg)
    assert isinstance(init.data.task, CaptionTruth) and init.data.task.relations == ["above"]
    default = parser.instantiate_classes(parser.parse_args([]))
    assert isinstance(default.data.task, RelationType) and default.data.task.min_count == 50


def test_vsr_random_train_has_the_original_36_relations(vsr_dir):
    from spatial_probing.data.vsr import load_vsr

    task = RelationType(min_count=50).build(load_vsr(str(vsr_dir / "random"), "train"))
    assert task.n_targets == 36
    assert task.target_names[:3] == ("touching", "in front of", "behind")
    assert task.targets.sum(axis=0)[:3].tolist() == [884, 528, 498]
    assert task.targets.shape == (7680, 36) and task.groups.max() + 1 == 4968
