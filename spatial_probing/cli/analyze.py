"""``spatial-probing analyze``: run the configured analyses on cached features, write stats.csv.

    spatial-probing analyze --config configs/analysis/vsr_text.yaml [--feature_root DIR] [--out_dir DIR]

The config lists analyses by ``class_path``/``init_args`` (`analysis.truth.Truth`,
`analysis.structure.Structure`, `analysis.structure.ZeroShot`, `analysis.representation.OddOneOut`,
`analysis.representation.RSA`). ``out_dir`` receives stats.csv (SCHEMA.md's columns) and config.yaml, and
with a truth analysis of a VSR dataset (``vsr_*``) published.csv (VSR's published accuracies, kept apart from computed numbers); the
``all`` rows are printed, then the published figures under their own heading.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from jsonargparse import ActionConfigFile, ArgumentParser

from spatial_probing.analysis.base import Analysis
from spatial_probing.analysis.features import FeatureIndex
from spatial_probing.analysis.published import published_table
from spatial_probing.analysis.stats import write_stats
from spatial_probing.analysis.truth import Truth
from spatial_probing.console import PARSER_KWARGS
from spatial_probing.io import atomic_write, check_writable
from spatial_probing.report.build import write_report
from spatial_probing.report.tables import headline


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="spatial-probing analyze", description=__doc__, **PARSER_KWARGS)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--feature_root", type=str, default="outputs/features", help="Root of the feature cache.")
    p.add_argument("--encoders", type=list[str] | None, default=None,
                   help="Entry labels to analyse (e.g. sbert:all-mpnet-base-v2@text); None: every entry.")
    p.add_argument("--analyses", type=list[Analysis], default=[], help="Analyses (class_path/init_args).")
    p.add_argument("--out_dir", type=str, default="outputs/analysis", help="Where stats.csv goes.")
    return p


def summary_table(stats: pd.DataFrame) -> str:
    """The ``all`` rows as ``task  metric  encoder  view  estimate [ci_low, ci_high]``."""
    lines = []
    for r in headline(stats).itertuples():
        target = f" {r.target}" if r.task == "rsa" else ""
        lines.append(f"{r.dataset:<34} {r.task:<14} {r.metric:<20} {r.encoder}{target} ({r.view})  {r.cell}")
    return "\n".join(lines)


def run_analyze(args: list[str]) -> int:
    """Parse ``args``, run every analysis (timing each), write stats.csv, published.csv and config.yaml."""
    p = parser()
    cfg = p.parse_args(args)
    init = p.instantiate_classes(cfg)
    index = FeatureIndex(cfg.feature_root, cfg.encoders)
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir)
    rows: list[dict] = []
    # an out_dir's earlier stats.csv is replaced only once this run has rows of its own to write
    stats_path = out_dir / "stats.csv"
    for analysis in init.analyses:
        start = time.perf_counter()
        rows += analysis.run(index)
        print(f"{analysis!r}: {time.perf_counter() - start:.1f} s")
        # written after every analysis: an error in a later one loses nothing already computed
        stats_path = write_stats(rows, out_dir / "stats.csv")
    written = [stats_path] if rows else []
    written.append(atomic_write(out_dir / "config.yaml", p.dump(cfg)))
    print(summary_table(pd.read_csv(stats_path).fillna({"view": ""})) if rows else "no analysis configured")
    # VSR's published figures sit beside truth results on VSR
    if any(isinstance(a, Truth) and a.dataset.startswith("vsr") for a in init.analyses):
        published = published_table()
        written.append(atomic_write(out_dir / "published.csv", published.to_csv(index=False)))
        print("\npublished (not computed here):")
        print(published.to_string(index=False))
    print("\nwrote " + ", ".join(map(str, written)))
    if rows:
        print(f"report: {write_report(out_dir).path}")
    return 0
