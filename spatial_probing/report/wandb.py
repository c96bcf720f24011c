"""Weights & Biases logging that is offline by default and can never lose a run's results.

`SafeWandbLogger` is Lightning's ``WandbLogger`` with two changes: it runs offline unless the user
configures otherwise (no account needed), and any W&B fault — ``wandb.init`` failing, ``log``
raising mid-run, ``finish`` failing — is caught, reported once with the place the results are
written, and turns the logger into a no-op, so the fit and the result files carry on.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import DummyExperiment
from lightning.pytorch.utilities import rank_zero_warn

from spatial_probing.probes.results import comparison_table, summary
from spatial_probing.report.figures import printable_frame
from spatial_probing.report.html import meta_category_table

if TYPE_CHECKING:
    from spatial_probing.report.build import WrittenReport


def _default_mode(offline: bool | None) -> str:
    if offline is None:  # the user's WANDB_MODE wins; without one, never touch the network
        return os.environ.get("WANDB_MODE", "offline")
    return "offline" if offline else "online"


class SafeWandbLogger(WandbLogger):
    """``WandbLogger`` that is offline by default and survives W&B failures.

    Args:
        project: W&B project name.
        name: display name of the run (W&B picks one when None).
        save_dir: where W&B writes its run directory (None: ``$WANDB_DIR``, else the fit's ``out_dir``).
        offline: True/False force offline/online; None uses ``$WANDB_MODE``, defaulting to offline.
        **kwargs: passed to ``WandbLogger`` / ``wandb.init`` (``tags``, ``group``, ``entity`` ...).
    """

    def __init__(
        self,
        project: str = "spatial-probing",
        name: str | None = None,
        save_dir: str | None = None,
        offline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("mode") is None:  # the CLI passes every wandb.init option, unset ones as None
            kwargs["mode"] = _default_mode(offline)
        if kwargs.get("settings") is None:
            import wandb

            # silent: no run-history/summary dump of every metric name (hundreds per fit) at finish and no
            # banner at start; the fit prints where the run is itself (log_results) and any W&B fault (_fail)
            kwargs["settings"] = wandb.Settings(silent=True)
        # read $WANDB_DIR per logger: wandb caches its environment once per process
        save_dir = save_dir or os.environ.get("WANDB_DIR")
        super().__init__(project=project, name=name, save_dir=save_dir, **kwargs)
        self._save_dir_given = save_dir is not None
        # unset options are left to wandb.init's own defaults (and its warnings about them unsaid)
        self._wandb_init = {k: v for k, v in self._wandb_init.items() if v is not None}
        #: Where the run's result files go; named in the fault warning (set by the fit CLI).
        self.results_dir: str | None = None
        #: The first W&B fault ("init: ..."), or None while W&B works.
        self.fault: str | None = None

    def use_results_dir(self, path: str | Path) -> None:
        """Name ``path`` in fault warnings and, unless a save_dir was given, put the W&B run directory
        there (with the run's other outputs, not in the working directory). Call before the run starts."""
        self.results_dir = str(path)
        if not self._save_dir_given and self._experiment is None:
            Path(path).mkdir(parents=True, exist_ok=True)
            self._save_dir = self._wandb_init["dir"] = str(path)

    def _fail(self, what: str, exc: Exception) -> None:
        if self.fault is None:
            where = self.results_dir or "the run's output directory"
            rank_zero_warn(
                f"W&B {what} failed ({type(exc).__name__}: {exc}); continuing without W&B. "
                f"Results are still written to {where}."
            )
            self.fault = f"{what}: {type(exc).__name__}: {exc}"

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        if self.fault is not None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any W&B fault must leave the fit running
            self._fail(what, exc)

    @property
    def experiment(self) -> Any:
        """The W&B run, or a no-op stand-in once W&B has failed."""
        if self.fault is None:
            try:
                return super().experiment
            except Exception as exc:  # noqa: BLE001 - init errors (network, permissions, bad settings)
                self._fail("init", exc)
        return DummyExperiment()

    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        """W&B's ``log_table`` with the names in the table made `printable` (as in the report)."""
        dataframe = None if dataframe is None else printable_frame(dataframe)
        self._guarded(f"table {key}", lambda: super(SafeWandbLogger, self).log_table(key, columns, data, dataframe, step))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        parent = super().log_metrics
        self._guarded("log", lambda: parent(metrics, step))

    def log_hyperparams(self, params: Any) -> None:
        parent = super().log_hyperparams
        self._guarded("config logging", lambda: parent(params))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        parent = super().after_save_checkpoint
        self._guarded("checkpoint logging", lambda: parent(checkpoint_callback))

    def finalize(self, status: str) -> None:
        parent = super().finalize
        self._guarded("finalize", lambda: parent(status))

    def finish(self) -> None:
        """Close the W&B run so an offline run directory holds every logged file."""
        if self._experiment is not None:
            self._guarded("finish", self._experiment.finish)

    def run_dir(self) -> Path | None:
        """The local W&B run directory (``wandb sync`` uploads an offline run from it), or None."""
        files = getattr(self._experiment, "dir", None) if self.fault is None else None
        return Path(files).parent if files else None  # Run.dir is the run's files/ folder


def default_logger() -> dict | bool:
    """The fit CLI's default logger: SafeWandbLogger when wandb is installed, else Lightning's CSVLogger."""
    if importlib.util.find_spec("wandb") is not None:
        return {"class_path": f"{__name__}.SafeWandbLogger"}
    rank_zero_warn("wandb is not installed; logging with CSVLogger instead (pip install wandb for W&B)")
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs/probe"}}


def relation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target: its VSR meta-category (relation tasks) and the fold-mean macro-F1 of every probe."""
    from spatial_probing.data.relations import meta_category

    table = comparison_table(df).drop(index="MEAN")
    relation_task = set(df["task"]) == {"relation_type"}
    categories = [meta_category(t) if relation_task else "" for t in table.index]
    table.insert(0, "meta_category", categories)
    return table.reset_index().rename(columns={"target": "relation" if relation_task else "target"})


def _summary_metrics(df: pd.DataFrame) -> dict[str, float]:
    """``mean/<probe>/<metric>``: the mean over targets and folds of every probe and metric."""
    s = summary(df)
    return {f"mean/{probe}/{metric}": float(value) for probe, metric, value in zip(s["probe"], s["metric"], s["mean"], strict=True)}


def _log_report(logger: SafeWandbLogger, report: WrittenReport) -> None:
    """Every report figure as an image, and a bar chart per probe of its VSR meta-category means."""
    import wandb

    images = {f"figures/{path.stem}": wandb.Image(str(path), caption=figure.title)
              for figure in report.figures for path in report.figure_files
              if path.suffix == ".png" and path.stem == figure.name}  # fmt: skip
    logger.experiment.log(images)
    relations = report.run.results[report.run.results["task"] == "relation_type"]
    if relations.empty:
        return
    meta = meta_category_table(relations.drop(columns="label")).drop(columns="relations").reset_index()
    for probe in meta.columns[1:]:
        table = wandb.Table(dataframe=meta[["meta_category", probe]].rename(columns={probe: "f1_macro"}))
        chart = wandb.plot.bar(table, "meta_category", "f1_macro", title=f"{probe}: macro-F1 per VSR meta-category")
        logger.experiment.log({f"meta_categories/{probe}": chart})


def log_results(
    loggers: Iterable[Logger], df: pd.DataFrame, config: Mapping[str, Any], report: WrittenReport | None = None
) -> list[str]:
    """Log the per-relation and summary tables, summary metrics, the report's figures (images) and
    meta-category bar charts, and the resolved config to every W&B logger.

    Then finish the runs. Returns one line per W&B logger for the user: where its run is, or what
    failed and where the results are instead.
    """
    notes = []
    for logger in loggers:
        if not isinstance(logger, SafeWandbLogger):
            continue
        logger.log_table("relations", dataframe=relation_table(df))
        logger.log_table("summary", dataframe=summary(df))
        logger._guarded("summary", lambda lg=logger: lg.experiment.summary.update(_summary_metrics(df)))
        if report is not None:
            logger._guarded("figures", lambda lg=logger: _log_report(lg, report))
        logger.log_hyperparams(dict(config))
        run_dir = logger.run_dir()
        logger.finish()
        if logger.fault is not None:
            notes.append(f"W&B logging failed ({logger.fault}); every result is in {logger.results_dir}")
        elif run_dir is not None:
            notes.append(f"W&B run: {run_dir} (offline runs upload with `wandb sync {run_dir}`)")
    return notes
