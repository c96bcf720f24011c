"""SpatialRows: validation, fingerprint, image de-duplication, subsets and the JSONL round trip."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError


def make_rows(**overrides) -> SpatialRows:
    columns = {
        "name": "toy/train",
        "captions": ("The cat is left of the dog.", "The dog is on the mat.", "The cat is near the cup."),
        "relations": ("left of", "on", "near"),
        "labels": [1, 0, 1],
        "images": ("a.jpg", "b.jpg", "a.jpg"),
        "image_links": ("http://h/a.jpg", None, "http://h/a.jpg"),
        "source": "toy",
        "extra": {"box": [(0, 0, 2, 2), [1, 1, 3, 3], (2, 2, 4, 4)], "annotator": [7, 8, None]},
    }
    return SpatialRows(**(columns | overrides))


def test_columns_are_normalised_and_immutable():
    rows = make_rows()
    assert len(rows) == 3
    assert rows.labels.dtype == np.int8 and rows.labels.tolist() == [1, 0, 1]
    assert isinstance(rows.captions, tuple) and rows.extra["box"][1] == (1, 1, 3, 3)  # lists become tuples
    with pytest.raises(ValueError):
        rows.labels[0] = 0
    with pytest.raises(AttributeError):
        rows.name = "other"  # type: ignore[misc]


def test_fingerprint_is_sha256_of_canonical_rows():
    rows = make_rows()
    expected = hashlib.sha256()
    for row in [["The cat is left of the dog.", "left of", 1, "a.jpg"], ["The dog is on the mat.", "on", 0, "b.jpg"],
                ["The cat is near the cup.", "near", 1, "a.jpg"]]:
        expected.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    assert rows.fingerprint == expected.hexdigest()
    # links, names, sources and extra columns do not change what an encoder sees
    same = make_rows(name="x", source="y", image_links=(None, None, None), extra={})
    assert same.fingerprint == rows.fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"captions": ("The cat is left of the dog!", "The dog is on the mat.", "The cat is near the cup.")},
        {"relations": ("left of", "on", "close to")},
        {"labels": [1, 1, 1]},
        {"images": ("a.jpg", "b.jpg", "c.jpg")},
    ],
)
def test_fingerprint_changes_with_any_core_column(change):
    assert make_rows(**change).fingerprint != make_rows().fingerprint


def test_fingerprint_depends_on_row_order():
    rows = make_rows()
    assert rows.subset([2, 1, 0]).fingerprint != rows.fingerprint
    assert rows.subset([0, 1, 2]).fingerprint == rows.fingerprint


def test_unique_images_in_first_seen_order():
    names, row_to_image = make_rows(images=("b.jpg", "a.jpg", "b.jpg")).unique_images()
    assert names == ("b.jpg", "a.jpg")
    assert row_to_image.dtype == np.int64 and row_to_image.tolist() == [0, 1, 0]


def test_subset_by_indices_and_mask():
    rows = make_rows()
    picked = rows.subset(np.array([2, 0]))
    assert picked.captions == (rows.captions[2], rows.captions[0])
    assert picked.labels.tolist() == [1, 1] and picked.extra["annotator"] == (None, 7)
    assert picked.name == rows.name and picked.source == rows.source
    masked = rows.subset(np.array([False, True, False]), name="toy/on")
    assert masked.name == "toy/on" and masked.relations == ("on",)
    assert len(rows.subset([])) == 0
    with pytest.raises(DataError, match="out of range"):
        rows.subset([3])
    with pytest.raises(DataError, match="mask"):
        rows.subset(np.array([True, False]))


def test_relation_counts_and_meta_categories():
    rows = make_rows(relations=("left of", "left of", "flying over"))
    assert rows.relation_counts() == Counter({"left of": 2, "flying over": 1})
    assert rows.meta_categories() == ("Projective", "Projective", "Unallocated")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": [1, 0]}, "differ in length"),
        ({"extra": {"box": [1]}}, r"extra\[box\]"),
        ({"labels": [1, 2, 0]}, "0 or 1"),
        ({"labels": [1, 256, 0]}, "0 or 1"),  # would wrap to 0 if cast before the check
    ],
)
def test_invalid_tables_are_refused(change, match):
    with pytest.raises(DataError, match=match):
        make_rows(**change)


def test_jsonl_round_trip(tmp_path):
    rows = make_rows(captions=("Ünïcode «caption».", "The dog is on the mat.", "The cat is near the cup."))
    path = rows.to_jsonl(tmp_path / "rows.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temporary file left
    back = SpatialRows.from_jsonl(path)
    assert back.fingerprint == rows.fingerprint
    for column in ("name", "captions", "relations", "images", "image_links", "source", "extra"):
        assert getattr(back, column) == getattr(rows, column), column
    np.testing.assert_array_equal(back.labels, rows.labels)


def test_empty_table_round_trips(tmp_path):
    empty = make_rows().subset([])
    back = SpatialRows.from_jsonl(empty.to_jsonl(tmp_path / "rows.jsonl"))
    assert len(back) == 0 and back.fingerprint == hashlib.sha256().hexdigest()


def test_damaged_jsonl_is_refused(tmp_path):
    path = make_rows().to_jsonl(tmp_path / "rows.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[1].replace("left of", "right of"), lines[3]]) + "\n")
    with pytest.raises(DataError, match="fingerprint"):
        SpatialRows.from_jsonl(path)
    path.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataError, match="row count"):
        SpatialRows.from_jsonl(path)
    path.write_text('{"caption": "x"}\n')
    with pytest.raises(DataError, match="not a row table"):
        SpatialRows.from_jsonl(path)
    with pytest.raises(DataError, match="cannot read"):
        SpatialRows.from_jsonl(tmp_path / "missing.jsonl")
