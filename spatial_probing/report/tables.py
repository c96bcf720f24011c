"""A run's tables as files and text: results.csv and its views on disk, stats.csv's tables.

The tidy results table itself (columns, labels, comparison, summary) is `probes.results`; here it is
written (CSV, Parquet; byte-stable), stats.csv and comparisons.csv are written, and read back as the
credibility table and the headline rows the console and the HTML report show.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from spatial_probing.io import atomic_path
from spatial_probing.probes.results import comparison_table, entry_labels, sort_results, summary


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


def headline(stats: pd.DataFrame) -> pd.DataFrame:
    """The rows an analysis reports first (target ``all``, and every RSA pair), with ``cell`` =
    ``estimate [ci_low, ci_high]`` (no brackets without a CI) and ``what`` = task, metric and, for RSA,
    the other entry: what the console summary and the HTML report show."""
    rows = stats[stats["target"].eq("all") | stats["task"].eq("rsa")]
    ci = [f" [{lo:.4f}, {hi:.4f}]" if pd.notna(lo) else "" for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)]
    rsa_target = rows["target"].where(rows["task"].eq("rsa"), "")
    return rows.assign(cell=rows["estimate"].map("{:.4f}".format) + ci,
                       what=(rows["task"] + " " + rows["metric"] + " " + rsa_target).str.strip())
