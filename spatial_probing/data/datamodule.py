"""SpatialDataModule: rows of VSR or synthetic scenes, served as fixed text and image batches for extraction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spatial_probing.data.images import ImageLoadError, ImageSource
from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.sources import cache_root, dataset_location, load_rows
from spatial_probing.errors import DataError


class _PlannedBatches(Dataset):
    """Map-style dataset whose items are whole batches of a fixed plan.

    Making the batch (not the row) the unit of work lets DDP hand whole batches to ranks, workers
    build batches in parallel, and a resumed run skip exactly the batches already on disk.
    """

    def __init__(self, plan: list[np.ndarray], pending: list[int], make: Callable[[int, np.ndarray], dict]) -> None:
        self.plan, self.pending, self.make = plan, pending, make

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, item: int) -> dict[str, Any]:
        batch_id = self.pending[item]
        return self.make(batch_id, self.plan[batch_id])


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[i : i + size] for i in range(0, len(order), size)]


class SpatialDataModule(pl.LightningDataModule):
    """Serves image-caption rows to a frozen encoder.

    Args:
        dataset: ``scenes`` (synthetic scenes generated offline), a hub id (``cambridgeltl/vsr_random``,
            ``cambridgeltl/vsr_zeroshot``) or a local directory of ``{train,dev,test}.jsonl``.
        split: ``train``, ``dev`` or ``test``.
        image_root: directory holding the images by file name (e.g. COCO train2017 + val2017 merged);
            None fetches each row's ``image_link`` into ``image_cache``.
        image_cache: where downloaded images are kept (default ``~/.cache/spatial_probing/images``).
        batch_size: rows (text) or unique images (image) per batch.
        num_workers: DataLoader workers that tokenise captions and decode images.
        relations: keep only these relations (None keeps all).
        scenes_per_relation: synthetic scenes per relation (``dataset=scenes`` only).
        scenes_seed: seed of the scene generator.
        image_timeout_s: per-request timeout when fetching image URLs.
        image_retries: retries after a timeout, 5xx or connection error.
        image_orientation: ``stored`` (pixels as stored in the file, ignoring EXIF, as COCO's boxes,
            the first study and the CLIP preprocessors do) or ``exif`` (rotated per the EXIF tag).
        image_fail_fast: stop when the first this many image downloads all fail to connect (0: never).
    """

    def __init__(
        self,
        dataset: str = "scenes",
        split: str = "train",
        image_root: str | None = None,
        image_cache: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        relations: list[str] | None = None,
        scenes_per_relation: int = 40,
        scenes_seed: int = 0,
        image_timeout_s: float = 10.0,
        image_retries: int = 2,
        image_orientation: Literal["stored", "exif"] = "stored",
        image_fail_fast: int = 5,
    ) -> None:
        super().__init__()
        if batch_size < 1:  # checked here: a zero step would only fail later, deep inside the batch plan
            raise DataError(f"--data.batch_size must be at least 1, got {batch_size}")
        self.image_orientation, self.image_fail_fast = image_orientation, image_fail_fast
        self.dataset, self.split, self.relations = dataset, split, relations
        self.image_root, self.image_cache = image_root, image_cache
        self.batch_size, self.num_workers = batch_size, num_workers
        self.scenes_per_relation, self.scenes_seed = scenes_per_relation, scenes_seed
        self.image_timeout_s, self.image_retries = image_timeout_s, image_retries
        self._rows: SpatialRows | None = None
        self._loaders: list[DataLoader] = []

    # -- rows ---------------------------------------------------------------------------------
    def data_args(self) -> dict[str, Any]:
        """The options that determine the rows (what a cache lookup needs to reload them)."""
        return {"dataset": self.dataset, "split": self.split, "relations": self.relations,
                "scenes_per_relation": self.scenes_per_relation, "scenes_seed": self.scenes_seed}

    @property
    def rows(self) -> SpatialRows:
        """The validated rows of the chosen split (loaded once)."""
        if self._rows is None:
            self._rows = load_rows(**self.data_args())
        return self._rows

    def image_source(self) -> ImageSource:
        _, root = dataset_location(self.dataset, self.image_root, self.scenes_per_relation, self.scenes_seed)
        cache = self.image_cache or str(cache_root() / "images")
        return ImageSource(root=root, cache_dir=cache, timeout_s=self.image_timeout_s, retries=self.image_retries,
                           exif_transpose=self.image_orientation == "exif", fail_fast=self.image_fail_fast)

    def warn_about_rows(self) -> None:
        """Print a warning for repeated rows, which probing would silently count twice."""
        repeated = self.rows.repeated_rows()
        if len(repeated):
            print(f"warning: {self.rows.name}: {len(repeated)} rows repeat an earlier row (same caption, image, "
                  f"relation and label; first: row {int(repeated[0])}); unless folds are grouped by image "
                  "(--data.folds grouped when probing), a repeated caption can sit on both sides of a fold",
                  flush=True)

    # -- batch plans --------------------------------------------------------------------------
    def text_plan(self) -> list[np.ndarray]:
        """Rows sorted by caption length (longest first), so padding inside a batch is minimal."""
        lengths = np.array([len(c) for c in self.rows.captions])
        return _chunks(np.argsort(-lengths, kind="stable"), self.batch_size)

    def image_plan(self) -> list[np.ndarray]:
        """Unique images in first-seen order: each image is decoded and encoded once."""
        names, _ = self.rows.unique_images()
        return _chunks(np.arange(len(names)), self.batch_size)

    def plan_signature(self) -> dict:
        return {"batch_size": self.batch_size, "n_rows": len(self.rows)}

    # -- loaders ------------------------------------------------------------------------------
    def attach(self, encoder: Any, pending: dict[str, list[int]]) -> None:
        """Build the predict loaders for the batches still to compute, with the encoder's preprocessing."""
        rows = self.rows
        self._loaders = []
        if pending.get("text"):
            plan = self.text_plan()

            def make_text(batch_id: int, idx: np.ndarray) -> dict[str, Any]:
                tokens = encoder.preprocess_text([rows.captions[i] for i in idx])
                return {"stream": "text", "batch_id": batch_id, "indices": torch.from_numpy(idx), "tokens": tokens}

            self._loaders.append(self._loader(_PlannedBatches(plan, pending["text"], make_text)))
        if pending.get("image"):
            self._loaders.append(self._loader(_PlannedBatches(self.image_plan(), pending["image"],
                                                              self._image_batch_maker(encoder))))

    def _image_batch_maker(self, encoder: Any) -> Callable[[int, np.ndarray], dict]:
        names, row_to_image = self.rows.unique_images()
        first_row = {int(img): int(r) for r, img in reversed(list(enumerate(row_to_image)))}
        links = [self.rows.image_links[first_row[i]] for i in range(len(names))]
        source = self.image_source()

        def make_image(batch_id: int, idx: np.ndarray) -> dict[str, Any]:
            ok, pixels, failures = [], [], []
            for i in idx:
                try:
                    pixels.append(encoder.preprocess_image(source.load(names[i], links[i])))
                    ok.append(int(i))
                except ImageLoadError as exc:  # recorded and masked out downstream, never zero-filled
                    failures.append({"index": int(i), "image": names[i], "reason": exc.reason})
            stacked = torch.stack(pixels) if pixels else torch.empty(0)
            return {"stream": "image", "batch_id": batch_id, "indices": torch.tensor(ok, dtype=torch.long),
                    "pixels": stacked, "failures": failures}

        return make_image

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=False)

    def predict_dataloader(self) -> list[DataLoader]:
        if not self._loaders:
            raise RuntimeError("SpatialDataModule.attach(encoder, pending) must run before predict")
        return self._loaders
