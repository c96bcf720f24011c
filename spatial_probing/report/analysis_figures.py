"""The report's figures of analysis rows (stats.csv of `spatial-probing analyze`): bars per analysis, RSA, depth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spatial_probing.report.figures import ReportFigure, bars, depth_figure, metric_title, text_width
from spatial_probing.report.run_files import RunFiles

#: Analyses that are rows of stats.csv only (SCHEMA.md), each drawn as bars per entry and metric.
STATS_TASKS = {"structure": "Structure tests", "zero_shot": "Zero-shot scoring", "odd_one_out": "Odd one out"}


def stats_task(run: RunFiles, task: str) -> ReportFigure | None:
    """Bars per probe of each metric stats.csv holds for a non-probe analysis (structure, zero-shot ...)."""
    if run.stats is None:
        return None
    # the headline row: a probe's "mean" over targets, an analysis's "all" items
    rows = run.stats[(run.stats["task"] == task) & run.stats["target"].isin(["mean", "all"])]
    if rows.empty:
        rows = run.stats[run.stats["task"] == task].groupby(["label", "metric"], sort=False)[
            ["estimate", "ci_low", "ci_high"]].mean().reset_index()
    if rows.empty:
        return None
    metrics = list(pd.unique(rows["metric"]))
    labels = list(pd.unique(rows["label"]))
    fig = Figure(figsize=(text_width(labels) + 3.8 * len(metrics), 0.42 * len(labels) + 1.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False).ravel(), metrics, strict=True):
        table = rows[rows["metric"] == metric].set_index("label")[["estimate", "ci_low", "ci_high"]]
        bars(ax, table, metric)
        if table["estimate"].between(0, 1).all():  # shares and accuracies on one absolute scale
            ax.set_xlim(0, 1.12)
        ax.set_xlabel(metric_title(metric))
        ax.set_title(metric, fontsize=9)
    return ReportFigure(task, STATS_TASKS.get(task, task), f"stats.csv rows of task {task!r} (mean target).", fig)


def rsa(run: RunFiles) -> ReportFigure | None:
    """Probe x probe matrix of representational similarity (stats.csv targets ``vs:<label>``)."""
    if run.stats is None:
        return None
    rows = run.stats[(run.stats["task"] == "rsa") & run.stats["target"].str.startswith("vs:")]
    if rows.empty:
        return None
    metric = rows["metric"].iloc[0]
    rows = rows[rows["metric"] == metric].assign(other=lambda d: d["target"].str.removeprefix("vs:"))
    labels = list(dict.fromkeys([*rows["label"], *rows["other"]]))
    matrix = pd.DataFrame(np.eye(len(labels)), index=labels, columns=labels)
    for a, b, value in zip(rows["label"], rows["other"], rows["estimate"], strict=True):
        matrix.loc[a, b] = matrix.loc[b, a] = value
    size = text_width(labels) + 0.8 * len(labels) + 1.5
    fig = Figure(figsize=(size, size - 0.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix.to_numpy(), cmap="viridis", vmin=min(0.0, float(matrix.min().min())), vmax=1.0)
    for (i, j), value in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    ax.set_xlabel("probe")
    ax.set_ylabel("probe")
    fig.colorbar(image, ax=ax).set_label(f"RSA: {metric}")
    ax.set_title("Representational similarity between entries")
    return ReportFigure("rsa", "Representational similarity (RSA)", f"stats.csv task 'rsa', metric {metric!r}.", fig)


def stats_layer_curves(run: RunFiles) -> ReportFigure | None:
    """An analysis metric (stats.csv, target ``all``) against layer, one line per encoder@view and metric
    measured at several layers, with its CI band."""
    if run.stats is None:
        return None
    rows = run.stats[run.stats["target"].eq("all")]
    encoder = rows["encoder"].str.replace(r"\[[^\]]*\]$", "", regex=True)  # analysis labels end in [layer]
    named = [e if e.endswith(f"@{v}") else f"{e}@{v}" for e, v in zip(encoder, rows["view"], strict=True)]
    rows = rows.assign(model=pd.Series(named, index=rows.index) + ": " + rows["task"] + " " + rows["metric"])
    curves = [(model, part.set_index("layer")) for model, part in rows.groupby("model", sort=False)
              if part["layer"].nunique() > 1]
    if not curves:
        return None
    fig, ax = depth_figure(curves)
    ax.axhline(0.5, color="0.3", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_ylabel("estimate (95% CI band)")
    ax.set_title("Analysis scores against depth")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7.5, loc="outside lower center", ncols=2)
    return ReportFigure("analysis_layers", "Analysis layer curves",
                        "stats.csv rows (target 'all') of every encoder measured at several layers.", fig)
