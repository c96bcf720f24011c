"""The console script's subcommands: help, list-encoders, resolved configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spatial_probing.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "spatial-probing extract" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def test_list_encoders_names_every_family(capsys):
    assert main(["list-encoders"]) == 0
    out = capsys.readouterr().out
    for family in ("sbert", "openclip", "hf-clip"):
        assert f"\n{family}\n" in f"\n{out}"
    assert "random-init" in out and "ViT-B-32" in out


def test_extract_print_config_composes_configs_and_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--config", str(REPO / "configs/trainer/multi_gpu_ddp.yaml"),
              "--config", str(REPO / "configs/extract/clip_vitb32.yaml"),
              "--data.batch_size", "128", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["precision"] == "bf16-mixed"
    assert config["model"] == {"encoder": "hf-clip:openai/clip-vit-base-patch32",
                               "view": ["text-pooled", "image", "concat"], "layers": None, "random_init": False}
    assert config["data"]["batch_size"] == 128 and config["data"]["dataset"] == "cambridgeltl/vsr_random"
    assert config["feature_root"] == "outputs/features"


def test_command_imports_run_without_the_collector_and_stay_out_of_later_collections():
    import gc

    from spatial_probing.cli import _importing

    seen = []
    gc.callbacks.append(watch := lambda phase, info: seen.append(phase))
    frozen = gc.get_freeze_count()
    try:
        with _importing():
            assert not gc.isenabled()
            made = [[i] for i in range(100_000)]  # enough allocations to trigger collections if enabled
        assert seen == [] and gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)  # moved to the permanent generation
        with pytest.raises(ImportError), _importing():
            import spatial_probing_no_such_module  # noqa: F401
        assert gc.isenabled()  # a failed import leaves the collector on
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()
