"""What every figure of the report shares: `ReportFigure` (name, title, caption, PNG/SVG bytes) and the drawing kit.

Figures are drawn from a results directory (`RunFiles`) with matplotlib's object API: the figures of
probe results are `report.probe_figures`, those of analysis rows (stats.csv) `report.analysis_figures`,
and `report.build.report_figures` puts them in report order. Each figure function returns None when the
run holds nothing for it (no stats.csv, a single encoder ...), so one list serves the HTML report, the
PNG/SVG files and the W&B dashboard. Figures are built with ``matplotlib.figure.Figure`` directly: no
pyplot state, no GUI backend, nothing global to reset. Here: chance levels, metric titles, colours by
probe kind, label widths, the bars and the depth curves several figures draw.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

#: Score of a guess that ignores the input, per metric (a prior-matching coin: both classes' F1 average 0.5).
CHANCE = {"f1_macro": 0.5, "balanced_accuracy": 0.5, "roc_auc": 0.5,
          # structure tests: a coin flip between two captions (the bag of words ties at exactly 0.5 on converse)
          "converse_score": 0.5, "swap_score": 0.5, "pair_probe_accuracy": 0.5}
METRIC_TITLES = {"f1_macro": "macro-F1", "f1_pos": "F1 (positive class)", "accuracy": "accuracy",
                 "balanced_accuracy": "balanced accuracy"}  # fmt: skip
_ENCODER, _BASELINE, _CONTROL = "#3b6fb6", "#9a9a9a", "#e08a2c"
# C0 and C1 control characters but tab and newline (config.yaml and captions keep their lines)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class ReportFigure:
    """One figure of the report: file stem, heading, a caption saying what is plotted, and the figure."""

    name: str
    title: str
    caption: str
    figure: Figure
    #: Rows of data the figure plots (relations in a heatmap), stated in the HTML for readers and tests.
    n_rows: int | None = None
    # the saved bytes per format and options: the report embeds the PNG it also writes to figures/, drawn once
    _saved: dict[tuple, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    # the area every format saves (inches), from the one layout pass all of them share (`_area`)
    _box: Bbox | None = field(default=None, init=False, repr=False, compare=False)

    def png(self, dpi: int = 110) -> bytes:
        return self._save("png", dpi=dpi)

    def svg(self) -> bytes:
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # labels stay text: searchable, selectable
            return self._save("svg")

    def _save(self, fmt: str, **kwargs) -> bytes:
        key = (fmt, *sorted(kwargs.items()))
        if key not in self._saved:
            buffer = io.BytesIO()
            # svg text stays text (searchable, smaller); metadata off so the bytes do not carry a date
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            with literal_text():  # tick labels are made while saving
                self.figure.savefig(buffer, format=fmt, bbox_inches=self._area(), metadata=metadata, **kwargs)
            self._saved[key] = buffer.getvalue()
        return self._saved[key]

    def _area(self) -> Bbox:
        """The figure's tight bounding box, padded as ``bbox_inches="tight"`` pads it, from one layout pass.

        savefig with "tight" and a layout engine lays the figure out and draws it twice per format; here
        the layout runs once, is then fixed (no engine), and each format draws once (the credibility report: 2.9-3.3 -> 2.2 s).
        """
        if self._box is None:
            with literal_text():
                self.figure.draw_without_rendering()  # runs the layout engine (constrained layout)
                self._box = self.figure.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
            self.figure.set_layout_engine(None)  # the positions it found stay as they are
        return self._box


def literal_text() -> contextlib.AbstractContextManager:
    """Figure text as written: a label with ``$`` (an encoder or relation name) is not read as mathtext."""
    return matplotlib.rc_context({"text.parse_math": False})


def printable(text: object) -> str:
    """``text`` with control characters shown as ``\\xNN``: they are invalid in SVG (XML) and invisible in HTML."""
    return _CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def printable_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with `printable` text in its column names, index and text cells."""
    text = frame.select_dtypes(include=["object", "string"]).columns
    out = frame.assign(**{str(c): frame[c].map(lambda v: printable(v) if isinstance(v, str) else v) for c in text})
    out.columns = [printable(c) if isinstance(c, str) else c for c in out.columns]
    out.index = out.index.map(lambda v: printable(v) if isinstance(v, str) else v)
    return out


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def kind(label: str) -> str:
    """``baseline``, ``control`` (random-init weights) or ``encoder``: how a probe is drawn beside the others."""
    if label.startswith("baseline:"):
        return "baseline"
    return "control" if "+random-init" in label else "encoder"


def colour(label: str) -> str:
    return {"baseline": _BASELINE, "control": _CONTROL}.get(kind(label), _ENCODER)


def text_width(labels) -> float:
    """Inches a column of tick labels needs at 9 pt."""
    return 0.3 + 0.065 * max((len(str(lab)) for lab in labels), default=0)


def chance_line(ax, metric: str, axis: str = "x") -> None:
    if (chance := CHANCE.get(metric)) is not None:
        line = ax.axvline if axis == "x" else ax.axhline
        line(chance, color="0.35", linestyle=":", linewidth=1.2, label=f"chance ({chance:g})")


def bars(ax, table: pd.DataFrame, metric: str | None) -> None:
    """Horizontal bars of ``table`` (index: labels; estimate, ci_low, ci_high), coloured by kind."""
    pos = np.arange(len(table))[::-1]
    err = np.vstack([table["estimate"] - table["ci_low"], table["ci_high"] - table["estimate"]])
    ax.barh(pos, table["estimate"], color=[colour(lab) for lab in table.index],
            xerr=None if np.isnan(err).all() else err, capsize=2)  # fmt: skip
    # each value written right of its bar's CI, so the error bar never runs through it
    ends = table["ci_high"].where(table["ci_high"].notna(), table["estimate"])
    for p, value, end in zip(pos, table["estimate"], ends, strict=True):
        ax.text(max(value, end), p, f" {value:.3f}", va="center", fontsize=7.5)
    ax.set_yticks(pos, labels=table.index, fontsize=8.5)
    if metric is not None:
        chance_line(ax, metric)


def _layer_order(layer: str) -> tuple[int, float]:
    """Numbered layers in order, then ``final``."""
    try:
        return (0, float(layer))
    except ValueError:
        return (1, 0.0)


def depth_figure(curves: list[tuple[str, pd.DataFrame]]):
    """Figure and axes with one line per ``(label, frame)``: the frame's ``estimate`` against its index of
    layers in depth order (``final`` last), with a band where it has ``ci_low``/``ci_high`` for every layer."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, part in curves:
        part = part.loc[sorted(part.index, key=_layer_order)]
        x = np.arange(len(part))
        (line,) = ax.plot(x, part["estimate"].to_numpy(), marker="o", label=label)
        if "ci_low" in part and part["ci_low"].notna().all():
            ax.fill_between(x, part["ci_low"].to_numpy(), part["ci_high"].to_numpy(), color=line.get_color(), alpha=0.15)
        ax.set_xticks(x, labels=list(part.index))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    return fig, ax
