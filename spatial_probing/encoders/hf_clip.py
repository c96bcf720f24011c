"""transformers CLIP adapter: ``hf-clip:<hub id or local dir>``.

Views: ``text`` / ``image`` are the projected embeddings (``text_projection`` / ``visual_projection``
of the pooled outputs), ``text-pooled`` the pre-projection pooled EOS state of the text transformer
(what the first study used as "CLIP text"). Not L2-normalised (the probe normalises), so they equal
open_clip's ``encode_text`` / ``encode_image`` for the same weights.
Text is tokenised by the directory's CLIPTokenizer, padded to the full context (77), as CLIP was
trained; images go through its CLIPImageProcessor (which resizes slightly differently from open_clip).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from spatial_probing.encoders.base import (
    Encoder,
    hub_download_fix,
    hub_offline,
    load_or_explain,
    resolve_model_dir,
    seeded,
)
from spatial_probing.encoders.registry import EncoderSpec

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
        pooled = spec.view == "text-pooled"
        text_dim = config.text_config.hidden_size if pooled else config.projection_dim
        super().__init__(spec, text_dim=text_dim, image_dim=config.projection_dim)
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.context_length = config.text_config.max_position_embeddings
        self.freeze()

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, truncated and padded to the full context length."""
        encoded = self.tokenizer(
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """The CLIPImageProcessor's resize, centre crop and normalisation: ``[3, H, W]``."""
        return self.image_processor(images=img, return_tensors="pt")["pixel_values"][0]

    @torch.no_grad()
    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled EOS state (``text-pooled``) or its projection (``text``, ``concat``)."""
        pooled = self.model.text_model(**tokens).pooler_output
        if self.spec.view == "text-pooled":
            return pooled.float()
        return self.model.text_projection(pooled).float()

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected class-token state of the vision transformer."""
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled).float()

    def preprocessing_settings(self) -> dict[str, Any]:
        """Tokenizer, padding/max length and the image processor's settings."""
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "padding": "max_length",
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
