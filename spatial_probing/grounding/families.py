"""Scene families a grounding arm trains on (``--data.scenes``): the shapes scenes of ``scenes.py`` or the
VSR-vocabulary scenes of ``vsr_scenes.py``.

A family generates a split's scenes (objects, subject, object, the relation that holds, ``captions()`` and
``image()``), writes a caption from (subject, relation, object), names each relation's converse and gives
the *fact* id of a caption (converse paraphrases share one). Both families take converses from a table:
``scenes.CONVERSE`` for the four shapes relations, ``data.structure.CONVERSES`` (the structure tests' table)
for VSR's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spatial_probing.data.scenes import RELATIONS as VSR_RELATIONS
from spatial_probing.data.structure import CONVERSES
from spatial_probing.data.structure import render as vsr_caption
from spatial_probing.errors import DataError
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding import vsr_scenes as V

IMAGE_SIZES = {"shapes": S.IMAGE_SIZE, "vsr": V.IMAGE_SIZE}  # the families --data.scenes names, and their images


def image_size(name: str) -> int:
    """The image size of the family ``--data.scenes`` names; refuses an unknown name."""
    if name not in IMAGE_SIZES:
        raise DataError(f"--data.scenes must be one of {list(IMAGE_SIZES)}, got {name!r}")
    return IMAGE_SIZES[name]


class ShapeFamily:
    """Two (or three) coloured shapes on 32x32 images, named "<colour> <shape>" (``scenes.py``)."""

    name, image_size = "shapes", S.IMAGE_SIZE

    def generate(self, n: int, seed: int, split: S.Split) -> list[Any]:
        return S.generate(n, seed, split)

    def caption(self, subj: str, relation: str, obj: str) -> str:
        return S.caption(subj, relation, obj)

    def converse(self, relation: str) -> str:
        return S.CONVERSE[relation]

    def fact_id(self, subj: str, relation: str, obj: str) -> int:
        return S.fact_id(subj, relation, obj)

    def words(self) -> tuple[str, ...]:
        """The nouns captions name (what a tokenizer must be able to spell)."""
        return S.OBJECT_NAMES


class VsrFamily:
    """Glyph scenes named by VSR's COCO nouns on 64x64 images (``vsr_scenes.py``), held-out nouns never in training.

    Args:
        held_out: nouns never in a training scene (``--data.held_out``; default ``vsr_scenes.HELD_OUT_NOUNS``).
        train_nouns: nouns of training scenes (``--data.train_nouns``; default the other ``VSR_NOUNS``).
    """

    name, image_size = "vsr", V.IMAGE_SIZE

    def __init__(self, held_out: Sequence[str] | None = None, train_nouns: Sequence[str] | None = None) -> None:
        held = tuple(V.HELD_OUT_NOUNS if held_out is None else held_out)
        for option, values in (("--data.held_out", held), ("--data.train_nouns", train_nouns or ())):
            unknown = [v for v in values if v not in V.VSR_NOUNS]
            if unknown:
                raise DataError(f"{option}: unknown nouns {unknown}; known (vsr_scenes.VSR_NOUNS): {list(V.VSR_NOUNS)}")
        train = tuple(n for n in V.VSR_NOUNS if n not in held) if train_nouns is None else tuple(train_nouns)
        leaked = [n for n in train if n in held]
        if leaked:
            raise DataError(f"--data.train_nouns holds nouns of --data.held_out: {leaked}; a held-out noun must never "
                            "occur in a training scene")
        if len(set(train)) < 2:
            raise DataError(f"--data.train_nouns needs at least two nouns, got {list(train)}")
        self.held_out, self.train_nouns = held, train

    def generate(self, n: int, seed: int, split: S.Split) -> list[Any]:
        return V.generate_vsr_scenes(n, seed, split, self.image_size, held_out=self.held_out,
                                     train_nouns=self.train_nouns)

    def caption(self, subj: str, relation: str, obj: str) -> str:
        return vsr_caption(subj, relation, obj)

    def converse(self, relation: str) -> str:
        return CONVERSES[relation]

    def fact_id(self, subj: str, relation: str, obj: str) -> int:
        converse = CONVERSES.get(relation)
        if converse is not None and VSR_RELATIONS.index(converse) < VSR_RELATIONS.index(relation):
            subj, relation, obj = obj, converse, subj  # the form whose relation comes first in RELATIONS
        nouns = len(V.VSR_NOUNS)
        return (V.VSR_NOUNS.index(subj) * nouns + V.VSR_NOUNS.index(obj)) * len(VSR_RELATIONS) + VSR_RELATIONS.index(relation)

    def words(self) -> tuple[str, ...]:
        return self.train_nouns + self.held_out


def family(name: str, held_out: Sequence[str] | None = None, train_nouns: Sequence[str] | None = None
           ) -> ShapeFamily | VsrFamily:
    """The family ``--data.scenes`` names (noun options apply to ``vsr`` only)."""
    image_size(name)
    if name == "shapes":
        if held_out is not None or train_nouns is not None:
            raise DataError("--data.held_out and --data.train_nouns choose nouns of --data.scenes vsr; the shapes "
                            "scenes hold out colour-shape pairs (scenes.HELD_OUT_PAIRS)")
        return ShapeFamily()
    return VsrFamily(held_out, train_nouns)
