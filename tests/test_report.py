"""Results tables, determinism, the HTML report and logging (W&B offline, W&B faults, CSV logger)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from probe_entries import toy_entry, toy_features, toy_rows, write_entry

from spatial_probing.cli import main
from spatial_probing.cli.fit import run_fit
from spatial_probing.probes.results import comparison_table, results_frame, summary
from spatial_probing.report.probe_figures import _gains, reference_label
from spatial_probing.report.run_files import load_run
from spatial_probing.report.tables import format_table, write_results


def _frame() -> pd.DataFrame:
    """Two encoders, two relations, two folds, macro-F1 only: values chosen to check every mean by hand."""
    values = {  # (encoder, target) -> per-fold values
        ("sbert:/home/u/models/all-mpnet-base-v2@text", "left of"): [0.8, 0.6],
        ("sbert:/home/u/models/all-mpnet-base-v2@text", "above"): [0.5, 0.7],
        ("openclip:ViT-B-32/openai@image", "left of"): [0.4, 0.2],
        ("openclip:ViT-B-32/openai@image", "above"): [0.3, 0.5],
    }
    rows = [
        {"dataset": "vsr_random/train", "entry": f"key{enc[:4]}", "storage_dtype": "float32", "precision": "32-true",
         "encoder": enc, "view": enc.rsplit("@", 1)[1], "layer": "final", "task": "relation_type", "target": target,
         "fold": fold, "C": 1.0, "metric": "f1_macro", "value": v, "solver": "sklearn", "n_train": 8, "n_test": 2}
        for (enc, target), folds in values.items() for fold, v in enumerate(folds)
    ]  # fmt: skip
    return results_frame([pd.DataFrame(rows)])


def test_comparison_table_layout_and_means():
    table = comparison_table(_frame())
    assert list(table.columns) == ["sbert:all-mpnet-base-v2@text", "openclip:ViT-B-32/openai@image"]
    assert list(table.index) == ["left of", "above", "MEAN"]
    np.testing.assert_allclose(table.to_numpy(), [[0.7, 0.3], [0.6, 0.4], [0.65, 0.35]])
    text = format_table(table)
    assert "MEAN" in text and "0.6500" in text and "0.3500" in text


def test_summary_std_is_over_fold_means():
    s = summary(_frame()).set_index("probe")
    # sbert fold means: (0.8+0.5)/2 = 0.65 and (0.6+0.7)/2 = 0.65 -> std 0; openclip 0.35, 0.35
    assert s.loc["sbert:all-mpnet-base-v2@text", "mean"] == pytest.approx(0.65)
    assert s.loc["sbert:all-mpnet-base-v2@text", "std"] == pytest.approx(0.0)
    assert s.loc["openclip:ViT-B-32/openai@image", "n_targets"] == 2


def test_two_entries_of_one_encoder_never_pool():
    df = _frame()
    sbert = df[df["encoder"].str.startswith("sbert")]
    half = sbert.assign(entry="keyhalf", storage_dtype="float16", value=sbert["value"] / 2)
    table = comparison_table(pd.concat([sbert, half], ignore_index=True))
    assert list(table.columns) == ["sbert:all-mpnet-base-v2@text storage_dtype=float32",
                                   "sbert:all-mpnet-base-v2@text storage_dtype=float16"]
    np.testing.assert_allclose(table.loc["MEAN"].to_numpy(), [0.65, 0.325])
    other_rows = sbert.assign(dataset="vsr_random/dev", entry="keydev", value=0.5)
    table = comparison_table(pd.concat([sbert, other_rows], ignore_index=True))
    assert list(table.columns) == ["sbert:all-mpnet-base-v2@text #keysbe", "sbert:all-mpnet-base-v2@text #keydev"]
    assert summary(pd.concat([sbert, other_rows], ignore_index=True))["n_targets"].tolist() == [2, 2]


def test_unselected_C_grid_becomes_separate_columns():
    df = _frame()
    grid = pd.concat([df, df.assign(C=100.0, value=df["value"] + 0.1)], ignore_index=True)
    columns = list(comparison_table(grid).columns)
    assert "sbert:all-mpnet-base-v2@text C=1" in columns and "openclip:ViT-B-32/openai@image C=100" in columns


def test_write_results_is_sorted_and_fixed_format(tmp_path):
    df = _frame()
    written = write_results(df, tmp_path / "a")
    lines = written["results"].read_text().splitlines()
    assert lines[0] == ("dataset,entry,storage_dtype,precision,encoder,view,layer,task,target,fold,C,metric,value,"
                        "solver,n_train,n_test")
    assert lines[1] == ("vsr_random/train,keyopen,float32,32-true,openclip:ViT-B-32/openai@image,image,final,"
                        "relation_type,above,0,1,f1_macro,0.300000,sklearn,8,2")
    assert len(lines) == 9
    # the row order of the input does not matter for results.csv
    assert write_results(df.iloc[::-1], tmp_path / "b")["results"].read_bytes() == written["results"].read_bytes()
    assert pd.read_parquet(written["parquet"])["value"].sum() == pytest.approx(df["value"].sum())
    # the comparison keeps the fit's order: encoders as configured, targets as the task orders them
    assert written["comparison"].read_text().splitlines() == [
        "target,sbert:all-mpnet-base-v2@text,openclip:ViT-B-32/openai@image",
        "left of,0.700000,0.300000", "above,0.600000,0.400000", "MEAN,0.650000,0.350000",
    ]


_FITS = pd.DataFrame([
    {"encoder": "sbert:/home/u/models/all-mpnet-base-v2@text", "view": "text", "layer": "final", "n_rows": 10,
     "n_excluded": 0, "path": "a", "solver": "sklearn", "tol": 1e-4, "max_iter": 100, "class_weight": "none",
     "n_converged": 4, "n_problems": 4},
    {"encoder": "openclip:ViT-B-32/openai@image", "view": "image", "layer": "final", "n_rows": 10,
     "n_excluded": 3, "path": "b", "solver": "sklearn", "tol": 1e-4, "max_iter": 100, "class_weight": "none",
     "n_converged": 4, "n_problems": 4},
])  # fmt: skip
_SBERT, _CLIP = "sbert:all-mpnet-base-v2@text", "openclip:ViT-B-32/openai@image"


def _stats_and_comparisons(directory: Path) -> None:
    """stats.csv and comparisons.csv rows in SCHEMA.md's layout for the two probes of `_frame`."""
    identity = {"dataset": "vsr_random/train", "view": "text", "layer": "final", "level": 0.95, "method": "bootstrap"}
    stats = [
        {**identity, "entry": "keysbe", "encoder": "sbert:/home/u/models/all-mpnet-base-v2@text", "task": "relation_type",
         "target": "meta:Projective", "metric": "f1_macro", "estimate": 0.65, "ci_low": 0.6, "ci_high": 0.7},
        {**identity, "entry": "keyope", "encoder": "openclip:ViT-B-32/openai@image", "view": "image",
         "task": "relation_type", "target": "meta:Projective", "metric": "f1_macro", "estimate": 0.35,
         "ci_low": 0.3, "ci_high": 0.4},
        {**identity, "entry": "keysbe", "encoder": "sbert:/home/u/models/all-mpnet-base-v2@text", "task": "structure",
         "target": "mean", "metric": "converse_accuracy", "estimate": 0.5, "ci_low": 0.45, "ci_high": 0.55},
    ]  # fmt: skip
    pd.DataFrame(stats).to_csv(directory / "stats.csv", index=False)
    comparisons = [  # the reference on either side: gains come out as (other - reference)
        {"task": "relation_type", "target": "left of", "metric": "f1_macro", "label_a": _SBERT, "label_b": _CLIP,
         "diff": 0.4, "ci_low": 0.3, "ci_high": 0.5, "p_value": 0.001, "p_holm": 0.002, "significant": True,
         "method": "paired bootstrap"},
        {"task": "relation_type", "target": "above", "metric": "f1_macro", "label_a": _CLIP, "label_b": _SBERT,
         "diff": -0.2, "ci_low": -0.5, "ci_high": 0.1, "p_value": 0.3, "p_holm": 0.3, "significant": False,
         "method": "paired bootstrap"},
        {"task": "relation_type", "target": "wins", "metric": "f1_macro", "label_a": _SBERT, "label_b": _CLIP,
         "diff": 1, "ci_low": None, "ci_high": None, "p_value": None, "p_holm": None, "significant": None,
         "method": "count"},
    ]  # fmt: skip
    pd.DataFrame(comparisons).to_csv(directory / "comparisons.csv", index=False)


def test_gains_are_other_minus_reference_whichever_side_it_was_on(tmp_path):
    write_results(_frame(), tmp_path, _FITS)
    _stats_and_comparisons(tmp_path)
    run = load_run(tmp_path)
    assert reference_label(list(pd.unique(run.results["label"]))) == _SBERT  # the first sbert probe by default
    gains = _gains(run.comparisons, _SBERT, "f1_macro").set_index("target")
    assert list(gains.index) == ["left of", "above"] and set(gains["other"]) == {_CLIP}
    np.testing.assert_allclose(gains[["gain", "low", "high"]].to_numpy(), [[-0.4, -0.5, -0.3], [-0.2, -0.5, 0.1]])
    assert gains["significant"].tolist() == [True, False]


def test_report_embeds_every_figure_and_writes_png_and_svg(tmp_path, capsys):
    results = tmp_path / "run"
    write_results(_frame(), results, _FITS)
    _stats_and_comparisons(results)
    (results / "config.yaml").write_text("model:\n  solver: sklearn\n")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    figures = ["heatmap", "scatter", "distribution", "gains", "meta_categories", "baselines_controls", "structure"]
    for name in figures:
        assert f'id="fig-{name}"' in page
        assert (tmp_path / "report" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (tmp_path / "report" / "figures" / f"{name}.svg").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures) and "http" not in page.split("<body>")[1]
    assert 'data-rows="2"' in page and "solver: sklearn" in page
    heatmap = (tmp_path / "report" / "figures" / "heatmap.svg").read_text()
    assert ">left of<" in heatmap and ">above<" in heatmap and "macro-F1 (mean over folds)" in heatmap
    assert "chance 0.5" in heatmap
    meta = (tmp_path / "report" / "figures" / "meta_categories.svg").read_text()
    assert "bootstrap CIs" in page and ">Projective<" in meta
    # the tables stay: heat-coloured comparison, tolerance note, exclusions, meta-categories
    assert "hsl(210, 70%, 40%)" in page and "hsl(210, 70%, 95%)" in page  # max 0.7 darkest, min 0.3 lightest
    assert "original_protocol.yaml" in page and "partly reflect solver tolerance" in page and "<td>3</td>" in page
    assert "0.6500 \u00b1 0.0000" in page
    assert capsys.readouterr().out.startswith(f"report: {tmp_path / 'report' / 'report.html'} (7 figures")


def test_report_of_a_directory_without_results_says_so(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path)]) == 2
    assert f"no results.csv or stats.csv in {tmp_path}" in capsys.readouterr().err


# -- end to end through the fit CLI ------------------------------------------------------------


def _fit_args(tmp_path, out_name: str = "out", *extra: str) -> list[str]:
    entries = tmp_path / "features"
    if not entries.exists():
        toy_entry(entries, "a", encoder="toy:a")
        rows = toy_rows()
        valid = np.ones(len(rows), dtype=bool)
        valid[[4, 5]] = False
        features = toy_features(rows, signal=0.5, seed=1)
        features[~valid] = np.nan
        write_entry(entries / "b", rows, features, valid=valid, encoder="toy:b", view="image")
    return ["--data.feature_root", str(entries), "--data.task.min_count", "20", "--out_dir", str(tmp_path / out_name),
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path / "wandb"


def test_two_identical_fits_write_byte_identical_csvs(tmp_path, wandb_dir):
    assert run_fit(_fit_args(tmp_path, "run1")) == 0
    assert run_fit(_fit_args(tmp_path, "run2")) == 0
    for name in ("results.csv", "comparison.csv", "summary.csv"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes()
    fits = pd.read_csv(tmp_path / "run1" / "fits.csv").set_index("encoder")
    assert fits.loc["toy:b", "n_excluded"] == 2 and fits.loc["toy:a", "n_excluded"] == 0


def test_wandb_offline_run_holds_the_relation_table(tmp_path, wandb_dir, capsys):
    assert run_fit(_fit_args(tmp_path)) == 0
    tables = list(wandb_dir.glob("offline-run-*/files/media/table/relations_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"] == ["relation", "meta_category", "toy:a", "toy:b"]
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv", index_col=0)
    by_relation = {row[0]: row for row in logged["data"]}
    assert by_relation["left of"][1] == "Projective" and by_relation["near"][1] == "Proximity"
    assert by_relation["near"][3] == pytest.approx(comparison.loc["near", "toy:b"], abs=1e-6)
    out = capsys.readouterr().out
    assert "MEAN" in out and f"W&B run: {tables[0].parents[3]}" in out


def test_wandb_run_goes_with_the_outputs_holds_figures_and_stays_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_SILENT"):  # the run directory and the console as a user gets them
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_fit(_fit_args(tmp_path)) == 0
    assert not (tmp_path / "wandb").exists()  # not in the working directory
    (run,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    assert len(list(media.glob("table/relations_*.table.json"))) == 1
    images = {p.name.rsplit("_", 2)[0] for p in media.glob("images/figures/*.png")}
    assert {"heatmap", "distribution", "scatter", "meta_categories"} <= images
    assert len(list(media.glob("table/meta_categories/*.table.json"))) == 2  # one bar chart per probe
    out, err = capfd.readouterr()
    assert "Run history" not in out + err and "Run summary" not in out + err
    assert f"W&B run: {run}" in out and f"report: {tmp_path / 'out' / 'report.html'}" in out


@pytest.mark.parametrize("fault", ["init", "log"])
def test_wandb_failure_still_writes_results_and_says_where(tmp_path, wandb_dir, monkeypatch, capsys, fault):
    import wandb
    from wandb.sdk.wandb_run import Run

    def broken(*args, **kwargs):
        raise RuntimeError(f"simulated W&B {fault} failure")

    monkeypatch.setattr(*((wandb, "init", broken) if fault == "init" else (Run, "log", broken)))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=f"Results are still written to {out}"):
        assert run_fit(_fit_args(tmp_path)) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["encoder"]) == {"toy:a", "toy:b"} and len(results) == 2 * 3 * 5 * 4
    assert f"every result is in {out}" in capsys.readouterr().out
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("logger", ["CSVLogger", "TensorBoardLogger"])
def test_csv_and_tensorboard_loggers_are_selectable(tmp_path, wandb_dir, logger):
    logs = tmp_path / "logs"
    args = _fit_args(tmp_path, "out", "--trainer.logger", f"lightning.pytorch.loggers.{logger}",
                     "--trainer.logger.save_dir", str(logs))  # fmt: skip
    assert run_fit(args) == 0
    assert (tmp_path / "out" / "results.csv").is_file() and not wandb_dir.exists()
    if logger == "CSVLogger":
        metrics = pd.read_csv(next(logs.rglob("metrics.csv")))
        assert "toy:a/summary/f1_macro_mean" in metrics.columns
        assert "toy:b/fold0/val/f1_macro/left of" in metrics.columns
    else:
        assert next(logs.rglob("events.out.tfevents.*")).stat().st_size > 0


def test_print_config_shows_the_resolved_config(tmp_path, capsys):
    assert run_fit(["--model.solver", "sklearn", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "solver: sklearn" in out and "SafeWandbLogger" in out and "out_dir: outputs/probe" in out


@pytest.mark.parametrize("name", ["original_protocol", "converged", "credible", "demo"])
def test_shipped_probe_configs_parse(name, capsys):
    path = Path(__file__).parents[1] / "configs" / "probe" / f"{name}.yaml"
    assert run_fit(["--config", str(path), "--print_config"]) == 0
    assert "feature_root: outputs/features" in capsys.readouterr().out


def test_analysis_directory_reports_its_results_and_layer_curves(tmp_path):
    """An `analyze` out_dir (stats.csv only) gets a report: headline table and the layer curve of an
    encoder measured at several layers."""
    from spatial_probing.analysis.stats import stat_row, write_stats
    from spatial_probing.report.build import write_report

    rows = []
    for layer, score in (("0", 0.2), ("1", 0.4), ("final", 0.6)):
        identity = {"dataset": "derived:structure:toy/dev", "entry": "e", "encoder": "sbert:toy@text" + (
            "" if layer == "final" else f"[{layer}]"), "view": "text", "layer": layer}
        rows.append(stat_row(identity, "structure", "all", "converse_score", np.full(20, score)))
    rows.append(stat_row({"dataset": "derived:structure:toy/dev", "encoder": "baseline:bow", "view": "text",
                          "layer": "final"}, "structure", "all", "converse_score", np.full(20, 0.5)))
    write_stats(rows, tmp_path / "stats.csv")
    written = write_report(tmp_path)
    names = [f.name for f in written.figures]
    assert "analysis_layers" in names and "structure" in names
    curve = next(f for f in written.figures if f.name == "analysis_layers")
    (line,) = [ln for ln in curve.figure.axes[0].get_lines() if ln.get_marker() == "o"]
    assert list(line.get_ydata()) == [0.2, 0.4, 0.6]  # layers 0, 1, then final
    html = written.path.read_text()
    assert "Analysis results (stats.csv)" in html and "0.6000" in html and "Relation x encoder" not in html


def test_several_results_directories_sit_side_by_side_never_pooled(tmp_path):
    """The same encoder in two runs (e.g. the original protocol and the credibility run) gives two columns
    named by run, even with the same solver; one --out is required."""
    from spatial_probing.errors import SpatialProbingError
    from spatial_probing.report.build import write_report

    df = _frame()
    for name, shift in (("original", 0.0), ("credibility", 0.1)):
        (tmp_path / name).mkdir()
        df.assign(value=df["value"] + shift).to_csv(tmp_path / name / "results.csv", index=False)
    written = write_report([tmp_path / "original", tmp_path / "credibility"], tmp_path / "both")
    table = comparison_table(written.run.results)
    assert list(table.columns) == [f"{run}: {enc}" for run in ("original", "credibility")
                                   for enc in ("sbert:all-mpnet-base-v2@text", "openclip:ViT-B-32/openai@image")]
    np.testing.assert_allclose(table.loc["MEAN"].to_numpy(), [0.65, 0.35, 0.75, 0.45])
    assert "credibility: sbert:all-mpnet-base-v2@text" in written.path.read_text()
    with pytest.raises(SpatialProbingError, match="needs --out"):
        write_report([tmp_path / "original", tmp_path / "credibility"])


def test_a_figure_is_laid_out_once_and_every_format_saves_the_same_tight_area(monkeypatch):
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from PIL import Image

    from spatial_probing.report.figures import ReportFigure

    runs = []
    execute = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", lambda self, fig: (runs.append(1), execute(self, fig))[1])
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_ylabel("a long label that the constrained layout makes room for")
    figure = ReportFigure("toy", "Toy", "A line.", fig)
    png, svg = figure.png(dpi=100), figure.svg()
    assert len(runs) == 1  # savefig with "tight" lays out and draws twice per format
    width_px = Image.open(io.BytesIO(png)).size[0]
    width_pt = float(re.search(rb'<svg[^>]* width="([0-9.]+)pt"', svg).group(1))
    # both formats hold the same padded tight box, in inches
    assert width_px / 100 == pytest.approx(width_pt / 72, abs=0.02)
    assert width_px / 100 == pytest.approx(figure._area().width, abs=0.02)
