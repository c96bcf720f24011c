"""One extraction: cache lookup, resume from finished shards, ``Trainer.predict``, one merge.

One extraction encodes each stream an encoder's views need once and stores every part the views
(and requested layers) read, so ``--model.view [text-pooled,image,concat]`` is one pass, one entry.
"""

from __future__ import annotations

import time
import warnings

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from spatial_probing.data.datamodule import SpatialDataModule
from spatial_probing.data.vsr import dataset_summary
from spatial_probing.encoders.base import Encoder
from spatial_probing.encoders.module import FrozenEncoder
from spatial_probing.encoders.registry import display_name
from spatial_probing.encoders.views import family_view
from spatial_probing.features.entry import FeatureEntry
from spatial_probing.features.key import CacheKey, make_key
from spatial_probing.features.store import FeatureStore
from spatial_probing.features.writer import FeatureWriter

# Batches are whole items of a planned dataset (batch_size=None), so Lightning cannot list per-row batch
# indices; the writer does not need them (each batch carries its own row indices).
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")


def cache_key(model: FrozenEncoder, datamodule: SpatialDataModule, dtype: str, precision: str) -> CacheKey:
    """The key of an extraction, computed without loading any weights (so cache hits are instant)."""
    spec = model.spec
    uses_images = any("image" in family_view(spec.family, v).streams for v in spec.views)
    return make_key(str(spec), spec.view, spec.model, datamodule.rows, dtype, str(precision), model.layers_key,
                    datamodule.image_orientation, uses_images)


def extract(
    trainer: pl.Trainer,
    model: FrozenEncoder,
    datamodule: SpatialDataModule,
    feature_root: str,
    dtype: str = "float32",
    overwrite: bool = False,
) -> FeatureEntry | None:
    """Return the cache entry for (encoder, view, dataset), computing only what is missing.

    Returns None on ranks other than 0 of a multi-process run (the entry is merged on rank 0).
    Rank 0 holds the entry's lock throughout, so an identical extraction started meanwhile waits and
    then reuses this one's work; the ranks it launches run under that lock.
    """
    store = FeatureStore(feature_root)
    key = cache_key(model, datamodule, dtype, trainer.precision)
    if rank_zero_only.rank != 0:
        return _extract(trainer, model, datamodule, store, key, overwrite)
    with store.locked(key):
        return _extract(trainer, model, datamodule, store, key, overwrite)


def _extract(trainer: pl.Trainer, model: FrozenEncoder, datamodule: SpatialDataModule, store: FeatureStore,
             key: CacheKey, overwrite: bool) -> FeatureEntry | None:
    store.clean_stale(key)
    if not overwrite and (entry := store.lookup(key)) is not None:
        print(f"cache hit: {entry.describe()}")
        return entry
    if overwrite:
        store.discard(key)
    print(f"extracting {model.spec} features of {datamodule.rows.name} ({len(datamodule.rows)} rows)", flush=True)
    start = time.perf_counter()
    datamodule.warn_about_rows()
    encoder = model.build()  # before any shard dir exists: a model that fails to load leaves nothing behind
    if "text" in model.parts():
        warn_long_captions(encoder, datamodule.rows.captions, datamodule.rows.name)
    parts = model.parts()  # stream -> parts its batches store
    partial = store.prepare_partial(key, datamodule.plan_signature())
    plans = {"text": datamodule.text_plan(), "image": datamodule.image_plan()}
    pending = {
        stream: sorted(set(range(len(plans[stream]))) - store.completed_batches(partial, stream)) for stream in parts
    }
    total = sum(len(plans[s]) for s in parts)
    done = total - sum(len(pending[s]) for s in parts)
    if done:
        print(f"resuming: {done} of {total} batches already in {partial}")
    spec = model.spec
    meta = {
        "encoder": display_name(spec),
        "spec": str(spec),
        "family": spec.family,
        "view": spec.view,
        "view_parts": [[v, list(family_view(spec.family, v).parts)] for v in spec.views],
        "layers": model.layers_key,
        "dataset": datamodule.rows.name,
        "split": datamodule.split,
        "dataset_summary": dataset_summary(datamodule.rows),
        "preprocessing_fingerprint": encoder.preprocessing_fingerprint(),
        "batch_size": datamodule.batch_size,
        "world_size": trainer.world_size,
    }
    if any(pending.values()):
        writer = FeatureWriter(store, key, datamodule.rows, parts, meta, done=done, total=total)
        datamodule.attach(encoder, pending)
        trainer.callbacks.append(writer)
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        entry = writer.entry
        if entry is not None and not done and (saving := model.one_pass_saving()):  # timings of a whole run only
            print(saving)
    else:  # every shard survived a run killed during its merge: only the merge is left
        entry = store.finalize(key, datamodule.rows, parts, meta)
    if entry is not None:
        print(f"wrote {entry.describe()} in {time.perf_counter() - start:.1f} s")
    return entry


def warn_long_captions(encoder: Encoder, captions: tuple[str, ...], name: str) -> None:
    """Print a warning when captions exceed the tokenizer's limit: their ends are cut before encoding."""
    counted = encoder.text_token_limit(list(captions))
    if counted is None:
        return
    counts, limit = counted
    long_rows = np.flatnonzero(counts > limit)
    if len(long_rows):
        print(f"warning: {name}: {len(long_rows)} captions are longer than the tokenizer's limit of {limit} tokens "
              f"(longest {int(counts.max())}, first: row {int(long_rows[0])}); their ends are truncated before encoding",
              flush=True)
