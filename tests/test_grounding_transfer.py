"""Fine-tuning a pretrained sentence-transformers model (all-MiniLM-L6-v2) under the grounding arms on VSR scenes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spatial_probing.encoders.registry import create_encoder
from spatial_probing.errors import DataError
from spatial_probing.grounding.arms import CONFIGS
from spatial_probing.grounding.cli import build_cli, train
from spatial_probing.grounding.datamodule import GroundingDataModule, training_tensors
from spatial_probing.grounding.families import VsrFamily
from spatial_probing.grounding.text import SentenceTransformerText
from spatial_probing.grounding.vsr_scenes import HELD_OUT_NOUNS

TRANSFER = CONFIGS / "transfer" / "base.yaml"
TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.n_train", "64", "--data.n_val", "8",
        "--data.n_probe", "8", "--data.batch_size", "8", "--model.warmup_steps", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
CAPTIONS = ["The cat is left of the dog.", "The person is under the umbrella.", "The bed is behind the laptop."]


def test_vsr_fact_ids_share_converse_paraphrases_and_separate_contradictions() -> None:
    vsr = VsrFamily()
    assert vsr.fact_id("cat", "left of", "bed") == vsr.fact_id("bed", "right of", "cat")
    assert vsr.fact_id("cat", "on top of", "bed") == vsr.fact_id("bed", "under", "cat")
    assert vsr.fact_id("cat", "contains", "bed") == vsr.fact_id("bed", "inside", "cat")
    assert vsr.fact_id("cat", "left of", "bed") != vsr.fact_id("cat", "right of", "bed")


def test_vsr_training_captions_never_name_a_held_out_noun(minilm_dir) -> None:
    text = SentenceTransformerText(str(minilm_dir))
    tensors = training_tensors(300, 0, text=text, scenes=VsrFamily())
    captions = text.st.tokenizer.batch_decode(tensors["input_ids"], skip_special_tokens=True)
    words = [f" {c.replace(' .', '')} " for c in captions]
    assert not any(f" the {noun} " in w for w in words for noun in HELD_OUT_NOUNS)  # "the hot dog" names no dog
    # every caption's contradiction is the converse relation between the same nouns: a different fact
    assert (tensors["fact"] != tensors["neg_fact"]).all()


def test_bad_transfer_inputs_are_refused_naming_the_option(tmp_path, minilm_dir) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="--model.text.init_args.model .* not a sentence-transformers directory"):
        build_cli(["--config", str(TRANSFER), "--config", str(CONFIGS / "mlm.yaml"),
                   "--model.text.init_args.model", str(tmp_path), *TINY])
    with pytest.raises(DataError, match="--model.text.init_args.model .* no such directory"):
        SentenceTransformerText(str(tmp_path / "missing")).build()
    with pytest.raises(DataError, match="--data.train_nouns holds nouns of --data.held_out"):
        GroundingDataModule(scenes="vsr", held_out=["dog"], train_nouns=["dog", "cat"])
    with pytest.raises(DataError, match="--data.held_out: unknown nouns"):
        GroundingDataModule(scenes="vsr", held_out=["unicorn"])
    with pytest.raises(DataError, match="--data.scenes vsr .* closed vocabulary"):
        GroundingDataModule(scenes="vsr")  # the scratch tokenizer cannot spell VSR's nouns
    with pytest.raises(DataError, match="--data.train_nouns.*unknown token"):
        SentenceTransformerText(str(minilm_dir)).check_words(["cat", "\u2603"], "--data.train_nouns")
    with pytest.raises(DataError, match="WorldStateTower reads the scenes of \\['shapes'\\] only"):
        build_cli(["--config", str(TRANSFER), "--config", str(CONFIGS / "world_state.yaml"), *TINY])


@pytest.mark.parametrize("arm", ["mlm", "contrastive_hn"])
def test_finetuned_minilm_is_saved_as_an_sbert_directory_with_the_same_features(arm, tmp_path, minilm_dir) -> None:
    out = tmp_path / arm
    model, summary = train(["--config", str(TRANSFER), "--config", str(CONFIGS / f"{arm}.yaml"),
                            "--model.text.init_args.model", str(minilm_dir), *TINY, "--out_dir", str(out)])
    assert summary["sbert"] == str(out / "sbert") and json.loads((out / "summary.json").read_text())["sbert"]
    before = SentenceTransformerText(str(minilm_dir))
    model.eval()
    tokens = model.text_tower.tokenize(CAPTIONS)
    with torch.no_grad():
        tuned = model.text.encode(tokens["input_ids"], tokens["attention_mask"]).float().numpy()
        original = before.build().eval().encode(tokens["input_ids"], tokens["attention_mask"]).numpy()
    assert not np.allclose(tuned, original, atol=1e-6)  # it did train
    encoder = create_encoder(f"sbert:{out / 'sbert'}")
    features = encoder.text_parts(encoder.preprocess_text(CAPTIONS))["text"].numpy()
    np.testing.assert_allclose(features, tuned, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("trainer", "precision", "devices"), [("cpu_ddp.yaml", "32-true", 2), ("cpu.yaml", "bf16-mixed", 1)])
def test_the_same_transfer_configs_train_under_ddp_and_bf16(trainer, precision, devices, tmp_path, minilm_dir) -> None:
    """Two-process DDP (gloo) and bf16-mixed read the same arm and transfer configs; the export still loads."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "spatial_probing.cli", "train-grounding", "--config", str(TRANSFER),
               "--config", str(CONFIGS / "contrastive_hn.yaml"), "--config", str(CONFIGS.parents[0] / "trainer" / trainer),
               "--trainer.precision", precision, "--model.text.init_args.model", str(minilm_dir), *TINY,
               "--out_dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["devices"], summary["precision"], summary["steps"]) == (devices, precision, 4)
    encoder = create_encoder(f"sbert:{out / 'sbert'}")
    assert encoder.text_parts(encoder.preprocess_text(CAPTIONS))["text"].shape == (3, 384)
