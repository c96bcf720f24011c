"""transformers CLIP adapter: ``hf-clip:<hub id or local dir>``.

Parts: ``text`` / ``image`` are the projected embeddings (``text_projection`` / ``visual_projection``
of the pooled outputs), ``text-pooled`` the pre-projection pooled EOS state of the text transformer
(the first study's "CLIP text"); the text stream computes both in one pass. Parts are raw (the cache
L2-normalises them), so they equal open_clip's ``encode_text`` / ``encode_image`` for the same weights.
Layer ``l`` is ``hidden_states[l]`` at the EOS token (text; the token ``pooler_output`` uses) or the
class token (image): before ``final_layer_norm`` / ``post_layernorm``, so ``text-pooled`` equals
``final_layer_norm`` of the last layer's part, and ``image`` the projection of ``post_layernorm`` of it.
Text is tokenised by the directory's CLIPTokenizer, padded to the full context (77), as CLIP was
trained; images go through its CLIPImageProcessor (which resizes slightly differently from open_clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

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

_SETUP_FILES = (("config.json",), ("preprocessor_config.json",), ("tokenizer.json", "vocab.json"))
_WEIGHT_FILES = (("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),)


class HFClipEncoder(Encoder):
    """A transformers CLIPModel with its tokenizer and image processor."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: CLIPModel,
        tokenizer: CLIPTokenizer,
        image_processor: CLIPImageProcessor,
    ) -> None:
        config = model.config
        super().__init__(spec, text_dim=config.projection_dim, image_dim=config.projection_dim)
        if self.text_part == "text-pooled":
            self.text_dim = config.text_config.hidden_size
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.context_length = config.text_config.max_position_embeddings
        self.freeze()

    def text_token_limit(self, texts: list[str]) -> tuple[np.ndarray, int]:
        ids = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        return np.array([len(i) for i in ids]), int(self.context_length)

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, truncated to the context length and padded to the batch's longest.

        CLIP's text tower is causal and pools the EOS state, so padding past the longest caption never
        reaches a pooled state: the embeddings equal those of padding to the full context (77 tokens,
        about 5x the compute on VSR captions).
        """
        encoded = self.tokenizer(
            texts, padding="longest", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """The CLIPImageProcessor's resize, centre crop and normalisation: ``[3, H, W]``."""
        return self.image_processor(images=img, return_tensors="pt")["pixel_values"][0]

    def n_layers(self, stream: str) -> int:
        config = self.model.config.text_config if stream == "text" else self.model.config.vision_config
        return int(config.num_hidden_layers)

    @torch.no_grad()
    def text_parts(self, tokens: dict[str, torch.Tensor], layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """Pooled EOS state (``text-pooled``), its projection (``text``) and the EOS state of requested layers."""
        check_layers(self.spec, "text", layers, self.n_layers("text"))
        out = self.model.text_model(**tokens, output_hidden_states=bool(layers))
        parts = {"text-pooled": out.pooler_output.float(), "text": self.model.text_projection(out.pooler_output).float()}
        if layers:
            eos = torch.arange(len(tokens["input_ids"])), self._eos_positions(tokens["input_ids"])
            parts |= {f"text@{layer}": out.hidden_states[layer][eos].float() for layer in layers}
        return parts

    def _eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The token ``CLIPTextModel`` pools: the first EOS (the highest id for configs with eos_token_id 2)."""
        eos_id = self.model.text_model.eos_token_id
        return ids.argmax(dim=-1) if eos_id == 2 else (ids == eos_id).int().argmax(dim=-1)

    @torch.no_grad()
    def image_parts(self, pixels: torch.Tensor, layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """Projected class-token state (``image``) and the class-token state of requested layers."""
        check_layers(self.spec, "image", layers, self.n_layers("image"))
        out = self.model.vision_model(pixel_values=pixels, output_hidden_states=bool(layers))
        parts = {"image": self.model.visual_projection(out.pooler_output).float()}
        return parts | {f"image@{layer}": out.hidden_states[layer][:, 0].float() for layer in layers}

    def preprocessing_settings(self) -> dict[str, Any]:
        """Tokenizer, padding/max length and the image processor's settings."""
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "padding": "longest",
            "max_length": self.context_length,
            "image": self.image_processor.to_dict(),
            "l2_normalize": False,
        }


def build(spec: EncoderSpec) -> HFClipEncoder:
    """Load ``spec.model`` (local dir or hub id; the hub only when not offline); random-init needs no weights."""
    source = resolve_model_dir(spec, _SETUP_FILES + (() if spec.random_init else _WEIGHT_FILES))
    local_only = hub_offline()

    def load() -> HFClipEncoder:
        config = CLIPConfig.from_pretrained(source, local_files_only=local_only)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local_only)
        image_processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
        if spec.random_init:
            with seeded():
                model = CLIPModel(config)
        else:
            model = CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=local_only)
        return HFClipEncoder(spec, model, tokenizer, image_processor)

    return load_or_explain(load, spec, source, hub_download_fix(spec.family, source))
