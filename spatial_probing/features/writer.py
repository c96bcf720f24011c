"""FeatureWriter: saves each predicted batch as an atomic shard, then merges once on rank 0."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from spatial_probing.data.rows import SpatialRows
from spatial_probing.features.store import CacheKey, FeatureEntry, FeatureStore


class FeatureWriter(BasePredictionWriter):
    """Writes one shard per (stream, batch) from every rank; rank 0 merges after a barrier.

    Shards are keyed by the batch's position in a fixed batch plan, so a batch computed twice (DDP
    padding, or a resumed run) lands on the same file with the same content.
    """

    def __init__(
        self, store: FeatureStore, key: CacheKey, rows: SpatialRows, parts: dict[str, list[str]], meta: dict
    ) -> None:
        super().__init__(write_interval="batch")
        self.store, self.key, self.rows, self.parts, self.meta = store, key, rows, parts, meta
        self.partial = store.partial_dir(key)
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

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("feature-shards-written")
        if trainer.is_global_zero:
            self.entry = self.store.finalize(self.key, self.rows, self.parts, self.meta)
        trainer.strategy.barrier("feature-entry-final")
