"""``--trainer.precision auto``: one function chooses per hardware class, train-grounding records its choice."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.accelerators import CPUAccelerator

from spatial_probing import machine
from spatial_probing.cli import main as cli_main
from spatial_probing.grounding import cli as grounding_cli
from spatial_probing.grounding.arms import CONFIGS
from spatial_probing.grounding.cli import build_cli, check_precision
from spatial_probing.machine import auto_precision

TINY = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--data.n_train", "48", "--data.n_val", "16",
        "--data.batch_size", "16", "--model.warmup_steps", "1", "--trainer.enable_progress_bar", "false"]


def _hardware(monkeypatch: pytest.MonkeyPatch, cuda: bool, cuda_bf16: bool = False, cpu_bf16: bool = False) -> None:
    """Pretend to run on a machine with (or without) a CUDA GPU and bfloat16 instructions."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(machine, "bf16_supported",
                        lambda device="cpu": cuda_bf16 if torch.device(device).type == "cuda" else cpu_bf16)


@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda", "lightning.pytorch.accelerators.CUDAAccelerator"])
def test_auto_is_bf16_mixed_on_a_cuda_gpu_with_bfloat16(monkeypatch, accelerator: str) -> None:
    _hardware(monkeypatch, cuda=True, cuda_bf16=True)
    assert auto_precision(accelerator) == ("bf16-mixed", "a CUDA GPU with bfloat16 support")
    _hardware(monkeypatch, cuda=True, cuda_bf16=False)
    assert auto_precision(accelerator) == ("32-true", "a CUDA GPU without bfloat16 support")


@pytest.mark.parametrize("cpu_bf16", [True, False])
@pytest.mark.parametrize("accelerator", ["cpu", "auto", "CPU", "lightning.pytorch.accelerators.CPUAccelerator"])
def test_auto_is_32_true_on_every_cpu_amx_or_not(monkeypatch, accelerator: str, cpu_bf16: bool) -> None:
    _hardware(monkeypatch, cuda=False, cpu_bf16=cpu_bf16)
    precision, why = auto_precision(accelerator)
    assert precision == "32-true"
    assert ("AMX" in why) == cpu_bf16 and ("without bfloat16 instructions" in why) == (not cpu_bf16)
    _hardware(monkeypatch, cuda=True, cuda_bf16=True, cpu_bf16=cpu_bf16)  # a GPU in the machine changes nothing
    assert auto_precision("cpu")[0] == "32-true"


@pytest.mark.parametrize("accelerator", ["mps", "gpu", "tpu"])
def test_auto_is_32_true_where_nothing_was_measured(monkeypatch, accelerator: str) -> None:
    _hardware(monkeypatch, cuda=False, cuda_bf16=True, cpu_bf16=True)  # "gpu" without CUDA: MPS or another
    assert auto_precision(accelerator) == ("32-true", f"no bf16 measurement for accelerator {accelerator}")


def test_base_config_trains_in_auto_and_train_grounding_records_the_resolved_precision(tmp_path: Path, caplog) -> None:
    assert yaml.safe_load((CONFIGS / "base.yaml").read_text())["trainer"]["precision"] == "auto"
    expected, why = auto_precision("cpu")  # base.yaml's accelerator
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = cli_main(["train-grounding", "--config", str(CONFIGS / "contrastive.yaml"), "--out_dir", str(out),
                         "--trainer.logger", "false", *TINY])
    assert code == 0
    assert f"--trainer.precision auto: {expected} ({why})" in [r.getMessage() for r in caplog.records]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trainer"]["precision"] == expected  # a rerun from config.yaml trains in the same precision
    assert json.loads((out / "summary.json").read_text())["precision"] == expected


def test_the_resolved_precision_is_what_the_trainer_runs_and_explicit_values_are_kept(monkeypatch, caplog) -> None:
    seen = []
    monkeypatch.setattr(grounding_cli, "auto_precision", lambda accelerator: seen.append(accelerator) or ("bf16-mixed", "test"))
    args = ["--config", str(CONFIGS / "mlm.yaml"), "--trainer.logger", "false"]
    cli = build_cli(args)
    assert seen == ["cpu"] and cli.trainer.precision == "bf16-mixed"
    assert yaml.safe_load(cli.parser.dump(cli.config))["trainer"]["precision"] == "bf16-mixed"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cli = build_cli([*args, "--trainer.precision", "32-true"])
    assert seen == ["cpu"] and cli.trainer.precision == "32-true"  # asked for explicitly: not resolved, no line
    assert not any("precision auto" in r.getMessage() for r in caplog.records)


def test_a_precision_that_is_neither_auto_nor_lightnings_is_one_error_line(tmp_path: Path, capsys) -> None:
    code = cli_main(["train-grounding", "--config", str(CONFIGS / "mlm.yaml"), "--out_dir", str(tmp_path / "run"),
                     "--trainer.precision", "fastest", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: Parser key "trainer.precision"') and "fastest" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("precision", "cpu_bf16", "warns"),
                         [("bf16-mixed", False, True), ("bf16-mixed", True, False), ("32-true", False, False)])
def test_explicit_bf16_on_a_cpu_without_bfloat16_instructions_warns(monkeypatch, precision: str, cpu_bf16: bool,
                                                                    warns: bool) -> None:
    monkeypatch.setattr(grounding_cli, "bf16_supported", lambda device="cpu": cpu_bf16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_precision(precision, CPUAccelerator())
    assert [str(w.message).split(":")[0] for w in caught] == (
        [f"--trainer.precision {precision} on a CPU without bfloat16 instructions (neither avx512_bf16 nor amx_bf16)"]
        if warns else [])
