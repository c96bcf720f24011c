"""Cached features -> probe sets, as a LightningDataModule: what `LinearProbe` fits, one full batch per entry.

``ProbeDataModule`` turns feature-cache entries into probe sets: the valid rows' features, a task's
targets and row masks, and per-target fold masks. It serves one full batch per entry, so a run over
several encoders is one epoch whose steps are the entries. Entries are found (`find_entries`) and
checked (`check_features`, one dataset per run) before anything is fitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
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
from spatial_probing.probes.baselines import Baseline, baseline_set
from spatial_probing.probes.folds import fold_masks, target_folds
from spatial_probing.probes.results import entry_labels
from spatial_probing.tasks.base import ProbeTask, Task
from spatial_probing.tasks.control import ControlTask, Lexical
from spatial_probing.tasks.relation_type import RelationType

#: The first study's task; lazy so ``--print_config`` shows it as ``class_path``/``init_args``.
DEFAULT_TASK = lazy_instance(RelationType)
#: How many offending rows an error message lists.
_SHOW_ROWS = 5


def check_option(name: str, value: Any, ok: bool, valid: str) -> None:
    """Refuse an option value at config time, naming the option and its valid range."""
    if not ok:
        raise ConfigError(f"--{name} {json.dumps(value)} is out of range: expected {valid}")


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
    found = _once(found)
    if dataset is not None:
        found = [p for p in found if _entry_dataset(p) == dataset]
    if not found:
        raise FeatureError(f"no complete feature-cache entries found in {[str(i) for i in items]}"
                           + (f" for dataset {dataset!r}" if dataset else ""))
    return found


def _once(paths: list[Path]) -> list[Path]:
    """Each entry once, in first-listed order: an entry named twice (directly, or inside a listed directory) is
    one probe set, never two copies pooled into every mean."""
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    if len(unique) < len(paths):
        print(f"note: {len(paths) - len(unique)} feature entries were listed more than once; each is probed once")
    return list(unique.values())


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


def _two_class_targets(task: ProbeTask, train: np.ndarray, test: np.ndarray, what: str) -> np.ndarray:
    """[T] False for targets whose training or test rows hold a single class in some fold, announced with a
    count: such a fold has no F1 to measure (scikit-learn would score it 0, or 0.5 macro), so the target is left
    out of every result row and mean instead of lowering them."""
    y = task.targets.astype(bool)[None]  # [1, n, T] against masks [F, n, T]
    single = [(m & y).sum(1) % np.maximum(m.sum(1), 1) == 0 for m in (train, test)]  # no positive, or all
    bad_folds = single[0] | single[1]  # [F, T]
    keep = ~bad_folds.any(axis=0)
    if not keep.all():
        skipped = ", ".join(f"{task.target_names[t]!r} (folds {', '.join(map(str, np.flatnonzero(bad_folds[:, t])))})"
                            for t in np.flatnonzero(~keep)[:_SHOW_ROWS])
        print(f"warning: {what}: {int((~keep).sum())} of {len(keep)} targets skipped, their training or test rows "
              f"hold a single class in some fold: {skipped}; they are in no result row and no mean. Lower "
              "--data.n_splits or raise --data.task.min_count", flush=True)
    if not keep.any():
        raise FeatureError(f"{what}: every target has a single class in some fold; nothing can be probed")
    return keep


def _keep_targets(task: ProbeTask, keep: np.ndarray) -> ProbeTask:
    """``task`` with only the target columns ``keep`` (a boolean mask over its targets)."""
    return replace(task, targets=task.targets[:, keep], row_mask=task.row_mask[:, keep],
                   target_names=tuple(n for n, k in zip(task.target_names, keep, strict=True) if k))


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
        check_option("data.n_splits", n_splits, n_splits >= 2, "an integer >= 2 (cross-validation folds)")
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
        task = task.subset(rows)
        keep = _two_class_targets(task, train, test, f"{entry.meta.get('encoder', entry.path)} ({task.name})")
        return ProbeSet(entry=entry, rows=rows, task=_keep_targets(task, keep), train_mask=train[..., keep],
                        test_mask=test[..., keep])

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
