"""sentence-transformers adapter: the model's own tokeniser and pooling, then L2-normalised.

Features equal ``SentenceTransformer(model).encode(captions, normalize_embeddings=True)``. Layer
``l`` (0 = embeddings) is the model's own pooling module applied to the token states of that layer;
for a mean-pooling model with no module after pooling but ``Normalize`` (all-*-v2), the last layer,
L2-normalised, is exactly the final embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from spatial_probing.encoders.base import (
    Encoder,
    check_layers,
    hub_download_fix,
    hub_offline,
    load_or_explain,
    resolve_model_dir,
    seeded,
)
from spatial_probing.encoders.spec import EncoderSpec

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

    def text_token_limit(self, texts: list[str]) -> tuple[np.ndarray, int]:
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return np.array([len(i) for i in ids]), int(self.model.max_seq_length)

    def n_layers(self, stream: str) -> int:
        return int(self.model.transformers_model.config.num_hidden_layers)

    @torch.no_grad()
    def text_parts(self, tokens: dict[str, torch.Tensor], layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """The pooled sentence embedding (``text``, L2-normalised) and the pooling of each requested layer."""
        check_layers(self.spec, "text", layers, self.n_layers("text"))
        config = self.model.transformers_model.config
        saved, config.output_hidden_states = config.output_hidden_states, bool(layers)
        try:
            # forward() writes its outputs into the dict it is given: pass a copy, keep the batch intact.
            features = self.model[0](dict(tokens))
        finally:
            config.output_hidden_states = saved
        states = features.pop("all_layer_embeddings", ())
        out = {"text": F.normalize(self._after_transformer(dict(features))["sentence_embedding"].float(), dim=-1)}
        pooling = next(m for m in self.model if isinstance(m, Pooling))
        for layer in layers:
            pooled = pooling({**features, "token_embeddings": states[layer]})["sentence_embedding"]
            out[f"text@{layer}"] = pooled.float()
        return out

    def _after_transformer(self, features: dict[str, Any]) -> dict[str, Any]:
        for module in list(self.model)[1:]:
            features = module(features)
        return features

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
