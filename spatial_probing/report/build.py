"""``spatial-probing report``: the HTML report and figure files of a results directory.

    spatial-probing report --results outputs/probe/demo [--out DIR] [--reference sbert:all-mpnet-base-v2@text]
    spatial-probing report --results outputs/probe/original outputs/probe/credibility --out DIR   # side by side

Writes ``DIR/report.html`` (self-contained: figures embedded, viewable offline) and every figure as
``DIR/figures/<name>.png`` and ``.svg``. ``fit`` calls `write_report` on its own output directory.
`report_figures` is the report's figure list: the probe figures (`report.probe_figures`) and the
analysis figures (`report.analysis_figures`) in report order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from spatial_probing.errors import ConfigError, SpatialProbingError
from spatial_probing.io import atomic_write
from spatial_probing.probes.results import HEADLINE_METRIC
from spatial_probing.report.analysis_figures import STATS_TASKS, rsa, stats_layer_curves, stats_task
from spatial_probing.report.figures import ReportFigure, literal_text
from spatial_probing.report.html import render_report
from spatial_probing.report.probe_figures import (
    baselines_and_controls,
    distribution,
    gains,
    heatmap,
    layer_curves,
    meta_categories,
    other_tasks,
    reference_scatter,
)
from spatial_probing.report.run_files import RunFiles, load_runs


def report_figures(run: RunFiles, reference: str | None = None, metric: str = HEADLINE_METRIC) -> list[ReportFigure]:
    """Every figure the run has data for, in report order."""
    makers: list[Callable[[], ReportFigure | None]] = [
        lambda: heatmap(run, metric, reference),
        lambda: reference_scatter(run, metric, reference),
        lambda: distribution(run, metric),
        lambda: gains(run, metric, reference),
        lambda: meta_categories(run, metric),
        lambda: baselines_and_controls(run, metric),
        lambda: other_tasks(run, metric),
        *[lambda task=task: stats_task(run, task) for task in STATS_TASKS],
        lambda: rsa(run),
        lambda: layer_curves(run, metric),
        lambda: stats_layer_curves(run),
    ]
    with literal_text():
        return [figure for make in makers if (figure := make()) is not None]


@dataclass
class WrittenReport:
    """What `write_report` wrote, and the figures (for the W&B dashboard)."""

    path: Path
    figure_files: list[Path]
    figures: list[ReportFigure]
    run: RunFiles


def write_report(results: str | Path | list[str | Path], out: str | Path | None = None,
                 reference: str | None = None) -> WrittenReport:
    """Write the report of the results directory ``results`` (or of several, side by side) into ``out``.

    Args:
        results: a ``fit`` output directory (results.csv, and stats.csv, comparisons.csv, fits.csv,
            config.yaml when present), an ``analyze`` one (stats.csv), or a list of them.
        out: where report.html and figures/ go (default: the only ``results`` directory; required for several).
        reference: the probe the scatter and gain figures compare against (a label or its prefix);
            default the first SBERT probe.
    """
    directories = [results] if isinstance(results, str | Path) else list(results)
    if out is None and len(directories) > 1:
        raise SpatialProbingError("a report of several results directories needs --out DIR")
    run = load_runs(directories)
    out_dir = Path(out) if out is not None else Path(directories[0])
    figures = report_figures(run, reference)
    files = []
    for figure in figures:
        files.append(atomic_write(out_dir / "figures" / f"{figure.name}.png", figure.png()))
        files.append(atomic_write(out_dir / "figures" / f"{figure.name}.svg", figure.svg()))
    path = atomic_write(out_dir / "report.html", render_report(run, figures))
    return WrittenReport(path, files, figures, run)


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, a missing --results) are one error line, not the usage."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see spatial-probing report --help")


def main(args: list[str]) -> int:
    """Parse the ``report`` subcommand's options, write the report and print its path."""
    parser = _Parser(prog="spatial-probing report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, nargs="+",
                        help="`spatial-probing fit` or `analyze` output directories (several: side by side).")
    parser.add_argument("--out", default=None,
                        help="Directory for report.html and figures/ (default: the one --results directory).")
    parser.add_argument("--reference", default=None,
                        help="Probe label (or prefix) the other probes are compared with; default the first sbert one.")
    options = parser.parse_args(args)
    written = write_report(options.results, options.out, options.reference)
    print(f"report: {written.path} ({len(written.figures)} figures in {written.path.parent / 'figures'})")
    return 0
