"""Reliability, round 3: the grounding study and train-grounding under interruption (docs/reliability.md).

A study killed with SIGKILL mid-training leaves finished runs (``summary.json`` written last) and an
unfinished run directory; the rerun of the same command reuses the finished runs, says it retrains the
unfinished one, and ends with encoders and tables byte-identical to an uninterrupted study (``slow``:
real subprocesses).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from probe_entries import toy_entry, toy_features, toy_rows, write_entry
from test_faults_round2 import _error, _fit_args

from spatial_probing.cli import main
from spatial_probing.data.rows import SpatialRows

REPO = Path(__file__).resolve().parents[1]

STUDY = [sys.executable, "-m", "spatial_probing.studies.grounding", "--arms", "mlm", "text_pair", "--seeds", "0", "1",
         "--steps", "40", "--n_probe", "24", "--n_boot", "100", "--train_args",
         "--data.batch_size 16 --data.n_train 128 --data.n_val 16 --trainer.val_check_interval 10 --model.warmup_steps 2"]
# measured per run, so they differ between any two runs of the same command: compared apart from the checksums
TIMED = {"runs.csv"}


def _checksums(out: Path) -> dict[str, str]:
    files = sorted(out.glob("runs/*/*/encoder.ckpt")) + sorted(p for p in (out / "tables").glob("*.csv")
                                                                 if p.name not in TIMED)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_sigkilled_study_resumes_to_the_same_encoders_and_tables(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    reference = tmp_path / "reference"
    subprocess.run([*STUDY, "--out_dir", str(reference)], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*STUDY, "--out_dir", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    # kill once the first run has finished and the second has started (its directory exists, no summary yet)
    while not (out / "runs" / "mlm" / "seed1").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "runs/mlm/seed0/summary.json").is_file() and not (out / "runs/mlm/seed1/summary.json").exists()
    first = (out / "runs/mlm/seed0/encoder.ckpt").read_bytes()
    rerun = subprocess.run([*STUDY, "--out_dir", str(out)], check=True, env=env, capture_output=True, text=True)
    assert "training mlm seed 0" not in rerun.stdout  # the finished run is reused ...
    assert "holds an unfinished run (no summary.json); training it again from step 0" in rerun.stdout  # ... said
    assert (out / "runs/mlm/seed0/encoder.ckpt").read_bytes() == first
    assert _checksums(out) == _checksums(reference)
    assert not list(out.rglob("*.partial"))  # no half-written checkpoint left behind


def test_study_report_escapes_hostile_text(tmp_path: Path) -> None:
    import pandas as pd

    from spatial_probing.studies.report import write_report

    hostile = "<script>alert('x')</script> & \"quotes\""
    write_report(tmp_path, hostile, [("h1", hostile), ("p", f"**{hostile}** `{hostile}`"),
                                      ("table", pd.DataFrame({"arm": [hostile], "value": [0.5]}))])
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;") == 5  # title, heading, bold, code, table cell
    assert "<b>&lt;script&gt;" in page and "<code>&lt;script&gt;" in page


# --------------------------------------------------------------------------------------------
# case 4: analyze / report inputs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A fit output directory of two toy entries (the results every report case starts from)."""
    root = tmp_path_factory.mktemp("features")
    toy_entry(root / "toy_train", "a", encoder="toy:a")
    toy_entry(root / "toy_train", "b", encoder="toy:b", seed=1)
    out = tmp_path_factory.mktemp("fit") / "run"
    assert main(_fit_args(out, "--data.feature_root", str(root))) == 0
    return out


def _results_copy(fitted: Path, tmp: Path, cut: Callable[[str], str] = lambda text: text, name: str = "results.csv"
                  ) -> Path:
    """A copy of the fit's directory with ``name`` passed through ``cut``."""
    copy = tmp / "copy"
    shutil.copytree(fitted, copy)
    (copy / name).write_text(cut((fitted / name).read_text()) if (fitted / name).is_file() else cut(""))
    return copy


REPORT_INPUTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "missing": (lambda fitted, tmp: tmp / "nowhere", r"--results \S+nowhere does not exist"),
    "empty": (lambda fitted, tmp: Path(tmp / "empty").mkdir() or tmp / "empty", r"no results\.csv or stats\.csv in \S+empty \(it is empty\)"),
    "another-command": (lambda fitted, tmp: toy_entry(tmp, "entry"), r"holds a feature-cache entry \(`spatial-probing extract`\)"),
    "results-cut-mid-line": (lambda fitted, tmp: _results_copy(fitted, tmp, lambda t: t[: len(t) // 2]),
                             r"results\.csv is truncated \(its last line is cut off\)"),
    "results-cut-at-a-line": (lambda fitted, tmp: _results_copy(fitted, tmp, lambda t: "".join(t.splitlines(True)[:-3])),
                              r"results\.csv is incomplete: probe .* uneven number of metric rows in a fold"),
    "results-empty": (lambda fitted, tmp: _results_copy(fitted, tmp, lambda t: ""), r"results\.csv is empty"),
    "results-foreign": (lambda fitted, tmp: _results_copy(fitted, tmp, lambda t: "a,b\n1,2\n"),
                        r"is not a results\.csv of this toolkit \(no column dataset"),
    "stats-cut": (lambda fitted, tmp: _results_copy(fitted, tmp, lambda t: "dataset,entry\nfoo,b", "stats.csv"),
                  r"stats\.csv is truncated"),
}


@pytest.mark.parametrize("case", REPORT_INPUTS)
def test_report_refuses_a_missing_empty_foreign_or_truncated_results_directory(case, fitted, tmp_path, capsys):
    make, message = REPORT_INPUTS[case]
    results = make(fitted, tmp_path)
    before = sorted(p.name for p in results.iterdir()) if results.is_dir() else None
    assert re.search(message, _error(capsys, ["report", "--results", str(results)]))
    assert (sorted(p.name for p in results.iterdir()) if results.is_dir() else None) == before  # nothing written


def test_report_of_two_datasets_in_same_named_directories_labels_them_apart(fitted, tmp_path):
    from spatial_probing.report.run_files import load_runs

    other = tmp_path / "b" / "run"
    shutil.copytree(fitted, other)
    for name in ("results.csv", "fits.csv"):
        (other / name).write_text((other / name).read_text().replace("toy/train", "other/train"))
    run = load_runs([fitted, other])
    datasets = run.results.groupby("label")["dataset"].nunique()
    assert len(datasets) == 4 and datasets.eq(1).all()  # 2 runs x 2 encoders, never pooled across datasets
    assert main(["report", "--results", str(fitted), str(other), "--out", str(tmp_path / "both")]) == 0


def test_report_refuses_a_directory_listed_twice(fitted, tmp_path, capsys):
    assert "lists a directory twice" in _error(capsys, ["report", "--results", str(fitted), str(fitted), "--out",
                                                        str(tmp_path)])


def test_analyze_without_the_entry_it_needs_names_the_extract_command_and_keeps_stats(tmp_path, capsys):
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "stats.csv").write_text("an earlier run's stats\n")
    toy_entry(tmp_path / "features" / "toy_train", "a")
    line = _error(capsys, ["analyze", "--config", str(REPO / "configs/analysis/demo_structure.yaml"),
                           "--feature_root", str(tmp_path / "features"), "--out_dir", str(out)])
    assert "no text entries of derived:structure:scenes/train under" in line
    assert ("`spatial-probing extract --config configs/extract/<encoder>.yaml --data.dataset derived:structure:scenes "
            f"--data.split train --feature_root {tmp_path / 'features'}`") in line
    assert (out / "stats.csv").read_text() == "an earlier run's stats\n"  # not replaced by an empty table
    missing_root = _error(capsys, ["analyze", "--config", str(REPO / "configs/analysis/vsr_truth.yaml"),
                                   "--feature_root", str(tmp_path / "nowhere"), "--out_dir", str(out)])
    assert f"--feature_root {tmp_path / 'nowhere'} is not a directory" in missing_root


def test_extract_command_names_the_hub_dataset_and_view():
    from spatial_probing.analysis.features import extract_command

    assert "--data.dataset cambridgeltl/vsr_random --data.split test --model.view image --feature_root f" in \
        extract_command("vsr_random/test", Path("f"), "image")
    assert "--data.dataset derived:structure:cambridgeltl/vsr_random --data.split dev --feature_root f" in \
        extract_command("derived:structure:vsr_random/dev", Path("f"), "text")


# --------------------------------------------------------------------------------------------
# case 5: fit edge cases


def test_an_entry_listed_twice_is_probed_once(tmp_path, capsys):
    entry = toy_entry(tmp_path / "features", "a")
    out = tmp_path / "out"
    assert main(_fit_args(out, "--data.features", f"[{entry},{entry}/.]")) == 0
    assert "note: 1 feature entries were listed more than once; each is probed once" in capsys.readouterr().out
    results = pd.read_csv(out / "results.csv")
    assert not results.duplicated(["target", "fold", "metric"]).any()
    assert len(pd.read_csv(out / "fits.csv")) == 1


def test_out_dir_inside_the_feature_root_is_refused(tmp_path, capsys):
    toy_entry(tmp_path / "features", "a")
    line = _error(capsys, _fit_args(tmp_path / "features" / "out", "--data.feature_root", str(tmp_path / "features")))
    assert "is inside --data.feature_root" in line and "choose an --out_dir outside the feature cache" in line
    assert not (tmp_path / "features" / "out").exists()


def test_out_dir_of_another_run_is_refused_unless_overwrite_and_never_mixed(fitted, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(fitted, out)
    (out / "stats.csv").write_text("an earlier credibility run's table\n")  # a file this run does not write
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    root = str(fitted.parent.parent / "features0")  # the fixture's feature root
    args = _fit_args(out, "--data.feature_root", root, "--model.Cs", "[0.5]")
    line = _error(capsys, args)
    assert "holds the results of another run (its config.yaml differs" in line and "--overwrite true" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched
    assert main([*args, "--overwrite", "true"]) == 0
    assert not (out / "stats.csv").exists()  # the earlier run's file is gone, not mixed with this run's
    assert set(pd.read_csv(out / "results.csv")["C"]) == {0.5}
    assert main(args) == 0  # the same run again (same config) needs no --overwrite


def test_a_target_with_one_class_in_some_fold_is_skipped_with_a_counted_warning(tmp_path, capsys):
    rows = toy_rows()
    relations = ("rare",) * 3 + rows.relations[3:]  # 3 rows, 5 folds: two test folds without a positive
    rows = SpatialRows(name=rows.name, captions=rows.captions, relations=relations, labels=rows.labels,
                       images=rows.images, image_links=rows.image_links, source=rows.source)
    entry = write_entry(tmp_path / "features" / "a", rows, toy_features(rows))
    out = tmp_path / "out"
    assert main(_fit_args(out, "--data.features", f"[{entry}]", "--data.task.min_count", "1")) == 0
    console = capsys.readouterr().out
    assert re.search(r"warning: toy:enc \(relation_type\): 1 of 4 targets skipped, .* single class in some fold: "
                     r"'rare' \(folds \d(, \d)*\); they are in no result row and no mean", console)
    results = pd.read_csv(out / "results.csv")
    assert "rare" not in set(results["target"]) and results["value"].notna().all()
    assert "rare" not in pd.read_csv(out / "comparison.csv", index_col=0).index


# --------------------------------------------------------------------------------------------
# case 7: config mistakes, one line naming the key or file

CONFIG_MISTAKES = {
    "missing-config": ("--config", "{tmp}/nope.yaml", r"Parser key \"config\": File does not exist: '\S+nope\.yaml'"),
    "unknown-key": ("--config", "{tmp}/unknown.yaml", r"(does not accept option|Option) 'bogus_key'( is not accepted)?"),
    "wrong-type": ("--config", "{tmp}/{command}_type.yaml", r"Parser key \"\w+(\.\w+)?\": Expected a <class '(int|str)'>"),
    "unknown-option": ("--bogus", "1", r"unrecognized arguments: --bogus 1"),
}
WRONG_TYPES = {"extract": "data: {batch_size: abc}", "fit": "data: {n_splits: abc}", "analyze": "feature_root: [1, 2]",
               "train-grounding": "data: {batch_size: abc}"}


@pytest.mark.parametrize("command", list(WRONG_TYPES))
@pytest.mark.parametrize("case", CONFIG_MISTAKES)
def test_config_mistake_is_one_line_naming_the_key_or_file(command, case, tmp_path, capsys):
    (tmp_path / "unknown.yaml").write_text("bogus_key: 1\n")
    (tmp_path / f"{command}_type.yaml").write_text(WRONG_TYPES[command] + "\n")
    option, value, message = CONFIG_MISTAKES[case]
    line = _error(capsys, [command, option, value.format(tmp=tmp_path, command=command)])
    assert re.search(message, line) and line.endswith(f"; see spatial-probing {command} --help")
    assert "usage:" not in capsys.readouterr().err


@pytest.mark.parametrize(("study", "args", "message"), [
    ("grounding", ["--config", "x.yaml"], "unrecognized arguments: --config x.yaml"),
    ("grounding", ["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    ("transfer", ["--eval_rows", "1.5"], "argument --eval_rows: invalid int value: '1.5'"),
])
def test_study_option_mistake_is_one_line(study, args, message, capsys):
    module = importlib.import_module(f"spatial_probing.studies.{study}")
    assert module.main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}; see python -m spatial_probing.studies.{study} --help"


@pytest.mark.parametrize("args", [["--bogus", "1"], ["--config", "x.yaml"], []])
def test_report_option_mistake_is_one_line(args, capsys):
    line = _error(capsys, ["report", *args])
    assert re.search(r"unrecognized arguments|required: --results", line)


# --------------------------------------------------------------------------------------------
# case 6: hostile text in names, and paths with spaces and non-ASCII characters

HOSTILE = "<script>document.title='pwned'</script>&\"q'$x$\x07"


def test_hostile_names_are_escaped_in_the_report_figures_and_csvs(tmp_path):
    import xml.dom.minidom

    rows = toy_rows(relations=("left of", "above", f"near {HOSTILE}"))
    rows = SpatialRows(name=rows.name, captions=tuple(c + HOSTILE for c in rows.captions), relations=rows.relations,
                       labels=rows.labels, images=rows.images, image_links=rows.image_links, source=rows.source)
    write_entry(tmp_path / "feät ures" / "a", rows, toy_features(rows), encoder=f"toy:{HOSTILE}")
    out = tmp_path / "oüt dir"
    assert main(_fit_args(out, "--data.feature_root", str(tmp_path / "feät ures"))) == 0
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "\x07" not in page and "\\x07" in page
    for svg in (out / "figures").glob("*.svg"):
        text = svg.read_text()
        assert "<script>" not in text and "\x07" not in text and "$x$" in text  # literal, not mathtext
        xml.dom.minidom.parse(str(svg))  # still valid XML
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert set(results["encoder"]) == {f"toy:{HOSTILE}"}  # the CSV keeps the name exactly (quoted)
    assert f"near {HOSTILE}" in set(results["target"])


@pytest.mark.slow
def test_hostile_reports_run_no_script_in_headless_chromium(tmp_path):
    """The fit report and a study report of hostile names, opened in Chromium: the text shows, no script runs."""
    from test_report_browser import _browser

    from spatial_probing.studies.report import write_report

    attack = HOSTILE + "<img src=x onerror=\"document.title='pwned'\">"
    rows = toy_rows(relations=("left of", "above", f"near {attack}"))
    write_entry(tmp_path / "features" / "a", rows, toy_features(rows), encoder=f"toy:{attack}")
    assert main(_fit_args(tmp_path / "fit", "--data.feature_root", str(tmp_path / "features"))) == 0
    study = write_report(tmp_path / "study", attack, [("h1", attack), ("p", f"**{attack}** `{attack}`"),
                                                      ("table", pd.DataFrame({"arm": [attack], "value": [0.5]}))])
    browser = _browser(width=1200)
    try:
        for page in (tmp_path / "fit" / "report.html", study.with_suffix(".html")):
            browser.get(page.as_uri())
            time.sleep(0.5)  # an onerror handler would fire once the broken image fails
            assert browser.title != "pwned", page
            assert browser.execute_script("return document.querySelectorAll('script').length") == 0, page
            assert "<script>document.title='pwned'</script>" in browser.execute_script(
                "return document.body.innerText"), page  # shown as text
    finally:
        browser.quit()


def test_wandb_tables_get_printable_names(monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from spatial_probing.report.wandb import SafeWandbLogger

    seen = {}
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns, data, dataframe, step: seen.update(df=dataframe))
    logger = SafeWandbLogger(offline=True)
    logger.log_table("t", dataframe=pd.DataFrame({HOSTILE: [HOSTILE]}))
    assert list(seen["df"].columns) == [HOSTILE.replace("\x07", "\\x07")] and seen["df"].iloc[0, 0] == seen["df"].columns[0]
