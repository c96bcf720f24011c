"""Views: the first study's exact CLIP variants, one extraction pass per encoder, layer-wise features.

The CLIP checks use a small transformers CLIP architecture with seeded random weights (pretrained
weights cannot be downloaded here), set up by the same converter ``make reproduce`` uses offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spatial_probing.cli import main
from spatial_probing.encoders import views
from spatial_probing.encoders.registry import create_encoder, display_name, parse_encoder
from spatial_probing.errors import CacheError, EncoderError
from spatial_probing.features.entry import load_entry

REPO = Path(__file__).resolve().parents[1]
SCENES = ["--data.dataset", "scenes", "--data.scenes_per_relation", "2", "--data.batch_size", "8"]
CPU = ["--config", str(REPO / "configs/trainer/cpu.yaml")]
STUDY = "[text-pooled,image,concat]"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPATIAL_PROBING_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers CLIP set-up (ViT-B-32 tokenizer and image processor) with a 3-layer config."""
    from transformers import CLIPConfig

    from spatial_probing.encoders.convert import export_hf_clip_setup

    out = export_hf_clip_setup("ViT-B-32", tmp_path_factory.mktemp("tiny-clip"))
    text, vision = TINY | {"hidden_size": 48}, TINY | {"patch_size": 32}  # towers of different widths
    CLIPConfig(text_config=text, vision_config=vision, projection_dim=32).save_pretrained(out)
    return out


def _extract(cache: Path, root: Path, *args: str) -> Path:
    before = set(root.rglob("meta.json")) if root.exists() else set()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPATIAL_PROBING_CACHE", str(cache))
        assert main(["extract", *CPU, *SCENES, "--feature_root", str(root), *args]) == 0
    (new,) = set(root.rglob("meta.json")) - before
    return new.parent


@pytest.fixture(scope="module")
def study_entry(cache: Path, tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    return _extract(cache, root, "--model.encoder", f"hf-clip:{tiny_clip_dir}", "--model.view", STUDY,
                    "--model.random_init", "true")


def _l2(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def _transformers_study_variants(model_dir: Path, captions: list[str], images: list[Image.Image]) -> dict:
    """The first study's three CLIP variants computed directly with transformers (its embedders)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from spatial_probing.encoders.base import seeded

    with seeded():  # the same seeded random weights the registry's random-init gives
        model = CLIPModel(CLIPConfig.from_pretrained(model_dir)).eval()
    # padded to the full context as the study did; the extraction pads to the longest caption only
    tokens = CLIPTokenizer.from_pretrained(model_dir)(captions, padding="max_length", max_length=77,
                                                    truncation=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    text_pooled = model.text_model(**tokens).pooler_output  # CLIPTextModel pooler_output, 512-d for B/32
    image_embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    text_embeds = model.text_projection(text_pooled)  # = CLIPModel.get_text_features
    return {
        "text-pooled": _l2(text_pooled).numpy(),
        "image": _l2(image_embeds).numpy(),
        "concat": _l2(torch.cat([_l2(image_embeds), _l2(text_embeds)], dim=1)).numpy(),
    }


def test_study_clip_variants_equal_a_direct_transformers_computation(study_entry: Path) -> None:
    from spatial_probing.data.sources import dataset_location

    entry = load_entry(study_entry)
    assert [(s.view, s.layer) for s in entry.feature_sets()] == [
        ("text-pooled", "final"), ("image", "final"), ("concat", "final")]
    image_root = Path(dataset_location("scenes", None, 2, 0)[1])
    images = [Image.open(image_root / name).convert("RGB") for name in entry.rows.images]
    expected = _transformers_study_variants(Path(entry.meta["spec"].split(":", 1)[1].rsplit("@", 1)[0]),
                                            list(entry.rows.captions), images)
    for view, reference in expected.items():
        ours = np.asarray(entry.view(view).features)
        diff = np.abs(ours - reference).max()
        print(f"{view}: {ours.shape[1]}-d, max abs diff to transformers {diff:.2e}")
        assert ours.shape == reference.shape and diff <= 1e-5
    assert entry.view("concat").features.shape[1] == 32 + 32  # image_embeds || text_embeds
    assert entry.view("text-pooled").features.shape[1] == 48  # the text tower's width, pre-projection


def test_one_pass_equals_separate_extractions(cache: Path, study_entry: Path, tiny_clip_dir: Path,
                                              tmp_path: Path) -> None:
    entry = load_entry(study_entry)
    # one pass stored each stream's parts once: the text stream's pooled state, the image stream's embedding
    # and the projected text part concat needs; concat is derived from them when read
    assert sorted(entry.parts) == ["image", "text", "text-pooled"]
    assert sorted(entry.meta["sha256"]) == ["failures.jsonl", "parts/image.npy", "parts/text-pooled.npy",
                                            "parts/text.npy", "rows.jsonl", "valid.npy"]
    for view in ("text-pooled", "image", "concat"):
        alone = load_entry(_extract(cache, tmp_path / view, "--model.encoder", f"hf-clip:{tiny_clip_dir}",
                                    "--model.view", view, "--model.random_init", "true"))
        assert alone.views == (view,)
        assert np.array_equal(np.asarray(alone.features), np.asarray(entry.view(view).features))


def test_layerwise_last_layer_equals_the_final_entry(cache: Path, minilm_dir: Path, tmp_path: Path) -> None:
    encoder = ["--model.encoder", f"sbert:{minilm_dir}"]
    layered = load_entry(_extract(cache, tmp_path / "layers", *encoder, "--model.layers", "all"))
    final = load_entry(_extract(cache, tmp_path / "final", *encoder))
    sets = [(s.view, s.layer) for s in layered.feature_sets()]
    assert sets == [("text", "final"), *(("text", str(layer)) for layer in range(7))]  # embeddings + 6 blocks
    last = np.asarray(layered.view("text", 6).features)
    diff = np.abs(last - np.asarray(final.features)).max()
    print(f"MiniLM layer 6 (mean-pooled, L2) vs final entry: max abs diff {diff:.2e}")
    assert diff <= 1e-6
    assert np.abs(np.asarray(layered.view("text", 3).features) - last).max() > 0.1  # earlier layers differ
    assert layered.meta["key"]["layers"] == "all" and final.meta["key"]["layers"] == "final"
    assert layered.path != final.path
    with pytest.raises(CacheError, match=r"has no view 'text' at layer 9 \(it holds text\[final\], text\[0\]"):
        layered.view("text", 9)


@torch.no_grad()
def test_clip_layer_parts_are_the_states_before_the_final_layer_norm(tiny_clip_dir: Path) -> None:
    encoder = create_encoder(f"hf-clip:{tiny_clip_dir}@all+random-init")
    model = encoder.model
    tokens = encoder.preprocess_text(["The cat is left of the dog.", "a red apple under a table"])
    text = encoder.text_parts(tokens, layers=[0, 3])
    assert torch.allclose(model.text_model.final_layer_norm(text["text@3"]), text["text-pooled"], atol=1e-6)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    image = encoder.image_parts(pixels, layers=[3])
    projected = model.visual_projection(model.vision_model.post_layernorm(image["image@3"]))
    assert torch.allclose(projected, image["image"], atol=1e-6)
    with pytest.raises(EncoderError, match=r"text layers \[4\] do not exist \(layers 0..3\)"):
        encoder.text_parts(tokens, layers=[4])


def test_layerwise_clip_entry_offers_each_view_per_layer(cache: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    from spatial_probing.probes.data import ProbeDataModule
    from spatial_probing.tasks.relation_type import RelationType

    path = _extract(cache, tmp_path, "--model.encoder", f"hf-clip:{tiny_clip_dir}", "--model.view", STUDY,
                    "--model.random_init", "true", "--model.layers", "[1,3]")
    entry = load_entry(path)
    per_layer = [("text-pooled", "1"), ("image", "1"), ("concat", "1"),
                 ("text-pooled", "3"), ("image", "3"), ("concat", "3")]
    assert [(s.view, s.layer) for s in entry.feature_sets()] == [
        ("text-pooled", "final"), ("image", "final"), ("concat", "final"), *per_layer]
    assert entry.view("concat", 3).features.shape[1] == 64 + 48  # image CLS || text EOS, tower widths
    # the probe side: every (view, layer) set of an entry is its own probe set, named in the results
    dm = ProbeDataModule(features=[str(path)], task=RelationType(min_count=2), n_splits=2)
    dm.setup()
    infos = [ps.info for ps in dm.probe_sets]
    assert [(i["view"], i["layer"]) for i in infos] == [(s.view, s.layer) for s in entry.feature_sets()]
    assert {i["encoder"] for i in infos} == {f"hf-clip:{tiny_clip_dir.name}+random-init"}
    assert {i["n_excluded"] for i in infos} == {0}


# --- names and recipes ---------------------------------------------------------------------------


def test_view_names_are_canonical_and_checked() -> None:
    spec = parse_encoder("hf-clip:x/y@concat,text-pooled", random_init=True)
    assert str(spec) == "hf-clip:x/y@text-pooled,concat+random-init" and spec.views == ("text-pooled", "concat")
    assert parse_encoder("openclip:ViT-B-32/openai@all").views == ("text", "image", "concat")
    assert parse_encoder("hf-clip:x/y", view=["image", "text-pooled"]).view == "text-pooled,image"
    with pytest.raises(EncoderError, match="view 'pooled' is not supported by the hf-clip family"):
        parse_encoder("hf-clip:x/y@image,pooled")


def test_concat_recipe_is_image_first_and_unit_norm() -> None:
    recipe = views.family_view("hf-clip", "concat")
    assert recipe.parts == ("image", "text") and recipe.streams == ("image", "text")
    image, text = np.array([[3.0, 4.0]]), np.array([[0.0, 2.0, 0.0]])
    np.testing.assert_allclose(views.combine([image, text]), [[0.6, 0.8, 0, 1, 0]] / np.sqrt(2), rtol=1e-6)
    assert np.isnan(views.combine([np.full((1, 2), np.nan), text])).all()  # a failed image stays masked
    assert views.needed_parts("hf-clip", ["concat", "text-pooled"], {"text": [0]}) == {
        "image": ["image"], "text": ["text", "text-pooled", "text@0"]}


def test_display_names_say_what_the_encoder_is(minilm_dir: Path, tiny_clip_dir: Path) -> None:
    assert display_name(parse_encoder(f"sbert:{minilm_dir}")) == "sbert:all-MiniLM-L6-v2"
    assert display_name(parse_encoder("sbert:sentence-transformers/all-mpnet-base-v2")) == "sbert:all-mpnet-base-v2"
    assert display_name(parse_encoder("openclip:ViT-B-32/openai@concat+random-init")) == "openclip:ViT-B-32+random-init"
    assert display_name(parse_encoder("openclip:ViT-B-32/openai")) == "openclip:ViT-B-32/openai"
    assert display_name(parse_encoder(f"hf-clip:{tiny_clip_dir}+random-init")) == (
        f"hf-clip:{tiny_clip_dir.name}+random-init")


def test_entry_meta_carries_the_display_name_and_the_recipes(study_entry: Path) -> None:
    meta = json.loads((study_entry / "meta.json").read_text())
    assert meta["encoder"].endswith("+random-init") and "/" not in meta["encoder"]
    assert meta["spec"].startswith("hf-clip:/") and meta["spec"].endswith("@text-pooled,image,concat+random-init")
    assert meta["view_parts"] == [["text-pooled", ["text-pooled"]], ["image", ["image"]],
                                  ["concat", ["image", "text"]]]


def test_bad_layer_numbers_are_refused_before_any_shard(cache: Path, minilm_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    args = ["extract", *CPU, *SCENES, "--feature_root", str(tmp_path), "--model.encoder", f"sbert:{minilm_dir}",
            "--model.layers", "[2,9]"]
    assert main(args) == 2
    assert "text layers [9] do not exist (layers 0..6)" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("meta.json"))


def test_one_pass_saving_counts_each_stream_once_per_view_that_reads_it():
    from spatial_probing.encoders.module import FrozenEncoder

    module = FrozenEncoder("openclip:ViT-B-32/openai", view=["text", "image", "concat"], random_init=True)
    assert module.one_pass_saving() is None  # no batch encoded yet
    module.stream_seconds = {"text": 2.0, "image": 10.0}
    # separate extractions: text (2) + image (10) + concat (2 + 10) = 24 s against 12 s once
    assert module.one_pass_saving().endswith("one extraction per view would encode for 24.0 s: 12.0 s saved")
    module.stream_seconds = {"text": 2.0, "image": 0.0}  # every image failed: nothing to compare
    assert module.one_pass_saving() is None
    single = FrozenEncoder("openclip:ViT-B-32/openai", view="text", random_init=True)
    single.stream_seconds = {"text": 2.0}
    assert single.one_pass_saving() is None
