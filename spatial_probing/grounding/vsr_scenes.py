"""Scenes in VSR's vocabulary: glyph scenes whose objects are COCO nouns that VSR captions use.

The scenes of `spatial_probing.data.scenes` with their objects named as nouns instead of "<colour>
<shape>": each noun in `VSR_NOUNS` is drawn as one fixed glyph (`GLYPHS`: a colour x a shape x a fill
pattern), and captions take VSR's own form, "The cat is left of the dog." Boxes are proposed, accepted
and rendered by `data.scenes` (`_propose`, `_acceptable`, `render`), and every caption's label is
`data.scenes.relation_holds` of the scene's boxes and draw order: there is one truth rule and one renderer.

**Nouns.** `VSR_NOUNS` are the COCO category names (`COCO_CATEGORIES`, in the surface form VSR writes:
"dining table", "teddy bear", "couch", "tv") that stand as the subject or object of at least
`MIN_VSR_COUNT` captions of VSR's random split (train + dev + test), most frequent first.

**Held-out nouns.** `HELD_OUT_NOUNS` never occur in a training scene (``split="train"``); every held-out
scene (``split="heldout"``) has one as its subject or object. They are frequent in VSR's random test split
(animals, vehicles, furniture, food and carried things), so VSR items can be split by whether a noun was
held out. Every held-out noun's colour, shape and fill occur in training glyphs of other nouns.

**Glyphs.** Noun ``i`` (in `VSR_NOUNS` order) gets colour ``i mod 7`` of `data.scenes.COLOURS`, shape
``(i mod 9) mod 3`` of `SHAPES` and fill ``(i mod 9) // 3`` of `FILLS` (solid, striped, checked); as
7 and 9 are coprime, the first 63 nouns get distinct glyphs, and neighbours differ in colour and shape.
At the default `IMAGE_SIZE` (64) the smallest object is 8 px a side: four 2-px stripes or checks.

**Captions** (`VsrScene.captions`, the four kinds `grounding.scenes.GroundingScene.captions` gives and
the grounding study scores): the true caption "The A is R the B.", and, where R has a converse R' in
`data.structure.CONVERSES`, the converse paraphrase "The B is R' the A." (true), the contradiction "The
A is R' the B." and the argument swap "The B is R the A." (both false), built by `data.structure.triplet`.
Scenes are made by default for the relations with a converse (`CONVERSE_RELATIONS`); a scene made for
one without (near, far from, touching) carries its true caption only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.scenes import (
    COLOURS,
    FILLS,
    RELATIONS,
    SHAPES,
    Glyph,
    Obj,
    Scene,
    _existing,
    _publish,
    _sample_pair,
    _write_jsonl,
    relation_holds,
    render,
)
from spatial_probing.data.structure import CONVERSES, triplet
from spatial_probing.data.structure import render as caption_text
from spatial_probing.errors import DataError

#: The 80 COCO object categories, in COCO's order and spelling (which VSR's captions use).
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: A noun is in `VSR_NOUNS` if it is the subject or object of at least this many VSR random-split captions.
MIN_VSR_COUNT = 100
#: COCO nouns as subject or object of VSR random train+dev+test captions (counts in the comments), most first.
VSR_NOUNS: tuple[str, ...] = (
    "person",        # 2484
    "cat",           # 2265
    "dog",           # 948
    "teddy bear",    # 914
    "dining table",  # 865
    "bed",           # 844
    "laptop",        # 625
    "pizza",         # 618
    "car",           # 583
    "cake",          # 581
    "truck",         # 580
    "couch",         # 577
    "suitcase",      # 513
    "bench",         # 455
    "umbrella",      # 399
    "sandwich",      # 369
    "motorcycle",    # 365
    "bus",           # 365
    "banana",        # 347
    "book",          # 346
    "oven",          # 340
    "bowl",          # 339
    "refrigerator",  # 320
    "bicycle",       # 315
    "chair",         # 299
    "train",         # 286
    "cow",           # 270
    "donut",         # 252
    "horse",         # 243
    "toilet",        # 235
    "keyboard",      # 228
    "bird",          # 226
    "tv",            # 223
    "elephant",      # 210
    "hot dog",       # 205
    "potted plant",  # 185
    "cup",           # 180
    "backpack",      # 168
    "apple",         # 163
    "handbag",       # 155
    "parking meter",  # 138
    "boat",          # 134
    "surfboard",     # 128
    "sink",          # 126
    "giraffe",       # 125
    "sheep",         # 114
    "microwave",     # 112
    "bear",          # 108
    "zebra",         # 102
    "orange",        # 101
)
#: Never in a training scene; VSR random-test counts (subject or object) in the comments. 771 of the 2,195
#: random-test captions (and 305 of 1,222 zero-shot test captions, all "suitcase") name one of them.
HELD_OUT_NOUNS: tuple[str, ...] = (
    "dog",       # 175
    "couch",     # 122
    "truck",     # 118
    "pizza",     # 118
    "suitcase",  # 102
    "umbrella",  # 77
    "banana",    # 76
    "horse",     # 45
)
TRAIN_NOUNS: tuple[str, ...] = tuple(n for n in VSR_NOUNS if n not in HELD_OUT_NOUNS)
IMAGE_SIZE = 64
#: Relations with a converse in the structure tests' table: their scenes carry all four caption kinds.
CONVERSE_RELATIONS: tuple[str, ...] = tuple(r for r in RELATIONS if r in CONVERSES)
KINDS = ("caption", "converse", "contradiction", "swap")
GENERATOR_VERSION = 1  # bump when a change alters the generated scenes for the same parameters
MARKER = "vsr_scenes.json"  # written last into a directory by `write_vsr_scenes`
Split = Literal["train", "heldout"]
_TRIPLET_KINDS = {"caption": "caption", "paraphrase": "converse", "contradiction": "contradiction", "swap": "swap"}


def _glyph(i: int) -> Glyph:
    """Noun ``i``'s glyph: colour ``i mod 7``, shape and fill from ``i mod 9`` (distinct for ``i < 63``)."""
    colours = list(COLOURS)
    return Glyph(colours[i % len(colours)], SHAPES[(i % 9) % 3], FILLS[(i % 9) // 3])


GLYPHS: dict[str, Glyph] = {noun: _glyph(i) for i, noun in enumerate(VSR_NOUNS)}
_NOUN_OF: dict[Glyph, str] = {g: n for n, g in GLYPHS.items()}


@dataclass(frozen=True)
class VsrScene:
    """One scene: objects in draw order (back to front), their nouns, the subject and object indices and
    the relation the scene was made for (which holds)."""

    objects: tuple[Obj, ...]
    nouns: tuple[str, ...]
    subj: int
    obj: int
    relation: str
    image_size: int = IMAGE_SIZE

    @property
    def names(self) -> tuple[str, str]:
        """(subject noun, object noun)."""
        return self.nouns[self.subj], self.nouns[self.obj]

    def holds(self, first: int, relation: str, second: int) -> bool:
        """Whether "<object first> <relation> <object second>" is true (`data.scenes.relation_holds`)."""
        a, b = self.objects[first], self.objects[second]
        return relation_holds(relation, a.box, b.box, first > second, self.image_size)

    def captions(self) -> dict[str, tuple[str, str, int]]:
        """(caption, relation, label) by kind: ``caption`` and, where the relation has a converse,
        ``converse``, ``contradiction`` and ``swap``; each label is the truth of that caption's relation
        between its subject's and object's boxes."""
        a, b = self.names
        text = caption_text(a, self.relation, b)
        roles = triplet(text, self.relation) or {"caption": (text, self.relation)}
        out = {}
        for role, (caption, relation) in roles.items():
            kind = _TRIPLET_KINDS[role]
            first, second = (self.subj, self.obj) if kind in ("caption", "contradiction") else (self.obj, self.subj)
            out[kind] = (caption, relation, int(self.holds(first, relation, second)))
        return out

    def picture(self) -> Image.Image:
        """The RGB image, drawn by `data.scenes.render`."""
        scene = Scene(image="", relation=self.relation, objects=self.objects, subj=self.subj, obj=self.obj)
        return render(scene, self.image_size)

    def image(self) -> np.ndarray:
        """uint8 ``[3, image_size, image_size]`` pixels."""
        return np.asarray(self.picture(), dtype=np.uint8).transpose(2, 0, 1).copy()


def _known(values: Sequence[str], known: Sequence[str], option: str, constant: str) -> tuple[str, ...]:
    """``values`` as a tuple of distinct known names; DataError naming ``option`` and ``constant`` otherwise."""
    if isinstance(values, str):
        raise DataError(f"{option} must be a list of names, not the string {values!r}")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise DataError(f"{option}: unknown {unknown}; known ({constant}): {list(known)}")
    if len(set(values)) != len(values):
        raise DataError(f"{option} repeats a name: {list(values)}")
    return tuple(values)


def _options(split: str, image_size: int, relations: Sequence[str] | None, held_out: Sequence[str],
             train_nouns: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Checked (relations, held-out nouns, training nouns)."""
    if split not in ("train", "heldout"):
        raise DataError(f"split must be 'train' or 'heldout', got {split!r}")
    if not 64 <= image_size <= 1024:
        raise DataError(f"image_size must be between 64 and 1024 pixels (glyphs need 8 px a side), got {image_size}")
    rels = _known(CONVERSE_RELATIONS if relations is None else relations, RELATIONS, "relations", "RELATIONS")
    if not rels:
        raise DataError("relations is empty; choose some of RELATIONS")
    held = _known(held_out, VSR_NOUNS, "held_out", "VSR_NOUNS")
    train = tuple(n for n in VSR_NOUNS if n not in held) if train_nouns is None else _known(
        train_nouns, VSR_NOUNS, "train_nouns", "VSR_NOUNS")
    leaked = [n for n in train if n in held]
    if leaked:
        raise DataError(f"train_nouns holds held-out nouns {leaked} (held_out, HELD_OUT_NOUNS by default): "
                        "a held-out noun must never occur in a training scene")
    if len(train) < 2:
        raise DataError(f"train_nouns needs at least two nouns (subject and object differ), got {list(train)}")
    if split == "heldout" and not held:
        raise DataError("held_out is empty: a 'heldout' scene needs a held-out noun as subject or object")
    return rels, held, train


def generate_vsr_scenes(n: int, seed: int, split: Split, image_size: int = IMAGE_SIZE,
                        relations: Sequence[str] | None = None, held_out: Sequence[str] = HELD_OUT_NOUNS,
                        train_nouns: Sequence[str] | None = None) -> list[VsrScene]:
    """``n`` scenes of ``split``, scene ``i`` made for ``relations[i % len(relations)]``; the same arguments
    give the same scenes (and image bytes).

    ``split="train"``: subject and object are two different nouns of ``train_nouns`` (default: `VSR_NOUNS`
    less ``held_out``). ``split="heldout"``: one is a noun of ``held_out``, the other any other noun of
    ``train_nouns`` or ``held_out``, each in either role. ``relations`` defaults to `CONVERSE_RELATIONS`.
    """
    if n < 1:
        raise DataError(f"the number of scenes must be at least 1, got {n}")
    rels, held, train = _options(split, image_size, relations, held_out, train_nouns)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])

    def pick(rng: np.random.Generator) -> tuple[Glyph, Glyph]:
        if split == "train":
            i, j = rng.choice(len(train), size=2, replace=False)
            return GLYPHS[train[i]], GLYPHS[train[j]]
        noun = held[int(rng.integers(len(held)))]
        others = [m for m in train + held if m != noun]
        other = others[int(rng.integers(len(others)))]
        pair = (noun, other) if rng.random() < 0.5 else (other, noun)
        return GLYPHS[pair[0]], GLYPHS[pair[1]]

    scenes = []
    for i in range(n):
        relation = rels[i % len(rels)]
        subj, obj, drawn = _sample_pair(relation, rng, image_size, pick)
        nouns = tuple(_NOUN_OF[Glyph(o.colour, o.shape, o.fill)] for o in drawn)
        scenes.append(VsrScene(tuple(drawn), nouns, drawn.index(subj), drawn.index(obj), relation, image_size))
    return scenes


def scene_rows(scenes: Sequence[VsrScene], name: str, source: str,
               held_out: Sequence[str] = HELD_OUT_NOUNS) -> SpatialRows:
    """One row per caption (image ``vsr_scene_<i>.png``); extra columns: ``scene``, ``kind``, ``subj``,
    ``obj`` (nouns), ``subj_box``, ``obj_box``, ``subj_z``, ``obj_z`` (draw order) and ``held_out``
    (whether the subject or object is one of ``held_out``)."""
    records = []
    for i, scene in enumerate(scenes):
        a, b = scene.names
        for kind, (caption, relation, label) in scene.captions().items():
            records.append((caption, relation, label, f"vsr_scene_{i:06d}.png", i, kind, a, b,
                            scene.objects[scene.subj].box, scene.objects[scene.obj].box, scene.subj, scene.obj,
                            a in held_out or b in held_out))
    columns = list(zip(*records, strict=True)) if records else [()] * 13
    keys = ("scene", "kind", "subj", "obj", "subj_box", "obj_box", "subj_z", "obj_z", "held_out")
    return SpatialRows(name=name, captions=columns[0], relations=columns[1],
                       labels=np.array(columns[2], dtype=np.int8), images=columns[3],
                       image_links=(None,) * len(records), source=source,
                       extra=dict(zip(keys, columns[4:], strict=True)))


def write_vsr_scenes(out_dir: str | Path, n: int, seed: int, split: Split, image_size: int = IMAGE_SIZE,
                     relations: Sequence[str] | None = None, held_out: Sequence[str] = HELD_OUT_NOUNS,
                     train_nouns: Sequence[str] | None = None) -> Path:
    """Write `generate_vsr_scenes` as a VSR-format directory: ``test.jsonl``, ``images/*.png`` and, last,
    ``vsr_scenes.json`` (the parameters, nouns and glyphs). Built under a temporary name and renamed into
    place, like `data.scenes.write_scenes`; a complete directory with the same parameters is reused."""
    out = Path(out_dir).expanduser()
    rels, held, train = _options(split, image_size, relations, held_out, train_nouns)
    params: dict[str, Any] = {"generator": "vsr_scenes", "generator_version": GENERATOR_VERSION, "n": n,
                              "seed": seed, "split": split, "image_size": image_size, "relations": list(rels),
                              "held_out": list(held), "train_nouns": list(train)}
    if _existing(out, params, MARKER):
        return out
    scenes = generate_vsr_scenes(n, seed, split, image_size, rels, held, train)

    def fill(tmp: Path) -> dict:
        (tmp / "images").mkdir()
        rows = scene_rows(scenes, "vsr_scenes/test", str(out), held)
        for i, scene in enumerate(scenes):
            scene.picture().save(tmp / "images" / f"vsr_scene_{i:06d}.png", format="PNG")
        _write_jsonl(rows, tmp / "test.jsonl")
        glyphs = {noun: [g.colour, g.shape, g.fill] for noun, g in GLYPHS.items()}
        return {"params": params, "rows": {"test": len(rows)}, "glyphs": glyphs}

    return _publish(out, params, fill, MARKER)


def check_tokenizer(nouns: Sequence[str], tokenizer: Any, whole_words: bool = False) -> dict[str, list[str]]:
    """Each noun's tokens under a Hugging Face ``tokenizer``; DataError naming the nouns it cannot spell.

    A noun fails if a token is the tokenizer's unknown token (``[UNK]`` for BERT's WordPiece), and, with
    ``whole_words``, also if one of its words is not a single token ("donut" -> "don", "##ut").
    """
    unk = getattr(tokenizer, "unk_token", None)
    tokens = {noun: list(tokenizer.tokenize(noun)) for noun in nouns}
    unknown = [n for n, toks in tokens.items() if unk is not None and unk in toks]
    if unknown:
        raise DataError(f"the tokenizer splits nouns {unknown} into its unknown token {unk!r}: "
                        f"{ {n: tokens[n] for n in unknown} }")
    if whole_words:
        split_up = [n for n in nouns if any(len(tokenizer.tokenize(w)) != 1 for w in n.split())]
        if split_up:
            raise DataError(f"the tokenizer splits words of nouns {split_up} into pieces: "
                            f"{ {n: tokens[n] for n in split_up} }")
    return tokens
