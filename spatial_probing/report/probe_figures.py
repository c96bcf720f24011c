"""The report's figures of probe results (results.csv, with stats.csv's CIs where the run has them).

Relation heatmap, scatter against the reference probe, score distribution, gains over the reference,
VSR meta-categories, baselines and controls, the other probe tasks, and layer curves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from spatial_probing.data.relations import META_CATEGORIES, meta_category
from spatial_probing.errors import SpatialProbingError
from spatial_probing.probes.results import HEADLINE_METRIC
from spatial_probing.report.figures import (
    CHANCE,
    ReportFigure,
    bars,
    chance_line,
    colour,
    depth_figure,
    kind,
    metric_title,
    text_width,
)
from spatial_probing.report.run_files import RunFiles

RELATION_TASK = "relation_type"


def relation_table(run: RunFiles, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Relation x probe: fold-mean ``metric`` of the relation-type probes (probes in the fit's order)."""
    rows = run.results[(run.results["task"] == RELATION_TASK) & (run.results["metric"] == metric)]
    table = rows.pivot_table(index="target", columns="label", values="value", aggfunc="mean", sort=False)
    return table.reindex(index=pd.unique(rows["target"]), columns=pd.unique(rows["label"]))


def reference_label(labels: list[str], reference: str | None = None) -> str | None:
    """The probe others are compared with: the label equal to (or starting with) ``reference``, else the
    first SBERT probe that is neither a baseline nor a random-init control, else the first such probe."""
    if not labels:
        return None
    if reference:
        match = [lab for lab in labels if lab == reference] or [lab for lab in labels if lab.startswith(reference)]
        if not match:
            raise SpatialProbingError(f"--reference {reference!r} matches none of the probes {labels}")
        return match[0]
    encoders = [lab for lab in labels if kind(lab) == "encoder"]
    return ([lab for lab in encoders if lab.startswith("sbert:")] or encoders or labels)[0]


def heatmap(run: RunFiles, metric: str = HEADLINE_METRIC, reference: str | None = None) -> ReportFigure | None:
    """Relations x probes, annotated, on an absolute 0-1 colour scale centred (white) on chance."""
    table = relation_table(run, metric)
    if table.empty:
        return None
    ref = reference_label(list(table.columns), reference)
    table = table.sort_values(ref, ascending=False, kind="mergesort")
    n_rows, n_cols = table.shape
    width = text_width(table.index) + 0.95 * n_cols + 1.6
    height = 0.27 * n_rows + 0.35 + 0.06 * max(len(c) for c in table.columns)
    fig = Figure(figsize=(max(width, 5.0), max(height, 3.0)), layout="constrained")
    ax = fig.add_subplot()
    chance = CHANCE.get(metric)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=chance, vmax=1.0) if chance else Normalize(0.0, 1.0)
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="RdBu", norm=norm, aspect="auto", interpolation="nearest")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):  # dark cells (far from chance) get white text
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7.5,
                    color="white" if abs(norm(value) - 0.5) > 0.3 else "black")  # fmt: skip
    ax.set_xticks(range(n_cols), labels=table.columns, rotation=30, ha="right", rotation_mode="anchor", fontsize=8.5)
    ax.set_yticks(range(n_rows), labels=table.index, fontsize=8.5)
    ax.set_xlabel("probe (encoder@view)")
    ax.set_ylabel(f"relation (sorted by {ref})")
    bar = fig.colorbar(image, ax=ax, shrink=0.6 if n_rows > 12 else 1.0, pad=0.02)
    bar.set_label(f"{metric_title(metric)} (mean over folds)")
    if chance is not None:
        bar.ax.axhline(chance, color="black", linewidth=2)
        bar.set_ticks([0.0, 0.25, chance, 0.75, 1.0], labels=["0", "0.25", f"chance {chance:g}", "0.75", "1"])
    ax.set_title(f"Per-relation {metric_title(metric)} of each probe")
    return ReportFigure(
        "heatmap", f"Relations x probes: {metric_title(metric)}",
        f"Fold-mean {metric_title(metric)} of the one-vs-rest relation probe, {n_rows} relations x {n_cols} probes; "
        f"colour on the absolute 0-1 scale, white at chance.", fig, n_rows=n_rows,
    )  # fmt: skip


def reference_scatter(run: RunFiles, metric: str = HEADLINE_METRIC, reference: str | None = None) -> ReportFigure | None:
    """Each probe's per-relation score against the reference probe's, with the y = x line."""
    table = relation_table(run, metric)
    ref = reference_label(list(table.columns), reference)
    others = [c for c in table.columns if c != ref]
    if not others:
        return None
    ncols = min(3, len(others))
    nrows = -(-len(others) // ncols)
    fig = Figure(figsize=(3.9 * ncols, 3.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = table[ref].to_numpy(dtype=float)
    for ax, label in zip(axes, others, strict=False):
        y = table[label].to_numpy(dtype=float)
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="y = x")
        ax.scatter(x, y, s=18, color=colour(label), alpha=0.8, edgecolor="white", linewidth=0.4)
        gap = np.abs(y - x)
        for k, i in enumerate(np.argsort(np.nan_to_num(-gap))[:3]):  # name the relations furthest from y = x
            ax.annotate(table.index[i], (x[i], y[i]), fontsize=7, xytext=(-8, 12 + 11 * k), textcoords="offset points",
                        ha="right", arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5})  # fmt: skip
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), aspect="equal")
        ax.set_xlabel(f"{ref}\n{metric_title(metric)}", fontsize=8)
        ax.set_ylabel(f"{metric_title(metric)}", fontsize=8)
        ax.set_title(label, fontsize=8.5)
        above = int(np.sum(y > x))
        ax.text(0.03, 0.97, f"above y = x: {above}/{len(y)}", transform=ax.transAxes, va="top", fontsize=7.5)
    for ax in axes[len(others):]:
        ax.set_visible(False)
    fig.suptitle(f"Per-relation {metric_title(metric)}: each probe against {ref}", fontsize=10)
    return ReportFigure(
        "scatter", f"Each probe against {ref}",
        f"One point per relation; above the dashed y = x line the probe beats {ref} on that relation.", fig,
    )


def distribution(run: RunFiles, metric: str = HEADLINE_METRIC) -> ReportFigure | None:
    """Box plot (with the points) of the per-relation score of every probe."""
    table = relation_table(run, metric)
    if table.empty:
        return None
    labels = list(table.columns)
    fig = Figure(figsize=(text_width(labels) + 5.5, 0.45 * len(labels) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    data = [table[c].dropna().to_numpy() for c in labels]
    positions = np.arange(len(labels))[::-1]
    ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.6, showfliers=False,
               medianprops={"color": "black"})  # fmt: skip
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=max((len(d) for d in data), default=0))
    for pos, values, label in zip(positions, data, labels, strict=True):
        ax.scatter(values, pos + jitter[: len(values)], s=10, color=colour(label), alpha=0.7, zorder=3)
        ax.plot(values.mean(), pos, marker="D", color="black", markersize=5, zorder=4)
    ax.set_yticks(positions, labels=labels, fontsize=8.5)
    chance_line(ax, metric)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"per-relation {metric_title(metric)} (diamond: mean over relations)")
    ax.set_ylabel("probe")
    ax.set_title(f"Distribution of per-relation {metric_title(metric)}")
    ax.legend(loc="lower left", fontsize=8)
    return ReportFigure("distribution", f"Distribution of per-relation {metric_title(metric)}",
                        f"{table.shape[0]} relations per probe.", fig)


def _gains(comparisons: pd.DataFrame, ref: str, metric: str) -> pd.DataFrame:
    """Rows comparing a probe with ``ref``, turned to (other - ref) whichever side ref was on."""
    rows = comparisons[(comparisons["metric"] == metric) & (comparisons["target"] != "wins")]
    rows = rows[(rows["label_a"] == ref) ^ (rows["label_b"] == ref)]
    flip = rows["label_a"] == ref
    return pd.DataFrame({
        "other": rows["label_b"].where(flip, rows["label_a"]),
        "target": rows["target"],
        "gain": rows["diff"].where(~flip, -rows["diff"]),
        "low": rows["ci_low"].where(~flip, -rows["ci_high"]),
        "high": rows["ci_high"].where(~flip, -rows["ci_low"]),
        "significant": rows["significant"].astype(str).str.lower().isin(["true", "1"]),
    })  # fmt: skip


def gains(run: RunFiles, metric: str = HEADLINE_METRIC, reference: str | None = None) -> ReportFigure | None:
    """Per-target gain of each probe over the reference, with CIs and significance (from comparisons.csv)."""
    if run.comparisons is None or run.comparisons.empty:
        return None
    labels = sorted(set(run.comparisons["label_a"]) | set(run.comparisons["label_b"]))
    ref = reference_label(pd.unique(run.results["label"]).tolist(), reference) if labels else None
    table = _gains(run.comparisons, ref, metric) if ref else pd.DataFrame()
    if table.empty:
        return None
    others = list(pd.unique(table["other"]))
    n_targets = table.groupby("other").size().max()
    fig = Figure(figsize=(text_width(table["target"]) + 3.4 * len(others), 0.24 * n_targets + 1.6),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, len(others), squeeze=False, sharey=False).ravel()
    for ax, other in zip(axes, others, strict=True):
        part = table[table["other"] == other].sort_values("gain", kind="mergesort")
        pos = np.arange(len(part))
        colours = ["#c0392b" if sig else "0.55" for sig in part["significant"]]
        ax.hlines(pos, part["low"], part["high"], colors=colours, linewidth=1.2)  # the confidence intervals
        ax.scatter(part["gain"], pos, c=colours, s=16, zorder=3)
        for p, (gain, high, sig) in enumerate(zip(part["gain"], part["high"], part["significant"], strict=True)):
            if sig:
                ax.text(max(gain, high), p, " *", va="center", fontsize=9, color="#c0392b")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(pos, labels=part["target"], fontsize=7.5)
        ax.set_xlabel(f"{metric_title(metric)} gain over {ref}", fontsize=8)
        n_sig = int(part["significant"].sum())
        ax.set_title(f"{other}\n{n_sig} of {len(part)} significant (*)", fontsize=8.5)
    fig.suptitle(f"Gain over {ref} with confidence intervals", fontsize=10)
    return ReportFigure("gains", f"Gains over {ref}",
                        "Difference in the probe metric (other minus reference) per target, with the paired "
                        "test's confidence interval; red and * where significant after Holm correction.", fig)


def _meta_scores(run: RunFiles, metric: str) -> pd.DataFrame:
    """(category, label) -> estimate, ci_low, ci_high: stats.csv's meta rows, else relation means without CI."""
    stats = run.stats
    if stats is not None:
        rows = stats[(stats["task"] == RELATION_TASK) & (stats["metric"] == metric) & stats["target"].str.startswith("meta:")]
        if not rows.empty:
            return rows.assign(category=rows["target"].str.removeprefix("meta:"))[
                ["category", "label", "estimate", "ci_low", "ci_high"]]
    table = relation_table(run, metric)
    long = table.assign(category=[meta_category(r) for r in table.index]).melt("category", var_name="label")
    means = long.groupby(["category", "label"], sort=False)["value"].mean().rename("estimate").reset_index()
    return means.assign(ci_low=np.nan, ci_high=np.nan)


def meta_categories(run: RunFiles, metric: str = HEADLINE_METRIC) -> ReportFigure | None:
    """Grouped bars: each VSR meta-category's mean score per probe, with CIs when stats.csv has them."""
    scores = _meta_scores(run, metric)
    if scores.empty:
        return None
    categories = [c for c in META_CATEGORIES if c in set(scores["category"])]
    labels = list(pd.unique(scores["label"]))
    # the legend sits right of the axes, one probe a line: its width grows with the longest label
    fig = Figure(figsize=(1.3 * len(categories) + 2.5 + text_width(labels), 4.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(labels)
    colours = [f"C{i % 10}" for i in range(len(labels))]
    for i, label in enumerate(labels):
        part = scores[scores["label"] == label].set_index("category").reindex(categories)
        x = np.arange(len(categories)) + (i - (len(labels) - 1) / 2) * width
        err = np.vstack([part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]])
        ax.bar(x, part["estimate"], width, label=label, color=colours[i],
               yerr=None if np.isnan(err).all() else err, capsize=2)  # fmt: skip
    chance_line(ax, metric, axis="y")
    ax.set_xticks(np.arange(len(categories)), labels=categories, rotation=20, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("VSR meta-category")
    ax.set_ylabel(f"mean {metric_title(metric)} over its relations")
    ax.set_title(f"{metric_title(metric)} per VSR meta-category")
    # a figure legend "outside": constrained layout reserves its room (an axes legend anchored below the
    # axes collapsed them to zero height in the SVG rendering of long probe labels)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7.5, loc="outside right upper")
    with_ci = not scores["ci_low"].isna().all()
    return ReportFigure("meta_categories", "VSR meta-categories",
                        "Bars are the mean over a category's relations" + (" with bootstrap CIs (stats.csv)." if with_ci
                        else "; no stats.csv in this run, so no CIs."), fig)  # fmt: skip


def _means(run: RunFiles, task: str, metric: str) -> pd.DataFrame:
    """label -> estimate, ci_low, ci_high of the mean over targets: stats.csv's ``mean`` row, else the
    results' fold means (no CI)."""
    stats = run.stats
    if stats is not None:
        rows = stats[(stats["task"] == task) & (stats["metric"] == metric) & (stats["target"] == "mean")]
        if not rows.empty:
            return rows.set_index("label")[["estimate", "ci_low", "ci_high"]]
    rows = run.results[(run.results["task"] == task) & (run.results["metric"] == metric)]
    means = rows.groupby("label", sort=False)["value"].mean().rename("estimate").to_frame()
    return means.assign(ci_low=np.nan, ci_high=np.nan)


def _grouped(labels: list[str]) -> list[str]:
    """Encoders in fit order, each followed by its random-init control; baselines last."""
    controls = [lab for lab in labels if kind(lab) == "control"]
    ordered = []
    for lab in (lab for lab in labels if kind(lab) == "encoder"):
        ordered.append(lab)
        ordered += [c for c in controls if c.replace("+random-init", "") == lab and c not in ordered]
    return ordered + [c for c in controls if c not in ordered] + [lab for lab in labels if kind(lab) == "baseline"]


def baselines_and_controls(run: RunFiles, metric: str = HEADLINE_METRIC) -> ReportFigure | None:
    """Mean score of each probe next to its random-init control and the text baselines; selectivity
    (probe minus control task) beside it when stats.csv has it."""
    means = _means(run, RELATION_TASK, metric)
    labels = list(means.index)
    if means.empty or (not any(kind(lab) != "encoder" for lab in labels) and run.stats is None):
        return None
    means = means.reindex(_grouped(labels))
    selectivity = None
    if run.stats is not None:
        rows = run.stats[(run.stats["task"] == RELATION_TASK) & (run.stats["metric"] == f"selectivity_{metric}")
                         & (run.stats["target"] == "mean")]  # fmt: skip
        selectivity = rows.set_index("label")[["estimate", "ci_low", "ci_high"]] if not rows.empty else None
    panels = 1 if selectivity is None else 2
    fig = Figure(figsize=(text_width(labels) + 4.2 * panels, 0.42 * len(labels) + 1.5), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False).ravel()
    bars(axes[0], means, metric)
    axes[0].set_xlim(0, 1.12)
    axes[0].set_xlabel(f"mean {metric_title(metric)} over relations")
    axes[0].set_title("probes, random-init controls (orange), baselines (grey)", fontsize=9)
    axes[0].legend(loc="lower right", fontsize=8)
    if selectivity is not None:
        bars(axes[1], selectivity.reindex([lab for lab in means.index if lab in selectivity.index]), None)
        axes[1].axvline(0, color="black", linewidth=0.8)
        axes[1].set_xlabel(f"selectivity: {metric_title(metric)} minus control task's")
        axes[1].set_title("selectivity (Hewitt & Liang control tasks)", fontsize=9)
    return ReportFigure("baselines_controls", "Baselines and controls beside each encoder",
                        "Mean over relations per probe; a probe is only informative where it beats the "
                        "baselines and its random-init control.", fig)


def other_tasks(run: RunFiles, metric: str = HEADLINE_METRIC) -> ReportFigure | None:
    """Mean score per probe of every probe task besides relation type (e.g. caption truth)."""
    tasks = [t for t in pd.unique(run.results["task"]) if t != RELATION_TASK and not t.endswith("/control")]
    if not tasks:
        return None
    tables = [_means(run, task, metric) for task in tasks]
    n = max(len(t) for t in tables)
    fig = Figure(figsize=(text_width(tables[0].index) + 4.0 * len(tasks), 0.42 * n + 1.5), layout="constrained")
    for ax, task, table in zip(fig.subplots(1, len(tasks), squeeze=False).ravel(), tasks, tables, strict=True):
        bars(ax, table, metric)
        ax.set_xlim(0, 1.12)
        ax.set_xlabel(f"mean {metric_title(metric)}")
        ax.set_title(task, fontsize=9)
    return ReportFigure("tasks", "Other probe tasks", "Mean over targets (and folds) per probe.", fig)


def layer_curves(run: RunFiles, metric: str = HEADLINE_METRIC) -> ReportFigure | None:
    """Mean relation score against layer, one line per encoder@view that was probed at several layers."""
    rows = run.results[(run.results["task"] == RELATION_TASK) & (run.results["metric"] == metric)]
    series = rows.assign(model=rows["encoder"] + " " + rows["view"]).groupby(["model", "layer"])["value"].mean()
    models = [m for m in series.index.unique("model") if len(series[m]) > 1]
    if not models:
        return None
    fig, ax = depth_figure([(model, series[model].rename("estimate").to_frame()) for model in models])
    chance_line(ax, metric, axis="y")
    ax.set_ylabel(f"mean {metric_title(metric)} over relations")
    ax.set_title("Layer curves")
    ax.legend(fontsize=7.5)
    return ReportFigure("layers", "Layer curves", "Mean over relations and folds per probed layer.", fig)
