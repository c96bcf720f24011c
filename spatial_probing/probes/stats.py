"""Statistics over one fit's held-out predictions: bootstrap CIs, selectivity, paired tests, Holm.

Everything here reuses the per-row out-of-fold predictions a `LinearProbe` keeps (`SetOutputs`),
so no probe is refitted. A score is the fold mean of a per-fold metric (as in results.csv); a
resample reweights rows, so each of its confusion counts is one weighted sum:
``counts[b] = weights[b] @ indicators`` with ``indicators [n, F*T*4]`` (tp, fp, tn, fn per fold and
target). ``B`` resamples are one matrix product. The draws, their seeding and the percentile interval
are `spatial_probing.resampling`'s (`resample_weights`, `swap_draws`, `percentile_interval`).

* Bootstrap CI per target (percentile, level configurable): rows, or whole groups (images),
  drawn with replacement; seeded, so the same config gives the same numbers.
* Aggregates: the mean over targets and, for relation targets, the VSR meta-categories
  (``meta:<category>``), weighting each relation equally or by its rows; their CIs come from the
  same resamples.
* Selectivity (Hewitt & Liang): task score - control score of the same entry, CI from the same
  resamples of the same rows.
* Paired test of two probe sets of one task on their common rows: a permutation test that swaps
  the two sets' predictions per row (or group) at random (two-sided, ``(1 + #|d*| >= |d|) / (1 + P)``),
  the difference's CI by paired bootstrap, Holm-Bonferroni over targets, and the count of targets
  each side wins significantly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from spatial_probing.data.relations import is_known_relation, meta_category
from spatial_probing.probes.metrics import METRICS, count_metrics
from spatial_probing.resampling import percentile_interval, resample_weights, swap_draws

RANDOM_INIT_SUFFIX = "+random-init"
CONTROL_SUFFIX = "/control"
STATS_COLUMNS = (
    "dataset", "entry", "encoder", "view", "layer", "task", "target", "metric",
    "estimate", "ci_low", "ci_high", "level", "method",
)  # fmt: skip
COMPARISON_COLUMNS = (
    "task", "target", "metric", "label_a", "label_b", "diff", "ci_low", "ci_high",
    "p_value", "p_holm", "significant", "method",
)  # fmt: skip


@dataclass
class StatsOptions:
    """What `LinearProbe` computes beside the scores (``model.stats.*``).

    Args:
        resamples: bootstrap resamples per CI.
        level: confidence level of every CI.
        seed: seed of the resamples and permutations.
        unit: resample and permute ``row``s, or whole ``group``s (images; use with grouped folds).
        permutations: permutations per paired test.
        alpha: significance level after Holm-Bonferroni correction.
        compare: which probe sets are paired: ``random_init`` (each ``+random-init`` entry with its
            trained encoder), ``all`` (every pair of one task), ``none``, or a list of
            ``[label_a, label_b]`` pairs (labels as in the tables).
        compare_metric: the metric the paired tests compare.
        meta_weighting: meta-category and mean aggregates weight each ``relation`` equally or each
            ``row`` (a relation counts by its number of positive rows).
    """

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    unit: Literal["row", "group"] = "row"
    permutations: int = 1000
    alpha: float = 0.05
    compare: Literal["random_init", "all", "none"] | list[list[str]] = "random_init"
    compare_metric: str = "f1_macro"
    meta_weighting: Literal["relation", "row"] = "relation"

    def __post_init__(self) -> None:
        if self.resamples < 1 or self.permutations < 1:
            raise ValueError(f"model.stats.resamples and permutations must be >= 1, got {self.resamples}, "
                             f"{self.permutations}")
        if not 0 < self.level < 1:
            raise ValueError(f"model.stats.level must be in (0, 1), got {self.level}")
        if self.compare_metric not in METRICS:
            raise ValueError(f"model.stats.compare_metric must be one of {list(METRICS)}, got {self.compare_metric!r}")
        if isinstance(self.compare, list) and any(len(p) != 2 for p in self.compare):
            raise ValueError(f"model.stats.compare pairs must be [label_a, label_b], got {self.compare}")


@dataclass
class SetOutputs:
    """One probe set's held-out predictions, for the reported C of each (fold, target).

    ``rows [n]`` the entry's row indices, ``groups [n]``, ``y [n, T]`` bool, ``test [F, n, T]`` bool,
    ``decision [n, T]`` float64: the decision value of each row from the fold in which it is a test
    row (NaN where it is in no test fold).
    """

    info: dict[str, Any]
    label: str
    rows: np.ndarray
    groups: np.ndarray
    y: np.ndarray
    test: np.ndarray
    decision: np.ndarray
    _indicators: torch.Tensor | None = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return str(self.info["task"])

    @property
    def targets(self) -> list[str]:
        return list(self.info["targets"])

    def indicators(self) -> torch.Tensor:
        """``[n, F*T*4]`` float32: per row, whether it is a tp, fp, tn, fn of each (fold, target)."""
        if self._indicators is None:
            self._indicators = indicators(self.decision > 0, self.y, self.test)
        return self._indicators

    def restricted(self, positions: np.ndarray) -> SetOutputs:
        """The same outputs on a subset of its rows (positions into ``rows``)."""
        return SetOutputs(
            info=self.info, label=self.label, rows=self.rows[positions], groups=self.groups[positions],
            y=self.y[positions], test=self.test[:, positions], decision=self.decision[positions],
        )  # fmt: skip


def indicators(pred: np.ndarray, y: np.ndarray, test: np.ndarray) -> torch.Tensor:
    """``[n, F*T*4]`` float32 confusion indicators (tp, fp, tn, fn) of every row in every (fold, target)."""
    pred, y = torch.as_tensor(pred, dtype=torch.bool), torch.as_tensor(y, dtype=torch.bool)
    test = torch.as_tensor(test, dtype=torch.bool).transpose(0, 1)  # [n, F, T]
    parts = [pred & y, pred & ~y, ~pred & ~y, ~pred & y]
    return torch.stack([test & p[:, None] for p in parts], dim=-1).reshape(len(y), -1).float()


def scores(counts: torch.Tensor, n_folds: int, n_targets: int) -> dict[str, torch.Tensor]:
    """Fold-mean `METRICS` ``[..., T]`` from weighted counts ``[..., F*T*4]``."""
    k = counts.double().reshape(*counts.shape[:-1], n_folds, n_targets, 4)
    per_fold = count_metrics(tp=k[..., 0], fp=k[..., 1], tn=k[..., 2], fn=k[..., 3])
    return {name: v.mean(-2) for name, v in per_fold.items()}


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="mergesort")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def aggregate_weights(targets: list[str], y: np.ndarray, weighting: str) -> dict[str, np.ndarray]:
    """Weights ``[T]`` (summing to 1) of the ``mean`` and every ``meta:<category>`` aggregate.

    Meta-categories exist only for targets that are relations VSR maps; ``row`` weighting counts a
    relation by its positive rows, ``relation`` weighting counts each once.
    """
    size = np.asarray(y, dtype=float).sum(0) if weighting == "row" else np.ones(len(targets))
    groups = {"mean": np.ones(len(targets), dtype=bool)}
    known = [is_known_relation(t) for t in targets]
    for category in sorted({meta_category(t) for t, k in zip(targets, known, strict=True) if k}):
        groups[f"meta:{category}"] = np.array([k and meta_category(t) == category for t, k in zip(targets, known,
                                                                                                      strict=True)])
    out = {}
    for name, member in groups.items():
        w = np.where(member, size, 0.0)
        out[name] = w / w.sum()
    return out


def _identity(info: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    keys = ("dataset", "entry", "encoder", "view", "layer")
    return {**{k: info[k] for k in keys}, "task": task or info["task"]}


def _frame(identity: dict[str, Any], metric: str, names: list[str], estimate, lo, hi, level, method) -> pd.DataFrame:
    return pd.DataFrame({
        **identity, "target": names, "metric": metric, "estimate": estimate, "ci_low": lo, "ci_high": hi,
        "level": level, "method": method,
    })  # fmt: skip


def _with_aggregates(targets: list[str], y: np.ndarray, values: torch.Tensor, options: StatsOptions):
    """``values [..., T]`` -> names and ``[..., T + aggregates]`` with the mean and meta-categories appended."""
    weights = aggregate_weights(targets, y, options.meta_weighting)
    W = torch.from_numpy(np.stack(list(weights.values()), axis=1))  # [T, A]
    return targets + list(weights), torch.cat([values, values @ W], dim=-1)


Draws = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # per metric: point estimates [T], draws [B, T]


class Bootstrap:
    """Seeded resample weights per row set, shared by every probe set over the same rows."""

    def __init__(self, options: StatsOptions) -> None:
        self.options = options
        self._cache: dict[bytes, torch.Tensor] = {}

    def weights(self, out: SetOutputs) -> torch.Tensor:
        key = out.rows.tobytes()
        if key not in self._cache:
            o = self.options
            self._cache[key] = torch.from_numpy(resample_weights(out.groups, o.unit, o.resamples, o.seed))
        return self._cache[key]

    def draws(self, out: SetOutputs) -> Draws:
        """Point estimates ``[T]`` and bootstrap draws ``[B, T]`` of every metric."""
        F, T = out.test.shape[0], out.y.shape[1]
        ind = out.indicators()
        return scores(ind.sum(0), F, T), scores(self.weights(out) @ ind, F, T)

    @property
    def method(self) -> str:
        o = self.options
        return f"bootstrap percentile (B={o.resamples}, unit={o.unit}, seed={o.seed}, weighting={o.meta_weighting})"


def stats_table(outputs: list[SetOutputs], options: StatsOptions) -> pd.DataFrame:
    """stats.csv rows: every metric per target, mean and meta-category with CIs; selectivity per control."""
    if not outputs:
        return pd.DataFrame(columns=list(STATS_COLUMNS))
    boot = Bootstrap(options)
    frames = []
    drawn = [boot.draws(out) for out in outputs]  # once per set: a selectivity reuses its two sets' draws
    by_key = {(o.info["dataset"], o.info["entry"], o.task): i for i, o in enumerate(outputs)}
    for out, (est, draws) in zip(outputs, drawn, strict=True):
        y_task = out.y & out.test.any(0)
        for metric in METRICS:
            names, e = _with_aggregates(out.targets, y_task, est[metric][None], options)
            _, d = _with_aggregates(out.targets, y_task, draws[metric], options)
            lo, hi = percentile_interval(d, options.level)
            frames.append(_frame(_identity(out.info), metric, names, e[0].numpy(), lo, hi, options.level, boot.method))
        if out.task.endswith(CONTROL_SUFFIX):
            base = by_key.get((out.info["dataset"], out.info["entry"], out.task[: -len(CONTROL_SUFFIX)]))
            if base is not None:
                frames.extend(_selectivity(outputs[base], drawn[base], (est, draws), options, boot.method))
    return pd.DataFrame(pd.concat(frames, ignore_index=True), columns=list(STATS_COLUMNS))


def _selectivity(base: SetOutputs, task: Draws, control: Draws, options: StatsOptions, method: str) -> list[pd.DataFrame]:
    """Task minus control score of one entry, per target and aggregate, on the same resamples."""
    (est_t, draws_t), (est_c, draws_c) = task, control
    y_task = base.y & base.test.any(0)
    frames = []
    for metric in METRICS:
        names, e = _with_aggregates(base.targets, y_task, (est_t[metric] - est_c[metric])[None], options)
        _, d = _with_aggregates(base.targets, y_task, draws_t[metric] - draws_c[metric], options)
        lo, hi = percentile_interval(d, options.level)
        frames.append(_frame(_identity(base.info), f"selectivity_{metric}", names, e[0].numpy(), lo, hi,
                             options.level, "task - control; " + method))
    return frames


def common_rows(a: SetOutputs, b: SetOutputs) -> tuple[SetOutputs, SetOutputs]:
    """Both sets restricted to the rows both have (rows whose features are valid in both entries)."""
    _, ia, ib = np.intersect1d(a.rows, b.rows, assume_unique=True, return_indices=True)
    return a.restricted(ia), b.restricted(ib)


def paired_test(a: SetOutputs, b: SetOutputs, options: StatsOptions) -> pd.DataFrame:
    """``a - b`` per target and mean: paired-bootstrap CI, permutation p, Holm over targets; then ``wins``."""
    a, b = common_rows(a, b)
    if not np.array_equal(a.test, b.test):
        raise ValueError(f"{a.label} and {b.label} ({a.task}) were not scored on the same folds; a paired test "
                         "needs one fold assignment (same data.seed, data.folds and task)")
    metric = options.compare_metric
    F, T = a.test.shape[0], a.y.shape[1]
    ia, ib = a.indicators(), b.indicators()
    observed = scores(ia.sum(0), F, T)[metric] - scores(ib.sum(0), F, T)[metric]
    w = torch.from_numpy(resample_weights(a.groups, options.unit, options.resamples, options.seed))
    boot = scores(w @ ia, F, T)[metric] - scores(w @ ib, F, T)[metric]  # [B, T]
    swap = torch.from_numpy(swap_draws(a.groups, options.unit, options.permutations, options.seed)) @ (ib - ia)
    base_a, base_b = ia.sum(0), ib.sum(0)
    perm = scores(base_a + swap, F, T)[metric] - scores(base_b - swap, F, T)[metric]  # [P, T]
    observed = torch.cat([observed, observed.mean()[None]])
    boot = torch.cat([boot, boot.mean(1, keepdim=True)], dim=1)
    perm = torch.cat([perm, perm.mean(1, keepdim=True)], dim=1)
    tie = 1e-12  # differences equal up to rounding count as "at least as extreme"
    p = ((1 + (perm.abs() >= observed.abs() - tie).sum(0)) / (1 + options.permutations)).numpy()
    lo, hi = percentile_interval(boot, options.level)
    p_holm = np.append(holm(p[:T]), np.nan)  # the mean is one test of its own, outside the family
    significant = np.append(p_holm[:T] < options.alpha, p[T] < options.alpha)
    method = (f"paired permutation (P={options.permutations}, unit={options.unit}, seed={options.seed}); "
              f"paired bootstrap CI (B={options.resamples}); Holm over {T} targets, alpha={options.alpha}")
    frame = pd.DataFrame({
        "task": a.task, "target": [*a.targets, "mean"], "metric": metric, "label_a": a.label, "label_b": b.label,
        "diff": observed.numpy(), "ci_low": lo, "ci_high": hi, "p_value": p, "p_holm": p_holm,
        "significant": significant, "method": method,
    })  # fmt: skip
    per_target = frame.iloc[:T]
    wins_a = int((per_target["significant"] & (per_target["diff"] > 0)).sum())
    wins_b = int((per_target["significant"] & (per_target["diff"] < 0)).sum())
    wins = {
        "task": a.task, "target": "wins", "metric": metric, "label_a": a.label, "label_b": b.label,
        "diff": wins_a - wins_b, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan,
        "significant": wins_a + wins_b,
        "method": f"targets won significantly (Holm, alpha={options.alpha}): {a.label} {wins_a}, {b.label} {wins_b}",
    }  # fmt: skip
    return pd.concat([frame, pd.DataFrame([wins])], ignore_index=True)


def comparison_pairs(outputs: list[SetOutputs], compare: Any) -> list[tuple[SetOutputs, SetOutputs]]:
    """The probe-set pairs `StatsOptions.compare` asks for, each within one task."""
    if compare == "none":
        return []
    if compare == "all":
        return [(a, b) for a, b in combinations(outputs, 2) if a.task == b.task]
    if compare == "random_init":
        pairs = []
        for control in outputs:
            encoder = str(control.info["encoder"])
            if not encoder.endswith(RANDOM_INIT_SUFFIX):
                continue
            trained = [o for o in outputs if o.task == control.task and o.info["view"] == control.info["view"]
                       and o.info["layer"] == control.info["layer"]
                       and o.info["encoder"] == encoder[: -len(RANDOM_INIT_SUFFIX)]]
            pairs.extend((t, control) for t in trained)
        return pairs
    by_label: dict[tuple[str, str], SetOutputs] = {(o.label, o.task): o for o in outputs}
    labels = sorted({o.label for o in outputs})
    pairs = []
    for label_a, label_b in compare:
        missing = [x for x in (label_a, label_b) if x not in labels]
        if missing:
            raise ValueError(f"model.stats.compare names {missing}, not a probe set of this run; labels: {labels}")
        tasks = [o.task for o in outputs if o.label == label_a]
        pairs.extend((by_label[label_a, t], by_label[label_b, t]) for t in tasks if (label_b, t) in by_label)
    return pairs


def comparisons_table(outputs: list[SetOutputs], options: StatsOptions) -> pd.DataFrame:
    """comparisons.csv rows for every pair `comparison_pairs` selects."""
    frames = [paired_test(a, b, options) for a, b in comparison_pairs(outputs, options.compare)]
    if not frames:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    return pd.DataFrame(pd.concat(frames, ignore_index=True), columns=list(COMPARISON_COLUMNS))


def codelength_table(info: dict[str, Any], y: np.ndarray, code: Any, mdl_options: Any,
                     options: StatsOptions) -> pd.DataFrame:
    """stats.csv rows of one probe set's MDL codelengths: per target, mean and meta-category (no CI).

    ``code`` is an `mdl.Codelength`; aggregates are weighted means of the per-target values.
    """
    targets = list(info["targets"])
    method = (f"online codelength (Voita & Titov 2020), C={mdl_options.C:g}, order seed={mdl_options.seed}, "
              f"{len(mdl_options.fractions)} blocks; aggregates weighted by {options.meta_weighting}")
    frames = []
    for metric, values in (("mdl_online_bits", code.online_bits), ("mdl_uniform_bits", code.uniform_bits),
                           ("mdl_compression", code.compression)):
        names, v = _with_aggregates(targets, y, torch.as_tensor(np.asarray(values, dtype=float))[None], options)
        frames.append(_frame(_identity(info), metric, names, v[0].numpy(), np.nan, np.nan, np.nan, method))
    return pd.concat(frames, ignore_index=True)
