"""Tiny grounding scenes: 32x32 images of two (or three) coloured shapes, captions with exact truth.

Truth follows the **dominant-axis rule**. With ``(ax, ay)`` and ``(bx, by)`` the box centres of the
subject A and the object B (image y grows downwards), ``dx = bx - ax`` and ``dy = by - ay``:

==========  =============================
A left of B   ``|dx| > |dy|`` and ``dx > 0``
A right of B  ``|dx| > |dy|`` and ``dx < 0``
A above B     ``|dy| > |dx|`` and ``dy > 0``
A below B     ``|dy| > |dx|`` and ``dy < 0``
==========  =============================

so exactly one relation holds for every (A, B). Scenes are sampled with ``||dx| - |dy|| >= MARGIN``
and with boxes at least one pixel apart, so no scene sits on the boundary between two relations.

**Held-out generalisation** (ShapeWorld-style): the colour-shape pairs in ``HELD_OUT_PAIRS`` and
object counts in ``HELD_OUT_COUNTS`` never occur in training scenes (``split="train"``); every
held-out scene (``split="heldout"``) has a held-out pair as subject or object and draws its object
count from the training and held-out counts. Both words of a held-out pair occur in training, in
other combinations, so held-out scenes test composition, not new words.

Captions: ``"The <A> is <R> the <B>."``. Every relation has a converse (left of <-> right of,
above <-> below), so each true fact has two true captions (``A R B`` and its converse paraphrase
``B R' A``) and two false ones with the same objects: the contradiction ``A R' B`` and the argument
swap ``B R A``. A *fact* is the canonical form of a caption (converse paraphrases share a fact id).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spatial_probing.data.scenes import SHAPES, Obj, Scene, render
from spatial_probing.errors import DataError

IMAGE_SIZE = 32
SCENE_COLOURS = ("red", "green", "blue", "yellow", "purple")
SCENE_SHAPES = SHAPES  # square, circle, triangle
RELATIONS = ("left of", "right of", "above", "below")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
HELD_OUT_PAIRS = (("red", "circle"), ("green", "triangle"), ("blue", "square"))
TRAIN_COUNTS = (2,)
HELD_OUT_COUNTS = (3,)
MARGIN = 2  # pixels between |dx| and |dy|: no scene is ambiguous under the dominant-axis rule
SIDE = (6, 10)  # shape side range in pixels (inclusive)
OBJECT_NAMES = tuple(f"{c} {s}" for c, s in itertools.product(SCENE_COLOURS, SCENE_SHAPES))
Split = Literal["train", "heldout"]


def dominant_relation(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> str:
    """The one relation that holds for "A <relation> B" under the dominant-axis rule (boxes x0, y0, x1, y1)."""
    dx = (b[0] + b[2]) - (a[0] + a[2])  # twice the centre offset: integer arithmetic, same signs
    dy = (b[1] + b[3]) - (a[1] + a[3])
    if abs(dx) > abs(dy):
        return "left of" if dx > 0 else "right of"
    if abs(dy) > abs(dx):
        return "above" if dy > 0 else "below"
    raise DataError(f"boxes {a} and {b} are on the diagonal: the dominant-axis rule is undefined there")


def caption(subj: str, relation: str, obj: str) -> str:
    """``The <subj> is <relation> the <obj>.``"""
    return f"The {subj} is {relation} the {obj}."


def fact_id(subj: str, relation: str, obj: str) -> int:
    """Integer id of what a caption asserts: converse paraphrases ("A left of B", "B right of A") share one."""
    if relation in ("right of", "below"):
        subj, relation, obj = obj, CONVERSE[relation], subj
    return (OBJECT_NAMES.index(subj) * len(OBJECT_NAMES) + OBJECT_NAMES.index(obj)) * 2 + (relation == "above")


@dataclass(frozen=True)
class GroundingScene:
    """One scene: its objects (draw order), the subject and object indices and the true relation."""

    objects: tuple[Obj, ...]
    subj: int
    obj: int

    @property
    def names(self) -> tuple[str, str]:
        return self.objects[self.subj].name, self.objects[self.obj].name

    @property
    def relation(self) -> str:
        return dominant_relation(self.objects[self.subj].box, self.objects[self.obj].box)

    def captions(self) -> dict[str, tuple[str, str, int]]:
        """(caption, relation, label) of the true caption, its converse paraphrase, contradiction and swap."""
        a, b = self.names
        r = self.relation
        return {
            "caption": (caption(a, r, b), r, 1),
            "converse": (caption(b, CONVERSE[r], a), CONVERSE[r], 1),
            "contradiction": (caption(a, CONVERSE[r], b), CONVERSE[r], 0),
            "swap": (caption(b, r, a), r, 0),
        }

    def image(self) -> np.ndarray:
        """uint8 ``[3, 32, 32]`` pixels (shapes painted back to front on the grey background)."""
        pil = render(Scene(image="", relation="", objects=self.objects, subj=self.subj, obj=self.obj), IMAGE_SIZE)
        return np.asarray(pil, dtype=np.uint8).transpose(2, 0, 1).copy()


def allowed_pairs(split: Split) -> list[tuple[str, str]]:
    """Colour-shape pairs a split's objects may take: training never sees ``HELD_OUT_PAIRS``."""
    pairs = list(itertools.product(SCENE_COLOURS, SCENE_SHAPES))
    return [p for p in pairs if p not in HELD_OUT_PAIRS] if split == "train" else pairs


def _box(rng: np.random.Generator) -> tuple[int, int, int, int]:
    side = int(rng.integers(SIDE[0], SIDE[1] + 1))
    x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - side + 1, size=2))
    return (x0, y0, x0 + side, y0 + side)


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def _clear_axis(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    dx, dy = (b[0] + b[2]) - (a[0] + a[2]), (b[1] + b[3]) - (a[1] + a[3])
    return abs(abs(dx) - abs(dy)) >= 2 * MARGIN


def sample_scene(rng: np.random.Generator, split: Split) -> GroundingScene:
    """One scene of ``split`` (rejection sampling over boxes; at most a few tries in practice)."""
    pairs = allowed_pairs(split)
    counts = TRAIN_COUNTS if split == "train" else TRAIN_COUNTS + HELD_OUT_COUNTS
    count = int(rng.choice(counts))
    while True:
        picks = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]
        if split == "heldout" and not (set(picks[:2]) & set(HELD_OUT_PAIRS)):
            continue  # subject or object must be a held-out pair
        if len({c for c, _ in picks}) < count:
            continue  # distinct colours: every object is named unambiguously, and the image shows it
        boxes = [_box(rng) for _ in range(count)]
        if all(_apart(p, q) for p, q in itertools.combinations(boxes, 2)) and _clear_axis(boxes[0], boxes[1]):
            break
    objects = tuple(Obj(c, s, box) for (c, s), box in zip(picks, boxes, strict=True))
    order = rng.permutation(count)  # draw order carries no information (nothing overlaps)
    drawn = tuple(objects[i] for i in order)
    return GroundingScene(drawn, subj=drawn.index(objects[0]), obj=drawn.index(objects[1]))


def generate(n: int, seed: int, split: Split) -> list[GroundingScene]:
    """``n`` scenes of ``split`` from one seeded generator (the same arguments give the same scenes)."""
    if n < 1:
        raise DataError(f"the number of scenes must be at least 1, got {n}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    return [sample_scene(rng, split) for _ in range(n)]


def images(scenes: list[GroundingScene]) -> np.ndarray:
    """uint8 ``[n, 3, 32, 32]`` pixels of every scene."""
    return np.stack([s.image() for s in scenes]) if scenes else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)

