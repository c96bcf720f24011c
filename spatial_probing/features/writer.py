"""FeatureWriter: saves each predicted batch as an atomic shard, then merges once on rank 0."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from spatial_probing import stop
from spatial_probing.data.rows import SpatialRows
from spatial_probing.features.entry import FeatureEntry
from spatial_probing.features.key import CacheKey
from spatial_probing.features.store import FeatureStore

#: Progress lines in a non-interactive log: one per this fraction of the batches.
_PROGRESS_STEP = 0.1


class FeatureWriter(BasePredictionWriter):
    """Writes one shard per (stream, batch) from every rank; rank 0 merges after a barrier.

    Shards are keyed by the batch's position in a fixed batch plan, so a batch computed twice (DDP
    padding, or a resumed run) lands on the same file with the same content. After each shard the
    writer is a safe point: a SIGTERM received meanwhile stops the run there (`spatial_probing.stop`).

    Args:
        done: batches already on disk when the run starts; total: batches of the whole extraction.
    """

    def __init__(
        self, store: FeatureStore, key: CacheKey, rows: SpatialRows, parts: dict[str, list[str]], meta: dict,
        done: int = 0, total: int = 0,
    ) -> None:
        super().__init__(write_interval="batch")
        self.store, self.key, self.rows, self.parts, self.meta = store, key, rows, parts, meta
        self.partial = store.partial_dir(key)
        self.done, self.total = done, total
        self.entry: FeatureEntry | None = None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        path = self.store.shard_path(self.partial, prediction["stream"], prediction["batch_id"])
        self.store.write_shard(
            path,
            prediction["indices"].numpy().astype(np.int64),
            {name: values.numpy() for name, values in prediction["parts"].items()},
            prediction["failures"],
        )
        self.done += 1
        self._progress(trainer)
        stop.check(f"{self.done} of {self.total} batches are kept in {self.partial}",
                   "rerun the same command to resume from them")

    def _progress(self, trainer: pl.Trainer) -> None:
        """One line per 10% of the batches when nothing else shows progress (a log file, no progress bar)."""
        if not trainer.is_global_zero or self.total == 0:
            return
        if trainer.progress_bar_callback is not None and sys.stdout.isatty():
            return
        step = max(1, round(self.total * _PROGRESS_STEP))
        if self.done % step == 0 or self.done == self.total:
            print(f"extract: {self.done}/{self.total} batches ({100 * self.done // self.total}%)", flush=True)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("feature-shards-written")
        if trainer.is_global_zero:
            self.entry = self.store.finalize(self.key, self.rows, self.parts, self.meta)
        trainer.strategy.barrier("feature-entry-final")
