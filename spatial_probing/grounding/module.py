"""GroundingModule: the text encoder (and the arm's second tower, if any) trained under one objective.

The text encoder is built first from the seeded generator, so under one seed every arm starts from
the same text weights; the second tower and the objective's heads are built after it. Validation logs

* tower-caption retrieval (arms with a tower): the share of scenes whose tower embedding is more
  similar to the true caption than to its contradiction (``<set>/retrieval``; chance 0.5) and to its
  argument swap (``<set>/retrieval_swap``), and the first step at which in-distribution retrieval
  leaves chance (a one-sided binomial test at ``CHANCE_Z`` standard errors above 0.5);
* the learning curves (every arm): the structure and argument-swap tests on the study's held-out probe
  scenes, from pooled text features (``probe/structure``, ``probe/swap``; ``structure_scores.triplet_scores``,
  the study's own rule).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch

from spatial_probing.errors import DataError
from spatial_probing.grounding.datamodule import VAL_SETS, token_keys
from spatial_probing.grounding.families import image_size
from spatial_probing.grounding.objectives import Objective
from spatial_probing.grounding.structure_scores import KINDS, triplet_scores
from spatial_probing.grounding.text import VOCAB, ScratchText, TextTower
from spatial_probing.grounding.towers import SecondTower

CHANCE_Z = 3.0
CHECKPOINT_KEY = "grounding"  # the checkpoint entry the `local:` encoder adapter reads
#: version of the checkpoint's layout (``architecture()``, state-dict names); the ``local:`` adapter refuses others.
#: 2: the second tower is a plug-in (``tower.*`` weights, ``architecture["tower"]``).
CHECKPOINT_FORMAT = 2


class GroundingModule(pl.LightningModule):
    """One arm of the grounding experiment.

    Args:
        objective: ``MaskedLM`` (text-only) or ``Contrastive`` (target rule, hard negatives).
        tower: what ``Contrastive`` contrasts each caption with (``towers.py``); none for ``MaskedLM``.
        text: the text tower (``text.py``): ``ScratchText`` (default) or ``SentenceTransformerText``; its
            width is the tower's feature width.
        scenes: the scene family (linked from ``--data.scenes``: the image tower's input size).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 0 at ``trainer.max_steps``.
    """

    def __init__(self, objective: Objective, tower: SecondTower | None = None, text: TextTower | None = None,
                 scenes: str = "shapes", lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 200) -> None:
        super().__init__()
        if objective.needs_tower != (tower is not None):
            need = "needs a second tower (--model.tower)" if objective.needs_tower else "has no use for --model.tower"
            raise DataError(f"--model.objective {type(objective).__name__} {need}")
        size = image_size(scenes)
        if tower is not None and scenes not in tower.families:
            raise DataError(f"--model.tower {type(tower).__name__} reads the scenes of {list(tower.families)} only, "
                            f"not --data.scenes {scenes}")
        self.save_hyperparameters(ignore=["objective", "tower", "text"])
        self.text_tower = text if text is not None else ScratchText()
        self.text = self.text_tower.build()
        width = self.text.width
        if tower is not None:
            tower.build(width, size)
        self.tower = tower
        objective.build(width, width if tower is not None else None, self.text_tower.vocab_size)
        self.objective = objective
        self.history: list[dict[str, float]] = []  # one row per validation: step, retrieval and probe scores
        self.left_chance_step: int | None = None
        self._train_time, self._train_samples, self._batch_start = 0.0, 0, 0.0

    def architecture(self) -> dict[str, Any]:
        """What the registry adapter needs to rebuild the encoders (and the tokenizer) from a checkpoint:
        ``image`` is the image tower's CNN (weights ``tower.cnn.*``) where the tower encodes RGB scenes."""
        tower = self.tower.architecture() if self.tower is not None else None
        image = ({k: tower[k] for k in ("width", "channels", "image_size")}
                 if self.tower is not None and self.tower.image_view else None)
        return {"format": CHECKPOINT_FORMAT, "vocab": list(VOCAB), "objective": type(self.objective).__name__,
                "tower": tower, "text": self.text_tower.architecture(), "image": image}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.architecture()

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.objective.loss(self, batch)
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

    def _count(self, key: str, wins: torch.Tensor) -> None:
        counts = torch.stack([wins.sum().double(), torch.tensor(float(len(wins)), device=wins.device)])
        self._wins[key] = self._wins.get(key, 0) + counts

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = VAL_SETS[dataloader_idx]
        if name == "probe":
            # float32 features scored in float64, as the study scores the extracted features of these captions
            # (whatever the training precision: autocast off)
            with torch.autocast(self.device.type, enabled=False):
                feats = {k: self.text.encode(*(batch[key] for key in token_keys(k))).float().cpu().numpy()
                         for k in KINDS}
            for test, score in triplet_scores(feats).items():
                self._count(f"probe/{test}", torch.from_numpy(score).to(self.device))
            return
        if self.tower is None:
            return  # a text-only arm has no tower-caption similarity
        true = self.objective.match(self, batch, *(batch[key] for key in token_keys("caption")))
        for score, foil in (("retrieval", "contradiction"), ("retrieval_swap", "swap")):
            false = self.objective.match(self, batch, *(batch[key] for key in token_keys(foil)))
            self._count(f"{name}/{score}", (true > false).double())

    def on_validation_epoch_end(self) -> None:
        if not self._wins:
            return
        # every rank scored its share of the scenes: sum wins and counts over ranks
        totals = {key: self.all_gather(c).reshape(-1, 2).sum(0) for key, c in self._wins.items()}
        scores = {key: (t[0] / t[1]).item() for key, t in totals.items()}
        self.log_dict(scores, rank_zero_only=True)
        self.history.append({"step": int(self.global_step), **scores})
        if "val/retrieval" not in totals or self.trainer.sanity_checking:
            return
        n = totals["val/retrieval"][1].item()
        above = scores["val/retrieval"] > 0.5 + CHANCE_Z * math.sqrt(0.25 / n)
        if self.left_chance_step is None and above:
            self.left_chance_step = int(self.global_step)
