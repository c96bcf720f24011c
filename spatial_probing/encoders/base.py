"""The frozen-encoder interface every adapter implements, and what the adapters share.

An encoder has two streams, each encoded in one forward pass that returns every *part* it offers
(``views.py`` defines parts and how views combine them): ``text_parts`` gives ``text`` (and, for
transformers CLIP, ``text-pooled``), ``image_parts`` gives ``image``; with ``layers`` both add the
pooled state of each requested layer (``text@6``). Parts are raw (not normalised): the feature cache
normalises them, the views combine them. ``encode_text`` / ``encode_image`` return the part the
spec's first view uses, for callers that want one tensor.

Inputs are prepared off the model: ``preprocess_text`` at collate time (a batch of captions ->
token tensors), ``preprocess_image`` at dataset time (one image -> ``[3, H, W]``). The encoders
expect those tensors already on the encoder's device and return float32 ``[B, dim]`` per part.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from spatial_probing.encoders.spec import EncoderSpec
from spatial_probing.encoders.views import family_view
from spatial_probing.errors import EncoderError

T = TypeVar("T")


class Encoder(torch.nn.Module):
    """A frozen text and/or image encoder: always in eval mode, no parameter requires grad."""

    def __init__(self, spec: EncoderSpec, text_dim: int, image_dim: int | None) -> None:
        super().__init__()
        self.spec = spec
        self.text_dim = text_dim
        self.image_dim = image_dim

    def freeze(self) -> None:
        """Put every submodule in eval mode and stop gradients; adapters call this once built."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoder:
        """Stay in eval mode whatever is asked: dropout in a frozen encoder would change features."""
        return super().train(False)

    @property
    def needs_text(self) -> bool:
        """Whether any of the spec's views has a text part."""
        return any("text" in family_view(self.spec.family, v).streams for v in self.spec.views)

    @property
    def needs_image(self) -> bool:
        """Whether any of the spec's views has an image part."""
        return any("image" in family_view(self.spec.family, v).streams for v in self.spec.views)

    @property
    def text_part(self) -> str:
        """The text part of the first view that has one (what ``encode_text`` returns)."""
        for view in self.spec.views:
            for part in family_view(self.spec.family, view).parts:
                if part != "image":
                    return part
        return "text"

    @property
    def dim(self) -> int:
        """Width of the first view's feature row: text part, image part, or both for concat."""
        streams = family_view(self.spec.family, self.spec.views[0]).streams
        return (self.text_dim if "text" in streams else 0) + ((self.image_dim or 0) if "image" in streams else 0)

    def n_layers(self, stream: str) -> int:
        """Number of transformer blocks of a stream's tower (layer parts are 0 = embeddings .. N)."""
        raise EncoderError(f"encoder {self.spec}: layer-wise features are not available for the {self.spec.family} family")

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch of captions exactly as the underlying library does."""
        raise NotImplementedError

    def text_token_limit(self, texts: list[str]) -> tuple[np.ndarray, int] | None:
        """Each caption's token count (special tokens included) and the limit past which the tokenizer
        truncates; None where the adapter cannot tell (then nothing is warned)."""
        return None

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """Transform one RGB image into the ``[3, H, W]`` pixel tensor the image tower expects."""
        raise self._no_images()

    def text_parts(self, tokens: dict[str, torch.Tensor], layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """Every text part ``[B, d]`` (float32) of one forward pass, plus ``text@<l>`` for ``layers``.

        An adapter that implements only ``encode_text`` offers its output as the ``text`` part, no layers.
        """
        if type(self).encode_text is Encoder.encode_text:
            raise NotImplementedError
        check_layers(self.spec, "text", layers, -1)
        return {"text": self.encode_text(tokens)}

    def image_parts(self, pixels: torch.Tensor, layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """The image part ``[B, d]`` (float32) of one forward pass, plus ``image@<l>`` for ``layers``.

        An adapter that implements only ``encode_image`` offers its output as the ``image`` part, no layers.
        """
        if type(self).encode_image is Encoder.encode_image:
            raise self._no_images()
        check_layers(self.spec, "image", layers, -1)
        return {"image": self.encode_image(pixels)}

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text features ``[B, text_dim]`` (float32, raw): the spec's text part."""
        return self.text_parts(tokens)[self.text_part]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, image_dim]`` (float32, raw) for stacked ``preprocess_image`` outputs."""
        return self.image_parts(pixels)["image"]

    def preprocessing_settings(self) -> dict[str, Any]:
        """The tokeniser / transform / normalisation settings that change features (JSON-able)."""
        raise NotImplementedError

    def preprocessing_fingerprint(self) -> str:
        """sha256 of ``preprocessing_settings()``: part of the feature-cache key."""
        canonical = json.dumps(self.preprocessing_settings(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _no_images(self) -> EncoderError:
        return EncoderError(
            f"encoder {self.spec} has no image tower (family {self.spec.family} is text-only)"
        )


def check_layers(spec: EncoderSpec, stream: str, layers: Sequence[int], n_layers: int) -> None:
    """Refuse layer numbers outside 0 (embeddings) .. n_layers (last block), naming the encoder."""
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad and n_layers < 0:
        raise EncoderError(f"encoder {spec}: layer-wise features are not available for the {spec.family} family")
    if bad:
        raise EncoderError(f"encoder {spec}: {stream} layers {bad} do not exist (layers 0..{n_layers})")


def block_outputs(blocks: Sequence[torch.nn.Module], run: Callable[[], T]) -> tuple[T, list[torch.Tensor]]:
    """Run ``run()`` and capture the input of the first block and the output of every block
    (the hidden states 0..N of a tower, as transformers' ``output_hidden_states`` lists them)."""
    states: list[torch.Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    hooks += [b.register_forward_hook(lambda m, i, out: states.append(out[0] if isinstance(out, tuple) else out))
              for b in blocks]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return result, states


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Seed the CPU RNG inside a fork, so random-init weights are identical in every run and the
    caller's random stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted; read at call time (huggingface_hub reads
    the variable once at import) so a process can switch it on after importing the libraries."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f and f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _looks_like_path(model: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else is meant as a file system path.
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_dir(spec: EncoderSpec, required: Sequence[tuple[str, ...]]) -> str:
    """Return ``spec.model`` as a checked local directory, or unchanged as a hub id.

    ``required`` lists the files a complete directory holds, each as a tuple of alternatives.
    """
    path = Path(spec.model).expanduser()
    if not path.exists():
        if _looks_like_path(spec.model):
            raise EncoderError(f"encoder {spec}: local model path {path.absolute()} does not exist")
        return spec.model
    if not path.is_dir():
        raise EncoderError(f"encoder {spec}: {path} is not a model directory")
    for alternatives in required:
        if not any((path / name).exists() for name in alternatives):
            others = f" (or {', '.join(alternatives[1:])})" if len(alternatives) > 1 else ""
            raise EncoderError(
                f"encoder {spec}: model directory {path} is missing {alternatives[0]}{others}; "
                f"copy the complete model directory there (e.g. `huggingface-cli download <hub id> --local-dir {path}`)"
            )
    return str(path.resolve())


@contextmanager
def _without_loading_bar(local: bool) -> Iterator[None]:
    """transformers draws a "Loading weights" bar on every load; from a local directory it takes a moment
    and tells nothing, so it is off there (a hub download keeps its progress bars)."""
    if not local:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_or_explain(load: Callable[[], T], spec: EncoderSpec, source: str, offline_fix: str) -> T:
    """Run a library loader; turn its failure into one EncoderError that says how to supply weights offline."""
    from safetensors import SafetensorError  # a truncated or damaged .safetensors file

    try:
        with _without_loading_bar(Path(source).exists()):
            return load()
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(source).exists():
            raise EncoderError(f"encoder {spec}: cannot load {source}: {detail}") from err
        reach = "is offline (HF_HUB_OFFLINE=1)" if hub_offline() else "could not be reached"
        raise EncoderError(
            f"encoder {spec}: {source!r} is not available locally (no such path, not in the local cache) "
            f"and the hub {reach}. "
            f"{offline_fix} ({type(err).__name__}: {detail})"
        ) from err


def hub_download_fix(family: str, hub_id: str) -> str:
    """How to make a hub model available on a machine without network, for error messages."""
    return (
        f"To use it offline: on a connected machine run `huggingface-cli download {hub_id} --local-dir DIR`, "
        f"copy DIR here and pass `{family}:DIR`. Set HF_HUB_OFFLINE=1 on machines without network so "
        "loading fails at once instead of retrying."
    )
