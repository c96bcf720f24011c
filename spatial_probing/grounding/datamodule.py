"""Training and validation batches of grounding scenes, identical for every arm.

The training set is a fixed list of scenes from ``scene_seed``; each scene contributes one true
caption, its canonical form or its converse paraphrase (chosen by the same seed), so every arm sees
the same caption multiset. Each example also carries its contradiction (the NegCLIP hard negative)
and the fact ids of both; arms use what their objective needs. Validation serves two sets: new
scenes from the training distribution (``val``) and held-out scenes (``heldout``, unseen colour-shape
pairs and object counts), each with the true caption, its contradiction and its argument swap.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spatial_probing.errors import DataError
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding.text import Tokenizer

VAL_SETS = ("val", "heldout")


def _ids(tokenizer: Tokenizer, texts: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
    tokens = tokenizer(texts)
    return {f"{prefix}input_ids": tokens["input_ids"], f"{prefix}attention_mask": tokens["attention_mask"]}


def _facts(triples: list[tuple[str, str, str]]) -> torch.Tensor:
    return torch.tensor([S.fact_id(*t) for t in triples], dtype=torch.long)


def training_tensors(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Every training example as tensors: caption and contradiction tokens, pixels, fact ids."""
    scenes = S.generate(n, seed, "train")
    converse = np.random.default_rng([seed, 2]).random(n) < 0.5
    tokenizer = Tokenizer()
    captions, contradictions = [], []
    for scene, flip in zip(scenes, converse, strict=True):
        a, b = scene.names
        r = scene.relation
        # the caption (or its converse paraphrase) and the contradiction of that very sentence
        subj, rel, obj = (b, S.CONVERSE[r], a) if flip else (a, r, b)
        captions.append((subj, rel, obj))
        contradictions.append((subj, S.CONVERSE[rel], obj))
    return {
        **_ids(tokenizer, [S.caption(*t) for t in captions]),
        **_ids(tokenizer, [S.caption(*t) for t in contradictions], "neg_"),
        "pixels": torch.from_numpy(S.images(scenes)),
        "fact": _facts(captions),
        "neg_fact": _facts(contradictions),
    }


def evaluation_tensors(scenes: list[S.GroundingScene]) -> dict[str, torch.Tensor]:
    """Pixels plus tokens of each scene's true caption, contradiction and argument swap."""
    tokenizer = Tokenizer()
    out = {"pixels": torch.from_numpy(S.images(scenes))}
    for kind, prefix in (("caption", ""), ("contradiction", "neg_"), ("swap", "swap_")):
        out |= _ids(tokenizer, [s.captions()[kind][0] for s in scenes], prefix)
    return out


class _Tensors(Dataset):
    """In-memory examples indexed a whole batch at a time (one gather per tensor instead of a per-row collate)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {key: value[index] for key, value in self.tensors.items()}


class GroundingDataModule(pl.LightningDataModule):
    """Scenes for training an arm and for watching its image-caption retrieval during training.

    Args:
        n_train: training scenes (one caption each; epochs repeat them in a new order).
        n_val: scenes in each validation set (``val`` in-distribution, ``heldout`` unseen pairs/counts).
        scene_seed: seed of the scene generator (kept fixed across training seeds: same captions).
        batch_size: examples per step and per device.
        num_workers: DataLoader workers (batches are slices of in-memory tensors; 0 is usually fastest).
    """

    def __init__(self, n_train: int = 20000, n_val: int = 512, scene_seed: int = 0, batch_size: int = 128,
                 num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 2:
            raise DataError(f"--data.batch_size must be at least 2 (in-batch negatives), got {batch_size}")
        self.n_train, self.n_val, self.scene_seed = n_train, n_val, scene_seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: _Tensors | None = None
        self.val_sets: dict[str, _Tensors] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = _Tensors(training_tensors(self.n_train, self.scene_seed))
            # validation scenes come from generator streams disjoint from the training stream
            self.val_sets = {
                "val": _Tensors(evaluation_tensors(S.generate(self.n_val, self.scene_seed + 1_000_003, "train"))),
                "heldout": _Tensors(evaluation_tensors(S.generate(self.n_val, self.scene_seed, "heldout"))),
            }

    def _loader(self, data: _Tensors, batch_size: int, shuffle: bool) -> DataLoader:
        # Lightning swaps in a DistributedSampler-backed batch sampler under DDP, as for any sampler
        order = RandomSampler(data) if shuffle else SequentialSampler(data)
        return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=shuffle), batch_size=None,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.val_sets[name], 256, shuffle=False) for name in VAL_SETS]
