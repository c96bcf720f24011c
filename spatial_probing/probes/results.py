"""The tidy results table a fit produces, and the views of it every consumer shares.

Every number a fit produces is one row of ``RESULT_COLUMNS``; everything else (CSV, Parquet, the
comparison table, W&B tables, the HTML report) is a view of that one table: readable labels per entry
and probe set, the comparison table in the first study's layout, and the per-probe summary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spatial_probing.encoders.spec import short_encoder

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


def results_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One results table from parts, with exactly ``RESULT_COLUMNS`` in order and stable dtypes."""
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RESULT_COLUMNS))
    return df[list(RESULT_COLUMNS)].astype({"fold": "int64", "C": "float64", "value": "float64", "n_train": "int64", "n_test": "int64"})


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in one canonical order, so files written from the same numbers are byte-identical."""
    return df.sort_values(_SORT_KEYS, kind="mergesort").reset_index(drop=True)


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
