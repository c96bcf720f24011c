"""An offline, single-file HTML report of a probe run: figures as data URIs, tables, provenance (no scripts)."""

from __future__ import annotations

import base64
import html
import importlib.metadata
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from spatial_probing.encoders.spec import short_encoder
from spatial_probing.probes.results import HEADLINE_METRIC, comparison_table, summary
from spatial_probing.report.figures import ReportFigure, printable
from spatial_probing.report.run_files import RunFiles
from spatial_probing.report.tables import headline

_SOLVER_COLUMNS = ("solver", "tol", "max_iter", "class_weight", "n_converged", "n_problems")
_REPORT_LIBRARIES = ("spatial_probing", "matplotlib", "pandas", "numpy")

TOLERANCE_NOTE = (
    "Solver tolerance matters for these numbers. scikit-learn's lbfgs with its default tol=1e-4 stops "
    "early, so the original study's per-relation numbers partly reflect solver tolerance; the batched "
    "solver reports the converged optimum. Compare `spatial-probing fit --config "
    "configs/probe/original_protocol.yaml` with `--config configs/probe/converged.yaml` on the same "
    "features to see the size of the effect (docs/credibility.md)."
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tr.mean td { font-weight: bold; border-top: 2px solid #888; }
p.note { max-width: 60em; background: #fff8e1; padding: 0.6em; border-left: 4px solid #f0b400; }
figure { margin: 1em 0 2em; } img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { max-width: 60em; color: #444; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.6em; }
"""


def _esc(value: Any) -> str:
    return html.escape(printable(value))


def _heat(value: float, lo: float, hi: float) -> str:
    """Inline style: light (low) to dark blue (high) on the table's own range."""
    if pd.isna(value):
        return ""
    frac = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    lightness = 95 - 55 * frac
    color = "#fff" if lightness < 60 else "#000"
    return f' style="background: hsl(210, 70%, {lightness:.0f}%); color: {color}"'


def _table(frame: pd.DataFrame, heat: bool = False, fmt: str = "{:.4f}", mean_row: str | None = None) -> str:
    """An HTML table of ``frame`` (index as first column); ``heat`` colours numbers except ``mean_row``."""
    body = frame.drop(index=mean_row) if mean_row is not None else frame
    numbers = body.select_dtypes("number")
    lo, hi = (float(numbers.min().min()), float(numbers.max().max())) if heat and numbers.size else (0.0, 0.0)
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    out = [f'<table><tr><th class="name">{_esc(frame.index.name or "")}</th>{head}</tr>']
    for name, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                style = _heat(value, lo, hi) if heat and name != mean_row else ""
                cells.append(f"<td{style}>{'-' if pd.isna(value) else fmt.format(value)}</td>")
            elif isinstance(value, int | np.integer):
                cells.append(f"<td>{value}</td>")
            else:
                cells.append(f'<td class="name">{_esc(value)}</td>')
        css = ' class="mean"' if name == mean_row else ""
        out.append(f'<tr{css}><td class="name">{_esc(name)}</td>{"".join(cells)}</tr>')
    out.append("</table>")
    return "\n".join(out)


def _summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Probe x metric cells "mean ± std" (std over folds)."""
    s = summary(df)
    s["cell"] = s["mean"].map("{:.4f}".format) + " \u00b1 " + s["std"].map("{:.4f}".format)
    table = s.pivot_table(index="probe", columns="metric", values="cell", aggfunc="first", sort=False)
    table.columns.name = None
    return table


def _analysis_table(stats: pd.DataFrame) -> pd.DataFrame:
    """stats.csv's headline rows (`report.tables.headline`): one row per entry, one column per result."""
    out = headline(stats).pivot_table(index="label", columns=["dataset", "what"], values="cell", aggfunc="first", sort=False)
    out.index.name = "encoder"
    out.columns = [f"{d}: {w}" for d, w in out.columns]
    return out.fillna("")


def meta_category_table(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Mean over the relations of each VSR meta-category of the fold-mean ``metric``, per probe."""
    from spatial_probing.data.relations import meta_category

    table = comparison_table(df, metric).drop(index="MEAN")
    categories = pd.Index([meta_category(r) for r in table.index], name="meta_category")
    out = table.groupby(categories).mean()
    out.insert(0, "relations", table.groupby(categories).size().astype(str))
    return out


def _section(title: str, *parts: str) -> str:
    return f"<h2>{_esc(title)}</h2>\n" + "\n".join(parts)


def _figure(figure: ReportFigure) -> str:
    """An embedded figure (PNG data URI: the page needs no other file) with its caption."""
    data = base64.b64encode(figure.png()).decode("ascii")
    rows = f' data-rows="{figure.n_rows}"' if figure.n_rows is not None else ""
    return (
        f'<figure id="fig-{_esc(figure.name)}"{rows}><img class="figure" alt="{_esc(figure.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{_esc(figure.caption)} '
        f'Files: <code>figures/{_esc(figure.name)}.png</code>, <code>.svg</code>.</figcaption></figure>'
    )


def _provenance(run: RunFiles) -> list[str]:
    """The header: data fingerprints, encoder specs and library versions from the entries' meta.json."""
    parts = [f"<p>Results: <code>{_esc(run.directory)}</code></p>"]
    if run.entries:
        data = pd.DataFrame([{
            "dataset": m.get("dataset"), "source": m.get("dataset_summary", {}).get("source"),
            "rows": m.get("dataset_summary", {}).get("n_rows"),
            "fingerprint": str(m.get("dataset_summary", {}).get("fingerprint", ""))[:16],
        } for m in run.entries]).drop_duplicates().set_index("dataset")  # fmt: skip
        encoders = pd.DataFrame([{
            "encoder": short_encoder(str(m.get("encoder"))), "view": m.get("key", {}).get("view"),
            "precision": m.get("key", {}).get("precision"), "dtype": m.get("key", {}).get("dtype"),
            "shape": " x ".join(map(str, m.get("shape", []))), "failed rows": len(m.get("failures", [])),
            "model source": str(m.get("key", {}).get("model_source", ""))[:16], "entry": m.get("digest"),
        } for m in run.entries]).set_index("encoder")  # fmt: skip
        versions: dict[str, str] = {}
        for meta in run.entries:
            versions |= meta.get("versions", {})
        parts += ["<h3>Data</h3>", _table(data), "<h3>Encoder entries</h3>", _table(encoders),
                  "<h3>Library versions (extraction)</h3>", _table(pd.DataFrame({"version": versions}).rename_axis("library"))]  # fmt: skip
    report_versions = {lib: importlib.metadata.version(lib) for lib in _REPORT_LIBRARIES}
    parts.append("<p>Report drawn with " + ", ".join(f"{k} {v}" for k, v in report_versions.items()) + ".</p>")
    if run.config_text:
        parts.append(f"<details><summary>Fit configuration (config.yaml)</summary><pre>{_esc(run.config_text)}</pre></details>")
    return parts


def render_report(run: RunFiles, figures: list[ReportFigure]) -> str:
    """The report of one results directory as one self-contained HTML string.

    ``run.fits`` (fits.csv) has one row per probe set (``LinearProbe.fit_info``: encoder, view, n_rows,
    n_excluded, solver, tol, max_iter, n_converged, n_problems ...).
    """
    df = run.results
    sections = [_section("Run", *_provenance(run))]
    sections.append(_section("Figures", *(_figure(f) for f in figures)))
    if not df.empty:
        sections += [
            _section(
                f"Relation x encoder: fold-mean {HEADLINE_METRIC}",
                _table(comparison_table(df), heat=True, mean_row="MEAN"),
            ),
            _section("Summary per encoder (mean \u00b1 std over folds)", _table(_summary_table(df))),
        ]
    if run.stats is not None and df.empty:  # an `analyze` directory: its headline rows
        sections.append(_section("Analysis results (stats.csv)", _table(_analysis_table(run.stats))))
    if run.fits is not None:
        fits = run.fits.set_index(run.fits["encoder"].map(short_encoder).rename("encoder"))
        solver_rows = fits[[c for c in _SOLVER_COLUMNS if c in fits]]
        sections += [
            _section(
                "Solver and tolerance",
                _table(solver_rows, fmt="{:g}"),
                *(f'<p class="note"><b>Warning:</b> {_esc(w)}</p>' for w in fits.get("warning", []) if w),
                f'<p class="note">{_esc(TOLERANCE_NOTE)}</p>',
            ),
            _section(
                "Rows excluded per encoder",
                "<p>Rows whose image failed to load are excluded from every fold of that encoder "
                "(see the entry's failures.jsonl for the reasons).</p>",
                _table(fits[["n_rows", "n_excluded", "path"]]),
            ),
        ]
    if (df["task"] == "relation_type").any():
        relations = df[df["task"] == "relation_type"]
        sections.append(
            _section(f"VSR meta-category means of {HEADLINE_METRIC}", _table(meta_category_table(relations), heat=True))
        )
    return _page("spatial_probing probe report", sections)


def _page(title: str, sections: Iterable[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body><h1>{_esc(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
