"""What a view is: the one definition the encoders, the extraction and the feature cache all read.

An encoder produces *parts* from its two *streams* in one pass: the text stream gives ``text`` (the
family's text embedding; for CLIP the projected one) and, for transformers CLIP, ``text-pooled`` (the
pre-projection EOS state); the image stream gives ``image`` (for CLIP the projected class token). Each
part is stored L2-normalised per row. A *view* names the parts it concatenates, in order; its features
are ``L2([L2(part_1) || L2(part_2) || ...])``, so every view is unit-norm and a one-part view is its
stored part as is. The first study's CLIP variants are exactly these views of ``hf-clip``:

=============  ============================================================================
``text-pooled`` L2(CLIPTextModel pooler_output): the study's "CLIP text" (512-d for ViT-B/32)
``image``       L2(visual_projection(vision_model(pixel_values).pooler_output)): "CLIP image"
``concat``      L2([L2(image_embeds) || L2(text_embeds)]), image first: "CLIP concat"
``text``        L2(text_projection(pooler_output)) = L2(CLIPModel.get_text_features)
=============  ============================================================================

Layer-wise extraction adds one part per stream and layer, ``<stream>@<layer>`` (layer 0 = the
embeddings fed to the first block, ``N`` = the last block's output): sentence-transformers applies the
model's own pooling to that layer's token states; CLIP takes the EOS token (text) or class token (image)
state, before the tower's final layer norm. A view at layer ``l`` concatenates the layer-``l`` part of
each of its streams the same way. This module imports numpy only: cache lookups stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from spatial_probing.errors import EncoderError

#: The stream that computes each final part.
PART_STREAM = {"text": "text", "text-pooled": "text", "image": "image"}
FINAL = "final"


@dataclass(frozen=True)
class View:
    """A named recipe: the parts a view concatenates, in order, each L2-normalised, then L2 as a whole."""

    name: str
    parts: tuple[str, ...]
    description: str

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams (``text``, ``image``) whose encoders this view needs, in part order."""
        return tuple(dict.fromkeys(PART_STREAM[p] for p in self.parts))

    def parts_at(self, layer: str) -> tuple[str, ...]:
        """The stored parts this view reads at ``layer`` (``final`` or a layer number as a string)."""
        return self.parts if layer == FINAL else tuple(layer_part(PART_STREAM[p], layer) for p in self.parts)


_TEXT = View("text", ("text",), "the text embedding")
_IMAGE = View("image", ("image",), "the projected image embedding")
_CONCAT = View("concat", ("image", "text"), "L2([L2(image) || L2(text)]): image first, as the first study")

#: family -> its views, the default first.
FAMILY_VIEWS: dict[str, tuple[View, ...]] = {
    "sbert": (View("text", ("text",), "the model's pooling (mean for all-*-v2 models)"),),
    "openclip": (
        View("text", ("text",), "encode_text: projected EOS state"),
        View("image", ("image",), "encode_image: projected class token"),
        _CONCAT,
    ),
    "hf-clip": (
        View("text", ("text",), "get_text_features: projected EOS state"),
        View("text-pooled", ("text-pooled",), "CLIPTextModel pooler_output, pre-projection (the study's CLIP text)"),
        View("image", ("image",), "visual_projection(vision_model(...).pooler_output) (the study's CLIP image)"),
        _CONCAT,
    ),
    "local": (  # a train-grounding checkpoint (encoders/local.py)
        View("text", ("text",), "mean-pooled final Transformer states, pre-projection"),
        View("image", ("image",), "CNN features, pre-projection (visual arms only)"),
        _CONCAT,
    ),
}
ALL = "all"


def family_view(family: str, name: str) -> View:
    """The view ``name`` of an encoder family; EncoderError naming the family's views otherwise."""
    views = {v.name: v for v in FAMILY_VIEWS[family]}
    if name not in views:
        raise EncoderError(f"view {name!r} is not supported by the {family} family (views: {', '.join(views)})")
    return views[name]


def canonical_views(family: str, names: Iterable[str]) -> tuple[str, ...]:
    """Distinct, checked view names in the family's order; ``all`` stands for every view of the family."""
    wanted = set(names)
    if ALL in wanted:
        wanted = {v.name for v in FAMILY_VIEWS[family]}
    for name in wanted:
        family_view(family, name)
    return tuple(v.name for v in FAMILY_VIEWS[family] if v.name in wanted)


def layer_part(stream: str, layer: str | int) -> str:
    """The stored part name of a stream's pooled state at one layer, e.g. ``text@6``."""
    return f"{stream}@{layer}"


def needed_parts(family: str, views: Sequence[str], layers: dict[str, Sequence[int]]) -> dict[str, list[str]]:
    """Per stream, the parts an extraction of ``views`` must store: their final parts, then one part per
    layer in ``layers[stream]``."""
    out: dict[str, list[str]] = {}
    for view in (family_view(family, v) for v in views):
        for part in view.parts:
            parts = out.setdefault(PART_STREAM[part], [])
            if part not in parts:
                parts.append(part)
    for stream, parts in out.items():
        parts.extend(layer_part(stream, layer) for layer in layers.get(stream, ()))
    return out


def feature_sets(views: Sequence[View], stored: Iterable[str]) -> list[tuple[str, str]]:
    """The (view, layer) sets an entry with the ``stored`` parts offers: every view at ``final``, then per
    layer each view whose layer parts are all stored and differ from an earlier view's (``text`` and
    ``text-pooled`` share one EOS state per layer)."""
    stored = set(stored)
    layers = sorted({p.partition("@")[2] for p in stored if "@" in p}, key=int)
    out = [(view.name, FINAL) for view in views]
    for layer in layers:
        seen: set[tuple[str, ...]] = set()
        for view in views:
            parts = view.parts_at(layer)
            if parts not in seen and stored.issuperset(parts):
                seen.add(parts)
                out.append((view.name, layer))
    return out


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32; a zero row stays zero, a NaN row (failed image) stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def combine(parts: Sequence[np.ndarray]) -> np.ndarray:
    """A view's features from its parts' rows: each part L2-normalised, concatenated, L2-normalised."""
    if len(parts) == 1:
        return l2_rows(parts[0])
    return l2_rows(np.concatenate([l2_rows(p) for p in parts], axis=1))
