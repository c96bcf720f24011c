"""The tidy results table and the tables derived from it (comparison in the first study's layout, summary).

Every number a fit produces is one row of ``RESULT_COLUMNS``; everything else (CSV, Parquet, the
comparison table, W&B tables, the HTML report) is a view of that one table.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_probing.io import atomic_path

#: What identifies the cache entry (and the task) a result row came from.
IDENTITY_COLUMNS = ("dataset", "entry", "storage_dtype", "precision", "encoder", "view", "layer", "task")
RESULT_COLUMNS = (
    *IDENTITY_COLUMNS, "target", "fold", "C", "metric", "value", "solver", "n_train", "n_test",
)  # fmt: skip
#: Identify one probe set (one entry fitted with one solver); C joins when a grid is unselected.
PROBE_KEYS = [*IDENTITY_COLUMNS, "solver"]
_SORT_KEYS = [*PROBE_KEYS, "target", "fold", "C", "metric"]
#: The first study's number: mean of the F1 of class 0 and class 1.
HEADLINE_METRIC = "f1_macro"
# a local model directory inside an encoder name, up to its last component
_LOCAL_PATH = re.compile(r"(?<![\w.-])[~/][^@\s]*/")


def results_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One results table from parts, with exactly ``RESULT_COLUMNS`` in order and stable dtypes."""
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RESULT_COLUMNS))
    return df[list(RESULT_COLUMNS)].astype({"fold": "int64", "C": "float64", "value": "float64", "n_train": "int64", "n_test": "int64"})


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in one canonical order, so files written from the same numbers are byte-identical."""
    return df.sort_values(_SORT_KEYS, kind="mergesort").reset_index(drop=True)


def short_encoder(encoder: str) -> str:
    """An encoder name with local directories cut to their last component (``sbert:all-mpnet-base-v2@text``)."""
    return _LOCAL_PATH.sub("", encoder)


def entry_labels(df: pd.DataFrame) -> pd.Series:
    """A readable name per row for the cache entry it came from, distinct per (dataset, entry).

    The (shortened) encoder name, plus view and layer when they vary within one encoder, the storage
    dtype when it varies, and the first characters of the entry key when two entries still share a label.
    """
    short = df["encoder"].map(short_encoder)
    # shortening must not merge two encoders that differ only in their directory
    label = short if short.nunique() == df["encoder"].nunique() else df["encoder"].astype(str)
    for column in ("view", "layer", "storage_dtype"):
        if df.groupby(label)[column].transform("nunique").gt(1).any():
            label = label + f" {column}=" + df[column].astype(str)
    entry = df["dataset"].astype(str) + "/" + df["entry"].astype(str)
    if df.assign(_entry=entry).groupby(label)["_entry"].transform("nunique").gt(1).any():
        label = label + " #" + df["entry"].astype(str).str[:6]
    return label


def probe_labels(df: pd.DataFrame) -> pd.Series:
    """A column name per row for cross-encoder tables: the entry's label (`entry_labels`), plus what varies.

    C and solver join the label only when they vary within one entry. C counts as varying only when a
    probe set has several C for the same target and fold (an unselected grid); with inner-CV selection
    the chosen C differs between folds but is one probe.
    """
    label = entry_labels(df)
    if df["task"].nunique() > 1:  # a task and its control side by side stay apart
        label = label + " [" + df["task"].astype(str) + "]"
    n_c = df.groupby([*PROBE_KEYS, "target", "fold", "metric"])["C"].transform("nunique")
    label = label.where(n_c <= 1, label + " C=" + df["C"].map("{:g}".format))
    if df.groupby(label)["solver"].transform("nunique").gt(1).any():
        label = label + " (" + df["solver"].astype(str) + ")"
    return label


def _labels(df: pd.DataFrame) -> pd.Series:
    """The probe label of each row: a report's own ``label`` column (several runs side by side), else
    `probe_labels`."""
    return df["label"] if "label" in df else probe_labels(df)


def comparison_table(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Target x probe table of the fold-mean ``metric`` with a final MEAN row (the first study's layout).

    Targets keep the order they first appear in ``df`` (the task's order: most frequent relation first).
    """
    rows = df[df["metric"] == metric]
    rows = rows.assign(probe=_labels(rows))
    table = rows.pivot_table(index="target", columns="probe", values="value", aggfunc="mean", sort=False)
    table = table.reindex(index=pd.unique(rows["target"]), columns=pd.unique(rows["probe"]))
    table.loc["MEAN"] = table.mean(axis=0)
    table.index.name = "target"
    table.columns.name = None
    return table


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per probe set and metric: mean over targets and folds, and the std over folds of the target mean.

    The std is over folds (population std, ddof=0) of each fold's mean over targets, the spread the
    first study reported as "0.7097 +- 0.001".
    """
    labelled = df.assign(probe=_labels(df))
    per_fold = labelled.groupby(["probe", *PROBE_KEYS, "metric", "fold"], sort=False)["value"].mean()
    grouped = per_fold.groupby(level=["probe", *PROBE_KEYS, "metric"], sort=False)
    out = pd.DataFrame({"mean": grouped.mean(), "std": grouped.agg(lambda v: float(np.std(v, ddof=0)))})
    out["n_folds"] = grouped.size()
    n_targets = labelled.groupby(["probe", *PROBE_KEYS, "metric"], sort=False)["target"].nunique()
    out["n_targets"] = n_targets
    return out.reset_index()


def format_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A fixed-width text rendering for terminals and logs."""
    return table.to_string(float_format=lambda v: f"{v:.{digits}f}", na_rep="-")


def _write_csv(df: pd.DataFrame, path: Path, float_format: str, index: bool = False) -> None:
    # lineterminator fixed so the bytes do not depend on the platform
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index, float_format=float_format, lineterminator="\n")


def write_results(df: pd.DataFrame, out_dir: str | Path, fits: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write results.csv (+ results.parquet when pyarrow is importable), comparison.csv, summary.csv.

    ``fits`` (one row per probe set: provenance, excluded rows, solver, convergence) goes to fits.csv.

    Rows are sorted and numbers formatted with a fixed precision (values to 6 decimals, C as ``%g``)
    so two runs that computed the same numbers produce byte-identical CSVs. Every file is written
    atomically (`spatial_probing.io.atomic_path`): a full disk leaves the previous file, never half a file.
    Returns the written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = sort_results(df)
    written = {"results": out / "results.csv"}
    csv_ready = ordered.assign(C=ordered["C"].map("{:g}".format))
    _write_csv(csv_ready, written["results"], "%.6f")
    if importlib.util.find_spec("pyarrow") is not None:
        written["parquet"] = out / "results.parquet"
        with atomic_path(written["parquet"]) as tmp:
            ordered.to_parquet(tmp, index=False)
    written["comparison"] = out / "comparison.csv"
    _write_csv(comparison_table(df), written["comparison"], "%.6f", index=True)
    written["summary"] = out / "summary.csv"
    _write_csv(summary(df), written["summary"], "%.6f")
    if fits is not None:
        written["fits"] = out / "fits.csv"
        _write_csv(fits, written["fits"], "%.6g")
    return written


#: Column order of stats.csv and comparisons.csv (see docs/credibility.md).
STATS_SORT = ["dataset", "encoder", "view", "layer", "entry", "task", "metric", "target"]
COMPARISON_SORT = ["task", "label_a", "label_b", "metric"]


def write_credibility(stats: pd.DataFrame, comparisons: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write stats.csv and comparisons.csv (fixed precision, stable order: identical numbers, identical bytes)."""
    out = Path(out_dir)
    written = {"stats": out / "stats.csv", "comparisons": out / "comparisons.csv"}
    with atomic_path(written["stats"]) as tmp:
        _write_csv(stats.sort_values(STATS_SORT, kind="mergesort"), tmp, "%.6f")
    with atomic_path(written["comparisons"]) as tmp:
        _write_csv(comparisons.sort_values(COMPARISON_SORT, kind="stable"), tmp, "%.6g")
    return written


#: The columns of the credibility table: (metric in stats.csv, task suffix, column heading).
CREDIBILITY_METRICS = (
    ("f1_macro", "", "f1_macro"),
    ("f1_macro", "/control", "control"),
    ("selectivity_f1_macro", "", "selectivity"),
    ("mdl_compression", "", "mdl"),
)


def credibility_table(stats: pd.DataFrame, task: str | None = None, ci: bool = True) -> pd.DataFrame:
    """Target x (probe, measure) table of one task from stats.csv: ``estimate [ci_low, ci_high]`` per cell.

    Measures: macro-F1, the control task's macro-F1, selectivity and MDL compression, where present;
    targets in stats order with ``mean`` and the ``meta:`` aggregates last.
    """
    if stats.empty:
        return pd.DataFrame()
    task = task or str(stats["task"].iloc[0]).removesuffix("/control")
    labels = entry_labels(stats.assign(storage_dtype="", precision=""))
    stats = stats.assign(probe=labels)
    columns = {}
    for metric, suffix, heading in CREDIBILITY_METRICS:
        part = stats[(stats["metric"] == metric) & (stats["task"] == task + suffix)]
        for probe, rows in part.groupby("probe", sort=False):
            cell = rows.set_index("target")
            text = cell["estimate"].map("{:.3f}".format)
            if ci and cell["ci_low"].notna().any():
                text = text + " [" + cell["ci_low"].map("{:.3f}".format) + ", " + cell["ci_high"].map("{:.3f}".format) + "]"
            columns[f"{probe} {heading}"] = text
    table = pd.DataFrame(columns)
    targets = list(pd.unique(stats.loc[~stats["target"].str.contains(":") & (stats["target"] != "mean"), "target"]))
    aggregates = ["mean"] + sorted(t for t in table.index if str(t).startswith("meta:"))
    return table.reindex([t for t in targets + aggregates if t in table.index])
