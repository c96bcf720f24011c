"""open_clip adapter: ``<arch>/<pretrained tag or checkpoint path>``.

Parts are ``model.encode_text`` / ``model.encode_image``: the projected embeddings, raw (the cache
L2-normalises them; raw parts make open_clip and transformers comparable value for value). Layer ``l``
is the EOS-token (text: the argmax token, as open_clip pools) or class-token (image) state after block
``l`` (0 = the input of the first block), before ``ln_final`` / ``ln_post`` and the projection.
Tokenisation is ``open_clip.get_tokenizer(arch)``, the image transform the ``preprocess`` of
``create_model_and_transforms`` (with the pretrained tag's mean/std/interpolation).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from spatial_probing.encoders.base import Encoder, block_outputs, check_layers, load_or_explain, seeded
from spatial_probing.encoders.spec import EncoderSpec
from spatial_probing.errors import EncoderError

# Preprocessing keys of a pretrained tag's config (the rest says where its weights live).
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model with its tokenizer and image transform."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, preprocess: Any, tokenizer: Any) -> None:
        embed_dim = open_clip.get_model_config(spec.model.partition("/")[0])["embed_dim"]
        super().__init__(spec, text_dim=embed_dim, image_dim=embed_dim)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.freeze()

    def preprocess_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """open_clip token ids ``[B, context_length]`` (zero-padded, EOT-terminated)."""
        return {"input_ids": self.tokenizer(texts)}

    def text_token_limit(self, texts: list[str]) -> tuple[np.ndarray, int] | None:
        # open_clip's own BPE tokenizer; models with a Hugging Face tokenizer are not counted here
        if not isinstance(self.tokenizer, open_clip.tokenizer.SimpleTokenizer):
            return None
        counts = np.array([len(self.tokenizer.encode(t)) + 2 for t in texts])  # + start and end tokens
        return counts, int(self.tokenizer.context_length)

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """open_clip's eval transform (resize, centre crop, normalise)."""
        return self.preprocess(img)

    def n_layers(self, stream: str) -> int:
        tower = self.model.transformer if stream == "text" else self.model.visual.transformer
        return len(tower.resblocks)

    @torch.no_grad()
    def text_parts(self, tokens: dict[str, torch.Tensor], layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """Projected text embedding (``model.encode_text``) and the EOS state of each requested layer."""
        check_layers(self.spec, "text", layers, self.n_layers("text"))
        ids = tokens["input_ids"]
        final, states = block_outputs(self.model.transformer.resblocks, lambda: self.model.encode_text(ids))
        eos = torch.arange(len(ids), device=ids.device), ids.argmax(dim=1)
        return {"text": final.float(), **{f"text@{layer}": states[layer][eos].float() for layer in layers}}

    @torch.no_grad()
    def image_parts(self, pixels: torch.Tensor, layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """Projected image embedding (``model.encode_image``) and the class-token state of each requested layer."""
        check_layers(self.spec, "image", layers, self.n_layers("image"))
        blocks = self.model.visual.transformer.resblocks
        final, states = block_outputs(blocks, lambda: self.model.encode_image(pixels))
        return {"image": final.float(), **{f"image@{layer}": states[layer][:, 0].float() for layer in layers}}

    def preprocessing_settings(self) -> dict[str, Any]:
        """Tokenizer class, context length, clean function; image size, mean/std, interpolation, resize."""
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "context_length": self.tokenizer.context_length,
            "clean": getattr(getattr(self.tokenizer, "clean_fn", None), "__name__", None),
            "image": open_clip.get_model_preprocess_cfg(self.model),
            "l2_normalize": False,
        }


def _check_arch(spec: EncoderSpec, arch: str, pretrained: str) -> None:
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise EncoderError(
            f"encoder {spec}: {arch!r} is not an open_clip architecture"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; run `spatial-probing list-encoders` for the list"
        )
    if not pretrained:
        raise EncoderError(
            f"encoder {spec}: openclip names are <arch>/<pretrained tag or checkpoint path>, e.g. ViT-B-32/openai"
        )


def _offline_fix(arch: str, tag_cfg: dict[str, Any]) -> str:
    """How to supply a pretrained tag's weights on a machine without network."""
    where = tag_cfg.get("hf_hub", "").rstrip("/")
    fetch = (
        f"huggingface-cli download {where} --local-dir DIR"
        if where
        else f"download {tag_cfg.get('url')} into DIR"
    )
    arch_for_file = arch
    if tag_cfg.get("quick_gelu") and f"{arch}-quickgelu" in open_clip.list_models():
        # A bare checkpoint path carries no activation setting: the -quickgelu config supplies it.
        arch_for_file = f"{arch}-quickgelu"
    return (
        f"To use it offline: on a connected machine run `{fetch}`, copy DIR here and pass "
        f"`openclip:{arch_for_file}/DIR/<checkpoint file>`. Set HF_HUB_OFFLINE=1 on machines without network "
        "so loading fails at once instead of retrying."
    )


def build(spec: EncoderSpec) -> OpenClipEncoder:
    """Create the model (pretrained tag, checkpoint file, or seeded random weights) and its transforms."""
    arch, _, pretrained = spec.model.partition("/")
    _check_arch(spec, arch, pretrained)
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    checkpoint = Path(pretrained).expanduser()
    if not tag_cfg and not spec.random_init and not checkpoint.is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise EncoderError(
            f"encoder {spec}: {pretrained!r} is neither a pretrained tag of {arch} (tags: {tags}) "
            f"nor an existing checkpoint file ({checkpoint} does not exist)"
        )
    options: dict[str, Any] = {
        # open_clip only warns when a tag's activation differs from the arch config: set it here.
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
        **{f"image_{key}": tag_cfg[key] for key in _PREPROCESS_KEYS if key in tag_cfg},
    }
    if spec.random_init:
        with seeded():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, **options)
    else:
        weights = pretrained if tag_cfg else str(checkpoint)
        model, _, preprocess = load_or_explain(
            lambda: open_clip.create_model_and_transforms(arch, pretrained=weights, **options),
            spec,
            weights,
            _offline_fix(arch, tag_cfg),
        )
    return OpenClipEncoder(spec, model, preprocess, open_clip.get_tokenizer(arch))
