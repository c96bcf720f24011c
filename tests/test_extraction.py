"""End-to-end extraction: LightningCLI -> Trainer.predict -> shards -> one merged, verified cache entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spatial_probing.cli import main
from spatial_probing.errors import CacheError
from spatial_probing.features.entry import load_entry

REPO = Path(__file__).resolve().parents[1]
SCENES = ["--data.dataset", "scenes", "--data.scenes_per_relation", "3", "--data.batch_size", "16"]
CPU = ["--config", str(REPO / "configs/trainer/cpu.yaml")]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIAL_PROBING_CACHE", str(tmp_path / "cache"))


def _entries(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta.json"))


def _extract(root: Path, *args: str) -> Path:
    assert main(["extract", *CPU, *SCENES, "--feature_root", str(root), *args]) == 0
    (entry,) = [p for p in _entries(root) if _matches(p, args)]
    return entry


def _matches(entry: Path, args: tuple[str, ...]) -> bool:
    meta = json.loads((entry / "meta.json").read_text())
    return all(a not in {"float16", "float32"} or meta["key"]["dtype"] == a for a in args)


def test_sbert_extraction_equals_encode_and_hits_cache(tmp_path, minilm_dir, capsys):
    from sentence_transformers import SentenceTransformer

    root = tmp_path / "features"
    entry_dir = _extract(root, "--model.encoder", f"sbert:{minilm_dir}")
    entry = load_entry(entry_dir)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        list(entry.rows.captions), normalize_embeddings=True, batch_size=16
    )
    assert entry.features.shape == expected.shape == (len(entry.rows), 384)
    cos = (np.asarray(entry.features) * expected).sum(1) / np.linalg.norm(entry.features, axis=1)
    assert cos.min() >= 0.9999
    assert entry.valid.all() and entry.meta["key"]["view"] == "text"
    assert entry.meta["encoder"] == "sbert:all-MiniLM-L6-v2"  # the model card's name, not the directory "model"
    assert not list(root.rglob("*.partial"))  # shards are dropped once merged

    capsys.readouterr()
    assert main(["extract", *CPU, *SCENES, "--feature_root", str(root), "--model.encoder", f"sbert:{minilm_dir}"]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert _entries(root) == [entry_dir]


def test_key_changes_with_dtype_and_dataset(tmp_path, minilm_dir):
    root = tmp_path / "features"
    a = _extract(root, "--model.encoder", f"sbert:{minilm_dir}", "--dtype", "float32")
    b = _extract(root, "--model.encoder", f"sbert:{minilm_dir}", "--dtype", "float16")
    assert a != b
    fa, fb = load_entry(a).features, load_entry(b).features
    assert fb.dtype == np.float16 and np.allclose(fa, fb, atol=1e-3)
    main(["extract", *CPU, *SCENES[:-2], "--data.batch_size", "16", "--data.scenes_seed", "1",
          "--feature_root", str(root), "--model.encoder", f"sbert:{minilm_dir}"])
    assert len(_entries(root)) == 3


def test_a_bumped_adapter_code_version_recomputes_that_familys_entries_only(tmp_path, minilm_dir, monkeypatch, capsys):
    import dataclasses

    from spatial_probing.encoders import registry

    root = tmp_path / "features"
    old = _extract(root, "--model.encoder", f"sbert:{minilm_dir}")
    assert json.loads((old / "meta.json").read_text())["key"]["adapter"] == "sbert/1"
    bumped = dict(registry._FAMILIES, sbert=dataclasses.replace(registry._FAMILIES["sbert"], code_version=2))
    monkeypatch.setattr(registry, "_FAMILIES", bumped)
    assert registry.adapter_code("openclip:ViT-B-32/openai") == "openclip/1"  # other families keep their keys
    capsys.readouterr()
    assert main(["extract", *CPU, *SCENES, "--feature_root", str(root), "--model.encoder", f"sbert:{minilm_dir}"]) == 0
    assert "cache hit" not in capsys.readouterr().out
    (new,) = [e for e in _entries(root) if e != old]
    assert json.loads((new / "meta.json").read_text())["key"]["adapter"] == "sbert/2"
    np.testing.assert_array_equal(load_entry(new).features, load_entry(old).features)  # same code, same numbers


def test_concat_encodes_each_image_once_and_masks_failed_images(tmp_path):
    from spatial_probing.data.datamodule import SpatialDataModule
    from spatial_probing.data.sources import dataset_location

    dm = SpatialDataModule(dataset="scenes", scenes_per_relation=3)
    images_dir = Path(dataset_location("scenes", None, 3, 0)[1])
    names, row_to_image = dm.rows.unique_images()
    assert len(names) < len(dm.rows)  # captions share images, so dedup is exercised
    (images_dir / names[0]).write_bytes(b"")  # zero-byte file
    (images_dir / names[1]).write_bytes((images_dir / names[2]).read_bytes()[:40])  # truncated
    (images_dir / names[3]).unlink()  # missing

    root = tmp_path / "features"
    entry = load_entry(_extract(root, "--model.encoder", "openclip:ViT-B-32/openai", "--model.view", "concat,text",
                                "--model.random_init", "true"))
    concat = entry.view("concat").features
    assert entry.views == ("text", "concat") and concat.shape == (len(dm.rows), 512 + 512)
    text = entry.view("text")  # same pass: a text view loses no row to a failed image
    assert text.valid.all() and np.isfinite(text.features).all() and text.failures == []
    assert (entry.view("concat").valid == entry.valid).all()
    bad = np.isin(row_to_image, [0, 1, 3])
    assert (~entry.valid == bad).all()
    assert np.isnan(concat[bad]).all() and np.isfinite(concat[~bad]).all()
    reasons = {f["image"]: f["reason"] for f in entry.failures}
    assert set(reasons) == {names[0], names[1], names[3]}
    assert reasons[names[3]].startswith("not_found")
    # each unique image went through the encoder once: the image shards hold exactly one row per image
    assert entry.meta["n_valid"] == int((~bad).sum())
    # rows sharing an image share its features (concat is image first); the text half differs with the caption
    same = np.flatnonzero(row_to_image == row_to_image[np.flatnonzero(~bad)[0]])
    assert len(same) > 1
    assert np.array_equal(concat[same[0], :512], concat[same[1], :512])
    assert not np.array_equal(concat[same[0], 512:], concat[same[1], 512:])
    assert entry.meta["encoder"] == "openclip:ViT-B-32+random-init"  # no pretrained tag on random weights


def test_corrupt_or_incompatible_entry_is_refused(tmp_path, minilm_dir):
    entry_dir = _extract(tmp_path / "f", "--model.encoder", f"sbert:{minilm_dir}")
    meta = json.loads((entry_dir / "meta.json").read_text())
    features = np.load(entry_dir / "parts" / "text.npy")
    features[0, 0] += 1
    np.save(entry_dir / "parts" / "text.npy", features)
    with pytest.raises(CacheError, match="checksum"):
        load_entry(entry_dir)
    meta["key"]["format_version"] = 0
    (entry_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="format 0"):
        load_entry(entry_dir)


def _probe_results(entry: Path, out: Path) -> str:
    from spatial_probing.cli.fit import run_fit

    assert run_fit(["--data.features", f"[{entry}]", "--data.task", "spatial_probing.tasks.caption_truth.CaptionTruth",
                    "--data.n_splits", "3", "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--out_dir", str(out)]) == 0
    return (out / "results.csv").read_text().replace(str(entry), "")


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spatial_probing.cli", "extract", *SCENES, "--feature_root", str(root), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("precision,atol", [("32-true", 1e-5), ("bf16-mixed", 2e-2)])
def test_two_process_ddp_equals_one_process(tmp_path, minilm_dir, precision, atol):
    entries = []
    for name, trainer in (("one", "cpu.yaml"), ("two", "cpu_ddp.yaml")):
        root = tmp_path / name
        done = _cli(root, "--config", str(REPO / "configs/trainer" / trainer), "--trainer.precision", precision,
                    "--model.encoder", f"sbert:{minilm_dir}")
        assert done.returncode == 0, done.stderr[-3000:]
        (entry_dir,) = _entries(root)
        entries.append(load_entry(entry_dir))
    one, two = entries
    assert two.meta["world_size"] == 2 and one.meta["world_size"] == 1
    assert one.rows.fingerprint == two.rows.fingerprint
    assert np.abs(np.asarray(one.features) - np.asarray(two.features)).max() <= atol
    if precision == "32-true":  # ... and the probes fitted on them agree
        assert _probe_results(one.path, tmp_path / "fit1") == _probe_results(two.path, tmp_path / "fit2")
    if precision == "bf16-mixed":  # bf16 features are near the float32 ones too
        ref = _cli(tmp_path / "ref", *CPU, "--model.encoder", f"sbert:{minilm_dir}")
        assert ref.returncode == 0
        (ref_dir,) = _entries(tmp_path / "ref")
        cos = (load_entry(ref_dir).features * np.asarray(one.features)).sum(1)
        assert cos.min() > 0.99


def test_repeated_invocation_hits_without_importing_lightning(tmp_path, minilm_dir):
    import shutil

    from spatial_probing.features.runs import recorded_hit

    model = shutil.copytree(minilm_dir, tmp_path / "minilm")
    args = [*CPU, *SCENES, "--feature_root", str(tmp_path / "features"), "--model.encoder", f"sbert:{model}"]
    assert main(["extract", *args]) == 0
    probe = ("import sys; from spatial_probing.cli import main; "
             f"code = main({['extract', *args]!r}); print('lightning loaded:', 'lightning' in sys.modules); "
             "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cache hit" in done.stdout and "lightning loaded: False" in done.stdout
    # an edited model config changes the key: the record no longer answers and the full path runs
    config = model / "sentence_bert_config.json"
    config.write_text(config.read_text().replace("256", "128"))
    assert recorded_hit(args) is None
