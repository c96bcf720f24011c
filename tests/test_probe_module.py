"""ProbeDataModule and LinearProbe: entry checks, folds, fitting through a Trainer, C selection, fit CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from probe_entries import toy_entry, toy_features, toy_rows, write_entry
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from spatial_probing.cli.fit import run_fit
from spatial_probing.errors import FeatureError, SpatialProbingError
from spatial_probing.features.entry import load_entry
from spatial_probing.probes.data import ProbeDataModule, check_features, find_entries
from spatial_probing.probes.module import LinearProbe
from spatial_probing.tasks.relation_type import RelationType


def _datamodule(*paths, **kwargs) -> ProbeDataModule:
    relations = kwargs.pop("relations", None)
    dm = ProbeDataModule(features=[str(p) for p in paths], task=RelationType(min_count=20, relations=relations), **kwargs)
    dm.setup("fit")
    return dm


def _fit(dm: ProbeDataModule, **kwargs) -> LinearProbe:
    model = LinearProbe(**kwargs)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return model


def _normalized(entry_path):
    x = np.load(entry_path / "parts" / "text.npy").astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nan_in_valid_rows_is_refused_naming_the_rows(tmp_path):
    rows = toy_rows()
    features = toy_features(rows)
    features[[3, 41], 2] = np.nan
    features[57, 0] = np.inf
    path = write_entry(tmp_path / "bad", rows, features)
    with pytest.raises(FeatureError) as err:
        _datamodule(path)
    message = str(err.value)
    assert "NaN/inf in 3 rows" in message and f"{path} (view text, layer final)" in message
    assert "3 ('The thing 3 is left of the other.')" in message and "41 (" in message and "57 (" in message


def test_row_count_mismatch_is_refused_naming_the_file(tmp_path):
    rows = toy_rows()
    path = write_entry(tmp_path / "short", rows, toy_features(rows)[:-1], valid=np.ones(len(rows) - 1, bool))
    with pytest.raises(SpatialProbingError, match=str(path)):  # the store refuses it on load already
        _datamodule(path)
    entry = load_entry(toy_entry(tmp_path, "ok")).view("text")
    entry.features = entry.features[:-2]
    with pytest.raises(FeatureError, match=r"\(view text, layer final\) has shape \(88, 8\).*has 90 rows"):
        check_features(entry)


def test_failed_rows_are_excluded_and_counted(tmp_path):
    rows = toy_rows()
    features = toy_features(rows)
    valid = np.ones(len(rows), dtype=bool)
    valid[[0, 1, 50]] = False
    features[~valid] = np.nan  # as the store writes failed images
    dm = _datamodule(write_entry(tmp_path / "img", rows, features, valid=valid, view="image"))
    probe_set = dm.probe_sets[0]
    assert probe_set.info["n_excluded"] == 3 and probe_set.rows.tolist() == [r for r in range(90) if valid[r]]
    batch = dm.batch(0)
    assert batch["x"].shape == (87, 8) and torch.isfinite(batch["x"]).all()
    np.testing.assert_allclose(batch["x"].norm(dim=1).numpy(), 1.0, rtol=1e-6)
    # every valid row is a test row of exactly one fold, per target
    assert (batch["test_mask"].sum(dim=0) == 1).all()
    assert (batch["train_mask"] | batch["test_mask"]).all(dim=1).all()


def test_stratified_folds_are_scikit_learns(tmp_path):
    dm = _datamodule(toy_entry(tmp_path))
    probe_set = dm.probe_sets[0]
    y = probe_set.task.targets[:, 1]
    for k, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=42).split(np.zeros(90), y)):
        assert np.flatnonzero(probe_set.test_mask[k, :, 1]).tolist() == test.tolist()


def test_grouped_folds_keep_each_image_in_one_fold(tmp_path):
    probe_set = _datamodule(toy_entry(tmp_path), folds="grouped").probe_sets[0]
    fold_of_row = probe_set.test_mask.argmax(axis=0)  # [n, T]
    for t in range(probe_set.task.n_targets):
        for image in np.unique(probe_set.task.groups):
            assert len(set(fold_of_row[probe_set.task.groups == image, t])) == 1


def test_batched_probe_matches_converged_sklearn_per_fold(tmp_path):
    path = toy_entry(tmp_path)
    dm = _datamodule(path)
    model = _fit(dm, Cs=[0.5], solver="batched")
    df = model.results()
    assert model.W_0.shape == (5, 1, 3, 8) and model.b_0.shape == (5, 1, 3)
    assert set(df["solver"]) == {"batched"} and set(df["metric"]) == {"f1_macro", "f1_pos", "accuracy", "balanced_accuracy"}
    x, probe_set = _normalized(path), dm.probe_sets[0]
    for k in (0, 3):
        t = 2
        train, test = probe_set.train_mask[k, :, t], probe_set.test_mask[k, :, t]
        y = probe_set.task.targets[:, t]
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x[train], y[train])
        expected = f1_score(y[test], ref.predict(x[test]), average="macro")
        row = df[(df.fold == k) & (df.target == probe_set.task.target_names[t]) & (df.metric == "f1_macro")]
        assert row["value"].item() == pytest.approx(expected, abs=1e-9)
        assert (row["n_train"].item(), row["n_test"].item()) == (train.sum(), test.sum())


def test_sklearn_solver_is_reported_as_such(tmp_path):
    model = _fit(_datamodule(toy_entry(tmp_path)), solver="sklearn")
    df = model.results()
    assert set(df["solver"]) == {"sklearn"}
    assert model.fit_info[0]["solver"] == "sklearn" and model.fit_info[0]["tol"] == pytest.approx(1e-4)


def test_select_C_picks_the_best_inner_cv_macro_f1(tmp_path):
    path = toy_entry(tmp_path, signal=0.7)
    dm = _datamodule(path, relations=["left of"], n_splits=3)
    Cs = [0.05, 1.0, 20.0]
    df = _fit(dm, Cs=Cs, select_C=True).results()
    f1 = df[df.metric == "f1_macro"]
    assert len(f1) == 3 and set(f1["C"]) <= set(Cs)  # one chosen C per outer fold
    x, probe_set = _normalized(path), dm.probe_sets[0]
    y = probe_set.task.targets[:, 0]
    for k in range(3):
        train = probe_set.train_mask[k, :, 0]
        inner = StratifiedKFold(3, shuffle=True, random_state=42)
        scores = [
            cross_val_score(LogisticRegression(C=c, tol=1e-10, max_iter=10000), x[train], y[train],
                            cv=inner, scoring="f1_macro").mean()
            for c in Cs
        ]  # fmt: skip
        assert f1[f1.fold == k]["C"].item() == Cs[int(np.argmax(scores))]
    with pytest.raises(ValueError, match="select_C needs model.solver=batched"):
        LinearProbe(Cs=Cs, select_C=True, solver="sklearn")


def test_several_entries_fit_in_one_run_with_prefixed_metrics(tmp_path):
    a = toy_entry(tmp_path, "a", encoder="toy:a")
    b = toy_entry(tmp_path, "b", signal=0.3, seed=1, encoder="toy:b/x", view="image")
    dm = _datamodule(a, b)
    model = _fit(dm)
    df = model.results()
    assert list(df.drop_duplicates("encoder")["encoder"]) == ["toy:a", "toy:b/x"]
    logged = model.trainer.callback_metrics
    assert "toy:b_x/summary/f1_macro_mean" in logged
    assert "toy:a/fold2/val/f1_macro/near" in logged
    # per (fold, target) the headline metric only; every metric as fold means (results.csv holds each value)
    assert "toy:a/fold2/val/accuracy_mean" in logged and "toy:a/fold2/val/accuracy/near" not in logged
    per_fold = df[(df.encoder == "toy:a") & (df.metric == "f1_macro")].groupby("fold")["value"].mean()
    assert logged["toy:a/summary/f1_macro_mean"].item() == pytest.approx(per_fold.mean(), abs=1e-6)
    assert logged["toy:a/summary/f1_macro_std"].item() == pytest.approx(np.std(per_fold), abs=1e-6)


def test_entries_of_two_datasets_are_refused_naming_them(tmp_path):
    a = toy_entry(tmp_path, "a")
    rows = toy_rows(per_relation=25)
    b = write_entry(tmp_path / "b", replace(rows, name="toy/dev"), toy_features(rows))
    with pytest.raises(FeatureError, match=r"2 datasets \(toy/dev: .*/b; toy/train: .*/a\).*--data.dataset"):
        _datamodule(a, b)
    df = _fit(_datamodule(a)).results()
    assert set(df["dataset"]) == {"toy/train"} and set(df["entry"]) == {"a"}


def test_find_entries_searches_the_root_and_filters_by_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "features"
    a = toy_entry(root / "toy_train", "a")
    (root / "toy_train" / "b.partial").mkdir(parents=True)
    (root / "toy_train" / "b.partial" / "meta.json").write_text(json.dumps({"dataset": "toy/train"}))
    assert find_entries([], str(root)) == [a]
    assert find_entries([], "features", dataset="toy/train") == [Path("features/toy_train/a")]
    assert find_entries(["toy_train/a"], str(root)) == [a]
    with pytest.raises(FeatureError, match="for dataset 'vsr_random/train'"):
        find_entries([], str(root), dataset="vsr_random/train")
    with pytest.raises(FeatureError, match="does not exist"):
        find_entries(["nowhere"], str(root))


def test_fast_dev_run_of_fit_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    entry = toy_entry(tmp_path)
    out = tmp_path / "out"
    args = ["--data.features", f"[{entry}]", "--data.task.min_count", "20", "--out_dir", str(out),
            "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"]  # fmt: skip
    assert run_fit(args) == 0
    assert (out / "results.csv").read_text().startswith(
        "dataset,entry,storage_dtype,precision,encoder,view,layer,task,target,fold,C,metric,value,")
    assert run_fit(["--model.Cs", "oops"]) == 2  # a bad option is an argument error, not a traceback
