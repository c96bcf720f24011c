"""The grounding text encoder: a closed word-level tokenizer and a small pre-norm Transformer.

Every arm of the experiment uses exactly this tokenizer and architecture; only the objective differs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from spatial_probing.grounding.scenes import RELATIONS, SCENE_COLOURS, SCENE_SHAPES

SPECIALS = ("[PAD]", "[UNK]", "[MASK]")
PAD, UNK, MASK = 0, 1, 2
WORDS = tuple(sorted({"the", "is", "of", ".", *SCENE_COLOURS, *SCENE_SHAPES,
                      *(w for r in RELATIONS for w in r.split())}))
VOCAB = SPECIALS + WORDS
_TOKEN = re.compile(r"[a-z]+|\.")


class Tokenizer:
    """Lower-cased words and "." -> ids of ``VOCAB``; unknown words are ``[UNK]``, batches right-padded."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB, max_length: int = 16) -> None:
        self.vocab = tuple(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in _TOKEN.findall(text.lower())][: self.max_length]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` ``[B, L]`` (L = longest caption in the batch) and boolean ``attention_mask``."""
        seqs = [self.ids(t) for t in texts]
        width = max((len(s) for s in seqs), default=1) or 1
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids != PAD}


class TextEncoder(nn.Module):
    """Token + learned position embeddings, ``depth`` pre-norm Transformer layers, final LayerNorm.

    ``forward`` returns the hidden states ``[B, L, width]``; ``pool`` is the mean over real tokens
    (the sentence feature every arm exposes to the registry).
    """

    def __init__(self, vocab_size: int = len(VOCAB), width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 16) -> None:
        super().__init__()
        self.width = width
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.positions = nn.Embedding(max_length, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        # nested tensors would switch eval to a different kernel path than training; keep one path
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        return self.norm(self.layers(x, src_key_padding_mask=~attention_mask))

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the hidden states of real (non-pad) tokens, ``[B, width]``."""
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features ``[B, width]``."""
        return self.pool(self(input_ids, attention_mask), attention_mask)
