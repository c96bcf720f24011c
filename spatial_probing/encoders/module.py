"""FrozenEncoder: a predict-only LightningModule around any registry encoder."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from spatial_probing.encoders.base import Encoder
from spatial_probing.encoders.registry import EncoderSpec, create_encoder, parse_encoder


class FrozenEncoder(pl.LightningModule):
    """Encodes text batches (per row) and image batches (per unique image) with frozen weights.

    Args:
        encoder: registry name, e.g. ``sbert:sentence-transformers/all-mpnet-base-v2`` or
            ``openclip:ViT-B-32/openai`` (see ``spatial-probing list-encoders``).
        view: which features a row gets: ``text``, ``image``, ``concat`` (text ‖ image) or, for
            ``hf-clip``, ``text-pooled``; None takes the family's default.
        random_init: same architecture with untrained weights, the control every probe needs.
    """

    def __init__(self, encoder: str = "sbert:sentence-transformers/all-mpnet-base-v2", view: str | None = None,
                 random_init: bool = False) -> None:
        super().__init__()
        self.spec: EncoderSpec = parse_encoder(encoder, view=view, random_init=random_init)
        self.encoder: Encoder | None = None

    def build(self) -> Encoder:
        """Load the weights once (lazily, so a cache hit never pays for model loading)."""
        if self.encoder is None:
            self.encoder = create_encoder(str(self.spec))
            self.encoder.eval().requires_grad_(False)
        return self.encoder

    def configure_model(self) -> None:
        self.build()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        encoder = self.build()
        if batch["stream"] == "text":
            feats = encoder.encode_text(batch["tokens"])
        elif batch["pixels"].shape[0]:
            feats = encoder.encode_image(batch["pixels"])
        else:  # every image of this batch failed to load
            feats = torch.empty(0, encoder.image_dim or 0)
        # Results leave the device per batch (as sentence-transformers does), in float32 whatever autocast did.
        return {
            "stream": batch["stream"],
            "batch_id": int(batch["batch_id"]),
            "indices": batch["indices"].cpu(),
            "features": feats.detach().float().cpu(),
            "failures": batch.get("failures", []),
        }
