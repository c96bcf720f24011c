"""Grounding experiment: scenes and held-out splits, arm configs, determinism, checkpoints as registry encoders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spatial_probing.cli import main as cli_main
from spatial_probing.encoders.registry import create_encoder
from spatial_probing.encoders.views import combine
from spatial_probing.errors import DataError, EncoderError
from spatial_probing.features.entry import load_entry
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding import structure_scores as scores
from spatial_probing.grounding.arms import ARMS, CONFIGS, INGREDIENTS, available_arms
from spatial_probing.grounding.cli import build_cli, train
from spatial_probing.grounding.datamodule import training_tensors
from spatial_probing.grounding.image import ImageEncoder, to_pixels
from spatial_probing.grounding.objectives import Contrastive, _soft_cross_entropy
from spatial_probing.grounding.text import VOCAB, Tokenizer
from spatial_probing.grounding.towers import (
    ImageTower,
    LayoutGridTower,
    TextPairTower,
    WorldStateTower,
    layout_grids,
    world_states,
)
from spatial_probing.studies.grounding import write_probe_scenes

TINY = ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--data.n_train", "96", "--data.n_val", "16",
        "--data.batch_size", "16", "--model.warmup_steps", "2", "--trainer.enable_progress_bar", "false"]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_dominant_axis_rule_and_converse_facts() -> None:
    a = (0, 10, 6, 16)  # centre (3, 13)
    assert S.dominant_relation(a, (20, 12, 26, 18)) == "left of"  # dx 17 > dy 2
    assert S.dominant_relation((20, 12, 26, 18), a) == "right of"
    assert S.dominant_relation(a, (2, 25, 8, 31)) == "above"  # dy 15 > dx 2 (y grows downwards)
    assert S.dominant_relation((2, 25, 8, 31), a) == "below"
    with pytest.raises(DataError, match="diagonal"):
        S.dominant_relation((0, 0, 4, 4), (10, 10, 14, 14))
    assert S.fact_id("red square", "left of", "blue circle") == S.fact_id("blue circle", "right of", "red square")
    assert S.fact_id("red square", "left of", "blue circle") != S.fact_id("red square", "right of", "blue circle")
    assert S.fact_id("red square", "above", "blue circle") == S.fact_id("blue circle", "below", "red square")


def test_scene_captions_follow_the_geometry() -> None:
    for scene in S.generate(50, 3, "heldout"):
        caps = scene.captions()
        subj, obj = scene.objects[scene.subj], scene.objects[scene.obj]
        assert caps["caption"][0] == f"The {subj.name} is {S.dominant_relation(subj.box, obj.box)} the {obj.name}."
        assert caps["converse"][0] == f"The {obj.name} is {S.dominant_relation(obj.box, subj.box)} the {subj.name}."
        assert [c[2] for c in caps.values()] == [1, 1, 0, 0]


def test_held_out_pairs_and_counts_never_in_training_scenes() -> None:
    train = S.generate(3000, 0, "train")
    pairs = {(o.colour, o.shape) for s in train for o in s.objects}
    assert not pairs & set(S.HELD_OUT_PAIRS)
    assert {len(s.objects) for s in train} == set(S.TRAIN_COUNTS)
    assert pairs == set(S.allowed_pairs("train"))  # every other pair does occur
    # the training captions (what every arm reads) never name a held-out pair
    tokens = training_tensors(3000, 0)["input_ids"]
    text = [" ".join(VOCAB[i] for i in row if i) for row in tokens.tolist()]
    assert not any(" ".join(p) in t for t in text for p in S.HELD_OUT_PAIRS)
    held = S.generate(300, 0, "heldout")
    assert all({(o.colour, o.shape) for o in (s.objects[s.subj], s.objects[s.obj])} & set(S.HELD_OUT_PAIRS)
               for s in held)
    assert {len(s.objects) for s in held} == set(S.TRAIN_COUNTS + S.HELD_OUT_COUNTS)


def _resolved(arm: str) -> dict:
    cfg = build_cli(["--config", str(CONFIGS / f"{arm}.yaml"), "--trainer.logger", "false"]).config.as_dict()
    cfg.pop("config")  # the paths of the --config files themselves
    return _flat(cfg)


def test_neighbouring_arms_differ_only_in_their_documented_ingredient() -> None:
    assert sorted(ARMS) == available_arms()  # every config is an arm of the study, and every arm has a config
    resolved = {arm: _resolved(arm) for arm in ARMS}
    for ing in INGREDIENTS:
        a, b = resolved[ing.base], resolved[ing.arm]
        differing = {k for k in set(a) | set(b) if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str)}
        assert differing, ing
        assert all(k.startswith(ing.keys) for k in differing), (ing.name, differing)
    # and each ingredient is what its name says
    assert resolved["mlm"]["model.objective.class_path"].endswith("MaskedLM") and resolved["mlm"]["model.tower"] is None
    assert resolved["text_pair"]["model.tower.class_path"].endswith("TextPairTower")
    assert (resolved["clip_onehot"]["model.objective.init_args.targets"],
            resolved["contrastive"]["model.objective.init_args.targets"]) == ("onehot", "fact")
    assert (resolved["shuffled"]["model.tower.init_args.shuffle"], resolved["clip_onehot"]["model.tower.init_args.shuffle"]) == (True, False)
    assert all(resolved[f"{arm}_hn"]["model.objective.init_args.hard_negatives"] for arm in ("text_pair", "clip_onehot", "contrastive"))


def test_arms_start_from_the_same_text_weights() -> None:
    models = [build_cli(["--config", str(CONFIGS / f"{arm}.yaml"), "--trainer.logger", "false"]).model for arm in ARMS]
    for other in models[1:]:
        for (name, p), (_, q) in zip(models[0].text.state_dict().items(), other.text.state_dict().items(), strict=True):
            assert torch.equal(p, q), name


def test_soft_targets_reduce_to_cross_entropy_and_share_mass_between_paraphrases() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_soft_cross_entropy(logits, torch.eye(5)), F.cross_entropy(logits, torch.arange(5)))
    facts = torch.tensor([3, 3, 7])  # two captions of one fact: neither is a negative of the other's image
    positives = (facts[:, None] == facts[None, :]).float()
    perfect = torch.tensor([[9.0, 9.0, -9.0], [9.0, 9.0, -9.0], [-9.0, -9.0, 9.0]])
    assert _soft_cross_entropy(perfect, positives).item() == pytest.approx(np.log(2) * 2 / 3, abs=1e-6)


def _train(tmp_path: Path, arm: str, name: str) -> tuple[torch.nn.Module, dict]:
    out = tmp_path / name
    return train(["--config", str(CONFIGS / f"{arm}.yaml"), "--seed_everything", "7", "--out_dir", str(out),
                  "--trainer.logger.init_args.save_dir", str(out), *TINY])


def test_training_is_deterministic_under_a_seed(tmp_path: Path) -> None:
    first, summary_1 = _train(tmp_path, "contrastive_hn", "a")
    second, summary_2 = _train(tmp_path, "contrastive_hn", "b")
    for (name, p), (_, q) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert summary_1["history"] == summary_2["history"] and len(summary_1["history"]) == 2
    start = build_cli(["--config", str(CONFIGS / "contrastive_hn.yaml"), "--seed_everything", "7",
                       "--trainer.logger", "false"]).model
    assert not torch.equal(start.text.tokens.weight, first.text.tokens.weight)  # it did train


def test_checkpoint_round_trips_through_the_registry_and_extraction(tmp_path: Path) -> None:
    model, summary = _train(tmp_path, "contrastive", "run")
    probe_dir = write_probe_scenes(tmp_path, 6, seed=1)
    feature_root = tmp_path / "features"
    name = f"local:{summary['checkpoint']}@concat"
    assert cli_main(["extract", "--model.encoder", name, "--data.dataset", str(probe_dir), "--data.split", "test",
                     "--data.image_root", str(probe_dir / "images"), "--feature_root", str(feature_root), "--trainer.enable_progress_bar", "false"]) == 0
    entry = load_entry(next(feature_root.rglob("meta.json")).parent)
    rows = entry.rows
    model.eval()
    with torch.no_grad():
        tokens = Tokenizer()(list(rows.captions))
        text = model.text.encode(tokens["input_ids"], tokens["attention_mask"])
        scenes = S.generate(6, 1, "heldout")
        pixels = torch.from_numpy(S.images(scenes))[[int(s) for s in rows.extra["scene"]]]
        image = model.tower.cnn(to_pixels(pixels))
    expected = combine([image.numpy(), text.numpy()])  # the concat view: L2([L2(image) || L2(text)])
    np.testing.assert_allclose(np.asarray(entry.features), expected, rtol=1e-5, atol=1e-6)
    # the untrained control has the same architecture and other weights
    control = create_encoder(f"local:{summary['checkpoint']}@text+random-init")
    assert not torch.allclose(control.encode_text(control.preprocess_text(list(rows.captions[:4]))), text[:4])


def test_local_encoder_errors_name_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="does not exist"):
        create_encoder(f"local:{tmp_path / 'missing.ckpt'}")
    _, summary = _train(tmp_path, "mlm", "mlm")
    with pytest.raises(EncoderError, match="trained text-only"):
        create_encoder(f"local:{summary['checkpoint']}@image")
    assert create_encoder(f"local:{Path(summary['checkpoint']).parent}").dim == 64  # a run dir works too


def test_structure_scores_of_the_bag_of_words_baseline(tmp_path: Path) -> None:
    from spatial_probing.analysis.features import bag_of_words
    from spatial_probing.data.vsr import load_vsr

    rows = load_vsr(str(write_probe_scenes(tmp_path, 40, seed=2)), "test")
    items = scores.structure_items(bag_of_words(rows).x, rows)
    assert items[items.test == "structure"].score.eq(0.5).all()  # same words: an exact tie
    assert items[items.test == "swap"].score.eq(0.0).all()  # the swap shares the caption's relation word too
    assert len(items) == 80


def test_text_pair_never_sees_an_image() -> None:
    tensors = training_tensors(200, 0, TextPairTower())
    assert not any("pixel" in key or "state" in key or "grid" in key for key in tensors), sorted(tensors)
    # the pair is another caption of the same scene: same fact, drawn independently of the caption's own form
    words = [" ".join(VOCAB[i] for i in row if i) for row in tensors["tower_input_ids"].tolist()]
    scenes = S.generate(200, 0, "train")
    forms = [{Tokenizer().ids(s.captions()[k][0]) == Tokenizer().ids(w) for k in ("caption", "converse")}
             for s, w in zip(scenes, words, strict=True)]
    assert all(True in f for f in forms)
    same_sentence = (tensors["tower_input_ids"] == tensors["input_ids"]).all(1).float().mean().item()
    assert 0.35 < same_sentence < 0.65  # independent draws: the same form about half of the time


def test_shuffled_keeps_the_image_multiset_but_breaks_the_pairing() -> None:
    scenes = S.generate(300, 0, "train")
    true = ImageTower().inputs(scenes, 0, train=True)["tower_pixels"]
    shuffled = ImageTower(shuffle=True).inputs(scenes, 0, train=True)["tower_pixels"]
    key = lambda x: sorted(bytes(im.numpy().tobytes()) for im in x)  # noqa: E731
    assert key(true) == key(shuffled)  # the same images ...
    assert (shuffled == true).flatten(1).all(1).float().mean().item() < 0.02  # ... almost never with their own caption
    assert torch.equal(ImageTower(shuffle=True).inputs(scenes, 0, train=False)["tower_pixels"], true)  # validation: true pairs


def test_clip_onehot_targets_are_the_identity_and_fact_targets_link_paraphrases() -> None:
    fact = torch.tensor([4, 4, 9, 2])  # two captions of one fact in the batch
    assert torch.equal(Contrastive(targets="onehot").positives(fact, fact, own=True), torch.eye(4))
    assert Contrastive(targets="onehot").positives(fact, torch.tensor([4, 9, 2, 7]), own=False).sum() == 0
    fact_rule = Contrastive(targets="fact").positives(fact, fact, own=True)
    assert fact_rule[0, 1] == 1 and fact_rule[1, 0] == 1 and fact_rule.sum() == 6


def test_world_state_and_layout_grid_inputs_follow_the_boxes() -> None:
    scene = S.generate(1, 5, "train")[0]
    state = world_states([scene], 3)[0]
    ordered = sorted(scene.objects, key=lambda o: S.OBJECT_NAMES.index(o.name))  # fixed order, not caption roles
    for slot, obj in enumerate(ordered):
        assert state[slot, S.SCENE_COLOURS.index(obj.colour)] == 1
        assert state[slot, len(S.SCENE_COLOURS) + S.SCENE_SHAPES.index(obj.shape)] == 1
        assert state[slot, -4:].tolist() == pytest.approx([v / S.IMAGE_SIZE for v in obj.box])
    assert state[2].abs().sum() == 0  # an empty third slot
    grid = layout_grids([scene], 8)[0]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        cells = grid[S.OBJECT_NAMES.index(obj.name)].nonzero().tolist()
        assert {c for _, c in cells} == set(range(x0 // 4, (x1 - 1) // 4 + 1))
        assert {r for r, _ in cells} == set(range(y0 // 4, (y1 - 1) // 4 + 1))
    assert grid.sum(dim=(1, 2)).nonzero().numel() == len(scene.objects)
    three = next(s for s in S.generate(50, 0, "heldout") if len(s.objects) == 3)
    with pytest.raises(DataError, match="max_objects"):
        world_states([three], 2)


def test_towers_are_about_the_image_towers_size() -> None:
    def size(tower):
        tower.build(64)
        return sum(p.numel() for p in tower.parameters())
    image = size(ImageTower())
    assert image == sum(p.numel() for p in ImageEncoder(64, 32).parameters())
    assert abs(size(WorldStateTower()) / image - 1) < 0.05
    assert abs(size(LayoutGridTower()) / image - 1) < 0.05  # the same CNN, 15 input channels
    assert size(TextPairTower()) == 0  # shared weights: the caption encoder itself


def test_objective_and_tower_must_agree() -> None:
    with pytest.raises(DataError, match="needs a second tower"):
        build_cli(["--config", str(CONFIGS / "contrastive.yaml"), "--model.tower", "null", "--trainer.logger", "false"])
    with pytest.raises(DataError, match="no use for --model.tower"):
        build_cli(["--config", str(CONFIGS / "mlm.yaml"), "--model.tower", "spatial_probing.grounding.towers.ImageTower",
                   "--trainer.logger", "false"])


def test_learning_curve_ends_at_the_studys_score_of_the_same_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _, summary = train(["--config", str(CONFIGS / "text_pair.yaml"), "--seed_everything", "3", "--out_dir", str(out),
                        "--trainer.logger.init_args.save_dir", str(out), *TINY, "--trainer.max_steps", "7",
                        "--data.n_probe", "40", "--data.probe_seed", "11"])
    steps = [h["step"] for h in summary["history"]]
    assert steps == [3, 6, 7]  # every val_check_interval, and the saved weights last
    probe_dir = write_probe_scenes(tmp_path, 40, seed=11)
    feature_root = tmp_path / "features"
    assert cli_main(["extract", "--model.encoder", f"local:{summary['checkpoint']}@text", "--data.dataset",
                     str(probe_dir), "--data.split", "test", "--feature_root", str(feature_root),
                     "--trainer.enable_progress_bar", "false"]) == 0
    entry = load_entry(next(feature_root.rglob("meta.json")).parent)
    items = scores.structure_items(np.asarray(entry.features), entry.rows)
    for test in ("structure", "swap"):
        assert summary["history"][-1][f"probe/{test}"] == items[items.test == test].score.mean()


def test_study_refuses_unknown_or_repeated_arms_and_seeds() -> None:
    from spatial_probing.errors import SpatialProbingError
    from spatial_probing.studies.grounding import check_arms, comparison_pairs

    with pytest.raises(SpatialProbingError, match=r"no arm config \['clip'\].*valid arms: clip_onehot, clip_onehot_hn"):
        check_arms(["mlm", "clip"], [0])
    with pytest.raises(SpatialProbingError, match=r"--arms lists \['mlm'\] more than once"):
        check_arms(["mlm", "text_pair", "mlm"], [0])
    with pytest.raises(SpatialProbingError, match=r"--seeds lists \[1\] more than once"):
        check_arms(["mlm"], [1, 1])
    pairs = comparison_pairs(["mlm", "text_pair", "clip_onehot", "contrastive"])
    assert pairs[:3] == [("mlm", "text_pair"), ("text_pair", "contrastive"), ("clip_onehot", "contrastive")]
    assert ("mlm", "contrastive") in pairs and ("text_pair", "clip_onehot") in pairs
    assert len({frozenset(p) for p in pairs}) == len(pairs) == 6  # every pair of the 4 arms once


def test_image_view_of_an_arm_without_an_image_tower_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ws"
    _, summary = train(["--config", str(CONFIGS / "world_state.yaml"), "--out_dir", str(out),
                        "--trainer.logger.init_args.save_dir", str(out), *TINY])
    with pytest.raises(EncoderError, match="needs an image tower.*WorldStateTower"):
        create_encoder(f"local:{summary['checkpoint']}@image")
    assert create_encoder(f"local:{summary['checkpoint']}@text").dim == 64


@pytest.mark.parametrize(("options", "message"), [
    (["--trainer.max_steps", "0"], "--trainer.max_steps must be at least 1"),
    (["--data.batch_size", "200"], r"--data.batch_size 200 x 1 device\(s\) is larger than --data.n_train 96"),
])
def test_train_grounding_refuses_runs_that_cannot_train(tmp_path: Path, capsys, options: list[str], message: str) -> None:
    code = cli_main(["train-grounding", "--config", str(CONFIGS / "mlm.yaml"), "--out_dir", str(tmp_path / "run"),
                     "--trainer.logger", "false", *TINY, *options])
    assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # nothing written


def test_train_grounding_refuses_an_out_dir_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("keep me")
    code = cli_main(["train-grounding", "--config", str(CONFIGS / "mlm.yaml"), "--out_dir", str(tmp_path / "file"),
                     "--trainer.logger", "false", *TINY])
    assert code == 2 and "is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"


def test_checkpoint_of_an_older_format_is_refused_naming_the_file(tmp_path: Path) -> None:
    _, summary = _train(tmp_path, "mlm", "run")
    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    del checkpoint["grounding"]["format"]  # what train-grounding wrote before the second tower was a plug-in
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(EncoderError, match=r"old\.ckpt has checkpoint format 1, this code reads format 2"):
        create_encoder(f"local:{old}")
