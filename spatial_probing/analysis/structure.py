"""Structure tests on derived triplets (`data.derived`, `data.structure`) and zero-shot image-text scoring.

On a ``derived:structure:<base>/<split>`` dataset, for every text entry and ``baseline:bow``:

- ``converse_score``: share of triplets whose converse paraphrase is nearer (cosine) the caption than its
  contradiction (ties count 1/2). Both hold the same words, so the bag of words scores exactly 0.5.
- ``swap_score``: share of triplets whose paraphrase is nearer the caption than the argument swap (the
  caption's own words in the other order); the bag of words scores 0.
- ``pair_probe_accuracy``: a logistic probe on pair features (caption, paraphrase) -> same meaning and
  (caption, contradiction) -> not, trained on all converse pairs but one and tested on the held-out one
  (leave one converse pair out), reported overall and per held-out pair ``<R>|<R'>``.

Zero-shot (``ZeroShot``): for every image entry with a text entry of the same encoder, on triplets whose
caption is true of its image, the share where the image is more similar to the caption than to its
contradiction (no probe).
"""

from __future__ import annotations

import numpy as np

from spatial_probing.analysis.base import Analysis, grouped_rows, view_of, with_view
from spatial_probing.analysis.features import FeatureIndex, Features, bag_of_words
from spatial_probing.analysis.protocol import Combine, combine, predictions
from spatial_probing.analysis.stats import stat_row
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.structure import CONVERSE_PAIRS, ROLES
from spatial_probing.errors import DataError
from spatial_probing.probes.solver import fit_logreg


def triplet_rows(rows: SpatialRows) -> dict[str, np.ndarray]:
    """Row index of each role per triplet (triplets with all four roles, in triplet order)."""
    if "role" not in rows.extra or "triplet" not in rows.extra:
        raise DataError(f"{rows.name} is not a derived:structure dataset (no role/triplet columns)")
    at: dict[tuple[int, str], int] = {(t, r): i for i, (t, r) in enumerate(zip(rows.extra["triplet"],
                                                                                rows.extra["role"], strict=True))}
    complete = sorted({t for t, _ in at if all((t, role) in at for role in ROLES)})
    return {role: np.array([at[(t, role)] for t in complete], dtype=np.int64) for role in ROLES}


def nearer(x: np.ndarray, anchor: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per item: 1 where row ``a`` is nearer (cosine; rows are unit) row ``anchor`` than row ``b``, 1/2 on ties."""
    ca = np.einsum("nd,nd->n", x[anchor].astype(np.float64), x[a].astype(np.float64))
    cb = np.einsum("nd,nd->n", x[anchor].astype(np.float64), x[b].astype(np.float64))
    return np.where(ca > cb, 1.0, np.where(ca == cb, 0.5, 0.0))


def converse_group(relation: str) -> str:
    """``<R>|<R'>``: the converse pair a relation belongs to (the unit held out by the pair probe)."""
    for a, b in CONVERSE_PAIRS:
        if relation in (a, b):
            return f"{a}|{b}"
    raise DataError(f"relation {relation!r} has no converse in data.structure.CONVERSE_PAIRS")


def held_out_pair_probe(x: np.ndarray, roles: dict[str, np.ndarray], groups: np.ndarray, modes: list[Combine],
                        C: float) -> np.ndarray:
    """Per-triplet pair-probe score (mean correctness of its two pairs), each triplet's group held out.

    Rows 0..n-1 are (caption, paraphrase) pairs (label 1), rows n..2n-1 (caption, contradiction) (label 0).
    """
    n = len(groups)
    pairs = np.concatenate([combine(x[roles["caption"]], x[roles["paraphrase"]], modes),
                            combine(x[roles["caption"]], x[roles["contradiction"]], modes)])
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.int8).reshape(-1, 1)
    pair_group = np.concatenate([groups, groups])
    names = sorted(set(groups))
    if len(names) < 2:
        raise DataError("the held-out-relation pair probe needs triplets of at least two converse pairs")
    train = np.stack([pair_group != g for g in names])[:, :, None]  # [F, 2n, 1]
    fit = fit_logreg(pairs, y, train, [C], class_weight="balanced", tol=1e-6)
    correct = np.empty(2 * n)
    for f, g in enumerate(names):
        held = pair_group == g
        correct[held] = predictions(pairs[held], fit, fold=f)[0] == y[held, 0]
    return (correct[:n] + correct[n:]) / 2


class Structure(Analysis):
    """Converse, swap and held-out-relation pair-probe scores on a derived:structure dataset.

    Args:
        dataset: the derived dataset's name in the cache (``derived:structure:vsr_random/dev``).
        pair_modes: pair features of the probe (symmetric ones keep the bag of words at exactly 0.5).
        C: the pair probe's inverse regularisation.
    """

    name = "structure"

    def __init__(self, dataset: str, pair_modes: list[Combine] | None = None, C: float = 1.0) -> None:
        self.dataset = dataset
        self.pair_modes = list(pair_modes or ["product", "absdiff"])
        self.C = C

    def run(self, index: FeatureIndex) -> list[dict]:
        labels = [lb for lb in index.labels(self.dataset) if view_of(lb) == "text"]
        if not labels:
            raise index.missing(self.dataset, "text entries")
        rows = index.get(self.dataset, labels[0]).rows
        sources = [index.get(self.dataset, lb) for lb in labels] + [bag_of_words(rows)]
        out: list[dict] = []
        for feats in sources:
            out += self.score(feats)
        return out

    def score(self, feats: Features) -> list[dict]:
        roles = triplet_rows(feats.rows)
        ok = np.all([feats.valid[roles[r]] for r in ROLES], axis=0)
        roles = {r: v[ok] for r, v in roles.items()}
        relation = [feats.rows.relations[i] for i in roles["caption"]]
        groups = np.array([converse_group(r) for r in relation], dtype=object)
        x = feats.x
        out = grouped_rows(feats.identity, self.name, "converse_score",
                           nearer(x, roles["caption"], roles["paraphrase"], roles["contradiction"]), relation, False)
        out += grouped_rows(feats.identity, self.name, "swap_score",
                            nearer(x, roles["caption"], roles["paraphrase"], roles["swap"]), relation, False)
        probe = held_out_pair_probe(x, roles, groups, self.pair_modes, self.C)
        out.append(stat_row(feats.identity, self.name, "all", "pair_probe_accuracy", probe))
        out += [stat_row(feats.identity, self.name, g, "pair_probe_accuracy", probe[groups == g])
                for g in sorted(set(groups))]
        return out


class ZeroShot(Analysis):
    """Zero-shot scoring: is the image nearer its (true) caption than the caption's contradiction?

    Args:
        dataset: a derived:structure dataset with image entries and the same encoders' text entries.
    """

    name = "zero_shot"

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset

    def run(self, index: FeatureIndex) -> list[dict]:
        out: list[dict] = []
        for label in [lb for lb in index.labels(self.dataset) if view_of(lb) == "image"]:
            image = index.get(self.dataset, label)
            text = index.get(self.dataset, with_view(label, "text"))
            out += zero_shot_rows(image, text)
        if not out:
            raise index.missing(self.dataset, "image entries (zero-shot scoring needs an encoder's image and text "
                                "entries)", "image")
        return out


def zero_shot_scores(image: np.ndarray, text: np.ndarray, caption: np.ndarray, contradiction: np.ndarray
                     ) -> np.ndarray:
    """Per item: 1 where image row ``caption`` is more similar to text row ``caption`` than to ``contradiction``."""
    joint = np.concatenate([image, text])
    n = len(image)
    return nearer(joint, caption, n + caption, n + contradiction)


def zero_shot_rows(image: Features, text: Features) -> list[dict]:
    """Zero-shot accuracy rows (all, per relation, per meta-category) of one encoder's image and text entries."""
    roles = triplet_rows(image.rows)
    cap, con = roles["caption"], roles["contradiction"]
    keep = (image.rows.labels[cap] == 1) & image.valid[cap] & text.valid[cap] & text.valid[con]
    cap, con = cap[keep], con[keep]
    identity = dict(image.identity) | {"view": "text+image", "entry": f"{image.identity['entry']}+{text.identity['entry']}"}
    scores = zero_shot_scores(image.x, text.x, cap, con)
    return grouped_rows(identity, "zero_shot", "accuracy", scores, [image.rows.relations[i] for i in cap])
