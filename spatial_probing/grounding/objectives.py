"""Training objectives of the grounding arms (``model.objective``); what the caption is contrasted with is
the arm's second tower (``model.tower``, ``towers.py``).

* ``MaskedLM`` (text-only arm, no tower): BERT-style masked-language modelling on the captions.
* ``Contrastive``: CLIP's symmetric InfoNCE between caption embeddings and the tower's embeddings of
  the same examples, with one of two target rules:

  - ``targets="fact"``: soft in-batch targets. Every caption whose *fact* (``scenes.fact_id``: converse
    paraphrases share one) equals an example's fact is a positive for it, the target mass split evenly,
    so repeated captions and paraphrases are never pushed apart. The targets themselves tell the arm
    which sentences co-refer.
  - ``targets="onehot"``: CLIP's own rule, a caption is the positive of its own example only.
* ``Contrastive(hard_negatives=True)`` (NegCLIP-style): each caption's contradiction (same objects,
  converse relation) joins the tower-to-text candidates (a positive only where the target rule says so).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class Objective(nn.Module):
    """An objective owns its heads; ``build`` creates them once the encoders' widths are known."""

    needs_tower = False  # contrasts captions with a second tower's embeddings

    def build(self, text_width: int, tower_width: int | None, vocab_size: int) -> None:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def match(self, model: nn.Module, batch: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
              ) -> torch.Tensor:
        """Similarity ``[B]`` of each example's tower input and the row-paired caption (tower objectives only)."""
        raise NotImplementedError(f"{type(self).__name__} has no second tower")


class MaskedLM(Objective):
    """Masked-language modelling: each real token is replaced by ``[MASK]`` with probability
    ``mask_prob`` (at least one per caption) and predicted from the rest by a linear head.

    Args:
        mask_prob: share of tokens masked (BERT's 0.15). All masked tokens become ``[MASK]`` (no 80/10/10
            split: with a 16-word vocabulary random replacements would mostly be other caption words).

    The head is a fresh linear map over the text tower's vocabulary (for a pretrained sentence-transformers
    tower too: its directory keeps no MLM head), on the final hidden states; the tokenizer's special tokens
    ([CLS], [SEP]) are never masked.
    """

    def __init__(self, mask_prob: float = 0.15) -> None:
        super().__init__()
        self.mask_prob = mask_prob

    def build(self, text_width: int, tower_width: int | None, vocab_size: int) -> None:
        self.head = nn.Linear(text_width, vocab_size)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        maskable = model.text.maskable(ids, mask)  # real tokens; a pretrained tokenizer's [CLS]/[SEP] excluded
        chosen = (torch.rand(ids.shape, device=ids.device) < self.mask_prob) & maskable
        forced = torch.multinomial(maskable.float(), 1)  # one real token per caption is always masked
        chosen = chosen.scatter(1, forced, True)
        hidden = model.text(ids.masked_fill(chosen, model.text.mask_token_id), mask)
        return F.cross_entropy(self.head(hidden[chosen]).float(), ids[chosen])


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against targets spread evenly over each row's positives."""
    targets = positives / positives.sum(1, keepdim=True)
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


class Contrastive(Objective):
    """CLIP-style contrastive learning between captions and the arm's second tower.

    Args:
        embed_dim: width of the shared embedding space (linear projections of both towers).
        temperature: initial temperature of the learnable logit scale (CLIP: 0.07; capped at 1/100).
        targets: ``fact`` (captions of the same fact are all positives: paraphrases are linked by the
            targets) or ``onehot`` (CLIP's rule: a caption is the positive of its own example only).
        hard_negatives: add each caption's contradiction as a tower-to-text candidate (NegCLIP).
    """

    needs_tower = True

    def __init__(self, embed_dim: int = 64, temperature: float = 0.07, targets: Literal["fact", "onehot"] = "fact",
                 hard_negatives: bool = False) -> None:
        super().__init__()
        if targets not in ("fact", "onehot"):
            raise ValueError(f"--model.objective.init_args.targets must be 'fact' or 'onehot', got {targets!r}")
        self.embed_dim, self.targets, self.hard_negatives = embed_dim, targets, hard_negatives
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def build(self, text_width: int, tower_width: int | None, vocab_size: int) -> None:
        self.text_proj = nn.Linear(text_width, self.embed_dim, bias=False)
        self.tower_proj = nn.Linear(tower_width, self.embed_dim, bias=False)

    def embed_text(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(model.text.encode(ids, mask)).float(), dim=-1)

    def embed_tower(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.tower_proj(model.tower(batch, model.text)).float(), dim=-1)

    def positives(self, tower_fact: torch.Tensor, caption_fact: torch.Tensor, own: bool) -> torch.Tensor:
        """Target indicator ``[example, caption]``; ``own``: column j is example j's own caption."""
        if self.targets == "onehot":
            eye = torch.eye(len(tower_fact), len(caption_fact), device=tower_fact.device)
            return eye if own else torch.zeros_like(eye)
        return (tower_fact[:, None] == caption_fact[None, :]).float()

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tower = self.embed_tower(model, batch)
        text = self.embed_text(model, batch["input_ids"], batch["attention_mask"])
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        fact = batch["fact"]
        positives = self.positives(fact, fact, own=True)  # symmetric under both rules
        text_to_tower = _soft_cross_entropy(scale * text @ tower.T, positives)
        candidates, targets = text, positives
        if self.hard_negatives:
            negatives = self.embed_text(model, batch["neg_input_ids"], batch["neg_attention_mask"])
            candidates = torch.cat([text, negatives])
            targets = torch.cat([positives, self.positives(fact, batch["neg_fact"], own=False)], dim=1)
        tower_to_text = _soft_cross_entropy(scale * tower @ candidates.T, targets)
        return (tower_to_text + text_to_tower) / 2

    def match(self, model: nn.Module, batch: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
              ) -> torch.Tensor:
        return (self.embed_tower(model, batch) * self.embed_text(model, ids, mask)).sum(-1)
