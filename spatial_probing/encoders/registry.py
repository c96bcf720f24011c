"""Encoder names -> specs -> frozen encoders (an open_clip-style, name-keyed registry).

Grammar of a name (its canonical form is what ``str(spec)`` prints)::

    <family>:<model>[@<view>][+random-init]

    sbert:sentence-transformers/all-mpnet-base-v2@text
    openclip:ViT-B-32/openai@concat
    hf-clip:/models/clip-vit-base-patch32@text-pooled+random-init

``<model>`` may be empty (``sbert`` or ``sbert:``) for the family's default model, and ``@<view>``
may be left out for the family's default view. The view is split off at the last ``@``, so a local
path that itself contains ``@`` needs an explicit trailing ``@<view>``.

Adapters are imported only when an encoder is created: listing or parsing names stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spatial_probing.errors import EncoderError

if TYPE_CHECKING:
    from spatial_probing.encoders.base import Encoder

RANDOM_INIT_SUFFIX = "+random-init"


@dataclass(frozen=True)
class EncoderSpec:
    """What identifies an encoder's features: library family, model, view and random-init flag."""

    family: str
    model: str
    view: str
    random_init: bool = False

    def __str__(self) -> str:
        suffix = RANDOM_INIT_SUFFIX if self.random_init else ""
        return f"{self.family}:{self.model}@{self.view}{suffix}"

    @property
    def slug(self) -> str:
        """A directory-safe name: readable prefix plus a hash of the canonical name, so it is unique."""
        readable = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(self)).strip("_")[:80]
        return f"{readable}-{hashlib.sha256(str(self).encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class _Family:
    """One library adapter: ``spatial_probing.encoders.<module>.build(spec) -> Encoder``."""

    name: str
    module: str
    views: tuple[str, ...]  # the first one is the default
    default_model: str
    description: str
    examples: tuple[str, ...]


_FAMILIES: dict[str, _Family] = {
    f.name: f
    for f in (
        _Family(
            name="sbert",
            module="sbert",
            views=("text",),
            default_model="sentence-transformers/all-mpnet-base-v2",
            description=(
                "sentence-transformers model (hub id or local dir): the model's pooling, then L2-normalised "
                "(= SentenceTransformer.encode(..., normalize_embeddings=True))."
            ),
            examples=(
                "sbert:sentence-transformers/all-mpnet-base-v2",
                "sbert:~/.cache/spatial_probing/models/all-mpnet-base-v2",
            ),
        ),
        _Family(
            name="openclip",
            module="openclip",
            views=("text", "image", "concat"),
            default_model="ViT-B-32/openai",
            description=(
                "open_clip <arch>/<pretrained tag or checkpoint path>: projected encode_text / encode_image "
                "embeddings, not normalised; concat = text || image."
            ),
            examples=(
                "openclip:ViT-B-32/openai@concat",
                "openclip:ViT-B-32-quickgelu/ckpts/vit_b_32.pt@image",
            ),
        ),
        _Family(
            name="hf-clip",
            module="hf_clip",
            views=("text", "text-pooled", "image", "concat"),
            default_model="openai/clip-vit-base-patch32",
            description=(
                "transformers CLIPModel (hub id or local dir): text / image = projected embeddings, "
                "text-pooled = pre-projection EOS state of the text transformer (the first study's "
                "'CLIP text'); not normalised; concat = text || image."
            ),
            examples=("hf-clip:openai/clip-vit-base-patch32@text-pooled", "hf-clip:/models/clip-b32@concat"),
        ),
    )
}


def _unknown_family(name: str) -> EncoderError:
    return EncoderError(
        f"unknown encoder {name!r}: names look like <family>:<model>[@view][+random-init] with family one of "
        f"{', '.join(_FAMILIES)}; run `spatial-probing list-encoders` for examples"
    )


def parse_encoder(name: str, view: str | None = None, random_init: bool | None = None) -> EncoderSpec:
    """Parse an encoder name; ``view`` / ``random_init=True`` fill in what the name leaves out.

    A view given both in the name and as an argument must agree.
    """
    text = name.strip()
    named_random = text.endswith(RANDOM_INIT_SUFFIX)
    text = text.removesuffix(RANDOM_INIT_SUFFIX)
    family_name, _, rest = text.partition(":")
    family = _FAMILIES.get(family_name)
    if family is None:
        raise _unknown_family(name)
    model, at, named_view = rest.rpartition("@") if "@" in rest else (rest, "", None)
    if at and view is not None and named_view != view:
        raise EncoderError(f"encoder {name!r} names view {named_view!r} but view {view!r} was also requested")
    chosen_view = named_view if at else (view or family.views[0])
    if chosen_view not in family.views:
        raise EncoderError(
            f"encoder {name!r}: view {chosen_view!r} is not supported by the {family.name} family "
            f"(views: {', '.join(family.views)})"
        )
    return EncoderSpec(
        family=family.name,
        model=model or family.default_model,
        view=chosen_view,
        random_init=named_random or bool(random_init),
    )


def list_encoders() -> list[dict[str, Any]]:
    """One entry per family: description, views, defaults and example names (for ``list-encoders``)."""
    import open_clip  # only here: importing it costs seconds

    entries = []
    for family in _FAMILIES.values():
        entry: dict[str, Any] = {
            "family": family.name,
            "description": family.description,
            "views": list(family.views),
            "default_view": family.views[0],
            "default_model": family.default_model,
            "examples": list(family.examples),
            "random_init": f"append {RANDOM_INIT_SUFFIX} for the same architecture with seeded untrained weights",
        }
        if family.name == "openclip":
            # one line for the listing; the names are what goes before "/" in an openclip name
            entry["architectures"] = ", ".join(open_clip.list_models())
        entries.append(entry)
    return entries


def create_encoder(
    name: str, view: str | None = None, random_init: bool = False, device: str = "cpu"
) -> Encoder:
    """Build the frozen (eval, no grad) encoder a name describes, on ``device``."""
    spec = parse_encoder(name, view=view, random_init=random_init)
    adapter = importlib.import_module(f"spatial_probing.encoders.{_FAMILIES[spec.family].module}")
    return adapter.build(spec).to(device)
