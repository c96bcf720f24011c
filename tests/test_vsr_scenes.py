"""Scenes in VSR's vocabulary: nouns checked against VSR's captions, distinct glyphs, held-out nouns,
caption truth under the scene rules, determinism, the VSR-format writer, bad options and the tokenizer check."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatial_probing.data.scenes import (
    BACKGROUND,
    COLOURS,
    FILLS,
    RELATIONS,
    SHAPES,
    Scene,
    _mask,
    relation_holds,
    render,
)
from spatial_probing.data.structure import CONVERSES, parse_caption
from spatial_probing.data.vsr import load_vsr
from spatial_probing.errors import DataError
from spatial_probing.grounding.vsr_scenes import (
    COCO_CATEGORIES,
    CONVERSE_RELATIONS,
    GLYPHS,
    HELD_OUT_NOUNS,
    IMAGE_SIZE,
    MIN_VSR_COUNT,
    TRAIN_NOUNS,
    VSR_NOUNS,
    check_tokenizer,
    generate_vsr_scenes,
    write_vsr_scenes,
)


def noun_counts(files: list[Path]) -> Counter:
    """How often each caption argument (subject or object) occurs in VSR files."""
    counts: Counter = Counter()
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            parsed = parse_caption(row["caption"], row["relation"])
            counts.update([parsed.subject, parsed.object])
    return counts


@pytest.fixture(scope="module")
def train_scenes():
    return generate_vsr_scenes(130, seed=3, split="train")


@pytest.fixture(scope="module")
def heldout_scenes():
    return generate_vsr_scenes(130, seed=3, split="heldout")


def test_nouns_are_the_coco_nouns_vsr_captions_use(vsr_dir):
    assert len(COCO_CATEGORIES) == len(set(COCO_CATEGORIES)) == 80
    counts = noun_counts([vsr_dir / "random" / f"{s}.jsonl" for s in ("train", "dev", "test")])
    assert set(counts) <= set(COCO_CATEGORIES)  # VSR writes COCO's surface forms ("dining table", "couch")
    assert all(counts[n] >= MIN_VSR_COUNT for n in VSR_NOUNS), {n: counts[n] for n in VSR_NOUNS}
    # exactly the COCO nouns that frequent, most frequent first
    assert set(VSR_NOUNS) == {n for n in COCO_CATEGORIES if counts[n] >= MIN_VSR_COUNT}
    assert [counts[n] for n in VSR_NOUNS] == sorted((counts[n] for n in VSR_NOUNS), reverse=True)
    assert 40 <= len(VSR_NOUNS) <= 60 and len(set(VSR_NOUNS)) == len(VSR_NOUNS)


def test_held_out_nouns_are_frequent_in_vsr_test(vsr_dir):
    assert set(HELD_OUT_NOUNS) < set(VSR_NOUNS) and len(set(HELD_OUT_NOUNS)) == len(HELD_OUT_NOUNS)
    assert TRAIN_NOUNS == tuple(n for n in VSR_NOUNS if n not in HELD_OUT_NOUNS)
    test = noun_counts([vsr_dir / "random" / "test.jsonl"])
    assert all(test[n] >= 40 for n in HELD_OUT_NOUNS), {n: test[n] for n in HELD_OUT_NOUNS}
    naming = total = 0  # the documented share of VSR random-test captions that name a held-out noun
    for line in (vsr_dir / "random" / "test.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        p = parse_caption(row["caption"], row["relation"])
        total += 1
        naming += p.subject in HELD_OUT_NOUNS or p.object in HELD_OUT_NOUNS
    assert (naming, total) == (771, 2195)


def test_glyphs_are_distinct_and_held_out_glyphs_compose_training_attributes():
    assert list(GLYPHS) == list(VSR_NOUNS)
    assert len(set(GLYPHS.values())) == len(VSR_NOUNS)
    assert all(g.colour in COLOURS and g.shape in SHAPES and g.fill in FILLS for g in GLYPHS.values())
    train = [GLYPHS[n] for n in TRAIN_NOUNS]
    for noun in HELD_OUT_NOUNS:  # a held-out noun is a new word, drawn with attributes seen in training
        g = GLYPHS[noun]
        assert any(t.colour == g.colour for t in train) and any(t.shape == g.shape for t in train)
        assert any(t.fill == g.fill for t in train)


def test_glyphs_are_distinguishable_at_the_smallest_object_size(train_scenes):
    sides = {o.box[2] - o.box[0] for s in train_scenes for o in s.objects}
    smallest = min(sides)
    assert smallest >= 8  # inside/contains inner objects at 64 px
    crops = {}
    for noun, glyph in GLYPHS.items():
        boxes = [(x, y, x + smallest, y + smallest) for x, y in ((3, 5), (40, 21))]
        images = [np.asarray(render(Scene("", "", (glyph.at(box),), 0, 0), IMAGE_SIZE)) for box in boxes]
        a, b = (im[y0:y1, x0:x1] for im, (x0, y0, x1, y1) in zip(images, boxes, strict=True))
        assert np.array_equal(a, b)  # a glyph looks the same wherever it stands
        # the silhouette (non-background pixels) is the shape's mask, whatever the fill
        drawn = (images[0] != BACKGROUND).any(axis=2)
        assert np.array_equal(drawn, _mask(glyph.at(boxes[0]), IMAGE_SIZE))
        crops[noun] = a.astype(int)
    differing = {(m, n): int((crops[m] != crops[n]).any(axis=2).sum()) for m, n in itertools.combinations(crops, 2)}
    assert min(differing.values()) >= 8, min(differing, key=differing.get)


def test_held_out_nouns_never_train_and_always_in_heldout(train_scenes, heldout_scenes):
    for scene in train_scenes:
        assert not set(scene.nouns) & set(HELD_OUT_NOUNS) and len(scene.objects) == 2
    for scene in heldout_scenes:
        assert set(scene.names) & set(HELD_OUT_NOUNS)
    for scene in train_scenes + heldout_scenes:
        a, b = scene.names
        assert a != b and all(GLYPHS[n].at(o.box) == o for n, o in zip(scene.nouns, scene.objects, strict=True))
    # subject and object roles both carry held-out nouns, and many nouns are used
    assert {s.names[0] in HELD_OUT_NOUNS for s in heldout_scenes} == {True, False}
    assert len({n for s in train_scenes for n in s.nouns}) == len(TRAIN_NOUNS)
    assert [s.relation for s in train_scenes[:10]] == list(CONVERSE_RELATIONS)


def test_caption_truth_follows_the_scene_rules(train_scenes, heldout_scenes):
    for scene in train_scenes + heldout_scenes:
        a, b = scene.names
        s, o = scene.objects[scene.subj], scene.objects[scene.obj]
        r, r2 = scene.relation, CONVERSES[scene.relation]
        caps = scene.captions()
        assert list(caps) == ["caption", "converse", "contradiction", "swap"]
        verb = {"contains": "contains"}
        assert caps["caption"][0] == f"The {a} {verb.get(r, 'is ' + r)} the {b}."
        assert caps["converse"][:2] == (f"The {b} {verb.get(r2, 'is ' + r2)} the {a}.", r2)
        over = scene.subj > scene.obj  # the subject is drawn after (over) the object
        assert relation_holds(r, s.box, o.box, over, IMAGE_SIZE) and caps["caption"][2] == 1
        assert relation_holds(r2, o.box, s.box, not over, IMAGE_SIZE) and caps["converse"][2] == 1
        assert not relation_holds(r2, s.box, o.box, over, IMAGE_SIZE) and caps["contradiction"] == (
            f"The {a} {verb.get(r2, 'is ' + r2)} the {b}.", r2, 0)
        assert not relation_holds(r, o.box, s.box, not over, IMAGE_SIZE) and caps["swap"][2] == 0


def test_relations_without_a_converse_carry_their_true_caption_only():
    scenes = generate_vsr_scenes(len(RELATIONS), seed=1, split="train", relations=RELATIONS)
    assert [s.relation for s in scenes] == list(RELATIONS)
    for scene in scenes:
        caps = scene.captions()
        assert caps["caption"][2] == 1
        assert set(caps) == ({"caption"} if scene.relation not in CONVERSES else
                             {"caption", "converse", "contradiction", "swap"})


def test_same_seed_same_bytes(tmp_path):
    one, two = (generate_vsr_scenes(13, seed=5, split="heldout") for _ in range(2))
    assert one == two and all(np.array_equal(a.image(), b.image()) for a, b in zip(one, two, strict=True))
    image = one[0].image()
    assert image.dtype == np.uint8 and image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert generate_vsr_scenes(13, seed=6, split="heldout") != one
    dirs = [write_vsr_scenes(tmp_path / name, 13, seed=5, split="heldout") for name in ("a", "b")]
    files = [{p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} for d in dirs]
    assert files[0] == files[1] and len(files[0]) == 13 + 2  # images, test.jsonl, vsr_scenes.json
    assert write_vsr_scenes(dirs[0], 13, seed=5, split="heldout") == dirs[0]  # reused as it is
    with pytest.raises(DataError, match="not"):
        write_vsr_scenes(dirs[0], 13, seed=6, split="heldout")


def test_written_directory_is_vsr_format(tmp_path):
    out = write_vsr_scenes(tmp_path / "probe", 10, seed=2, split="heldout")
    rows = load_vsr(str(out), "test")
    scenes = generate_vsr_scenes(10, seed=2, split="heldout")
    assert len(rows) == 40 and rows.labels.tolist() == [1, 1, 0, 0] * 10
    assert list(rows.captions[:4]) == [c for c, _, _ in scenes[0].captions().values()]
    assert all(rows.extra["held_out"]) and rows.extra["kind"][:4] == ("caption", "converse", "contradiction", "swap")
    assert set(rows.images) == {p.name for p in (out / "images").iterdir()}
    assert np.array_equal(np.asarray(Image.open(out / "images" / rows.images[0])),
                          scenes[0].image().transpose(1, 2, 0))
    train = load_vsr(str(write_vsr_scenes(tmp_path / "train", 10, seed=2, split="train")), "test")
    assert not any(train.extra["held_out"])
    assert not {n for n in train.extra["subj"] + train.extra["obj"]} & set(HELD_OUT_NOUNS)


@pytest.mark.parametrize(("options", "named"), [
    ({"held_out": ("dog", "unicorn")}, ["held_out", "unicorn", "VSR_NOUNS"]),
    ({"train_nouns": ("cat", "person", "dog")}, ["train_nouns", "dog", "HELD_OUT_NOUNS"]),
    ({"train_nouns": ("cat", "wombat")}, ["train_nouns", "wombat", "VSR_NOUNS"]),
    ({"relations": ("left of", "next to")}, ["relations", "next to", "RELATIONS"]),
    ({"relations": ()}, ["relations"]),
    ({"split": "test"}, ["split", "heldout"]),
    ({"image_size": 48}, ["image_size", "64"]),
    ({"split": "heldout", "held_out": ()}, ["held_out"]),
])
def test_bad_options_name_the_option(options, named, tmp_path):
    args = {"n": 2, "seed": 0, "split": "train"} | options
    for call in (generate_vsr_scenes, lambda **kw: write_vsr_scenes(tmp_path / "x", **kw)):
        with pytest.raises(DataError) as err:
            call(**args)
        assert all(word in str(err.value) for word in named), str(err.value)
    assert not (tmp_path / "x").exists()


def test_training_nouns_can_be_narrowed():
    scenes = generate_vsr_scenes(20, seed=0, split="train", train_nouns=("cat", "person", "bed"))
    assert {n for s in scenes for n in s.nouns} == {"cat", "person", "bed"}


def test_check_tokenizer_flags_words_minilm_cannot_spell(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    tokens = check_tokenizer(VSR_NOUNS, tokenizer)
    assert tokens["teddy bear"] == ["teddy", "bear"] and tokens["tv"] == ["tv"]
    with pytest.raises(DataError) as err:
        check_tokenizer(["cat", "glorp\u2603"], tokenizer)
    assert "glorp\u2603" in str(err.value) and "'cat'" not in str(err.value) and "[UNK]" in str(err.value)
    with pytest.raises(DataError) as err:  # a made-up word WordPiece spells in pieces
        check_tokenizer(["cat", "hot dog", "zorblax"], tokenizer, whole_words=True)
    assert "zorblax" in str(err.value) and "hot dog" not in str(err.value)
