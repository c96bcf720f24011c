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

from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from spatial_probing.probes.module import LinearProbe, ProbeDataModule
from spatial_probing.report.html import write_report
from spatial_probing.report.tables import (
    comparison_table,
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


class ProbeCLI(LightningCLI):
    """LightningCLI for probing: adds ``out_dir`` and writes the result files after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--out_dir", type=str, default="outputs/probe",
            help="Directory for results.csv, comparison.csv, summary.csv, fits.csv, report.html, config.yaml.",
        )  # fmt: skip

    @property
    def out_dir(self) -> Path:
        return Path(self.config[self.subcommand].out_dir)

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, SafeWandbLogger):
                logger.results_dir = str(self.out_dir)

    def after_fit(self) -> None:
        """Write every result file first, then log to W&B, then print the comparison table."""
        if not self.trainer.is_global_zero:
            return
        df = self.model.results()
        if df.empty:
            print("no probe was evaluated (limit_val_batches=0?): nothing to write")
            return
        fits = pd.DataFrame(self.model.fit_info)
        written = write_results(df, self.out_dir, fits)
        credibility = self.model.credibility()
        if credibility is not None:
            written |= write_credibility(*credibility, self.out_dir)
        config_path = self.out_dir / "config.yaml"
        parser = self._parser(self.subcommand)
        config_path.write_text(parser.dump(self.config[self.subcommand], skip_none=False))
        written["config"] = config_path
        resolved = self.config[self.subcommand].clone().as_dict()
        resolved.pop("config", None)  # the paths of the --config files, not settings
        written["report"] = write_report(df, fits, self.out_dir, _flatten(resolved))
        if credibility is not None:  # before log_results, which finishes the runs
            for logger in self.trainer.loggers:
                if isinstance(logger, SafeWandbLogger):
                    logger.log_table("stats", dataframe=credibility[0])
                    logger.log_table("comparisons", dataframe=credibility[1])
        notes = log_results(self.trainer.loggers, df, resolved)
        print(format_table(comparison_table(df)))
        if credibility is not None:
            _print_credibility(*credibility)
        print("\nwrote " + ", ".join(str(p) for p in written.values()))
        print("\n".join(notes))


def _print_credibility(stats: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    """The mean and meta-category rows of the credibility table, and each paired test's verdict."""
    table = credibility_table(stats)
    print("\n" + format_table(table.loc[[t for t in table.index if t == "mean" or t.startswith("meta:")]]))
    for row in comparisons[comparisons["target"] == "mean"].itertuples():
        wins = comparisons[(comparisons["target"] == "wins") & (comparisons["label_a"] == row.label_a)
                           & (comparisons["label_b"] == row.label_b) & (comparisons["task"] == row.task)]
        print(f"{row.task}: {row.label_a} - {row.label_b} = {row.diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}] "
              f"(p={row.p_value:.4g}); {wins['method'].iloc[0]}")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"Cs": [1]}}`` -> ``{"model.Cs": [1]}`` for listing in the report."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and "class_path" not in value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_fit(args: list[str]) -> int:
    """Run ``fit`` with LightningCLI-style ``args`` (``--config``, ``--print_config``, overrides); exit code."""
    try:
        ProbeCLI(
            LinearProbe,
            ProbeDataModule,
            args=["fit", *args],
            trainer_defaults=trainer_defaults(),
            save_config_callback=None,  # config.yaml goes to out_dir with the results instead
            auto_configure_optimizers=False,  # the solvers optimise; there is no torch optimizer
        )
    except SystemExit as exc:  # --help, --print_config and argument errors end the parser this way
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0
