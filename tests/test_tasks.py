"""Probe tasks: targets, masks and groups built from rows."""

from __future__ import annotations

import numpy as np
import pytest

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError
from spatial_probing.probes.tasks import build_task, caption_truth_task, relation_type_task


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
    task = relation_type_task(_rows(), min_count=2)
    assert task.target_names == ("above", "left of", "near")  # 3, 3 (tie: by name), 2; "on" has 1
    assert task.targets.dtype == np.int8
    assert task.targets[:, 1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert task.targets[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert task.row_mask.all()
    assert task.groups.tolist() == [0, 1, 0, 2, 1, 3, 0, 4, 2]  # image id, first-seen order


def test_relation_filter_restricts_targets_and_rejects_unknown_or_rare():
    assert relation_type_task(_rows(), min_count=2, relations=["near"]).target_names == ("near",)
    with pytest.raises(DataError, match="'lft of'"):
        relation_type_task(_rows(), min_count=2, relations=["lft of"])
    with pytest.raises(DataError, match="fewer than min_count=2"):
        relation_type_task(_rows(), min_count=2, relations=["on"])


def test_caption_truth_is_the_label_masked_by_relation_filter():
    task = caption_truth_task(_rows(), relations=["above", "on"])
    assert task.target_names == ("caption_truth",)
    assert task.targets[:, 0].tolist() == [1, 0, 1, 1, 1, 0, 0, 1, 0]
    assert task.row_mask[:, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 2 + [True]


def test_build_task_by_name_and_subset():
    task = build_task("relation_type", _rows(), min_count=3)
    assert task.target_names == ("above", "left of")
    sub = task.subset(np.array([0, 3]))
    assert sub.targets.tolist() == [[0, 1], [1, 0]] and sub.groups.tolist() == [0, 2]
    with pytest.raises(DataError, match="unknown probe task 'relation'"):
        build_task("relation", _rows())


def test_vsr_random_train_has_the_original_36_relations(vsr_dir):
    from spatial_probing.data.vsr import load_vsr

    task = build_task("relation_type", load_vsr(str(vsr_dir / "random"), "train"), min_count=50)
    assert task.n_targets == 36
    assert task.target_names[:3] == ("touching", "in front of", "behind")
    assert task.targets.sum(axis=0)[:3].tolist() == [884, 528, 498]
    assert task.targets.shape == (7680, 36) and task.groups.max() + 1 == 4968
