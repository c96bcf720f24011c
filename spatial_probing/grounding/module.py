"""GroundingModule: the text encoder (and, for visual objectives, the image encoder) trained under one objective.

The text encoder is built first from the seeded generator, so under one seed every arm starts from
the same text weights; the image tower and the objective's heads are built after it. Validation
logs image-caption retrieval: the share of scenes whose image is more similar to the true caption
than to its contradiction (``<set>/retrieval``; chance 0.5) and to its argument swap
(``<set>/retrieval_swap``), and records the first step at which in-distribution retrieval leaves
chance (a one-sided binomial test at ``CHANCE_Z`` standard errors above 0.5).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch

from spatial_probing.grounding.datamodule import VAL_SETS
from spatial_probing.grounding.image import ImageEncoder, to_pixels
from spatial_probing.grounding.objectives import Objective
from spatial_probing.grounding.scenes import IMAGE_SIZE
from spatial_probing.grounding.text import VOCAB, TextEncoder

CHANCE_Z = 3.0
CHECKPOINT_KEY = "grounding"  # the checkpoint entry the `local:` encoder adapter reads


class GroundingModule(pl.LightningModule):
    """One arm of the grounding experiment.

    Args:
        objective: ``MaskedLM`` (text-only) or ``Contrastive`` (with or without hard negatives).
        width: text (and image feature) width.
        depth: Transformer layers.
        heads: attention heads.
        max_length: longest caption in tokens.
        image_channels: channels of the first convolution (doubled in the next two).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 0 at ``trainer.max_steps``.
    """

    def __init__(self, objective: Objective, width: int = 64, depth: int = 2, heads: int = 4, max_length: int = 16,
                 image_channels: int = 32, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 200) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.text = TextEncoder(len(VOCAB), width, depth, heads, max_length)
        self.image = ImageEncoder(width, image_channels) if objective.uses_images else None
        objective.build(width, width if self.image is not None else None, len(VOCAB))
        self.objective = objective
        self.history: list[dict[str, float]] = []  # one row per validation: step and retrieval scores
        self.left_chance_step: int | None = None
        self._train_time, self._train_samples, self._batch_start = 0.0, 0, 0.0

    def architecture(self) -> dict[str, Any]:
        """What the registry adapter needs to rebuild the encoders (and the tokenizer) from a checkpoint."""
        hp = self.hparams
        return {"vocab": list(VOCAB), "objective": type(self.objective).__name__,
                "text": {"vocab_size": len(VOCAB), "width": hp.width, "depth": hp.depth, "heads": hp.heads,
                         "max_length": hp.max_length},
                "image": {"width": hp.width, "channels": hp.image_channels, "image_size": IMAGE_SIZE} if self.image is not None else None}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.architecture()

    # -- training -----------------------------------------------------------------------------
    def _prepared(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "pixels": to_pixels(batch["pixels"])}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.objective.loss(self, self._prepared(batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # batch start to batch start: the step and the loading of the next batch; validation excluded below
        now = time.perf_counter()
        if self._batch_start and self.global_step > 10:  # the first steps pay for allocation and warm-up
            self._train_time += now - self._batch_start
            self._train_samples += batch["input_ids"].shape[0] * self.trainer.world_size
        self._batch_start = now

    def on_validation_start(self) -> None:
        self._batch_start = 0.0  # the next interval spans validation: not timed

    @property
    def samples_per_second(self) -> float:
        """Training throughput (all devices) from batch start to batch start, excluding validation and the
        first steps."""
        return self._train_samples / self._train_time if self._train_time else float("nan")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "positions" not in n]
        keep = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "positions" not in n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                       {"params": keep, "weight_decay": 0.0}], lr=hp.lr)
        total = max(self.trainer.max_steps, 1)

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._wins: dict[str, torch.Tensor] = {}  # per score: [wins, scenes] on this rank

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = VAL_SETS[dataloader_idx]
        if not self.objective.uses_images:
            return  # a text-only arm has no image-caption similarity
        pixels = to_pixels(batch["pixels"])
        true = self.objective.match(self, pixels, batch["input_ids"], batch["attention_mask"])
        for kind, prefix in (("retrieval", "neg_"), ("retrieval_swap", "swap_")):
            false = self.objective.match(self, pixels, batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"])
            counts = torch.stack([(true > false).sum().double(), torch.tensor(float(len(true)), device=true.device)])
            key = f"{name}/{kind}"
            self._wins[key] = self._wins.get(key, 0) + counts

    def on_validation_epoch_end(self) -> None:
        if not self._wins:
            return
        # every rank scored its share of the scenes: sum wins and counts over ranks
        totals = {key: self.all_gather(c).reshape(-1, 2).sum(0) for key, c in self._wins.items()}
        scores = {key: (t[0] / t[1]).item() for key, t in totals.items()}
        n = totals["val/retrieval"][1].item()
        self.log_dict(scores, rank_zero_only=True)
        self.history.append({"step": int(self.global_step), **scores})
        above = scores["val/retrieval"] > 0.5 + CHANCE_Z * math.sqrt(0.25 / n)
        if self.left_chance_step is None and above and not self.trainer.sanity_checking:
            self.left_chance_step = int(self.global_step)
