"""``spatial-probing train-grounding``: train one arm (LightningCLI ``fit``) and write its run directory.

    spatial-probing train-grounding --config configs/grounding/mlm.yaml [--seed_everything 1]
        [--trainer.max_steps 3000] [--trainer.precision auto|32-true|bf16-mixed] [--out_dir DIR] [--print_config]

``configs/grounding/base.yaml`` is always read first (it holds everything the arms share), so an
arm's own file names only its objective. ``out_dir`` receives ``encoder.ckpt`` (usable as the encoder
``local:<out_dir>/encoder.ckpt``), ``summary.json`` (throughput, the validation history: retrieval and
the structure / swap learning curves, the step at which retrieval left chance), ``config.yaml`` and the
logger's files. The last point of the history is always the saved weights (a final validation runs when
``max_steps`` is not a multiple of ``val_check_interval``). ``--trainer.precision auto`` (base.yaml's) is
resolved before anything is built, by ``spatial_probing.machine.auto_precision`` for the run's accelerator;
one line says what it chose and why, and ``config.yaml`` and ``summary.json`` record the resolved precision. With a pretrained text tower
(``--model.text spatial_probing.grounding.text.SentenceTransformerText``) the fine-tuned model is also
written as a sentence-transformers directory ``out_dir/sbert`` (the encoder ``sbert:<out_dir>/sbert``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.connector import _PRECISION_INPUT  # Trainer's own precision type (no public alias)
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from spatial_probing.console import PARSER_KWARGS
from spatial_probing.errors import DataError
from spatial_probing.grounding.datamodule import GroundingDataModule
from spatial_probing.grounding.module import GroundingModule
from spatial_probing.io import atomic_write
from spatial_probing.machine import auto_precision, bf16_supported

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grounding" / "base.yaml"


class GroundingTrainer(Trainer):
    """Lightning's Trainer, whose ``precision`` also takes ``auto`` (``GroundingCLI`` resolves it before building).

    Args:
        precision: Lightning's precision, or ``auto``: what ``spatial_probing.machine.auto_precision`` chooses for
            the accelerator (bf16-mixed on a CUDA GPU with bfloat16, else 32-true; docs/grounding.md).
    """

    def __init__(self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        if precision == "auto":
            raise ValueError("precision 'auto' is resolved by GroundingCLI (spatial_probing.machine.auto_precision)")
        super().__init__(*args, precision=precision, **kwargs)


class GroundingCLI(LightningCLI):
    """LightningCLI for one arm, with ``out_dir``; ``--trainer.precision auto`` becomes a concrete precision."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--out_dir", type=str, default="outputs/grounding/run",
                            help="Run directory: encoder.ckpt, summary.json, config.yaml, logs.")
        # one place configures the tower (model.tower); the data module builds the inputs that tower reads
        parser.link_arguments("model.tower", "data.tower", apply_on="instantiate")
        # the text tower's tokenizer tokenizes every caption the data module builds
        parser.link_arguments("model.text", "data.text", apply_on="instantiate")
        # the scene family (--data.scenes) decides the image tower's input size
        parser.link_arguments("data.scenes", "model.scenes")

    def before_instantiate_classes(self) -> None:
        """Replace ``trainer.precision: auto`` by what ``auto_precision`` chooses for the accelerator, in the config
        itself (so config.yaml records it), and say which and why."""
        trainer = self.config.trainer
        if trainer.precision == "auto":
            accelerator = trainer.accelerator if isinstance(trainer.accelerator, str) else trainer.accelerator.class_path
            trainer.precision, why = auto_precision(accelerator)
            rank_zero_info(f"--trainer.precision auto: {trainer.precision} ({why})")


def build_cli(args: list[str], run: bool = False) -> GroundingCLI:
    """Parse ``args`` over the base config and instantiate model, data and trainer (not fitted)."""
    return GroundingCLI(
        GroundingModule,
        GroundingDataModule,
        args=args,
        run=run,
        save_config_callback=None,
        trainer_class=GroundingTrainer,
        parser_kwargs={**PARSER_KWARGS, "default_config_files": [str(BASE_CONFIG)]},
        trainer_defaults={"max_epochs": -1, "enable_checkpointing": False, "enable_model_summary": False},
    )


def check_run(out: Path, max_steps: int, batch_size: int, n_train: int, devices: int) -> None:
    """Refuse a run that could not train or write its directory, naming the option."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out_dir {out} is a file, not a directory")
    if max_steps < 1:
        raise DataError(f"--trainer.max_steps must be at least 1 (a run trains for a fixed number of steps), got {max_steps}")
    if batch_size * devices > n_train:
        raise DataError(f"--data.batch_size {batch_size} x {devices} device(s) is larger than --data.n_train {n_train}: "
                        "no full batch to train on")


def check_precision(precision: str, accelerator: object) -> None:
    """Warn when bf16 autocast would run on a CPU without bfloat16 instructions (AVX512-BF16 / AMX-BF16): PyTorch
    then falls back to reference kernels (im2col convolutions, non-BLAS GEMMs), 5-7x slower than float32 for
    every arm (benchmarks/grounding_speed.py), which is one reason ``auto`` trains in 32-true on CPUs."""
    if str(precision).startswith("bf16") and isinstance(accelerator, CPUAccelerator) and not bf16_supported("cpu"):
        rank_zero_warn(f"--trainer.precision {precision} on a CPU without bfloat16 instructions (neither avx512_bf16 "
                       "nor amx_bf16): bf16 autocast runs emulated kernels, several times slower than float32 here; "
                       "use --trainer.precision 32-true or auto")


def train(args: list[str]) -> tuple[GroundingModule, dict[str, Any]]:
    """Train one arm; return the trained module and (also written to ``out_dir/summary.json``) what the run measured.

    ``summary.json`` is written last: a directory without it is an unfinished run (``encoder.ckpt`` appears
    whole or not at all: written beside, then renamed)."""
    cli = build_cli(args)
    out = Path(cli.config.out_dir)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    check_run(out, trainer.max_steps, data.batch_size, data.n_train, trainer.world_size)
    check_precision(trainer.precision, trainer.accelerator)
    out.mkdir(parents=True, exist_ok=True)
    trainer.fit(model, datamodule=data)
    if not model.history or model.history[-1]["step"] != trainer.global_step:
        trainer.validate(model, datamodule=data, verbose=False)  # the curve ends at the saved weights
    checkpoint = out / "encoder.ckpt"
    # a pretrained text tower is also written in its own format (sentence-transformers: out_dir/sbert)
    exported = model.text_tower.export(model.text, out / "sbert") if trainer.is_global_zero else None
    partial = out / "encoder.ckpt.partial"
    # weights only: the `local:` adapter reads the weights and the architecture entry, nothing of the optimiser
    trainer.save_checkpoint(partial, weights_only=True)  # every rank calls it (a barrier); rank 0 writes
    if trainer.is_global_zero:
        os.replace(partial, checkpoint)
    summary = {
        "objective": type(model.objective).__name__,
        "targets": getattr(model.objective, "targets", None),
        "hard_negatives": bool(getattr(model.objective, "hard_negatives", False)),
        "tower": model.tower.architecture() if model.tower is not None else None,
        "seed": cli.config.seed_everything,
        "steps": int(trainer.global_step),
        "precision": str(trainer.precision),
        "devices": trainer.world_size,
        "samples_per_s": model.samples_per_second,
        "left_chance_step": model.left_chance_step,
        "history": model.history,
        "checkpoint": str(checkpoint),
        "text": model.text_tower.architecture(),
        "sbert": str(exported) if exported is not None else None,
    }
    if trainer.is_global_zero:
        atomic_write(out / "config.yaml", cli.parser.dump(cli.config, skip_none=False))
        atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return model, summary


def run_train_grounding(args: list[str]) -> int:
    """Entry point of the subcommand; ``--help`` and ``--print_config`` exit through the parser."""
    try:
        _, summary = train(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    also = f" and {summary['sbert']} (sbert:{summary['sbert']})" if summary["sbert"] else ""
    print(f"trained {summary['objective']} for {summary['steps']} steps at {summary['samples_per_s']:.0f} "
          f"samples/s; retrieval left chance at step {summary['left_chance_step']}; wrote {summary['checkpoint']}{also}")
    return 0
