"""Encoder names -> specs -> frozen encoders (an open_clip-style, name-keyed registry).

Grammar of a name (its canonical form is what ``str(spec)`` prints)::

    <family>:<model>[@<view>[,<view>...]][+random-init]

    sbert:sentence-transformers/all-mpnet-base-v2@text
    openclip:ViT-B-32/openai@concat
    hf-clip:/models/clip-vit-base-patch32@text-pooled,image,concat+random-init

``<model>`` may be empty (``sbert`` or ``sbert:``) for the family's default model, and ``@<view>``
may be left out for the family's default view. Several views (or ``all``) come from one extraction
pass (see ``encoders/views.py`` for what each view is). The views are split off at the last ``@``, so
a local path that itself contains ``@`` needs an explicit trailing ``@<view>``.

``display_name(spec)`` is the short, honest name tables and W&B show (``sbert:all-MiniLM-L6-v2``,
``openclip:ViT-B-32+random-init``): the canonical name stays in the cache key.

Adapters are imported only when an encoder is created: listing or parsing names stays cheap.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spatial_probing.encoders.spec import RANDOM_INIT_SUFFIX, EncoderSpec
from spatial_probing.encoders.views import FAMILY_VIEWS, canonical_views
from spatial_probing.errors import EncoderError

if TYPE_CHECKING:
    from spatial_probing.encoders.base import Encoder

@dataclass(frozen=True)
class _Family:
    """One library adapter: ``spatial_probing.encoders.<module>.build(spec) -> Encoder``."""

    name: str
    module: str
    default_model: str
    description: str
    examples: tuple[str, ...]
    # Part of every feature-cache key of the family: bump it with any change to the adapter that changes
    # the features it writes (tokenisation, pooling, preprocessing), so entries written before are
    # recomputed instead of silently reused.
    code_version: int = 1


_FAMILIES: dict[str, _Family] = {
    f.name: f
    for f in (
        _Family(
            name="sbert",
            module="sbert",
            default_model="sentence-transformers/all-mpnet-base-v2",
            description=(
                "sentence-transformers model (hub id or local dir): the model's pooling, L2-normalised "
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
            default_model="ViT-B-32/openai",
            description=(
                "open_clip <arch>/<pretrained tag or checkpoint path>: projected encode_text / encode_image "
                "embeddings, L2-normalised; concat = L2([L2(image) || L2(text)])."
            ),
            examples=(
                "openclip:ViT-B-32/openai@concat",
                "openclip:ViT-B-32-quickgelu/ckpts/vit_b_32.pt@image",
            ),
        ),
        _Family(
            name="hf-clip",
            module="hf_clip",
            default_model="openai/clip-vit-base-patch32",
            description=(
                "transformers CLIPModel (hub id or local dir): text / image = projected embeddings, "
                "text-pooled = pre-projection EOS state of the text transformer; each L2-normalised; "
                "concat = L2([L2(image) || L2(text)]). text-pooled, image, concat are the first study's "
                "'CLIP text', 'CLIP image', 'CLIP concat'."
            ),
            examples=(
                "hf-clip:openai/clip-vit-base-patch32@text-pooled,image,concat",
                "hf-clip:/models/clip-b32@all",
            ),
        ),
        _Family(
            name="local",
            module="local",
            default_model="outputs/grounding/run/encoder.ckpt",
            description=(
                "a `spatial-probing train-grounding` checkpoint (encoder.ckpt or its run dir): text = mean-pooled "
                "Transformer states, image = CNN features (visual arms only), both pre-projection, L2-normalised; "
                "concat = L2([L2(image) || L2(text)])."
            ),
            examples=("local:outputs/grounding/run/encoder.ckpt@text", "local:outputs/grounding/run@concat"),
        ),
    )
}


def adapter_code(encoder: str) -> str:
    """``<family>/<code_version>`` of an encoder name's family (the cache key's ``adapter``); "" if unknown."""
    family = _FAMILIES.get(encoder.partition(":")[0])
    return f"{family.name}/{family.code_version}" if family else ""


def _unknown_family(name: str) -> EncoderError:
    return EncoderError(
        f"unknown encoder {name!r}: names look like <family>:<model>[@view[,view...]][+random-init] with family one of "
        f"{', '.join(_FAMILIES)}; run `spatial-probing list-encoders` for examples"
    )


def _view_names(view: str | Sequence[str]) -> list[str]:
    return [v.strip() for v in (view.split(",") if isinstance(view, str) else view)]


def parse_encoder(
    name: str, view: str | Sequence[str] | None = None, random_init: bool | None = None
) -> EncoderSpec:
    """Parse an encoder name; ``view`` (a name, comma-separated names, a list, or ``all``) and
    ``random_init=True`` fill in what the name leaves out.

    Views given both in the name and as an argument must agree.
    """
    text = name.strip()
    named_random = text.endswith(RANDOM_INIT_SUFFIX)
    text = text.removesuffix(RANDOM_INIT_SUFFIX)
    family_name, _, rest = text.partition(":")
    family = _FAMILIES.get(family_name)
    if family is None:
        raise _unknown_family(name)
    model, at, named_view = rest.rpartition("@") if "@" in rest else (rest, "", None)
    try:
        named = canonical_views(family.name, _view_names(named_view)) if at else None
        asked = canonical_views(family.name, _view_names(view)) if view is not None else None
    except EncoderError as err:
        raise EncoderError(f"encoder {name!r}: {err}") from None
    if named is not None and asked is not None and named != asked:
        raise EncoderError(f"encoder {name!r} names view {named_view!r} but view {view!r} was also requested")
    chosen = named or asked or (FAMILY_VIEWS[family.name][0].name,)
    return EncoderSpec(
        family=family.name,
        model=model or family.default_model,
        view=",".join(chosen),
        random_init=named_random or bool(random_init),
    )


def _readme_title(path: Path) -> str | None:
    """The first ``# heading`` of a model card: the model's own name (hub cards carry it)."""
    readme = path / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines():
            if line.startswith("# ") and line[2:].strip():
                return line[2:].strip()
    return None


def _model_name(model: str) -> str:
    """A short name of a hub id or local model: a local dir's model card title, else its last path part."""
    path = Path(model).expanduser()
    if path.is_dir():
        return _readme_title(path) or _config_name(path) or path.resolve().name
    return model.rstrip("/").rpartition("/")[2]


def _config_name(path: Path) -> str | None:
    """``_name_or_path`` of a transformers config when it names this model (not a base it was tuned from)."""
    config = path / "config.json"
    if not config.is_file():
        return None
    name = str(json.loads(config.read_text()).get("_name_or_path") or "")
    return name.rpartition("/")[2] if name and name.rpartition("/")[2] == path.resolve().name else None


def display_name(spec: EncoderSpec) -> str:
    """What tables, W&B and entry metadata call the encoder: family, short model name, random-init.

    ``sbert:all-MiniLM-L6-v2`` (from the model card of a local directory), ``openclip:ViT-B-32/openai``,
    ``openclip:ViT-B-32+random-init`` (a random-init model has no pretrained tag), ``hf-clip:clip-vit-base-patch32``.
    The view is not part of it: it has its own column.
    """
    if spec.family == "openclip":
        arch, _, weights = spec.model.partition("/")
        model = arch if spec.random_init else f"{arch}/{Path(weights).name if '/' in weights else weights}"
    else:
        model = _model_name(spec.model)
    return f"{spec.family}:{model}{RANDOM_INIT_SUFFIX if spec.random_init else ''}"


def list_encoders() -> list[dict[str, Any]]:
    """One entry per family: description, views, defaults and example names (for ``list-encoders``)."""
    import open_clip  # only here: importing it costs seconds

    entries = []
    for family in _FAMILIES.values():
        entry: dict[str, Any] = {
            "family": family.name,
            "description": family.description,
            "views": [v.name for v in FAMILY_VIEWS[family.name]],
            "view_meanings": "; ".join(f"{v.name} = {v.description}" for v in FAMILY_VIEWS[family.name]),
            "default_view": FAMILY_VIEWS[family.name][0].name,
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
    name: str, view: str | Sequence[str] | None = None, random_init: bool = False, device: str = "cpu"
) -> Encoder:
    """Build the frozen (eval, no grad) encoder a name describes, on ``device``."""
    spec = parse_encoder(name, view=view, random_init=random_init)
    adapter = importlib.import_module(f"spatial_probing.encoders.{_FAMILIES[spec.family].module}")
    return adapter.build(spec).to(device)
