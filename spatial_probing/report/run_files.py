"""The files of one fit's output directory, read back for a report (results, stats, comparisons, provenance)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spatial_probing.errors import SpatialProbingError
from spatial_probing.probes.results import IDENTITY_COLUMNS, entry_labels, probe_labels, results_frame

# text even when every cell is empty (an unset precision) or looks like a number (layer "3")
_TEXT_COLUMNS = (*IDENTITY_COLUMNS, "target", "metric", "solver", "label_a", "label_b", "method", "level", "warning")


@dataclass
class RunFiles:
    """One results directory: the tidy tables (stats/comparisons when written) and where they came from.

    ``results`` and ``stats`` gain a ``label`` column: the name of the probe (entry) in every table and figure.
    """

    directory: Path
    results: pd.DataFrame
    stats: pd.DataFrame | None = None
    comparisons: pd.DataFrame | None = None
    fits: pd.DataFrame | None = None
    config_text: str | None = None
    #: meta.json of every fitted entry that is still on disk (paths from fits.csv).
    entries: list[dict[str, Any]] = field(default_factory=list)


def _read(path: Path) -> pd.DataFrame:
    """A tidy CSV with text columns as text: an empty cell is "" in a text column (an unset precision
    must not drop rows from a groupby) and NaN only in a number column (a missing CI)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(_TEXT_COLUMNS, str))
    return df.fillna(dict.fromkeys(df.columns.intersection(_TEXT_COLUMNS), ""))


def _read_optional(path: Path) -> pd.DataFrame | None:
    return _read(path) if path.is_file() else None


def _label_stats(stats: pd.DataFrame) -> pd.DataFrame:
    """Label stats rows as results rows are labelled (stats.csv has no storage dtype: one value for all)."""
    return stats.assign(label=entry_labels(stats.assign(storage_dtype=stats.get("storage_dtype", ""))))


def _entry_meta(fits: pd.DataFrame | None, directory: Path) -> list[dict[str, Any]]:
    """meta.json of each fitted entry; a path in fits.csv is relative to where the fit ran (or to ``directory``)."""
    metas = []
    for path in [] if fits is None or "path" not in fits else fits["path"].dropna().unique():
        for base in (Path.cwd(), directory):
            meta = base / str(path) / "meta.json"
            if meta.is_file():
                metas.append(json.loads(meta.read_text(encoding="utf-8")))
                break
    return metas


def load_run(directory: str | Path) -> RunFiles:
    """Read ``results.csv`` and whatever else a fit wrote into ``directory``; an ``analyze`` output
    directory has stats.csv only (its results table is empty)."""
    directory = Path(directory)
    results_path = directory / "results.csv"
    if results_path.is_file():
        results = _read(results_path)
    elif (directory / "stats.csv").is_file():
        results = results_frame([])
    else:
        raise SpatialProbingError(f"no results.csv or stats.csv in {directory}: pass the --out_dir of a "
                                  "`spatial-probing fit` or `spatial-probing analyze`")
    results = results.assign(label=probe_labels(results))
    stats = _read_optional(directory / "stats.csv")
    fits = _read_optional(directory / "fits.csv")
    config = directory / "config.yaml"
    return RunFiles(
        directory=directory,
        results=results,
        stats=None if stats is None else _label_stats(stats),
        comparisons=_read_optional(directory / "comparisons.csv"),
        fits=fits,
        config_text=config.read_text(encoding="utf-8") if config.is_file() else None,
        entries=_entry_meta(fits, directory),
    )


def load_runs(directories: list[str | Path]) -> RunFiles:
    """One `RunFiles` of several results directories side by side (e.g. the original protocol beside the
    credibility run, or a fit beside an analysis): tables stacked, each probe labelled
    ``<directory name>: <its label in its own run>`` so runs never pool."""
    runs = [load_run(d) for d in directories]
    if len(runs) == 1:
        return runs[0]

    def stacked(name: str) -> pd.DataFrame | None:
        frames = [getattr(r, name).assign(label=lambda f, r=r: f"{r.directory.name}: " + f["label"])
                  if name in ("results", "stats") else getattr(r, name)
                  for r in runs if getattr(r, name) is not None]
        return pd.concat(frames, ignore_index=True) if frames else None

    configs = [f"# {r.directory}\n{r.config_text}" for r in runs if r.config_text]
    return RunFiles(
        directory=Path(runs[0].directory),
        results=stacked("results"),
        stats=stacked("stats"),
        comparisons=stacked("comparisons"),
        fits=stacked("fits"),
        config_text="\n".join(configs) or None,
        entries=[m for r in runs for m in r.entries],
    )
