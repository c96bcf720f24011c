"""sentence-transformers adapter: the model's own tokeniser and pooling, then L2-normalised.

Features equal ``SentenceTransformer(model).encode(captions, normalize_embeddings=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from spatial_probing.encoders.base import (
    Encoder,
    hub_download_fix,
    hub_offline,
    load_or_explain,
    resolve_model_dir,
    seeded,
)
from spatial_probing.encoders.registry import EncoderSpec

# The transformer module of a sentence-transformers directory lives at its root.
_REQUIRED_FILES = (
    ("config.json",),
    ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
)


class SBertEncoder(Encoder):
    """A SentenceTransformer pipeline (transformer, pooling, ...) with L2-normalised output."""

    def __init__(self, spec: EncoderSpec, model: SentenceTransformer) -> None:
        super().__init__(spec, text_dim=model.get_embedding_dimension(), image_dim=None)
        self.model = model
        self.freeze()

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The library's own tokenisation (its tokenizer, truncated to ``max_seq_length``)."""
        # preprocess() also returns non-tensor entries (the modality name); a batch carries tensors only.
        return {k: v for k, v in self.model.preprocess(texts).items() if isinstance(v, torch.Tensor)}

    @torch.no_grad()
    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled sentence embeddings, L2-normalised (``normalize_embeddings=True`` semantics)."""
        # forward() writes its outputs into the dict it is given: pass a copy, keep the batch intact.
        pooled = self.model(dict(tokens))["sentence_embedding"]
        return F.normalize(pooled.float(), dim=-1)

    def preprocessing_settings(self) -> dict[str, Any]:
        """Tokeniser, max length, the modules after the transformer (pooling etc.) and normalisation."""
        tokenizer = self.model.tokenizer
        return {
            "tokenizer": type(tokenizer).__name__,
            "do_lower_case": getattr(tokenizer, "do_lower_case", None),
            "max_seq_length": self.model.max_seq_length,
            "modules": [
                [
                    type(module).__name__,
                    module.get_config_dict() if hasattr(module, "get_config_dict") else {},
                ]
                for module in list(self.model)[1:]
            ],
            "l2_normalize": True,
        }


def _reinitialise(model: torch.nn.Module) -> None:
    """Replace a transformers model's weights by a seeded fresh initialisation of the same config."""
    with seeded():
        fresh = type(model)(model.config)
    model.load_state_dict(fresh.state_dict())


def build(spec: EncoderSpec) -> SBertEncoder:
    """Load ``spec.model`` (local dir or hub id; the hub only when not offline)."""
    source = resolve_model_dir(spec, _REQUIRED_FILES)
    model = load_or_explain(
        lambda: SentenceTransformer(source, device="cpu", local_files_only=hub_offline()),
        spec,
        source,
        hub_download_fix(spec.family, source),
    )
    if spec.random_init:
        _reinitialise(model.transformers_model)
    return SBertEncoder(spec, model)
