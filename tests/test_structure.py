"""Converse table, caption parsing, triplets and the derived:structure dataset."""

from __future__ import annotations

import numpy as np
import pytest

from spatial_probing.analysis.features import bag_of_words
from spatial_probing.analysis.structure import held_out_pair_probe, nearer, triplet_rows
from spatial_probing.data.derived import split_name, structure_rows
from spatial_probing.data.relations import META_CATEGORIES
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.sources import load_rows
from spatial_probing.data.structure import CONVERSES, parse_caption, triplet
from spatial_probing.errors import DataError


def _rows(pairs: list[tuple[str, str]]) -> SpatialRows:
    n = len(pairs)
    return SpatialRows(name="toy/test", captions=tuple(c for c, _ in pairs), relations=tuple(r for _, r in pairs),
                       labels=np.arange(n) % 2, images=tuple(f"i{k}.jpg" for k in range(n)),
                       image_links=(None,) * n, source="memory")


def test_converse_table_is_an_involution_over_vsr_relation_names():
    vsr = {r for rels in META_CATEGORIES.values() for r in rels}
    assert set(CONVERSES) <= vsr  # every name is VSR's own spelling
    assert all(CONVERSES[CONVERSES[r]] == r and CONVERSES[r] != r for r in CONVERSES)


def test_triplet_with_multi_word_objects_and_relation():
    t = triplet("The dining table is at the right side of the teddy bear.", "at the right side of")
    assert t == {
        "caption": ("The dining table is at the right side of the teddy bear.", "at the right side of"),
        "paraphrase": ("The teddy bear is at the left side of the dining table.", "at the left side of"),
        "contradiction": ("The dining table is at the left side of the teddy bear.", "at the left side of"),
        "swap": ("The teddy bear is at the right side of the dining table.", "at the right side of"),
    }


def test_triplet_of_a_verb_relation_and_its_copular_converse():
    t = triplet("The hot dog is inside the microwave oven.", "inside")
    assert t["paraphrase"][0] == "The microwave oven contains the hot dog."
    assert t["contradiction"][0] == "The hot dog contains the microwave oven."
    assert triplet("The bed has as a part the couch.", "has as a part")["paraphrase"][0] == "The couch is part of the bed."


def test_are_captions_keep_the_plural_where_the_subject_stays():
    p = parse_caption("The cats are on top of the tv stand.", "on top of")
    assert (p.subject, p.copula, p.object) == ("cats", "are", "tv stand")
    t = triplet("The cats are on top of the tv stand.", "on top of")
    assert t["contradiction"][0] == "The cats are under the tv stand."
    assert t["paraphrase"][0] == "The tv stand is under the cats."
    assert triplet("The bowls contain the apples.", "contains")["contradiction"][0] == "The bowls are inside the apples."


def test_symmetric_relations_make_no_triplet_and_bad_captions_are_named():
    assert triplet("The cat is near the dog.", "near") is None
    with pytest.raises(DataError, match="'A cat left of a dog'"):
        parse_caption("A cat left of a dog", "left of")


def test_derived_rows_hold_four_roles_per_triplet_with_base_images():
    base = _rows([("The cat is left of the dog.", "left of"), ("The cat is near the dog.", "near"),
                  ("The red fire hydrant is below the stop sign.", "below")])
    rows = structure_rows(base)
    assert len(rows) == 8 and rows.name == "derived:structure:toy/test"
    assert rows.extra["triplet"] == (0, 0, 0, 0, 1, 1, 1, 1)
    assert rows.extra["base_row"] == (0, 0, 0, 0, 2, 2, 2, 2)
    assert rows.images[4:] == ("i2.jpg",) * 4 and rows.labels.tolist() == [0] * 4 + [0] * 4
    assert rows.captions[5] == "The stop sign is above the red fire hydrant."
    assert split_name("derived:structure:../shared/vsr/random") == ("structure", "../shared/vsr/random")
    with pytest.raises(DataError, match="derived:<kind>"):
        split_name("derived:nosuch:x")


def test_every_vsr_caption_with_a_converse_parses(vsr_dir):
    for split in ("train", "dev", "test"):
        rows = load_rows(f"derived:structure:{vsr_dir / 'random'}", split, None, 40, 0)
        assert rows.name == f"derived:structure:vsr_random/{split}"
        assert len(rows) % 4 == 0 and len(rows) > 0


def test_bag_of_words_scores_exactly_one_half_on_triplets():
    base = _rows([("The cat is left of the dog.", "left of"), ("The big cat is above the small dog.", "above"),
                  ("The cup is inside the bowl.", "inside"), ("The tv is in front of the bed.", "in front of")])
    rows = structure_rows(base)
    bow = bag_of_words(rows)
    roles = triplet_rows(rows)
    converse = nearer(bow.x, roles["caption"], roles["paraphrase"], roles["contradiction"])
    assert converse.tolist() == [0.5] * 4  # paraphrase and contradiction hold the same words
    assert nearer(bow.x, roles["caption"], roles["paraphrase"], roles["swap"]).tolist() == [0.0] * 4
    groups = np.array(["a", "b", "a", "b"], dtype=object)
    assert held_out_pair_probe(bow.x, roles, groups, ["product", "absdiff"], 1.0).tolist() == [0.5] * 4
    assert held_out_pair_probe(bow.x, roles, groups, ["concat"], 1.0).tolist() == [0.5] * 4
