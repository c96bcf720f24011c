"""A study's report: ``report.md`` and ``report.html`` from a list of blocks, figures saved beside them.

Blocks are ``(kind, content)``: ``h1``, ``h2``, ``p`` (text; ``**bold**`` and ```code``` as markdown, rendered in HTML), ``table`` (a
DataFrame, floats to 3 decimals) and ``figure`` (a ``report.figures.ReportFigure``: written to
``figures/<name>.png`` and ``.svg``, shown with its caption). Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from spatial_probing.io import atomic_write
from spatial_probing.report.figures import ReportFigure

STYLE = ("<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
         "figure{margin:1em 0}img{max-width:100%}figcaption{color:#444;font-size:0.9em}</style>")


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda c: c.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v))


def _markdown_table(df: pd.DataFrame) -> str:
    df = _fmt(df)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _html_text(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def write_report(out: Path, title: str, blocks: list[tuple[str, object]]) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and the figures; returns the markdown path."""
    md, page = [], [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>", STYLE]
    for kind, content in blocks:
        if kind == "table":
            md.append(_markdown_table(content))
            page.append(_fmt(content).to_html(index=False, escape=True))
        elif kind == "figure":
            fig: ReportFigure = content
            for suffix, data in (("png", fig.png()), ("svg", fig.svg())):
                atomic_write(out / "figures" / f"{fig.name}.{suffix}", data)
            md.append(f"**{fig.title}**\n\n![{fig.title}](figures/{fig.name}.png)\n\n{fig.caption}")
            page.append(f"<figure><img src='figures/{html.escape(fig.name)}.png' alt='{html.escape(fig.title)}'>"
                        f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)}</figcaption></figure>")
        else:
            prefix = {"h1": "# ", "h2": "## ", "p": ""}[kind]
            md.append(prefix + str(content))
            page.append(f"<{kind}>{_html_text(str(content))}</{kind}>")
    atomic_write(out / "report.md", "\n\n".join(md) + "\n")
    atomic_write(out / "report.html", "\n".join(page) + "\n")
    return out / "report.md"
