"""Cross-validated linear probes on cached features, as a LightningDataModule and a LightningModule.

``ProbeDataModule`` turns feature-cache entries into probe sets: the valid rows' features, a task's
targets and row masks, and per-target fold masks. It serves one full batch per entry, so a run over
several encoders is one epoch whose steps are the entries.

``LinearProbe`` fits every (fold, C, target) probe of an entry in one ``training_step`` (manual
optimisation: the step *is* the solver), keeps the weights as buffers ``W_<i>`` [F, len(Cs), T, d]
and ``b_<i>``, and in ``validation_step`` scores the held-out rows, logs ``fold{k}/val/<metric>/<target>``
and ``summary/<metric>_{mean,std}``, and appends rows to the tidy results table.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from jsonargparse import lazy_instance
from torch.utils.data import DataLoader

from spatial_probing.errors import ConfigError, FeatureError
from spatial_probing.features.entry import FeatureEntry, FeatureSet, load_entry, read_meta
from spatial_probing.probes import baselines, metrics, selection, sklearn_ref, solver
from spatial_probing.probes.baselines import Baseline, baseline_set
from spatial_probing.probes.folds import fold_masks, target_folds
from spatial_probing.probes.mdl import Codelength, MDLOptions, online_codelength
from spatial_probing.probes.results import (
    IDENTITY_COLUMNS,
    RESULT_COLUMNS,
    entry_labels,
    results_frame,
    summary,
)
from spatial_probing.probes.solver.predict import decision_function
from spatial_probing.probes.stats import (
    SetOutputs,
    StatsOptions,
    codelength_table,
    comparisons_table,
    stats_table,
)
from spatial_probing.tasks.base import ProbeTask, Task
from spatial_probing.tasks.control import ControlTask, Lexical
from spatial_probing.tasks.relation_type import RelationType

Solver = Literal["batched", "sklearn"]
_SOLVERS = {"batched": solver.fit_logreg, "sklearn": sklearn_ref.fit_sklearn}
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
#: The first study's task; lazy so ``--print_config`` shows it as ``class_path``/``init_args``.
DEFAULT_TASK = lazy_instance(RelationType)
#: How many offending rows an error message lists.
_SHOW_ROWS = 5
# A probe has no torch optimizer by design (the solvers optimise); Lightning's hint about it is noise.
warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")


# ---------------------------------------------------------------------------------------------
# data


def find_entries(features: list[str], feature_root: str | None = None, dataset: str | None = None) -> list[Path]:
    """Complete cache entries named by ``features``, in order.

    Each item is an entry directory or a directory searched recursively for entries (directories
    holding meta.json); relative items are resolved against ``feature_root`` when given. No items
    means every entry under ``feature_root``. ``dataset`` keeps only entries of that dataset name.
    """
    root = Path(feature_root).expanduser() if feature_root else None
    if not features and root is None:
        raise FeatureError("no features to probe: set data.features (entry directories) or data.feature_root")
    items = [Path(f).expanduser() for f in features] or [Path()]  # Path(): the root itself
    found: list[Path] = []
    for item in items:
        path = root / item if root is not None and not item.is_absolute() else item
        if (path / "meta.json").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(m.parent for m in path.rglob("meta.json") if not _unfinished(m.relative_to(path))))
        else:
            raise FeatureError(f"feature entry {path} does not exist; run `spatial-probing extract` first")
    if dataset is not None:
        found = [p for p in found if _entry_dataset(p) == dataset]
    if not found:
        raise FeatureError(f"no complete feature-cache entries found in {[str(i) for i in items]}"
                           + (f" for dataset {dataset!r}" if dataset else ""))
    return found


def _unfinished(meta_path: Path) -> bool:
    # shards of unfinished extractions live in <key>.partial/ and temp merges in <key>.tmp-<pid>/
    return any(part.endswith(".partial") or ".tmp-" in part for part in meta_path.parts)


def _entry_dataset(path: Path) -> str | None:
    return read_meta(path).get("dataset")


def check_features(entry: FeatureSet, block: int = 8192) -> None:
    """Refuse features that cannot be probed: wrong shape, or NaN/inf in rows marked valid.

    The scan runs in row blocks so a memory-mapped matrix is never loaded whole.
    """
    features_file = f"{entry.path} (view {entry.view}, layer {entry.layer})"
    n = len(entry.rows)
    if entry.features.ndim != 2 or entry.features.shape[0] != n or entry.valid.shape != (n,):
        raise FeatureError(
            f"{features_file} has shape {tuple(entry.features.shape)} (valid.npy {tuple(entry.valid.shape)}) but "
            f"{entry.path / 'rows.jsonl'} has {n} rows; the entry does not belong to these rows, extract it again"
        )
    bad = [
        start + np.flatnonzero(~np.isfinite(entry.features[start : start + block]).all(axis=1))
        for start in range(0, n, block)
    ]
    bad_rows = np.concatenate(bad)
    bad_rows = bad_rows[entry.valid[bad_rows]]
    if len(bad_rows):
        shown = ", ".join(f"{r} ({entry.rows.captions[r]!r})" for r in bad_rows[:_SHOW_ROWS])
        raise FeatureError(
            f"{features_file} has NaN/inf in {len(bad_rows)} rows marked valid, refusing to probe; "
            f"first rows: {shown}. Delete the entry and extract again"
        )


def _check_one_dataset(entries: list[FeatureEntry]) -> None:
    """Refuse to probe entries of several datasets together: their tables would pool different rows."""
    by_dataset: dict[str, list[str]] = {}
    for entry in entries:
        by_dataset.setdefault(str(entry.meta.get("dataset", entry.rows.name)), []).append(str(entry.path))
    if len(by_dataset) > 1:
        listing = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(by_dataset.items()))
        raise FeatureError(
            f"the entries found belong to {len(by_dataset)} datasets ({listing}); probe one dataset per run "
            "with --data.dataset NAME or list its entries in --data.features"
        )


@dataclass
class ProbeSet:
    """One cache entry prepared for probing; features stay in the (memory-mapped) entry until served."""

    entry: FeatureSet
    rows: np.ndarray  # indices of the entry's valid rows, the only rows probed
    task: ProbeTask  # restricted to ``rows``
    train_mask: np.ndarray  # [F, len(rows), T]
    test_mask: np.ndarray  # [F, len(rows), T]
    label: str = ""  # readable and distinct among the run's sets (`entry_labels`): W&B metric prefixes

    @property
    def info(self) -> dict[str, Any]:
        """Identity and provenance of the set: travels in the batch and into the results tables.

        ``dataset``, ``entry`` (the cache key), ``storage_dtype`` and ``precision`` identify the cache
        entry, so two entries of one encoder (two datasets, float32 and float16, ...) never pool.
        """
        meta = self.entry.meta
        key = meta.get("key", {})
        return {
            "dataset": str(meta.get("dataset", self.entry.rows.name)),
            "entry": self.entry.path.name,
            "storage_dtype": str(key.get("dtype", "float32")),
            "precision": str(key.get("precision", "")),
            "encoder": str(meta.get("encoder", self.entry.path.name)),
            "view": str(meta.get("view", "")),
            "layer": str(meta.get("layer", "final")),
            "path": str(self.entry.path),
            "task": self.task.name,
            "targets": list(self.task.target_names),
            "n_rows": len(self.entry.rows),
            "n_excluded": len(self.entry.rows) - len(self.rows),
            "dim": int(self.entry.features.shape[1]),
        }


class _ProbeSets(torch.utils.data.Dataset):
    def __init__(self, datamodule: ProbeDataModule) -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        return len(self.datamodule.probe_sets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.datamodule.batch(index)


class ProbeDataModule(pl.LightningDataModule):
    """Feature-cache entries -> probe sets (task targets, row masks, folds), one full batch per entry.

    Args:
        features: cache entry directories, or directories searched for entries (relative to
            ``feature_root`` when set); empty: every entry under ``feature_root``.
        feature_root: the cache root (``spatial-probing extract --feature_root``).
        dataset: keep only entries of this dataset (e.g. ``vsr_random/train``); needed when the
            entries found belong to several datasets (their results must not pool).
        task: the probe task plug-in (``class_path``/``init_args``), e.g.
            ``spatial_probing.tasks.relation_type.RelationType`` (default, ``min_count: 50``) or
            ``spatial_probing.tasks.caption_truth.CaptionTruth``.
        n_splits: cross-validation folds (also the inner folds of C selection).
        seed: fold shuffling seed (scikit-learn's ``random_state``).
        folds: ``stratified`` per target (the original protocol) or ``grouped`` by image, so no
            image is in both the training and test rows (needed for image features).
        normalize: L2-normalise every feature row (the original protocol).
        baselines: baselines probed beside the entries on the same rows and folds (`probes.baselines`):
            ``majority``, ``ngrams`` (word 1-3-grams of the caption), ``ngrams-masked`` (relation phrase
            removed). The random-init encoder is an entry of its own (extract with ``--model.random_init true``).
        control: also probe each entry (not the baselines) on the Hewitt-Liang control of the task
            (`tasks.control.ControlTask`), labels a seeded function of the ``subject`` noun, ``object``
            noun or ``pair``; None: no control.
    """

    def __init__(
        self,
        features: list[str] | None = None,
        feature_root: str | None = None,
        dataset: str | None = None,
        task: Task = DEFAULT_TASK,
        n_splits: int = 5,
        seed: int = 42,
        folds: Literal["stratified", "grouped"] = "stratified",
        normalize: bool = True,
        baselines: list[Baseline] | None = None,
        control: Lexical | None = None,
    ) -> None:
        super().__init__()
        _check_option("data.n_splits", n_splits, n_splits >= 2, "an integer >= 2 (cross-validation folds)")
        self.save_hyperparameters(ignore=["task"])
        self.task = task
        self.probe_sets: list[ProbeSet] = []

    def setup(self, stage: str | None = None) -> None:
        """Load and check every entry up front, so a bad one fails before anything is fitted."""
        if self.probe_sets:
            return
        hp = self.hparams
        paths = find_entries(list(hp.features or []), hp.feature_root, hp.dataset)
        entries = [load_entry(path) for path in paths]
        _check_one_dataset(entries)
        # each (view, layer) feature set of an entry is its own probe set; one without a valid row (every
        # image failed) cannot be probed and is reported instead of failing the whole run
        sets = [fs for entry in entries for fs in entry.feature_sets()]
        for fs in (fs for fs in sets if not fs.valid.any()):
            print(f"skipping {fs.path} view {fs.view} layer {fs.layer}: all {len(fs.rows)} rows excluded "
                  f"({len(fs.failures)} failed images, e.g. {fs.failures[0]['reason'] if fs.failures else '-'})")
        extra = [baseline_set(name, entries[0]) for name in dict.fromkeys(hp.baselines or [])]
        # the control task measures what an encoder's features memorise: baselines get the task only
        self.probe_sets = [self._prepare(fs, task) for fs in sets if fs.valid.any() for task in self.tasks()]
        self.probe_sets += [self._prepare(fs, self.task) for fs in extra]
        labels = entry_labels(pd.DataFrame([ps.info for ps in self.probe_sets]))
        for probe_set, label in zip(self.probe_sets, labels, strict=True):
            probe_set.label = label

    def tasks(self) -> list[Task]:
        """The configured task, then its control task when ``control`` is set."""
        control = self.hparams.control
        return [self.task] + ([ControlTask(self.task, lexical=control, seed=self.hparams.seed)] if control else [])

    def _prepare(self, entry: FeatureSet, task_plugin: Task) -> ProbeSet:
        hp = self.hparams
        check_features(entry)
        task = task_plugin.build(entry.rows)
        # Folds are drawn over all rows, then failed rows dropped: every encoder of one dataset gets
        # the same folds, so their scores stay paired even when some images failed.
        groups = task.groups if hp.folds == "grouped" else None
        ids = target_folds(task.targets, task.row_mask, hp.n_splits, hp.seed, groups)
        rows = np.flatnonzero(entry.valid)
        train, test = fold_masks(ids[rows])
        return ProbeSet(entry=entry, rows=rows, task=task.subset(rows), train_mask=train, test_mask=test)

    def batch(self, index: int) -> dict[str, Any]:
        """The full batch of probe set ``index``: features of its valid rows, targets, fold masks, info."""
        probe_set = self.probe_sets[index]
        # fancy indexing reads only the valid rows from the memory map, into a new float32 array
        x = np.asarray(probe_set.entry.features[probe_set.rows], dtype=np.float32)
        if self.hparams.normalize:  # in place: no second copy of the matrix
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return {
            "index": index,
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(probe_set.task.targets),
            "train_mask": torch.from_numpy(probe_set.train_mask),
            "test_mask": torch.from_numpy(probe_set.test_mask),
            "info": probe_set.info,
            "label": probe_set.label,
            # W&B metric prefix: the control task's metrics must not overwrite the task's
            "log_label": probe_set.label + ("" if probe_set.task.name == self.task.name else f" {probe_set.task.name}"),
            "rows": probe_set.rows,
            "groups": probe_set.task.groups,
            "n_sets": len(self.probe_sets),
            "protocol": {"n_splits": self.hparams.n_splits, "seed": self.hparams.seed},
        }

    def _loader(self) -> DataLoader:
        # batch_size=None: each item already is a full batch (one entry)
        return DataLoader(_ProbeSets(self), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


# ---------------------------------------------------------------------------------------------
# model


def _check_option(name: str, value: Any, ok: bool, valid: str) -> None:
    """Refuse an option value at config time, naming the option and its valid range."""
    if not ok:
        raise ConfigError(f"--{name} {json.dumps(value)} is out of range: expected {valid}")


def _resolved(fit_fn: Any, name: str, value: Any) -> Any:
    """The value a solver runs with: the configured one, else the solver's own default."""
    return value if value is not None else inspect.signature(fit_fn).parameters[name].default


class LinearProbe(pl.LightningModule):
    """Every (fold, C, target) L2 logistic-regression probe of each entry, fitted full-batch.

    Args:
        Cs: inverse regularisation strengths (scikit-learn's C); all are fitted at once.
        class_weight: None or ``balanced`` (scikit-learn's weighting, per training fold).
        solver: ``batched`` (all problems in one tensor, converged) or ``sklearn`` (the reference
            loop; with its default tolerance it reproduces the original study's numbers).
        tol: solver tolerance (max abs scaled gradient); None: the solver's default.
        max_iter: solver iteration limit; None: the solver's default.
        select_C: choose C per (fold, target) by inner stratified cross-validation on the training
            rows (``data.n_splits`` inner folds, mean macro-F1) and report only the chosen C;
            needs the batched solver (all inner fits are one batched solve).
        dtype: precision of the batched solver's Hessian-vector products (``bfloat16`` only where the
            hardware multiplies it natively, float32 elsewhere); gradients and the stopping test stay
            float64-accurate (docs/solver.md).
        stats: bootstrap CIs, meta-category aggregates, selectivity and paired tests (`probes.stats`),
            from the held-out predictions of this fit; needs one C per probe (a single C or select_C).
        mdl: also the online codelength of every target (`probes.mdl`), a batched solve of its own.
    """

    def __init__(
        self,
        Cs: list[float] | None = None,
        class_weight: Literal["balanced"] | None = None,
        solver: Solver = "batched",
        tol: float | None = None,
        max_iter: int | None = None,
        select_C: bool = False,
        dtype: Literal["float64", "float32", "bfloat16"] = "float64",
        stats: StatsOptions | None = None,
        mdl: MDLOptions | None = None,
    ) -> None:
        super().__init__()
        if select_C and solver != "batched":
            raise ConfigError("model.select_C needs model.solver=batched (the nested CV is one batched solve)")
        _check_option("model.Cs", Cs, Cs is None or (len(Cs) > 0 and all(np.isfinite(c) and c > 0 for c in Cs)),
                      "a non-empty list of finite numbers > 0 (inverse regularisation strengths), or null for [1.0]")
        _check_option("model.tol", tol, tol is None or (np.isfinite(tol) and tol > 0), "a number > 0, or null")
        _check_option("model.max_iter", max_iter, max_iter is None or max_iter >= 1, "an integer >= 1, or null")
        if stats is not None and len(Cs or [1.0]) > 1 and not select_C:
            raise ConfigError("model.stats needs one C per probe: set model.select_C: true or a single model.Cs value")
        self.save_hyperparameters()
        self.Cs = tuple(float(c) for c in (Cs or [1.0]))
        # a config may hand the option groups over as mappings
        self.stats = StatsOptions(**stats) if isinstance(stats, dict) else stats
        self.mdl = MDLOptions(**mdl) if isinstance(mdl, dict) else mdl
        self.automatic_optimization = False  # training_step runs the solver itself
        self._fits: dict[int, solver.LogRegFit] = {}
        self._chosen: dict[int, torch.Tensor] = {}  # per set: index into Cs per (fold, target)
        self.records: list[pd.DataFrame] = []  # tidy results, one frame per probe set
        self.fit_info: list[dict] = []  # one row per probe set: provenance, solver, convergence
        self.outputs: list[SetOutputs] = []  # held-out predictions per probe set (model.stats)
        self.codelengths: list[tuple[dict, np.ndarray, Codelength]] = []  # (info, y, code) per set (model.mdl)

    @property
    def fit_fn(self) -> Any:
        return _SOLVERS[self.hparams.solver]

    def configure_optimizers(self) -> None:
        return None  # the solvers optimise; Lightning has nothing to step

    def _solver_kwargs(self, device: torch.device) -> dict[str, Any]:
        hp = self.hparams
        kwargs = {"class_weight": hp.class_weight}
        kwargs |= {k: v for k, v in (("tol", hp.tol), ("max_iter", hp.max_iter)) if v is not None}
        if hp.solver == "batched":
            kwargs |= {"device": device, "dtype": _DTYPES[hp.dtype]}
        return kwargs

    def _solve(self, batch: dict[str, Any]) -> solver.LogRegFit:
        """Fit every (fold, C, target) problem; with ``select_C`` also pick C per (fold, target)."""
        x, y, train_mask = batch["x"], batch["y"], batch["train_mask"]
        if baselines.is_majority(batch["info"]["encoder"]):  # no features: the training fold's prior
            fit = baselines.majority_fit(y.cpu(), train_mask.cpu(), self.Cs)
            if self.hparams.select_C:
                self._chosen[batch["index"]] = torch.zeros(fit.b.shape[0], fit.b.shape[2], dtype=torch.int64)
            return fit
        kwargs = self._solver_kwargs(x.device)
        if self.hparams.select_C:
            protocol = batch["protocol"]
            chosen = selection.select_C(
                x, y.cpu(), train_mask.cpu(), batch["test_mask"].cpu(), self.Cs,
                inner_splits=protocol["n_splits"], seed=protocol["seed"], **kwargs,
            )  # fmt: skip
            self._chosen[batch["index"]] = chosen.best_index
            return chosen.refit
        if self.hparams.solver == "sklearn":  # the scikit-learn loop runs on the CPU whatever the accelerator
            x, y, train_mask = x.cpu(), y.cpu(), train_mask.cpu()
            # one problem at a time takes minutes on real data: show it when the trainer shows progress
            kwargs["progress"] = self._trainer is not None and self.trainer.progress_bar_callback is not None
        return self.fit_fn(x, y, train_mask, self.Cs, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch["index"]
        fit = self._solve(batch)
        # registered so the weights are part of state_dict (checkpoints keep every probe)
        self.register_buffer(f"W_{index}", fit.W.to(self.device))
        self.register_buffer(f"b_{index}", fit.b.to(self.device))
        self._fits[index] = fit
        hp = self.hparams
        self.fit_info.append({
            **{k: v for k, v in batch["info"].items() if k != "targets"},
            "solver": fit.solver,
            "tol": _resolved(self.fit_fn, "tol", hp.tol),
            "max_iter": _resolved(self.fit_fn, "max_iter", hp.max_iter),
            "class_weight": hp.class_weight or "none",
            "n_problems": int(fit.converged.numel()),
            "n_converged": int(fit.converged.sum()),
            "n_stopped_at_cap": int(fit.stopped_at_cap.sum()),  # ran into max_iter (sklearn: n_iter_ >= max_iter)
            "max_grad": fit.max_grad,
            "sklearn_version": sklearn_ref.sklearn_version(),  # folds, and the reference solver
        })
        self._warn_unconverged(self.fit_info[-1])

    def _warn_unconverged(self, info: dict[str, Any]) -> None:
        """Announce probes stopped by the iteration cap: console now, fits.csv and report.html (``warning``)."""
        unconverged = info["n_problems"] - info["n_converged"]
        info["warning"] = "" if not unconverged else (
            f"{unconverged} of {info['n_problems']} probe problems of {info['encoder']} stopped at "
            f"max_iter={info['max_iter']} before reaching tol={info['tol']:g} (worst gradient {info['max_grad']:.3g}); "
            "raise --model.max_iter, or keep --data.normalize true for unscaled features"
        )  # fmt: skip
        if unconverged:
            print(f"warning: {info['warning']}", flush=True)
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch["index"]
        if index not in self._fits:  # sanity-check pass before training: nothing to evaluate
            return
        fit = self._fits[index]
        scores = metrics.fit_metrics(batch["x"], batch["y"], batch["test_mask"], fit)  # each [F, C, T]
        scores = {name: value.cpu() for name, value in scores.items()}
        C = torch.tensor(self.Cs, dtype=torch.float64).reshape(1, -1, 1).expand_as(scores["f1_macro"])
        if index in self._chosen:
            pick = self._chosen[index].cpu()[:, None, :]  # [F, 1, T]
            scores = {k: v.gather(1, pick) for k, v in scores.items()}
            C = C.gather(1, pick)
        frame = self._records(batch, scores, C, fit.solver)
        self.records.append(frame)
        prefix = batch["log_label"].replace("/", "_") + "/" if batch["n_sets"] > 1 else ""
        self.log_dict(self._metric_dict(frame, prefix), on_step=False, on_epoch=True, batch_size=1)
        self._keep_outputs(batch, fit)

    def _keep_outputs(self, batch: dict[str, Any], fit: solver.LogRegFit) -> None:
        """What ``stats`` and ``mdl`` need of this probe set: held-out decisions, codelengths."""
        hp = self.hparams
        y = batch["y"].cpu().numpy().astype(bool)
        test = batch["test_mask"].cpu().numpy()
        if self.stats is not None:
            self.outputs.append(SetOutputs(
                info=batch["info"], label=batch["label"], rows=_numpy(batch["rows"]), groups=_numpy(batch["groups"]),
                y=y, test=test, decision=self._held_out_decision(batch, fit),
            ))  # fmt: skip
        if self.mdl is not None and not baselines.is_majority(batch["info"]["encoder"]):
            rows = (batch["train_mask"] | batch["test_mask"]).any(0).cpu().numpy()
            kwargs = {k: v for k, v in self._solver_kwargs(batch["x"].device).items() if k != "class_weight"}
            if hp.solver != "batched":  # MDL's blocks are one batched solve whichever solver fitted the probes
                kwargs = {"tol": kwargs.get("tol", 1e-10)}
            try:
                code = online_codelength(batch["x"], batch["y"].cpu(), rows, self.mdl, **kwargs)
            except (torch.linalg.LinAlgError, ValueError) as exc:  # the scores and stats are still written
                warnings.warn(f"MDL of {batch['log_label']} skipped: the block probes failed ({exc})", stacklevel=1)
                return
            self.codelengths.append((batch["info"], y & rows, code))

    def _held_out_decision(self, batch: dict[str, Any], fit: solver.LogRegFit) -> np.ndarray:
        """``[n, T]`` decision value of each row from the fold where it is a test row, at the reported C."""
        test = batch["test_mask"].cpu()
        chosen = self._chosen.get(batch["index"])
        out = torch.full(test.shape[1:], float("nan"), dtype=torch.float64)
        for f in range(test.shape[0]):
            dec = decision_function(batch["x"], metrics.fold(fit, f))[0].cpu()  # [C, n, T]
            pick = chosen[f].cpu() if chosen is not None else torch.zeros(dec.shape[-1], dtype=torch.int64)
            dec = dec.gather(0, pick.expand(1, dec.shape[1], -1))[0]
            out = torch.where(test[f], dec, out)
        return out.numpy()

    def credibility(self) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """stats.csv and comparisons.csv tables (docs/credibility.md schema), or None without stats/mdl."""
        if self.stats is None and self.mdl is None:
            return None
        options = self.stats or StatsOptions()
        frames = [stats_table(self.outputs, options)]  # no outputs kept without stats: an empty table
        frames += [codelength_table(info, y, code, self.mdl, options) for info, y, code in self.codelengths]
        return pd.concat(frames, ignore_index=True), comparisons_table(self.outputs, options)

    def _records(
        self, batch: dict[str, Any], scores: dict[str, torch.Tensor], C: torch.Tensor, solver_name: str
    ) -> pd.DataFrame:
        info = batch["info"]
        n_folds, n_c, n_targets = C.shape
        n_train = batch["train_mask"].sum(dim=1).cpu().numpy()  # [F, T]
        n_test = batch["test_mask"].sum(dim=1).cpu().numpy()
        fold, _, target = (a.ravel() for a in np.indices((n_folds, n_c, n_targets)))
        base = pd.DataFrame({
            "fold": fold, "C": C.cpu().numpy().ravel(), "target": np.asarray(info["targets"], dtype=object)[target],
            "n_train": n_train[fold, target], "n_test": n_test[fold, target],
        })  # fmt: skip
        frames = [base.assign(metric=name, value=v.double().cpu().numpy().ravel()) for name, v in scores.items()]
        identity = {k: info[k] for k in IDENTITY_COLUMNS}
        frame = pd.concat(frames, ignore_index=True).assign(**identity, solver=solver_name)
        return frame[list(RESULT_COLUMNS)]

    def _metric_dict(self, frame: pd.DataFrame, prefix: str) -> dict[str, float]:
        """``<prefix>[C=<c>/]fold{k}/val/<metric>/<target>``, fold means, ``summary/<metric>_{mean,std}``.

        ``prefix`` names the entry when one run probes several ("/" in encoder names replaced, since
        W&B opens a panel section per "/"); the C level appears only for an unselected C grid, so a
        single-encoder, single-C run has the plain names.
        """
        grid = len(self.Cs) > 1 and not self.hparams.select_C
        out: dict[str, float] = {}
        for c, at_c in frame.groupby("C") if grid else [(None, frame)]:
            p = prefix + (f"C={c:g}/" if grid else "")
            for row in at_c.itertuples():
                out[f"{p}fold{row.fold}/val/{row.metric}/{row.target}"] = row.value
            for (metric, fold), value in at_c.groupby(["metric", "fold"])["value"].mean().items():
                out[f"{p}fold{fold}/val/{metric}_mean"] = value
            for row in summary(at_c).itertuples():
                out[f"{p}summary/{row.metric}_mean"] = row.mean
                out[f"{p}summary/{row.metric}_std"] = row.std
        return out

    def results(self) -> pd.DataFrame:
        """Every number of the fit as one tidy table (``probes.results.RESULT_COLUMNS``)."""
        return results_frame(self.records)


def _numpy(a: Any) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
