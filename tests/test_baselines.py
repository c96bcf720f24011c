"""Baselines beside the encoders: same rows and folds, majority, bag of n-grams with and without the relation."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
from probe_entries import toy_entry, toy_rows

from spatial_probing.probes.baselines import baseline_features, majority_fit, mask_relation
from spatial_probing.probes.data import ProbeDataModule
from spatial_probing.probes.module import LinearProbe
from spatial_probing.tasks.relation_type import RelationType


def _fit(dm: ProbeDataModule, **kwargs) -> LinearProbe:
    model = LinearProbe(**kwargs)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    return model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("entries")
    valid = np.ones(90, dtype=bool)
    valid[[4, 50]] = False  # the encoder lost two rows (failed images): baselines keep every row
    toy_entry(root, "enc", signal=0.3, valid=valid)
    dm = ProbeDataModule(features=[str(root / "enc")], task=RelationType(min_count=20),
                         baselines=["majority", "ngrams", "ngrams-masked"])
    dm.setup("fit")
    return dm, _fit(dm, Cs=[1.0]).results()


def test_baselines_use_the_tasks_folds(fitted):
    dm, _ = fitted
    encoder, *baselines = dm.probe_sets
    assert [b.info["encoder"] for b in baselines] == ["baseline:majority", "baseline:ngrams", "baseline:ngrams-masked"]
    for b in baselines:
        assert len(b.rows) == 90
        # on the rows both have, the baseline's folds are the encoder's, fold for fold and target for target
        np.testing.assert_array_equal(b.test_mask[:, encoder.rows], encoder.test_mask)
        np.testing.assert_array_equal(b.train_mask[:, encoder.rows], encoder.train_mask)


def test_lexical_baselines_and_majority_score_as_expected(fitted):
    _, df = fitted
    f1 = df[df["metric"] == "f1_macro"].groupby("encoder")["value"].mean()
    assert f1["baseline:ngrams"] == pytest.approx(1.0)  # the relation words are in the caption
    assert f1["baseline:ngrams-masked"] < 0.6  # without them the captions carry no relation
    # majority: every test row gets the minority-free answer "no" (each relation is 1/3 of the rows)
    acc = df[(df["metric"] == "accuracy") & (df["encoder"] == "baseline:majority")]["value"]
    f1_pos = df[(df["metric"] == "f1_pos") & (df["encoder"] == "baseline:majority")]["value"]
    assert (f1_pos == 0).all() and acc.between(0.6, 0.7).all()


def test_majority_fit_predicts_the_training_majority():
    Y = np.array([[1, 0], [1, 0], [1, 1], [0, 1]])
    train = np.ones((1, 4, 2), dtype=bool)
    train[0, 3, 1] = False  # target 1 trains on 3 rows: one positive
    fit = majority_fit(Y, train, (1.0, 10.0))
    np.testing.assert_allclose(fit.b[0, 0], [np.log(3.5 / 1.5), np.log(1.5 / 2.5)])
    assert fit.W.abs().sum() == 0 and fit.b.shape == (1, 2, 2)


def test_ngram_features_and_relation_masking():
    rows = toy_rows(per_relation=2)
    assert mask_relation("The cat is left of the dog.", "left of") == "The cat is the dog."
    full, masked = baseline_features("ngrams", rows), baseline_features("ngrams-masked", rows)
    assert full.shape[0] == masked.shape[0] == 6 and full.shape[1] > masked.shape[1]
    assert set(np.unique(full)) == {0.0, 1.0}
