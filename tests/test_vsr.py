"""load_vsr on the real VSR annotations (../shared/vsr), on broken local files and on an offline hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spatial_probing.data.relations import META_CATEGORIES, meta_category
from spatial_probing.data.vsr import dataset_summary, load_vsr
from spatial_probing.errors import DataError

VSR = Path(__file__).resolve().parents[1].parent / "shared" / "vsr"
RANDOM_TRAIN_FINGERPRINT = "ce0cf0f8fd5d1d9b5d1254d29ebd41bb76f36f0d8df27c62f3f1c9f4ba324cb3"
GOOD = {"image": "000000296471.jpg", "image_link": "http://images.cocodataset.org/train2017/000000296471.jpg",
        "caption": "The cat is inside the refrigerator.", "label": 0, "relation": "inside"}


@pytest.fixture(scope="module")
def vsr() -> Path:
    if not (VSR / "random" / "train.jsonl").is_file():
        pytest.skip(f"VSR annotations not found at {VSR}")
    return VSR


def write_split(directory: Path, lines: list, split: str = "train") -> Path:
    """A split file whose lines are JSON-encoded unless already given as text."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (directory / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return directory


# -- the real annotations ---------------------------------------------------------------------------

def test_random_train_loads_with_stable_fingerprint(vsr):
    rows = load_vsr(str(vsr / "random"), "train")
    assert rows.name == "vsr_random/train" and len(rows) == 7680
    assert len(rows.relation_counts()) == 64 and len(rows.unique_images()[0]) == 4968
    assert rows.fingerprint == RANDOM_TRAIN_FINGERPRINT
    assert load_vsr(str(vsr / "random"), "train").fingerprint == rows.fingerprint
    assert rows.captions[0] == GOOD["caption"] and rows.labels[0] == 0 and rows.image_links[0] == GOOD["image_link"]
    assert sorted(rows.extra) == ["annotator_id", "reference_frame", "vote_false_validator_id",
                                  "vote_true_validator_id"]
    assert rows.extra["annotator_id"][0] == 27


@pytest.mark.parametrize(
    ("variant", "split", "n"),
    [("random", "dev", 1097), ("random", "test", 2195), ("zeroshot", "train", 3489), ("zeroshot", "dev", 340),
     ("zeroshot", "test", 1222)],
)
def test_published_split_sizes(vsr, variant, split, n):
    rows = load_vsr(str(vsr / variant), split)
    assert len(rows) == n and rows.name == f"vsr_{variant}/{split}"


def test_editing_one_caption_changes_the_fingerprint(vsr, tmp_path):
    lines = (vsr / "random" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["caption"] = first["caption"].replace("cat", "dog")
    write_split(tmp_path / "random", [json.dumps(first), *lines[1:]])
    edited = load_vsr(str(tmp_path / "random"), "train")
    assert len(edited) == 7680 and edited.name == "vsr_random/train"
    assert edited.fingerprint != RANDOM_TRAIN_FINGERPRINT


def test_relation_filter_keeps_only_those_rows_in_order(vsr):
    rows = load_vsr(str(vsr / "random"), "train", relations=["left of", "right of"])
    full = load_vsr(str(vsr / "random"), "train")
    expected = [i for i, r in enumerate(full.relations) if r in ("left of", "right of")]
    assert rows.captions == tuple(full.captions[i] for i in expected)
    assert set(rows.relation_counts()) == {"left of", "right of"}


def test_unknown_relation_filter_names_it_and_the_known_ones(vsr):
    with pytest.raises(DataError) as info:
        load_vsr(str(vsr / "random"), "train", relations=["left of", "sideways of"])
    message = str(info.value)
    assert "unknown relation(s) ['sideways of']" in message and "'right of'" in message


def test_unknown_split_lists_the_available_ones(vsr):
    with pytest.raises(DataError, match=r"'validation' not found.*\['dev', 'test', 'train'\]"):
        load_vsr(str(vsr / "random"), "validation")


def test_dataset_summary(vsr):
    summary = dataset_summary(load_vsr(str(vsr / "zeroshot"), "dev"))
    assert summary["n_rows"] == 340 and summary["n_relations"] == 40
    assert summary["n_true"] + summary["n_false"] == 340
    assert summary["frac_true"] == pytest.approx(summary["n_true"] / 340)
    assert sum(summary["relation_counts"].values()) == 340
    counts = list(summary["relation_counts"].values())
    assert counts == sorted(counts, reverse=True)
    assert summary["fingerprint"] == load_vsr(str(vsr / "zeroshot"), "dev").fingerprint
    assert summary["n_images"] <= 340
    json.dumps(summary)  # it goes into meta.json


def test_meta_categories_match_the_published_file(vsr):
    published: dict[str, list[str]] = {}
    for line in (vsr / "rel_meta_category_dict.txt").read_text(encoding="utf-8").splitlines():
        category, relations = line.split(":", 1)
        published[category.strip()] = [r.strip() for r in relations.split(",") if r.strip()]
    assert published["Unallocated"].count("among") == 1 and "among" in published["Topological"]
    published["Unallocated"].remove("among")  # listed twice in the file; the first listing is kept
    assert {k: list(v) for k, v in META_CATEGORIES.items()} == published
    assert meta_category("among") == "Topological" and meta_category("left of") == "Projective"
    assert meta_category("next to") == "Unallocated" and meta_category("levitating over") == "Unallocated"
    relations = load_vsr(str(vsr / "random"), "train").relation_counts()
    known = {r for rs in META_CATEGORIES.values() for r in rs}
    assert set(relations) <= known


# -- invalid local files ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"image": "a.jpg", "caption": "x", ', "malformed JSON"),
        ('["a.jpg", "The cat is left of the dog.", 1]', "expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "caption"}, "missing field 'caption'"),
        ({k: v for k, v in GOOD.items() if k != "label"}, "missing field 'label'"),
        ({k: v for k, v in GOOD.items() if k != "relation"}, "missing field 'relation'"),
        ({k: v for k, v in GOOD.items() if k != "image"}, "missing field 'image'"),
        (GOOD | {"caption": 5}, "'caption' must be a string"),
        (GOOD | {"caption": "   "}, "'caption' is empty"),
        (GOOD | {"caption": ""}, "'caption' is empty"),
        (GOOD | {"relation": ""}, "'relation' is empty"),
        (GOOD | {"image": ""}, "'image' is empty"),
        (GOOD | {"image": None}, "'image' must be a string"),
        (GOOD | {"label": 2}, "'label' must be"),
        (GOOD | {"label": -1}, "'label' must be"),
        (GOOD | {"label": 1.0}, "'label' must be"),
        (GOOD | {"label": "1"}, "'label' must be"),
        (GOOD | {"label": None}, "'label' must be"),
        (GOOD | {"image_link": 17}, "'image_link' must be"),
    ],
)
def test_invalid_row_names_file_line_and_field(tmp_path, bad_line, field):
    directory = write_split(tmp_path / "data", [GOOD, "", bad_line, GOOD])
    with pytest.raises(DataError) as info:
        load_vsr(str(directory), "train")
    assert f"{directory / 'train.jsonl'}:3:" in str(info.value)  # 1-based, counting the blank line
    assert field in str(info.value)


def test_accepted_label_forms_and_optional_link(tmp_path):
    lines = [GOOD | {"label": True}, GOOD | {"label": False}, GOOD | {"label": 1},
             {k: v for k, v in GOOD.items() if k != "image_link"}, GOOD | {"image_link": None, "extra": [1, 2]}]
    rows = load_vsr(str(write_split(tmp_path / "mine", lines)), "train")
    assert rows.labels.tolist() == [1, 0, 1, 0, 0]
    assert rows.image_links == (GOOD["image_link"],) * 3 + (None, None)
    assert rows.extra["extra"] == (None, None, None, None, (1, 2))
    assert rows.name == "mine/train"


def test_empty_split_gives_an_empty_table(tmp_path):
    rows = load_vsr(str(write_split(tmp_path / "d", [], split="dev")), "dev")
    assert len(rows) == 0 and rows.labels.dtype.name == "int8"


def test_source_that_is_neither_directory_nor_hub_id(tmp_path):
    with pytest.raises(DataError, match="neither a directory nor a hub id"):
        load_vsr(str(tmp_path / "missing" / "dir"), "train")
    shutil.copy(__file__, tmp_path / "file.jsonl")
    with pytest.raises(DataError, match="neither"):
        load_vsr(str(tmp_path / "file.jsonl"), "train")


# -- the hub, offline -------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """Offline mode for the hub libraries, also when they were imported before the variables were set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_offline_says_how_to_use_a_local_directory(offline):
    with pytest.raises(DataError) as info:
        load_vsr("cambridgeltl/vsr_random", "train")
    message = str(info.value)
    assert "cambridgeltl/vsr_random" in message and "unreachable" in message
    assert "local directory" in message and "data/splits/random" in message


def test_hub_unknown_split_fails_before_any_download(offline):
    with pytest.raises(DataError, match=r"'validation' not found for cambridgeltl/vsr_zeroshot.*'dev'"):
        load_vsr("cambridgeltl/vsr_zeroshot", "validation")
