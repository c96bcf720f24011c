"""``spatial-probing``: extract features, fit probes, run analyses, list encoders.

    spatial-probing extract --config configs/extract/sbert_mpnet.yaml [--trainer.devices 2 ...]
    spatial-probing fit --config configs/probe/original_protocol.yaml [--data.features [...]]
    spatial-probing analyze --config configs/analysis/vsr_text.yaml
    spatial-probing report --results outputs/probe/demo [--out DIR]
    spatial-probing list-encoders
    spatial-probing train-grounding --config configs/grounding/mlm.yaml [--seed_everything 1 ...]

``extract`` and ``fit`` are LightningCLI programs: configs in ``class_path``/``init_args`` style, composed
with repeated ``--config``, any option overridable on the command line, ``--print_config`` to see the
resolved config. The commands that write a run's files sit here, above every layer they drive:
``fit`` (`cli.fit`) and ``analyze`` (`cli.analyze`), each imported only when its command runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from spatial_probing.console import PARSER_KWARGS, parser_error, quiet_libraries
from spatial_probing.errors import SpatialProbingError
from spatial_probing.stop import stop_on_signal

USAGE = __doc__
# `args=` is how subcommands hand their argv to LightningCLI; sys.argv still holds the subcommand name
# (the DDP launcher re-executes it), which LightningCLI would otherwise warn about on every run.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@contextmanager
def _importing() -> Iterator[None]:
    """Import a command's modules with the cyclic garbage collector paused, then freeze what they made.

    Lightning, torchmetrics, transformers and their kin create ~550,000 objects on import; the collector's
    full passes over them took 1.0 s of the fit command's 6.1 s import (8 generation-2 collections, timed
    with ``gc.callbacks``), and each later full pass walks them again. Modules live as long as the process,
    so ``gc.freeze()`` moves them to the permanent generation, which collections skip.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _add_cache_options(parser) -> None:
    """The extraction options beside trainer/model/data."""
    from spatial_probing.features.key import STORAGE_DTYPES

    parser.add_argument("--feature_root", type=str, default="outputs/features",
                        help="Root directory of the feature cache.")
    # A Literal of the store's dtypes: a bad value is refused while parsing, naming the option.
    parser.add_argument("--dtype", type=Literal[STORAGE_DTYPES], default="float32",
                        help="Storage dtype of the cached features: float32 or float16.")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="Recompute even when a complete cache entry exists.")


def run_extract(args: list[str]) -> int:
    """Run one extraction (a LightningCLI ``predict`` over the frozen encoder) into the feature cache.

    A repeated, unchanged invocation is answered from its run record before Lightning is imported.
    """
    from spatial_probing.features.runs import record_run, recorded_hit

    if (entry := recorded_hit(args)) is not None:
        print(f"cache hit: {entry.describe()}")
        return 0

    with _importing():
        from lightning.pytorch.cli import LightningCLI

        from spatial_probing.data.datamodule import SpatialDataModule
        from spatial_probing.encoders.module import FrozenEncoder
        from spatial_probing.features.extract import extract

    class ExtractCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            _add_cache_options(parser)

    cli = ExtractCLI(
        FrozenEncoder,
        SpatialDataModule,
        run=False,
        args=args,
        save_config_callback=None,
        seed_everything_default=0,  # explicit: LightningCLI warns "No seed found" on every run without one
        trainer_defaults={"logger": False, "enable_checkpointing": False, "enable_model_summary": False},
        parser_kwargs=PARSER_KWARGS,
    )
    cfg = cli.config
    entry = extract(cli.trainer, cli.model, cli.datamodule, cfg.feature_root, cfg.dtype, cfg.overwrite)
    if entry is not None:
        record_run(args, entry, cli.datamodule.data_args(), cli.model.spec.model, cfg.feature_root)
    return 0


def run_list_encoders(args: list[str]) -> int:
    """Print every encoder family with its name grammar, views and defaults."""
    from spatial_probing.encoders.registry import list_encoders

    for item in list_encoders():
        print(f"{item['family']}")
        for key, value in item.items():
            if key != "family":
                print(f"    {key}: {value}")
    return 0


def run_fit(args: list[str]) -> int:
    """Fit probes on cached features (LightningCLI ``fit``) and write the result files."""
    # Idle OpenMP threads spinning for work made the probe solver 5-10x slower on shared CPUs. Set before
    # torch is imported, for probing only (encoders keep the default policy); the user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with _importing():
        from spatial_probing.cli.fit import run_fit as fit

    return fit(args)


def run_analyze(args: list[str]) -> int:
    """Run the analyses of an analysis config on cached features (`spatial_probing.cli.analyze`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as for fit: the analyses run the probe solver
    with _importing():
        from spatial_probing.cli.analyze import run_analyze as analyze

    return analyze(args)


def run_train_grounding(args: list[str]) -> int:
    """Train one arm of the grounding experiment (LightningCLI ``fit``); see docs/grounding.md."""
    # Spinning OpenMP threads made training 14x slower on a shared 2-core machine (measured); the user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with _importing():
        from spatial_probing.grounding.cli import run_train_grounding as train

    return train(args)


def run_report(args: list[str]) -> int:
    """Write the HTML report and figure files of a ``fit`` output directory."""
    with _importing():
        from spatial_probing.report.build import main as report

    return report(args)


COMMANDS = {
    "extract": run_extract, "fit": run_fit, "analyze": run_analyze, "report": run_report,
    "list-encoders": run_list_encoders, "train-grounding": run_train_grounding,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spatial-probing`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    quiet_libraries()
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print(USAGE)
        return 0 if not argv or argv[0] in {"-h", "--help"} else 2
    try:
        with stop_on_signal():  # SIGTERM stops extract/fit at their next safe point (see spatial_probing.stop)
            return COMMANDS[argv[0]](argv[1:])
    except SpatialProbingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except argparse.ArgumentError as exc:
        return parser_error(argv[0], exc)

