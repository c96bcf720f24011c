"""Synthetic scenes: determinism, balance, caption truth checked independently against boxes and pixels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spatial_probing.data.images import ImageSource
from spatial_probing.data.scenes import (
    COLOURS,
    FAR_FRAC,
    NEAR_FRAC,
    RELATIONS,
    caption_text,
    generate_scenes,
    write_scenes,
)
from spatial_probing.data.vsr import load_vsr
from spatial_probing.errors import DataError


@pytest.fixture(scope="module")
def scene_set():
    return generate_scenes(n_per_relation=12, seed=7, image_size=96)


def truth(relation: str, a: tuple, b: tuple, a_z: int, b_z: int, size: int) -> bool:
    """An independent reading of the documented rules, written with projections instead of signed gaps."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    x_overlap, y_overlap = ax0 < bx1 and bx0 < ax1, ay0 < by1 and by0 < ay1
    gap = np.hypot(max(bx0 - ax1, ax0 - bx1, 0), max(by0 - ay1, ay0 - by1, 0))
    a_in_b = bx0 <= ax0 and ax1 <= bx1 and by0 <= ay0 and ay1 <= by1
    b_in_a = ax0 <= bx0 and bx1 <= ax1 and ay0 <= by0 and by1 <= ay1
    return {
        "left of": ax1 <= bx0,
        "right of": ax0 >= bx1,
        "above": ay1 <= by0,
        "below": ay0 >= by1,
        "on top of": ay1 == by0 and x_overlap,
        "under": ay0 == by1 and x_overlap,
        "near": gap <= NEAR_FRAC * size,
        "far from": gap >= FAR_FRAC * size,
        "inside": a_in_b,
        "contains": b_in_a,
        "touching": ((ax1 == bx0 or bx1 == ax0) and y_overlap) or ((ay1 == by0 or by1 == ay0) and x_overlap),
        "in front of": x_overlap and y_overlap and a_z > b_z,
        "behind": x_overlap and y_overlap and a_z < b_z,
    }[relation]


def colour_mask(image, name: str) -> np.ndarray:
    """Pixels showing the colour of the object called ``name`` (colours are unique within a scene)."""
    return np.all(np.asarray(image) == COLOURS[name.split()[0]], axis=-1)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def adjacent(m1: np.ndarray, m2: np.ndarray) -> bool:
    """Some pixel of m1 has a 4-neighbour in m2."""
    grown = m1.copy()
    grown[1:] |= m1[:-1]
    grown[:-1] |= m1[1:]
    grown[:, 1:] |= m1[:, :-1]
    grown[:, :-1] |= m1[:, 1:]
    return bool((grown & m2).any())


def test_every_relation_has_balanced_true_and_false_captions(scene_set):
    rows, _ = scene_set
    counts = Counter(zip(rows.relations, rows.labels.tolist(), strict=True))
    assert set(rows.relations) == set(RELATIONS) and len(RELATIONS) == 13
    assert all(counts[(r, 1)] == 12 and counts[(r, 0)] == 12 for r in RELATIONS)
    assert len(rows) == 13 * 24


def test_each_caption_is_true_exactly_when_the_boxes_say_so(scene_set):
    rows, _ = scene_set
    for i in range(len(rows)):
        x = {k: v[i] for k, v in rows.extra.items()}
        expected = truth(rows.relations[i], x["subj_box"], x["obj_box"], x["subj_z"], x["obj_z"], 96)
        assert int(expected) == rows.labels[i], (rows.captions[i], x)
        assert rows.captions[i] == caption_text(x["subj"], rows.relations[i], x["obj"])
        assert rows.captions[i].startswith(f"The {x['subj']} ") and rows.captions[i].endswith(f" the {x['obj']}.")


def test_images_show_the_boxes_and_the_draw_order(scene_set):
    rows, images = scene_set
    checked_squares = 0
    for i in range(len(rows)):
        x = {k: v[i] for k, v in rows.extra.items()}
        image = images[rows.images[i]]
        assert image.mode == "RGB" and image.size == (96, 96)
        front, back = ("subj", "obj") if x["subj_z"] > x["obj_z"] else ("obj", "subj")
        front_mask, back_mask = colour_mask(image, x[front]), colour_mask(image, x[back])
        assert bbox(front_mask) == x[f"{front}_box"]  # the shape drawn last is fully visible
        bx0, by0, bx1, by1 = x[f"{back}_box"]
        assert back_mask.any() and not back_mask[:by0].any() and not back_mask[by1:].any()
        assert not back_mask[:, :bx0].any() and not back_mask[:, bx1:].any()
        relation, label = rows.relations[i], rows.labels[i]
        if relation == "touching" or (label and relation in ("on top of", "under")):
            assert adjacent(front_mask, back_mask) == bool(label), rows.captions[i]
        if label and relation in ("in front of", "behind") and x[front].endswith("square"):
            fx0, fy0, fx1, fy1 = x[f"{front}_box"]
            overlap = front_mask[max(fy0, by0):min(fy1, by1), max(fx0, bx0):min(fx1, bx1)]
            assert overlap.size and overlap.all()  # the front square hides the back shape there
            checked_squares += 1
    assert checked_squares > 0


def test_captions_share_images_with_one_subject_and_object(scene_set):
    rows, images = scene_set
    names, row_to_image = rows.unique_images()
    assert len(names) == 13 * 12 == len(images) and set(names) == set(images)
    for k in range(len(names)):
        members = np.flatnonzero(row_to_image == k)
        assert {rows.extra["subj_box"][i] for i in members} == {rows.extra["subj_box"][members[0]]}
        assert max(rows.labels[members].tolist()) == 1  # every scene carries one true caption
    assert Counter(Counter(rows.images).values()) == {1: 12, 2: 11 * 12, 3: 12}


def test_same_seed_gives_identical_rows_and_pixels():
    rows1, images1 = generate_scenes(3, seed=11, image_size=64)
    rows2, images2 = generate_scenes(3, seed=11, image_size=64)
    assert rows1.fingerprint == rows2.fingerprint and rows1.extra == rows2.extra
    assert images1.keys() == images2.keys()
    for name in images1:
        np.testing.assert_array_equal(np.asarray(images1[name]), np.asarray(images2[name]))


def test_different_seeds_give_different_scenes():
    rows1, images1 = generate_scenes(3, seed=1, image_size=64)
    rows2, images2 = generate_scenes(3, seed=2, image_size=64)
    assert rows1.fingerprint != rows2.fingerprint
    assert rows1.extra["subj_box"] != rows2.extra["subj_box"]
    assert any(not np.array_equal(np.asarray(images1[n]), np.asarray(images2[n])) for n in images1)


@pytest.mark.parametrize("size", [48, 160])
def test_rules_hold_at_other_image_sizes(size):
    rows, images = generate_scenes(4, seed=3, image_size=size)
    assert {im.size for im in images.values()} == {(size, size)}
    for i in range(len(rows)):
        x = {k: v[i] for k, v in rows.extra.items()}
        assert truth(rows.relations[i], x["subj_box"], x["obj_box"], x["subj_z"], x["obj_z"], size) == rows.labels[i]


def test_write_scenes_is_a_vsr_directory(tmp_path):
    out = write_scenes(tmp_path / "scenes", n_per_relation=5, seed=4, image_size=64)
    all_rows, all_images = generate_scenes(5, seed=4, image_size=64)
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "images", "scenes.json", "test.jsonl",
                                                      "train.jsonl"]
    source = ImageSource(root=str(out / "images"))
    splits = {s: load_vsr(str(out), s) for s in ("train", "dev", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 13 * 2 * 3, "dev": 13 * 2, "test": 13 * 2}
    seen_images: set[str] = set()
    for split, rows in splits.items():
        assert rows.name == f"scenes/{split}"
        counts = Counter(zip(rows.relations, rows.labels.tolist(), strict=True))
        assert all(counts[(r, 1)] == counts[(r, 0)] > 0 for r in RELATIONS), split
        names, _ = rows.unique_images()
        assert not seen_images & set(names)  # a scene's captions stay in one split
        seen_images |= set(names)
        assert set(rows.image_links) == {None}
        for name in names[:5]:
            np.testing.assert_array_equal(np.asarray(source.load(name, None)), np.asarray(all_images[name]))
    assert seen_images == set(all_images)
    written = Counter(r for s in splits.values() for r in zip(s.captions, s.images, s.labels.tolist(),
                                                                  s.extra["subj_box"], strict=True))
    assert written == Counter(zip(all_rows.captions, all_rows.images, all_rows.labels.tolist(),
                                  all_rows.extra["subj_box"], strict=True))


def test_small_sets_still_fill_every_split(tmp_path):
    out = write_scenes(tmp_path / "tiny", n_per_relation=3, seed=0, image_size=64)
    assert {s: len(load_vsr(str(out), s)) for s in ("train", "dev", "test")} == {"train": 26, "dev": 26, "test": 26}


def test_write_scenes_reuses_a_complete_directory(tmp_path):
    out = write_scenes(tmp_path / "s", n_per_relation=2, seed=0, image_size=64)
    marker = out / "scenes.json"
    stamp = (marker.stat().st_mtime_ns, (out / "train.jsonl").stat().st_mtime_ns)
    assert json.loads(marker.read_text())["params"]["seed"] == 0
    assert write_scenes(tmp_path / "s", n_per_relation=2, seed=0, image_size=64) == out
    assert (marker.stat().st_mtime_ns, (out / "train.jsonl").stat().st_mtime_ns) == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary directories left behind


def test_write_scenes_refuses_other_contents(tmp_path):
    out = write_scenes(tmp_path / "s", n_per_relation=2, seed=0, image_size=64)
    with pytest.raises(DataError, match="written with"):
        write_scenes(out, n_per_relation=2, seed=1, image_size=64)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a scene directory"):
        write_scenes(tmp_path / "other", n_per_relation=2)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert write_scenes(tmp_path / "empty_ok", n_per_relation=1, image_size=48).is_dir()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_per_relation": 0}, "n_per_relation"),
        ({"image_size": 20}, "image_size"),
        ({"splits": (0.5, 0.5)}, "splits"),
        ({"splits": (0.0, 0.5, 0.5)}, "splits"),
        ({"splits": (0.8, 0.3, -0.1)}, "splits"),
    ],
)
def test_invalid_parameters_are_refused(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        write_scenes(tmp_path / "bad", **({"n_per_relation": 1} | kwargs))
    assert not (tmp_path / "bad").exists()


def test_caption_wording():
    assert caption_text("red square", "left of", "blue circle") == "The red square is left of the blue circle."
    assert caption_text("red square", "contains", "blue circle") == "The red square contains the blue circle."


def test_rows_of_a_scene_directory_name_their_dataset(tmp_path):
    out = write_scenes(tmp_path / "n3-seed0", n_per_relation=1, seed=0, image_size=48)
    assert load_vsr(str(out), "train").name == "scenes/train"
    assert Path(load_vsr(str(out), "train").source) == out
