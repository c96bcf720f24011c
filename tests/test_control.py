"""Control tasks: labels a function of the lexical type, the task's label distribution kept; selectivity."""

from __future__ import annotations

import numpy as np
import pytest

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError
from spatial_probing.tasks.control import ControlTask, lexical_type
from spatial_probing.tasks.relation_type import RelationType

RELATIONS = ("left of", "right of", "near", "on top of", "under")
NOUNS = tuple(f"noun{i}" for i in range(60))


def _rows(n=3000, seed=0) -> SpatialRows:
    rng = np.random.default_rng(seed)
    rels = [RELATIONS[i] for i in rng.choice(len(RELATIONS), n, p=[0.4, 0.25, 0.2, 0.1, 0.05])]
    subj = rng.choice(len(NOUNS), n)
    captions = tuple(f"The {NOUNS[s]} is {r} the table." for s, r in zip(subj, rels, strict=True))
    return SpatialRows(name="synthetic/train", captions=captions, relations=tuple(rels),
                       labels=np.zeros(n, dtype=np.int8), images=tuple(f"{i}.jpg" for i in range(n)),
                       image_links=(None,) * n, source="generated")


def test_lexical_type_parses_subject_and_object():
    assert lexical_type("The teddy bear is in front of the cat.", "in front of") == "teddy bear"
    assert lexical_type("The teddy bear is in front of the cat.", "in front of", "object") == "cat"
    assert lexical_type("The cat is on the bed.", "on", "pair") == "cat|bed"
    assert lexical_type("Cats on beds", "under") == "cats on beds"  # no relation phrase: the whole caption


def test_control_labels_are_a_function_of_the_subject_and_keep_the_distribution():
    rows = _rows()
    task, control = RelationType(min_count=10).build(rows), ControlTask(RelationType(min_count=10)).build(rows)
    assert control.name == "relation_type/control" and control.target_names == task.target_names
    np.testing.assert_array_equal(control.row_mask, task.row_mask)
    subjects = np.array([lexical_type(c, r) for c, r in zip(rows.captions, rows.relations, strict=True)])
    for t in range(control.n_targets):
        for noun in np.unique(subjects):  # one label per type
            assert len(np.unique(control.targets[subjects == noun, t])) == 1
        # positives within the smallest type count of the task's (types here hold ~50 rows each)
        assert abs(int(control.targets[:, t].sum()) - int(task.targets[:, t].sum())) <= 30
    assert not np.array_equal(control.targets, task.targets)
    again = ControlTask(RelationType(min_count=10)).build(rows)
    np.testing.assert_array_equal(again.targets, control.targets)  # seeded
    other = ControlTask(RelationType(min_count=10), seed=1).build(rows)
    assert not np.array_equal(other.targets, control.targets)


def test_unknown_lexical_choice_is_refused():
    with pytest.raises(DataError, match="lexical"):
        ControlTask(RelationType(), lexical="verb")
