"""``spatial-probing fit``: LightningCLI over LinearProbe + ProbeDataModule, then the result files.

    spatial-probing fit --config configs/probe/original_protocol.yaml [--data.feature_root DIR]
                        [--out_dir DIR] [--trainer.logger ...] [--print_config]

Options are LightningCLI's (``model.*``, ``data.*``, ``trainer.*``, composed ``--config`` files) plus
``out_dir`` (default ``outputs/probe``), where the run writes, always and before any W&B upload:
results.csv (+ results.parquet), comparison.csv, summary.csv, fits.csv, report.html and config.yaml,
and with ``model.stats`` / ``model.mdl`` also stats.csv and comparisons.csv (docs/credibility.md).

The default logger is `SafeWandbLogger` (offline unless ``WANDB_MODE``/``trainer.logger`` says
otherwise); choose Lightning's ``CSVLogger`` or ``TensorBoardLogger`` with ``trainer.logger``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from spatial_probing import stop
from spatial_probing.console import PARSER_KWARGS, parser_error
from spatial_probing.errors import ConfigError
from spatial_probing.io import atomic_write, check_writable
from spatial_probing.probes.data import ProbeDataModule
from spatial_probing.probes.module import LinearProbe
from spatial_probing.probes.results import comparison_table
from spatial_probing.report.build import write_report
from spatial_probing.report.tables import (
    credibility_table,
    format_table,
    write_credibility,
    write_results,
)
from spatial_probing.report.wandb import SafeWandbLogger, default_logger, log_results


def trainer_defaults() -> dict[str, Any]:
    """One epoch (one solver step per entry, then one evaluation), no sanity pass, no checkpoints."""
    return {
        "max_epochs": 1,
        "num_sanity_val_steps": 0,  # validating before the solver ran has nothing to score
        "enable_checkpointing": False,  # the weights are buffers of the module; results are the output
        "enable_model_summary": False,  # the probes are buffers created by the solver: nothing to list
        "log_every_n_steps": 1,  # one step per entry
        "logger": default_logger(),
    }


class StopAfterEntry(Callback):
    """A SIGTERM received during ``fit`` stops the run after the entry being fitted (`spatial_probing.stop`)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop.check(f"{batch_idx + 1} of {trainer.num_training_batches} entries were fitted and no result file "
                   "was written",
                   "rerun the same command to fit again")


#: The files a fit writes into out_dir (figures/ holds the report's figures).
RESULT_FILES = ("results.csv", "results.parquet", "comparison.csv", "summary.csv", "fits.csv", "stats.csv",
                "comparisons.csv", "config.yaml", "report.html")


def _same_run(old: str, new: str) -> bool:
    """Whether two config.yaml texts are one run's (``overwrite`` and ``config`` are how it was invoked)."""
    def settings(text: str) -> dict:
        loaded = yaml.safe_load(text)
        return {k: v for k, v in loaded.items() if k not in ("overwrite", "config")} if isinstance(loaded, dict) else {}
    return settings(old) == settings(new)


def check_out_dir(out_dir: Path, data: Any, config_text: str, overwrite: bool) -> None:
    """Refuse an out_dir inside the feature cache, or holding another run's results (unless ``overwrite``):
    result files of two runs must never mix in one directory."""
    out = out_dir.resolve()
    for option, root in (("--data.feature_root", data.feature_root), *(("--data.features", f) for f in data.features or [])):
        if root and out.is_relative_to(Path(root).expanduser().resolve()):
            raise ConfigError(f"--out_dir {out_dir} is inside {option} {root}: result files would sit among the "
                              "cache entries; choose an --out_dir outside the feature cache")
    previous = out_dir / "config.yaml"
    if overwrite or not any((out_dir / name).exists() for name in RESULT_FILES):
        return
    if not previous.is_file() or not _same_run(previous.read_text(encoding="utf-8"), config_text):
        raise ConfigError(f"--out_dir {out_dir} holds the results of another run (its config.yaml differs from this "
                          "one's); choose another --out_dir, or pass --overwrite true to replace them")


def _remove_stale(candidates: list[Path], written: Iterable[Path]) -> None:
    """Delete the ``candidates`` (result files, figures) an earlier run left that this run did not write."""
    keep = {p.resolve() for p in written}
    for path in candidates:
        if path.is_file() and path.resolve() not in keep:
            path.unlink()


class ProbeCLI(LightningCLI):
    """LightningCLI for probing: adds ``out_dir`` and writes the result files after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--out_dir", type=str, default="outputs/probe",
            help="Directory for results.csv, comparison.csv, summary.csv, fits.csv, report.html, config.yaml.",
        )  # fmt: skip
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="Replace the result files of another run (another config) in out_dir.",
        )  # fmt: skip

    @property
    def out_dir(self) -> Path:
        return Path(self.config[self.subcommand].out_dir)

    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        check_out_dir(self.out_dir, config.data, self._config_text(), config.overwrite)
        check_writable(self.out_dir)
        self.trainer.callbacks.append(StopAfterEntry())
        for logger in self.trainer.loggers:
            if isinstance(logger, SafeWandbLogger):
                logger.use_results_dir(self.out_dir)

    def _config_text(self) -> str:
        """The resolved config as config.yaml holds it."""
        return self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)

    def after_fit(self) -> None:
        """Write every result file first, then log to W&B, then print the comparison table."""
        if not self.trainer.is_global_zero:
            return
        df = self.model.results()
        if df.empty:
            print("no probe was evaluated (limit_val_batches=0?): nothing to write")
            return
        fits = pd.DataFrame(self.model.fit_info)
        resolved = self.config[self.subcommand].clone().as_dict()
        resolved.pop("config", None)  # the paths of the --config files, not settings
        credibility = self.model.credibility()
        try:  # each file is written atomically: a failure leaves the previous files whole
            written = write_results(df, self.out_dir, fits)
            if credibility is not None:  # before the report, which reads stats.csv and comparisons.csv
                written |= write_credibility(*credibility, self.out_dir)
            written["config"] = atomic_write(self.out_dir / "config.yaml", self._config_text())
            # an earlier run's tables (--overwrite) go before the report reads the directory
            _remove_stale([self.out_dir / name for name in RESULT_FILES if name != "report.html"], written.values())
            report = write_report(self.out_dir)
            _remove_stale(sorted((self.out_dir / "figures").glob("*.[ps][nv]g")), report.figure_files)
        except OSError as exc:
            raise ConfigError(f"cannot write the results to --out_dir {self.out_dir}: {exc.strerror or exc} "
                              "(disk full?); no file there is left half-written") from exc
        if credibility is not None:  # before log_results, which finishes the runs
            for logger in self.trainer.loggers:
                if isinstance(logger, SafeWandbLogger):
                    logger.log_table("stats", dataframe=credibility[0])
                    logger.log_table("comparisons", dataframe=credibility[1])
        notes = log_results(self.trainer.loggers, df, resolved, report)
        print(format_table(comparison_table(df)))
        if credibility is not None:
            _print_credibility(*credibility)
        print("\nwrote " + ", ".join(str(p) for p in written.values()))
        print("\n".join(notes))
        print(f"report: {report.path}")


def _print_credibility(stats: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    """The mean and meta-category rows of the credibility table, and each paired test's verdict."""
    table = credibility_table(stats)
    print("\n" + format_table(table.loc[[t for t in table.index if t == "mean" or t.startswith("meta:")]]))
    for row in comparisons[comparisons["target"] == "mean"].itertuples():
        wins = comparisons[(comparisons["target"] == "wins") & (comparisons["label_a"] == row.label_a)
                           & (comparisons["label_b"] == row.label_b) & (comparisons["task"] == row.task)]
        print(f"{row.task}: {row.label_a} - {row.label_b} = {row.diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}] "
              f"(p={row.p_value:.4g}); {wins['method'].iloc[0]}")


def run_fit(args: list[str]) -> int:
    """Run ``fit`` with LightningCLI-style ``args`` (``--config``, ``--print_config``, overrides); exit code."""
    try:
        ProbeCLI(
            LinearProbe,
            ProbeDataModule,
            args=["fit", *args],
            trainer_defaults=trainer_defaults(),
            save_config_callback=None,  # config.yaml goes to out_dir with the results instead
            seed_everything_default=0,  # explicit: LightningCLI warns "No seed found" on every run without one
            auto_configure_optimizers=False,  # the solvers optimise; there is no torch optimizer
            parser_kwargs=PARSER_KWARGS,
        )
    except SystemExit as exc:  # --help, --print_config and argument errors end the parser this way
        # Lightning ends a SIGTERM'd fit with SystemExit too (its SIGTERMException): say so, exit non-zero
        stop.check("the fit was interrupted and no result file was written", "rerun the same command to fit again")
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except argparse.ArgumentError as exc:  # also when called without `spatial_probing.cli.main`
        return parser_error("fit", exc)
    return 0
