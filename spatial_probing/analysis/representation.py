"""The first study's representation analyses: odd-one-out accuracy and RSA between encoders.

Both work on the distinct captions of a dataset split (the first row of each caption text), so a caption
repeated over several images counts once. Every entry of the dataset takes part, and ``baseline:bow``
beside them: captions of one relation share its words, which is what a bag of words measures.

- Odd-one-out: a trial draws a relation r uniformly (among relations with two captions or more), two
  different captions A, B of r, a foil relation uniformly among the others and one caption of it;
  correct when cos(A, B) > cos(A, foil) (ties 1/2). The trials are drawn once (seed) and shared by
  every encoder, so encoders are compared on the same trials. Chance is 0.5.
- RSA: a balanced subsample of up to ``per_relation`` captions per relation over all relations (seed),
  RDM = 1 - cosine, Spearman correlation of the RDMs' upper triangles for every pair of encoders
  (stats rows: target ``vs:<other label>``, point estimates).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from spatial_probing.analysis.base import Analysis
from spatial_probing.analysis.features import FeatureIndex, Features, bag_of_words
from spatial_probing.analysis.stats import stat_row
from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError


def distinct_captions(rows: SpatialRows) -> np.ndarray:
    """Row index of the first row of each distinct caption, in row order."""
    first: dict[str, int] = {}
    for i, caption in enumerate(rows.captions):
        first.setdefault(caption, i)
    return np.array(sorted(first.values()), dtype=np.int64)


def _by_relation(rows: SpatialRows, items: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {}
    for i in items:
        out.setdefault(rows.relations[i], []).append(int(i))
    return {r: np.array(v, dtype=np.int64) for r, v in sorted(out.items())}


def odd_one_out_trials(rows: SpatialRows, n_trials: int = 5000, seed: int = 42) -> np.ndarray:
    """[n_trials, 3] row indices (A, B, foil) drawn as the module doc says."""
    groups = _by_relation(rows, distinct_captions(rows))
    eligible = [r for r, v in groups.items() if len(v) >= 2]
    if not eligible or len(groups) < 2:
        raise DataError(f"{rows.name}: odd-one-out needs a relation with two captions and a second relation")
    names = list(groups)
    rng = np.random.default_rng(seed)
    trials = np.empty((n_trials, 3), dtype=np.int64)
    for t in range(n_trials):
        r = eligible[rng.integers(len(eligible))]
        a, b = rng.choice(groups[r], size=2, replace=False)
        others = [name for name in names if name != r]
        foil = others[rng.integers(len(others))]
        trials[t] = (a, b, groups[foil][rng.integers(len(groups[foil]))])
    return trials


def odd_one_out_scores(x: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Per trial 1 where cos(A, B) > cos(A, foil), 1/2 on ties (rows of ``x`` are unit vectors)."""
    x = x.astype(np.float64)
    same = np.einsum("nd,nd->n", x[trials[:, 0]], x[trials[:, 1]])
    foil = np.einsum("nd,nd->n", x[trials[:, 0]], x[trials[:, 2]])
    return np.where(same > foil, 1.0, np.where(same == foil, 0.5, 0.0))


def rsa_sample(rows: SpatialRows, per_relation: int = 7, seed: int = 42) -> np.ndarray:
    """Up to ``per_relation`` distinct captions of every relation (sorted by relation, then row)."""
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(v, size=min(per_relation, len(v)), replace=False))
             for v in _by_relation(rows, distinct_captions(rows)).values()]
    return np.concatenate(picks)


def rdm_upper(x: np.ndarray) -> np.ndarray:
    """Upper triangle (k=1) of 1 - cosine between the rows of ``x`` (unit rows)."""
    x = x.astype(np.float64)
    return (1.0 - x @ x.T)[np.triu_indices(len(x), k=1)]


def _sources(index: FeatureIndex, dataset: str) -> list[Features]:
    labels = index.labels(dataset)
    if not labels:
        raise index.missing(dataset, "entries")
    sources = [index.get(dataset, lb) for lb in labels]
    return sources + [bag_of_words(sources[0].rows)]


class OddOneOut(Analysis):
    """Odd-one-out accuracy of every entry of ``dataset`` (and the bag of words), bootstrap CI over trials.

    Args:
        dataset: the entries' dataset name (e.g. ``vsr_random/test``).
        trials: number of trials (the first study: 5000).
        seed: trial seed (the first study: 42).
    """

    name = "odd_one_out"

    def __init__(self, dataset: str, trials: int = 5000, seed: int = 42) -> None:
        self.dataset, self.trials, self.seed = dataset, trials, seed

    def run(self, index: FeatureIndex) -> list[dict]:
        sources = _sources(index, self.dataset)
        trials = odd_one_out_trials(sources[0].rows, self.trials, self.seed)
        out = []
        for feats in sources:
            usable = feats.valid[trials].all(axis=1)
            out.append(stat_row(feats.identity, self.name, "all", "accuracy",
                                odd_one_out_scores(feats.x, trials[usable])))
        return out


class RSA(Analysis):
    """Spearman correlation of RDMs between every pair of entries of ``dataset`` (and the bag of words).

    Args:
        dataset: the entries' dataset name.
        per_relation: captions per relation in the balanced subsample (the first study: 7).
        seed: subsample seed.
    """

    name = "rsa"

    def __init__(self, dataset: str, per_relation: int = 7, seed: int = 42) -> None:
        self.dataset, self.per_relation, self.seed = dataset, per_relation, seed

    def run(self, index: FeatureIndex) -> list[dict]:
        sources = _sources(index, self.dataset)
        sample = rsa_sample(sources[0].rows, self.per_relation, self.seed)
        sample = sample[np.all([f.valid[sample] for f in sources], axis=0)]
        rdms = [rdm_upper(f.x[sample]) for f in sources]
        out = []
        for i, a in enumerate(sources):
            for j, b in enumerate(sources):
                if i < j:
                    rho = float(spearmanr(rdms[i], rdms[j]).statistic)
                    out.append(stat_row(a.identity, self.name, f"vs:{b.label}", "spearman", rho, method="point"))
        return out
