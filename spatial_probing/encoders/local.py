"""``local:`` adapter: an encoder trained by ``spatial-probing train-grounding``, read from its checkpoint.

The checkpoint holds the weights (``state_dict``: ``text.*`` and, for arms whose second tower encodes
scene images, ``tower.cnn.*``) and the architecture and vocabulary (``checkpoint["grounding"]``, layout
``CHECKPOINT_FORMAT``), so nothing else is needed to rebuild the tokenizer and both towers. Views:
``text`` (mean-pooled final hidden states, pre-projection, the same feature for every arm), ``image``
(the image tower's CNN features, pre-projection; only arms with an image tower) and ``concat`` (each
stored L2-normalised, as every view; see ``encoders/views.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from spatial_probing.encoders.base import Encoder, seeded
from spatial_probing.encoders.registry import EncoderSpec
from spatial_probing.errors import EncoderError
from spatial_probing.grounding.image import MEAN, STD, ImageEncoder, to_pixels
from spatial_probing.grounding.module import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from spatial_probing.grounding.text import TextEncoder, Tokenizer


class LocalEncoder(Encoder):
    """The text tower (and image tower, if the checkpoint has one) of a grounding checkpoint."""

    def __init__(self, spec: EncoderSpec, architecture: dict[str, Any], state: dict[str, torch.Tensor] | None) -> None:
        text_cfg, image_cfg = architecture["text"], architecture["image"]
        super().__init__(spec, text_dim=text_cfg["width"], image_dim=image_cfg["width"] if image_cfg else None)
        self.architecture = architecture
        self.tokenizer = Tokenizer(tuple(architecture["vocab"]), text_cfg["max_length"])
        with seeded():  # random-init: seeded weights; otherwise overwritten by the checkpoint's below
            self.text = TextEncoder(**text_cfg)
            self.image = ImageEncoder(**image_cfg) if image_cfg else None
        if state is not None:  # the image tower's CNN is saved as tower.cnn.*
            self.load_state_dict({k.replace("tower.cnn.", "image.", 1): v for k, v in state.items()
                                  if k.startswith(("text.", "tower.cnn."))} if image_cfg else
                                 {k: v for k, v in state.items() if k.startswith("text.")})
        self.freeze()

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text.encode(tokens["input_ids"], tokens["attention_mask"]).float()

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        if self.image is None:
            raise self._no_images()
        size = self.architecture["image"]["image_size"]
        img = img.convert("RGB")
        if img.size != (size, size):  # the CNN's linear layer fixes the input size
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
        return to_pixels(torch.from_numpy(pixels))

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.image is None:
            raise self._no_images()
        return self.image(pixels).float()

    def preprocessing_settings(self) -> dict[str, Any]:
        return {"vocab": list(self.tokenizer.vocab), "max_length": self.tokenizer.max_length, "pooling": "mean",
                "pixel_mean": MEAN, "pixel_std": STD}


def build(spec: EncoderSpec) -> LocalEncoder:
    """Load ``spec.model``: a ``train-grounding`` checkpoint file (``encoder.ckpt``) or the run directory holding it."""
    path = Path(spec.model).expanduser()
    if path.is_dir():
        path = path / "encoder.ckpt"
    if not path.is_file():
        raise EncoderError(f"encoder {spec}: checkpoint {path} does not exist; train one with "
                           "`spatial-probing train-grounding --config configs/grounding/<arm>.yaml --out_dir DIR`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: one line naming it
        raise EncoderError(f"encoder {spec}: cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if CHECKPOINT_KEY not in checkpoint:
        raise EncoderError(f"encoder {spec}: {path} is not a train-grounding checkpoint (no {CHECKPOINT_KEY!r} entry)")
    architecture = checkpoint[CHECKPOINT_KEY]
    if architecture.get("format") != CHECKPOINT_FORMAT:
        raise EncoderError(f"encoder {spec}: {path} has checkpoint format {architecture.get('format', 1)}, this "
                           f"code reads format {CHECKPOINT_FORMAT}; retrain it with this version's train-grounding")
    if "sentence_transformers" in architecture["text"]:
        raise EncoderError(f"encoder {spec}: {path} fine-tuned a sentence-transformers model; its text tower is the "
                           f"directory sbert/ beside it: use sbert:{path.parent / 'sbert'}")
    if set(spec.views) - {"text"} and architecture["image"] is None:
        tower = architecture["tower"]
        trained = f"with a {tower['class']} (no image encoder)" if tower else f"text-only ({architecture['objective']})"
        raise EncoderError(f"encoder {spec}: view {spec.view!r} needs an image tower, but {path} was trained "
                           f"{trained}; use view text")
    return LocalEncoder(spec, architecture, None if spec.random_init else checkpoint["state_dict"])
