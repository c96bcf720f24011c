"""FrozenEncoder: a predict-only LightningModule around any registry encoder."""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning.pytorch as pl

from spatial_probing.encoders.base import Encoder, check_layers
from spatial_probing.encoders.registry import create_encoder, parse_encoder
from spatial_probing.encoders.spec import EncoderSpec
from spatial_probing.encoders.views import family_view, needed_parts
from spatial_probing.errors import EncoderError


class FrozenEncoder(pl.LightningModule):
    """Encodes text batches (per row) and image batches (per unique image) with frozen weights.

    Each stream is encoded once per batch and yields every part the requested views need (see
    ``spatial_probing.encoders.views``), so text, image and concat of one encoder are one extraction.

    Args:
        encoder: registry name, e.g. ``sbert:sentence-transformers/all-mpnet-base-v2`` or
            ``openclip:ViT-B-32/openai`` (see ``spatial-probing list-encoders``).
        view: the view(s) to extract in one pass: ``text``, ``image``, ``concat`` (L2(image) ‖ L2(text),
            L2-normalised) or, for ``hf-clip``, ``text-pooled``; a list, a comma-separated string or
            ``all``; None takes the family's default.
        layers: also store the pooled state of these layers (0 = embeddings .. N = last block) of every
            stream the views use, or ``all``; None: only the final output.
        random_init: same architecture with untrained weights, the control every probe needs.
    """

    def __init__(
        self,
        encoder: str = "sbert:sentence-transformers/all-mpnet-base-v2",
        view: str | list[str] | None = None,
        layers: list[int] | Literal["all"] | None = None,
        random_init: bool = False,
    ) -> None:
        super().__init__()
        self.spec: EncoderSpec = parse_encoder(encoder, view=view, random_init=random_init)
        if isinstance(layers, list) and any(not isinstance(layer, int) for layer in layers):
            raise EncoderError(f"--model.layers must be `all` or a list of layer numbers, got {layers}")
        self.layers = layers
        self.encoder: Encoder | None = None
        #: seconds this process spent encoding each stream (text, image) in predict_step
        self.stream_seconds: dict[str, float] = {}

    @property
    def layers_key(self) -> str:
        """The requested layers as the cache key records them (``final``, ``all`` or ``0,6,12``)."""
        if self.layers is None:
            return "final"
        return self.layers if isinstance(self.layers, str) else ",".join(str(layer) for layer in sorted(set(self.layers)))

    def build(self) -> Encoder:
        """Load the weights once (lazily, so a cache hit never pays for model loading)."""
        if self.encoder is None:
            self.encoder = create_encoder(str(self.spec))
            self.encoder.eval().requires_grad_(False)
        return self.encoder

    def layer_numbers(self, stream: str) -> list[int]:
        """The layers stored for ``stream``: none, the requested list, or 0..N of its tower for ``all``."""
        if self.layers is None:
            return []
        if self.layers == "all":
            return list(range(self.build().n_layers(stream) + 1))
        layers = sorted(set(self.layers))
        check_layers(self.spec, stream, layers, self.build().n_layers(stream))  # before any shard is written
        return layers

    def parts(self) -> dict[str, list[str]]:
        """Per stream, the parts this extraction stores (final parts of the views, then layer parts)."""
        encoder = self.build()
        streams = [s for s, needed in (("text", encoder.needs_text), ("image", encoder.needs_image)) if needed]
        return needed_parts(self.spec.family, self.spec.views, {s: self.layer_numbers(s) for s in streams})

    def one_pass_saving(self) -> str | None:
        """What encoding each stream once saved against one extraction per view, from this process's timings.

        A view reads the parts of one or two streams (concat: text and image); separate extractions would
        encode a stream once for every view that reads it. None for a single view or before any batch.
        """
        if len(self.spec.views) < 2 or not self.stream_seconds or not all(self.stream_seconds.values()):
            return None  # one view, no batch yet, or a stream that encoded nothing (every image failed)
        uses = {stream: 0 for stream in self.stream_seconds}
        for view in self.spec.views:
            for stream in family_view(self.spec.family, view).streams:
                uses[stream] = uses.get(stream, 0) + 1
        once = sum(self.stream_seconds.values())
        separate = sum(seconds * uses[stream] for stream, seconds in self.stream_seconds.items())
        streams = ", ".join(f"{stream} {seconds:.1f} s" for stream, seconds in self.stream_seconds.items())
        return (f"one pass for views {', '.join(self.spec.views)}: each stream encoded once ({streams}); "
                f"one extraction per view would encode for {separate:.1f} s: {separate - once:.1f} s saved")

    def configure_model(self) -> None:
        self.build()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        encoder = self.build()
        stream = batch["stream"]
        wanted = self.parts()[stream]
        layers = self.layer_numbers(stream)
        start = time.perf_counter()
        if stream == "text":
            parts = encoder.text_parts(batch["tokens"], layers)
        elif batch["pixels"].shape[0]:
            parts = encoder.image_parts(batch["pixels"], layers)
        else:  # every image of this batch failed to load
            parts = {}
        self.stream_seconds[stream] = self.stream_seconds.get(stream, 0.0) + time.perf_counter() - start
        # Results leave the device per batch (as sentence-transformers does), in float32 whatever autocast did.
        return {
            "stream": stream,
            "batch_id": int(batch["batch_id"]),
            "indices": batch["indices"].cpu(),
            "parts": {name: parts[name].detach().float().cpu() for name in wanted if name in parts},
            "failures": batch.get("failures", []),
        }
