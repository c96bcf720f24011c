"""The files of one fit's output directory, read back for a report (results, stats, comparisons, provenance)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spatial_probing.analysis.stats import STATS_COLUMNS
from spatial_probing.errors import SpatialProbingError
from spatial_probing.probes.results import (
    IDENTITY_COLUMNS,
    PROBE_KEYS,
    RESULT_COLUMNS,
    entry_labels,
    probe_labels,
    results_frame,
)
from spatial_probing.report.figures import printable_frame

# text even when every cell is empty (an unset precision) or looks like a number (layer "3")
_TEXT_COLUMNS = (*IDENTITY_COLUMNS, "target", "metric", "solver", "label_a", "label_b", "method", "level", "warning")
#: The columns each table must have, and those no complete row leaves empty (a cut row has them empty).
_REQUIRED = {"results.csv": (RESULT_COLUMNS, ("fold", "C", "metric", "value", "n_train", "n_test")),
             "stats.csv": (STATS_COLUMNS, ("task", "target", "metric", "method"))}
# what other commands leave in their output directory, to say what a directory given as --results is
_OTHER_OUTPUTS = {"meta.json": "a feature-cache entry (`spatial-probing extract`)",
                  "encoder.ckpt": "a `spatial-probing train-grounding` run",
                  "summary.json": "a `spatial-probing train-grounding` run",
                  "runs.csv": "a grounding study (its reports are under tables/ and report.html)"}


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
    must not drop rows from a groupby) and NaN only in a number column (a missing CI).

    results.csv and stats.csv are checked first (`_check_table`): a damaged table is refused, not reported.
    """
    _check_complete_file(path)
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(_TEXT_COLUMNS, str))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpatialProbingError(f"{path} cannot be read as a table ({exc}); write it again") from exc
    if path.name in _REQUIRED:
        _check_table(df, path)
    # names are shown as written in every table and figure, control characters made visible
    return printable_frame(df.fillna(dict.fromkeys(df.columns.intersection(_TEXT_COLUMNS), "")))


def _check_complete_file(path: Path) -> None:
    """Refuse an empty file or one whose last line is cut (every writer here ends a table with a newline)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise SpatialProbingError(f"{path} is empty; rerun the command that writes it")
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            raise SpatialProbingError(f"{path} is truncated (its last line is cut off); rerun the command that "
                                      "writes it")


def _check_table(df: pd.DataFrame, path: Path) -> None:
    """Refuse a table without its columns, with cut rows, or (results.csv) with probes missing some rows."""
    columns, filled = _REQUIRED[path.name]
    if missing := [c for c in columns if c not in df.columns]:
        raise SpatialProbingError(f"{path} is not a {path.name} of this toolkit (no column {', '.join(missing)}); "
                                  "pass the --out_dir of a `spatial-probing fit` or `spatial-probing analyze`")
    if (cut := df[list(filled)].isna().any(axis=1)).any():
        raise SpatialProbingError(f"{path} has {int(cut.sum())} incomplete rows (first: line {int(cut.idxmax()) + 2}); "
                                  "it was truncated or edited, rerun the command that writes it")
    if path.name == "results.csv" and len(df):
        _check_grid(df, path)


def _check_grid(results: pd.DataFrame, path: Path) -> None:
    """Every probe has the same rows (metrics x C values) per (target, fold) and the same folds per target,
    which a results.csv cut at a line boundary breaks."""
    keys = results[PROBE_KEYS].fillna("").astype(str)
    probe = keys.iloc[:, 0].str.cat(keys.iloc[:, 1:], sep="|")  # vectorised: a row-wise join is slow at 10^4 rows
    per_fold = results.groupby([probe, results["target"], results["fold"]]).size()
    per_target = per_fold.groupby(level=[0, 1]).size()
    for counts, what in ((per_fold, "metric rows in a fold"), (per_target, "folds of a target")):
        uneven = counts.groupby(level=0).nunique().gt(1)
        if uneven.any():
            raise SpatialProbingError(f"{path} is incomplete: probe {uneven.idxmax()!r} has an uneven number of "
                                      f"{what} (truncated?); rerun `spatial-probing fit` to write it again")


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
        raise SpatialProbingError(_not_a_results_directory(directory))
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


def _not_a_results_directory(directory: Path) -> str:
    """Why ``directory`` has no report: missing, not a directory, empty, or another command's output."""
    fix = "pass the --out_dir of a `spatial-probing fit` or `spatial-probing analyze`"
    if not directory.exists():
        return f"--results {directory} does not exist; {fix}"
    if not directory.is_dir():
        return f"--results {directory} is a file, not a results directory; {fix}"
    found = [what for name, what in _OTHER_OUTPUTS.items() if (directory / name).exists()]
    if found:
        return f"--results {directory} holds {found[0]}, not probe or analysis results (no results.csv or stats.csv); {fix}"
    return f"no results.csv or stats.csv in {directory}{'' if any(directory.iterdir()) else ' (it is empty)'}; {fix}"


def run_names(directories: list[Path]) -> list[str]:
    """A distinct short name per directory: its last path components, as many as tell them apart."""
    parts = [d.resolve().parts for d in directories]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise SpatialProbingError(f"--results lists a directory twice ({', '.join(map(str, directories))}); "
                              "list each once")


def load_runs(directories: list[str | Path]) -> RunFiles:
    """One `RunFiles` of several results directories side by side (e.g. the original protocol beside the
    credibility run, or a fit beside an analysis): tables stacked, each probe labelled
    ``<directory name>: <its label in its own run>`` (more of the path where two names are equal) so runs,
    and so datasets, never pool."""
    runs = [load_run(d) for d in directories]
    if len(runs) == 1:
        return runs[0]
    names = dict(zip((r.directory for r in runs), run_names([r.directory for r in runs]), strict=True))

    def stacked(name: str) -> pd.DataFrame | None:
        frames = [getattr(r, name).assign(label=lambda f, r=r: f"{names[r.directory]}: " + f["label"])
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
