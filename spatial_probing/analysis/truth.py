"""Caption truth (VSR's own task) and scene relation probes under VSR's protocol, with their baselines.

For ``dataset`` (e.g. ``vsr_random``), the cache entries of ``<dataset>/train``, ``/dev`` and ``/test``
are probed by `protocol.fit_dev_test` (fit on train, C chosen on dev, test scored once), and test
accuracy is reported overall (target ``all``), per relation and per VSR meta-category (``meta:<cat>``)
with bootstrap CIs over test rows. ``features`` picks what a row is:

- ``text``: each text entry, beside ``baseline:majority`` and ``baseline:bow`` (vocabulary of train).
- ``image``: each image entry, beside ``baseline:geometry`` (the skyline) and ``baseline:pixels``
  (scenes only).
- ``joint``: each image entry combined with the same encoder's text entry by ``joint`` modes (concat,
  product, absdiff), beside geometry and pixels tied to the caption's relation (``outer``).

``target: relation`` (scenes) asks which relation holds instead: rows whose caption is true, one class
per relation, the arg-max of one-vs-rest probes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from spatial_probing.analysis.base import Analysis, grouped_rows, view_of, with_view
from spatial_probing.analysis.features import (
    FeatureIndex,
    Features,
    bag_of_words,
    geometry,
    pixels,
    relation_onehot,
    words,
)
from spatial_probing.analysis.protocol import DEFAULT_CS, Combine, classes, combine, fit_dev_test
from spatial_probing.analysis.stats import stat_row
from spatial_probing.data.rows import SpatialRows

SPLITS = ("train", "dev", "test")
Matrices = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (features, valid)


class Truth(Analysis):
    """Probe caption truth (or, on scenes, the relation) on fixed train/dev/test splits.

    Args:
        dataset: the dataset name of the entries without the split (``vsr_random``, ``vsr_zeroshot``,
            ``scenes``); entries of ``<dataset>/{train,dev,test}`` are read.
        features: ``text``, ``image`` or ``joint`` (see the module doc).
        joint: how text and image features combine for ``joint``.
        target: ``truth`` (the caption's label) or ``relation`` (which relation a true caption states).
        Cs: the C grid; the dev split chooses one.
        class_weight: ``balanced`` or None.
        baselines: which of ``majority``, ``bow``, ``geometry``, ``pixels`` to run beside the encoders
            (each only where it applies to ``features``).
        image_size: scene image side in pixels (scales the skyline's boxes).
    """

    name = "caption_truth"

    def __init__(self, dataset: str, features: Literal["text", "image", "joint"] = "text",
                 joint: list[Combine] | None = None, target: Literal["truth", "relation"] = "truth",
                 Cs: list[float] | None = None, class_weight: Literal["balanced"] | None = "balanced",
                 baselines: list[Literal["majority", "bow", "geometry", "pixels"]] | None = None,
                 image_size: int = 96) -> None:
        self.dataset, self.features, self.target = dataset, features, target
        self.joint = list(joint or ["concat", "product", "absdiff"])
        self.Cs = list(Cs or DEFAULT_CS)
        self.class_weight = class_weight
        self.baselines = list(baselines if baselines is not None else ["majority", "bow", "geometry", "pixels"])
        self.image_size = image_size
        if target == "relation":
            self.name = "relation_type"

    # -- what rows and targets the probe sees ------------------------------------------------------
    def _targets(self, rows: SpatialRows, relations: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(kept rows, Y [kept, T]) for the chosen target."""
        if self.target == "truth":
            return np.arange(len(rows)), np.asarray(rows.labels, dtype=np.int8).reshape(-1, 1)
        rel = np.asarray(rows.relations, dtype=object)
        keep = np.flatnonzero((rows.labels == 1) & np.isin(rel, relations))
        return keep, np.stack([rel[keep] == r for r in relations], axis=1).astype(np.int8)

    def run(self, index: FeatureIndex) -> list[dict]:
        names = {s: f"{self.dataset}/{s}" for s in SPLITS}
        labels = [lb for lb in index.labels(names["train"]) if view_of(lb) == self.view]
        missing = {lb: [s for s in SPLITS if lb not in index.labels(names[s])] for lb in labels}
        for label, splits in missing.items():
            if splits:
                raise index.missing(names[splits[0]], f"cache entry of {label}", view_of(label))
        rows = self._rows(index, names, labels)
        relations = tuple(sorted(set(rows["train"].relations)))
        out: list[dict] = []
        for label in labels:
            mats = {s: self._encoder_matrix(index, names[s], label) for s in SPLITS}
            identity = dict(index.get(names["test"], label).identity)
            if self.features == "joint":
                identity["view"] = "joint:" + "+".join(self.joint)
            out += self._score(identity, rows, mats, relations)
        out += self._baseline_rows(rows, relations, names["test"])
        return out

    @property
    def view(self) -> str:
        """The view of the entries read: text, or image for image and joint features."""
        return "text" if self.features == "text" else "image"

    def _rows(self, index: FeatureIndex, names: dict[str, str], labels: list[str]) -> dict[str, SpatialRows]:
        if labels:
            return {s: index.get(names[s], labels[0]).rows for s in SPLITS}
        if self.features != "text" and "geometry" not in self.baselines and "pixels" not in self.baselines:
            raise index.missing(names["train"], f"{self.features} entries", self.view)
        text = [lb for lb in index.labels(names["train"]) if all(lb in index.labels(names[s]) for s in SPLITS)]
        if not text:
            raise index.missing(self.dataset, "entries of all three splits")
        return {s: index.get(names[s], text[0]).rows for s in SPLITS}

    def _encoder_matrix(self, index: FeatureIndex, dataset: str, label: str) -> tuple[np.ndarray, np.ndarray]:
        feats = index.get(dataset, label)
        if self.features != "joint":
            return feats.x, feats.valid
        text = index.get(dataset, with_view(label, "text"))
        return combine(text.x, feats.x, self.joint), feats.valid & text.valid

    def _score(self, identity: dict, rows: dict[str, SpatialRows], mats: Matrices,
               relations: tuple[str, ...]) -> list[dict]:
        """Fit/choose/score one feature source and turn its per-row test correctness into stats rows."""
        data = {}
        for s in SPLITS:
            keep, y = self._targets(rows[s], relations)
            ok = mats[s][1][keep]
            data[s] = (mats[s][0][keep[ok]], y[ok], keep[ok])
        result = fit_dev_test(data["train"][:2], data["dev"][:2], data["test"][0], self.Cs, self.class_weight)
        correct = (result.test_pred == classes(data["test"][1])).astype(np.float64)
        test_rel = [rows["test"].relations[i] for i in data["test"][2]]
        return [*grouped_rows(identity, self.name, "accuracy", correct, test_rel),
                stat_row(identity, self.name, "all", "chosen_C", result.C)]

    # -- baselines ------------------------------------------------------------------------------------
    def _baseline_rows(self, rows: dict[str, SpatialRows], relations: tuple[str, ...], test_name: str) -> list[dict]:
        out: list[dict] = []
        if "majority" in self.baselines:
            _, y_train = self._targets(rows["train"], relations)
            keep, y_test = self._targets(rows["test"], relations)
            majority = np.bincount(classes(y_train), minlength=y_train.shape[1] if y_train.shape[1] > 1 else 2).argmax()
            correct = (classes(y_test) == majority).astype(np.float64)
            identity = {"dataset": test_name, "encoder": "baseline:majority", "view": "", "layer": "final"}
            out += grouped_rows(identity, self.name, "accuracy", correct, [rows["test"].relations[i] for i in keep])
        for name, make in self._baseline_makers(rows, relations).items():
            if name in self.baselines:
                mats = {s: (f.x, f.valid) for s, f in ((s, make(rows[s])) for s in SPLITS)}
                identity = {"dataset": test_name, "encoder": f"baseline:{name}", "view": self.features,
                            "layer": "final"}
                out += self._score(identity, rows, mats, relations)
        return out

    def _baseline_makers(self, rows: dict[str, SpatialRows], relations: tuple[str, ...]
                         ) -> dict[str, Callable[[SpatialRows], Features]]:
        if self.features == "text":
            vocabulary = sorted({w for c in rows["train"].captions for w in words(c)})
            return {"bow": lambda r: bag_of_words(r, vocabulary)}
        if "subj_box" not in rows["train"].extra:  # not scenes: no boxes, no local images
            return {}
        image: dict[str, Callable[[SpatialRows], Features]] = {
            "geometry": lambda r: geometry(r, self.image_size), "pixels": pixels}
        if self.features == "image":
            return image
        return {name: (lambda r, f=f: _tied(relation_onehot(r, relations), f(r))) for name, f in image.items()}


def _tied(relation: Features, image: Features) -> Features:
    """Image-side baseline features tied to the caption's relation (outer product)."""
    return Features(image.label, combine(relation.x, image.x, ["outer"]), image.valid, image.rows, image.identity)
