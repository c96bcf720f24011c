"""Training and validation batches of grounding scenes, identical for every arm.

The training set is a fixed list of scenes from ``scene_seed``; each scene contributes one true
caption, its canonical form or its converse paraphrase (chosen by the same seed), so every arm sees
the same caption multiset. Each example also carries its contradiction (the NegCLIP hard negative),
the fact ids of both, and the inputs of the arm's second tower (``towers.py``: rendered pixels, another
caption, the world state or a layout grid; none for the text-only arm). Validation serves three sets:
new scenes from the training distribution (``val``) and held-out scenes (``heldout``, unseen
colour-shape pairs and object counts), each with the true caption, its contradiction and its
argument swap, for tower-caption retrieval; and the study's held-out probe scenes (``probe``: the same
``n_probe`` scenes from ``probe_seed`` that ``studies.grounding`` writes), whose four captions score the
structure and argument-swap tests on pooled text features: the learning curves.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spatial_probing.errors import DataError
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding.families import ShapeFamily, VsrFamily, family
from spatial_probing.grounding.structure_scores import KINDS
from spatial_probing.grounding.text import ScratchText, TextTower
from spatial_probing.grounding.towers import SecondTower

VAL_SETS = ("val", "heldout", "probe")
PROBE_SCENES, PROBE_SEED = 400, 12345  # the study's defaults (--n_probe, --probe_seed)


def _prefix(kind: str) -> str:
    """Key prefix of a validation caption kind's tokens (the true caption's are unprefixed)."""
    return "" if kind == "caption" else f"{kind}_"


def token_keys(kind: str) -> tuple[str, str]:
    """Batch keys of a validation caption kind's tokens."""
    return f"{_prefix(kind)}input_ids", f"{_prefix(kind)}attention_mask"


def _ids(text: TextTower, texts: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
    tokens = text.tokenize(texts)
    return {f"{prefix}input_ids": tokens["input_ids"], f"{prefix}attention_mask": tokens["attention_mask"]}


def training_tensors(n: int, seed: int, tower: SecondTower | None = None, text: TextTower | None = None,
                     scenes: ShapeFamily | VsrFamily | None = None) -> dict[str, torch.Tensor]:
    """Every training example as tensors: caption and contradiction tokens (``text``'s tokenizer, default
    ``ScratchText``), fact ids, the tower's inputs; scenes of the family ``scenes`` (default shapes)."""
    text, scenes = text or ScratchText(), scenes or ShapeFamily()
    drawn = scenes.generate(n, seed, "train")
    converse = np.random.default_rng([seed, 2]).random(n) < 0.5
    captions, contradictions = [], []
    for scene, flip in zip(drawn, converse, strict=True):
        a, b = scene.names
        r = scene.relation
        # the caption (or its converse paraphrase) and the contradiction of that very sentence
        subj, rel, obj = (b, scenes.converse(r), a) if flip else (a, r, b)
        captions.append((subj, rel, obj))
        contradictions.append((subj, scenes.converse(rel), obj))
    return {
        **_ids(text, [scenes.caption(*t) for t in captions]),
        **_ids(text, [scenes.caption(*t) for t in contradictions], "neg_"),
        "fact": torch.tensor([scenes.fact_id(*t) for t in captions], dtype=torch.long),
        "neg_fact": torch.tensor([scenes.fact_id(*t) for t in contradictions], dtype=torch.long),
        **(tower.inputs(drawn, seed, train=True, text=text) if tower is not None else {}),
    }


def evaluation_tensors(scenes: list[S.GroundingScene], seed: int, tower: SecondTower | None,
                       kinds: tuple[str, ...] = ("caption", "contradiction", "swap"), text: TextTower | None = None
                       ) -> dict[str, torch.Tensor]:
    """Tokens of each scene's captions of ``kinds`` (keys ``<kind>_input_ids``, ``caption`` unprefixed) and
    the tower's inputs (true pairing)."""
    text = text or ScratchText()
    out = tower.inputs(scenes, seed, train=False, text=text) if tower is not None else {}
    for kind in kinds:
        out |= _ids(text, [s.captions()[kind][0] for s in scenes], _prefix(kind))
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
        n_val: scenes in each retrieval validation set (``val`` in-distribution, ``heldout`` unseen pairs/counts).
        n_probe: held-out probe scenes scored by the structure and swap tests at every validation (the
            study passes its own ``--n_probe``, so the last point of the curve is the study's score).
        probe_seed: seed of the probe scenes (the study's ``--probe_seed``).
        scene_seed: seed of the scene generator (kept fixed across training seeds: same captions).
        batch_size: examples per step and per device.
        num_workers: DataLoader workers (batches are slices of in-memory tensors; 0 is usually fastest).
        scenes: the scene family: ``shapes`` (``scenes.py``, 32x32) or ``vsr`` (``vsr_scenes.py``: VSR's nouns, 64x64).
        held_out: ``vsr`` only: nouns never in training (default ``vsr_scenes.HELD_OUT_NOUNS``).
        train_nouns: ``vsr`` only: nouns of training scenes (default every other ``VSR_NOUNS``).
        tower: the model's second tower (linked from ``model.tower``: it decides which inputs are built).
        text: the model's text tower (linked from ``model.text``: its tokenizer tokenizes every caption).
    """

    def __init__(self, n_train: int = 20000, n_val: int = 512, n_probe: int = PROBE_SCENES,
                 probe_seed: int = PROBE_SEED, scene_seed: int = 0, batch_size: int = 128, num_workers: int = 0,
                 scenes: str = "shapes", held_out: list[str] | None = None, train_nouns: list[str] | None = None,
                 tower: SecondTower | None = None, text: TextTower | None = None) -> None:
        super().__init__()
        if batch_size < 2:
            raise DataError(f"--data.batch_size must be at least 2 (in-batch negatives), got {batch_size}")
        self.scenes = family(scenes, held_out, train_nouns)
        self.text = text or ScratchText()
        self.text.check_words(self.scenes.words(), f"--data.scenes {scenes} (nouns: --data.train_nouns, --data.held_out)")
        self.n_train, self.n_val, self.n_probe, self.probe_seed = n_train, n_val, n_probe, probe_seed
        self.scene_seed, self.batch_size, self.num_workers, self.tower = scene_seed, batch_size, num_workers, tower
        self.train_set: _Tensors | None = None
        self.val_sets: dict[str, _Tensors] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            family, text = self.scenes, self.text
            self.train_set = _Tensors(training_tensors(self.n_train, self.scene_seed, self.tower, text, family))
            # validation scenes come from generator streams disjoint from the training stream
            val_seed = self.scene_seed + 1_000_003
            self.val_sets = {
                "val": _Tensors(evaluation_tensors(family.generate(self.n_val, val_seed, "train"), val_seed,
                                                   self.tower, text=text)),
                "heldout": _Tensors(evaluation_tensors(family.generate(self.n_val, self.scene_seed, "heldout"),
                                                       self.scene_seed, self.tower, text=text)),
                "probe": _Tensors(evaluation_tensors(family.generate(self.n_probe, self.probe_seed, "heldout"),
                                                     self.probe_seed, None, KINDS, text=text)),
            }

    def _loader(self, data: _Tensors, batch_size: int, shuffle: bool) -> DataLoader:
        # Lightning swaps in a DistributedSampler-backed batch sampler under DDP, as for any sampler
        order = RandomSampler(data) if shuffle else SequentialSampler(data)
        # an evaluation loader seeds its iterator from a generator of its own: creating it draws from the global
        # RNG otherwise, and then validating (how often, how many sets) would change the training that follows
        return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=shuffle), batch_size=None,
                          num_workers=self.num_workers, generator=None if shuffle else torch.Generator())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.val_sets[name], 256, shuffle=False) for name in VAL_SETS]
