"""Training objectives of the grounding arms; an arm's config differs from the others only here.

* ``MaskedLM`` (text-only arm): BERT-style masked-language modelling on the captions.
* ``Contrastive`` (visual arm): CLIP's symmetric InfoNCE between caption and image embeddings.
* ``Contrastive(hard_negatives=True)`` (NegCLIP-style arm): each caption's contradiction (same
  objects, converse relation) joins the image-to-text candidates.

In-batch targets are soft: every caption whose *fact* (``scenes.fact_id``: converse paraphrases share
one) equals an image's fact is a positive for that image, with the target mass split evenly between
them, so repeated captions and paraphrases of the same scene fact are never pushed apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spatial_probing.grounding.text import MASK


class Objective(nn.Module):
    """An objective owns its heads; ``build`` creates them once the encoders' widths are known."""

    uses_images = False

    def build(self, text_width: int, image_width: int | None, vocab_size: int) -> None:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def match(self, model: nn.Module, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image-caption similarity of row-paired images and captions ``[B]`` (visual objectives only)."""
        raise NotImplementedError(f"{type(self).__name__} has no image tower")


class MaskedLM(Objective):
    """Masked-language modelling: each real token is replaced by ``[MASK]`` with probability
    ``mask_prob`` (at least one per caption) and predicted from the rest by a linear head.

    Args:
        mask_prob: share of tokens masked (BERT's 0.15). All masked tokens become ``[MASK]`` (no 80/10/10
            split: with a 16-word vocabulary random replacements would mostly be other caption words).
    """

    def __init__(self, mask_prob: float = 0.15) -> None:
        super().__init__()
        self.mask_prob = mask_prob

    def build(self, text_width: int, image_width: int | None, vocab_size: int) -> None:
        self.head = nn.Linear(text_width, vocab_size)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        chosen = (torch.rand(ids.shape, device=ids.device) < self.mask_prob) & mask
        forced = torch.multinomial(mask.float(), 1)  # one real token per caption is always masked
        chosen = chosen.scatter(1, forced, True)
        hidden = model.text(ids.masked_fill(chosen, MASK), mask)
        return F.cross_entropy(self.head(hidden[chosen]).float(), ids[chosen])


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against targets spread evenly over each row's positives."""
    targets = positives / positives.sum(1, keepdim=True)
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


class Contrastive(Objective):
    """CLIP-style contrastive learning between captions and a small image encoder.

    Args:
        embed_dim: width of the shared embedding space (linear projections of both towers).
        temperature: initial temperature of the learnable logit scale (CLIP: 0.07; capped at 1/100).
        hard_negatives: add each caption's contradiction as an image-to-text candidate (NegCLIP).
    """

    uses_images = True

    def __init__(self, embed_dim: int = 64, temperature: float = 0.07, hard_negatives: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.hard_negatives = embed_dim, hard_negatives
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def build(self, text_width: int, image_width: int | None, vocab_size: int) -> None:
        self.text_proj = nn.Linear(text_width, self.embed_dim, bias=False)
        self.image_proj = nn.Linear(image_width, self.embed_dim, bias=False)

    def embed_text(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(model.text.encode(ids, mask)).float(), dim=-1)

    def embed_image(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(model.image(pixels)).float(), dim=-1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.embed_image(model, batch["pixels"])
        text = self.embed_text(model, batch["input_ids"], batch["attention_mask"])
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        fact = batch["fact"]
        positives = (fact[:, None] == fact[None, :]).float()  # [image, caption]; symmetric
        text_to_image = _soft_cross_entropy(scale * text @ image.T, positives)
        candidates, targets = text, positives
        if self.hard_negatives:
            negatives = self.embed_text(model, batch["neg_input_ids"], batch["neg_attention_mask"])
            candidates = torch.cat([text, negatives])
            targets = torch.cat([positives, (fact[:, None] == batch["neg_fact"][None, :]).float()], dim=1)
        image_to_text = _soft_cross_entropy(scale * image @ candidates.T, targets)
        return (image_to_text + text_to_image) / 2

    def match(self, model: nn.Module, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.embed_image(model, pixels) * self.embed_text(model, ids, mask)).sum(-1)

