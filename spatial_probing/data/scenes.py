"""Synthetic spatial scenes: coloured shapes at known boxes, with captions whose truth follows from geometry.

Every scene holds a subject and an object (and sometimes a distractor) of distinct colours, drawn on a
grey background in a known z-order. Boxes are ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1``
exclusive, and every shape touches all four sides of its box. With ``a`` the subject box, ``b`` the
object box, ``dx = max(b.x0 - a.x1, a.x0 - b.x1)`` and ``dy`` likewise (negative: the projections
overlap; 0: adjacent with no pixel between), ``gap = hypot(max(dx, 0), max(dy, 0))`` and
``S`` the image size, a caption "The <subj> <relation> the <obj>." is true exactly when:

=============  ======================================================================
left of        ``a.x1 <= b.x0``                    right of   ``a.x0 >= b.x1``
above          ``a.y1 <= b.y0``                    below      ``a.y0 >= b.y1``
on top of      ``a.y1 == b.y0 and dx < 0``         under      ``a.y0 == b.y1 and dx < 0``
near           ``gap <= NEAR_FRAC * S``            far from   ``gap >= FAR_FRAC * S``
inside         ``a`` lies within ``b``             contains   ``b`` lies within ``a``
touching       ``(dx == 0 and dy < 0) or (dy == 0 and dx < 0)``
in front of    boxes overlap and the subject is drawn after (over) the object
behind         boxes overlap and the subject is drawn before (under) the object
=============  ======================================================================

The generator also checks the pixels so that images agree with the boxes: contact relations have
4-adjacent shape pixels, an inner shape lies within its container's pixels, occluding shapes overlap
visibly and leave most of the back shape in view.

Each scene is made for one relation (its caption is true) and also carries false captions for the
relations in `FALSE_PARTNERS` (the converse, mostly), so captions share images and every relation
gets exactly ``n_per_relation`` true and ``n_per_relation`` false captions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError

Box = tuple[int, int, int, int]

GENERATOR_VERSION = 1  # bump when a change alters the generated scenes for the same parameters
RELATIONS = ("left of", "right of", "above", "below", "on top of", "under", "near", "far from",
             "inside", "contains", "touching", "in front of", "behind")
# False captions a scene made for the key relation carries; each relation appears exactly once as a
# value, which balances true and false captions per relation.
FALSE_PARTNERS: dict[str, tuple[str, ...]] = {
    "left of": ("right of",), "right of": ("left of",), "above": ("below",), "below": ("above",),
    "on top of": ("under",), "under": ("on top of",), "near": ("far from", "touching"),
    "far from": ("near",), "inside": ("contains",), "contains": ("inside",), "touching": (),
    "in front of": ("behind",), "behind": ("in front of",),
}
NEAR_FRAC = 0.1
FAR_FRAC = 0.35
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230), "yellow": (235, 210, 40),
    "purple": (150, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle")
# Fill patterns: "solid" paints the whole shape in its colour; the others paint PATTERN_COLOUR over part of
# it (2-pixel horizontal stripes; a 2x2-pixel checkerboard), anchored at the box's top-left corner so a
# glyph looks the same wherever it stands. The shape's pixels (its silhouette) do not depend on the fill.
FILLS = ("solid", "striped", "checked")
PATTERN_COLOUR = (25, 25, 25)
BACKGROUND = (110, 110, 110)
_OCCLUSION = ("inside", "contains", "in front of", "behind")  # the only relations whose boxes overlap
_MAX_TRIES = 2000


@dataclass(frozen=True)
class Obj:
    """One drawn shape: ``name`` is "<colour> <shape>" ("<colour> <fill> <shape>" unless the fill is solid)."""

    colour: str
    shape: str
    box: Box
    fill: str = "solid"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}" if self.fill == "solid" else f"{self.colour} {self.fill} {self.shape}"


@dataclass(frozen=True)
class Glyph:
    """How an object looks, wherever it stands: a colour, a shape and a fill pattern."""

    colour: str
    shape: str
    fill: str = "solid"

    def at(self, box: Box) -> Obj:
        return Obj(self.colour, self.shape, box, self.fill)


@dataclass(frozen=True)
class Scene:
    """A generated scene: objects in draw order (back to front) and the captions it carries."""

    image: str
    relation: str
    objects: tuple[Obj, ...]
    subj: int
    obj: int

    def captions(self) -> list[tuple[str, str, int]]:
        """(caption, relation, label): the scene's own relation (true), then its false partners."""
        s, o = self.objects[self.subj].name, self.objects[self.obj].name
        pairs = [(self.relation, 1)] + [(r, 0) for r in FALSE_PARTNERS[self.relation]]
        return [(caption_text(s, r, o), r, label) for r, label in pairs]


def caption_text(subj: str, relation: str, obj: str) -> str:
    """VSR-style caption: "The red square is left of the blue circle." ("contains" takes no "is")."""
    verb = relation if relation == "contains" else f"is {relation}"
    return f"The {subj} {verb} the {obj}."


# -- geometry ---------------------------------------------------------------------------------------

def _gaps(a: Box, b: Box) -> tuple[int, int]:
    """Signed gaps (dx, dy) between two boxes: negative where their projections overlap."""
    return max(b[0] - a[2], a[0] - b[2]), max(b[1] - a[3], a[1] - b[3])


def _within(inner: Box, outer: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def relation_holds(relation: str, a: Box, b: Box, a_over_b: bool, image_size: int) -> bool:
    """Whether "subject (box ``a``) <relation> object (box ``b``)" is true, by the rules in the module doc.

    ``a_over_b``: the subject is drawn after the object (only "in front of" and "behind" use it).
    """
    dx, dy = _gaps(a, b)
    overlap = dx < 0 and dy < 0
    rules: dict[str, Callable[[], bool]] = {
        "left of": lambda: a[2] <= b[0],
        "right of": lambda: a[0] >= b[2],
        "above": lambda: a[3] <= b[1],
        "below": lambda: a[1] >= b[3],
        "on top of": lambda: a[3] == b[1] and dx < 0,
        "under": lambda: a[1] == b[3] and dx < 0,
        "near": lambda: math.hypot(max(dx, 0), max(dy, 0)) <= NEAR_FRAC * image_size,
        "far from": lambda: math.hypot(max(dx, 0), max(dy, 0)) >= FAR_FRAC * image_size,
        "inside": lambda: _within(a, b),
        "contains": lambda: _within(b, a),
        "touching": lambda: (dx == 0 and dy < 0) or (dy == 0 and dx < 0),
        "in front of": lambda: overlap and a_over_b,
        "behind": lambda: overlap and not a_over_b,
    }
    if relation not in rules:
        raise DataError(f"unknown scene relation {relation!r}; known: {list(RELATIONS)}")
    return rules[relation]()


def _mask(obj: Obj, size: int) -> np.ndarray:
    """Pixels of a shape (bool [size, size]); each shape reaches all four sides of its box."""
    x0, y0, x1, y1 = obj.box
    ys, xs = np.ogrid[:size, :size]
    in_box = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if obj.shape == "square":
        return in_box
    if obj.shape == "circle":
        return in_box & ((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= (w / 2) ** 2)
    # triangle, apex up: the half-width grows linearly from the top row to the full base
    return in_box & (np.abs(xs + 0.5 - cx) <= (ys + 1 - y0) * w / (2 * h))


def _pattern(obj: Obj, size: int) -> np.ndarray:
    """Pixels painted in PATTERN_COLOUR (bool [size, size]): the fill's pattern within the shape's pixels."""
    if obj.fill == "solid":
        return np.zeros((size, size), dtype=bool)
    ys, xs = np.ogrid[:size, :size]
    rows, cols = (ys - obj.box[1]) // 2, (xs - obj.box[0]) // 2
    if obj.fill == "striped":
        on = rows % 2 == 1
    elif obj.fill == "checked":
        on = (rows + cols) % 2 == 1
    else:
        raise DataError(f"unknown fill {obj.fill!r}; known: {list(FILLS)}")
    return _mask(obj, size) & on


def _pixels_agree(relation: str, subj: np.ndarray, obj: np.ndarray, subj_over: bool) -> bool:
    """Whether the rendered shapes show what the boxes say (contact, containment, visible occlusion)."""
    if relation in ("on top of", "under", "touching"):
        if (subj & obj).any():
            return False
        grown = subj.copy()
        grown[1:] |= subj[:-1]
        grown[:-1] |= subj[1:]
        grown[:, 1:] |= subj[:, :-1]
        grown[:, :-1] |= subj[:, 1:]
        return bool((grown & obj).any())
    if relation in ("inside", "contains"):
        inner, outer = (subj, obj) if relation == "inside" else (obj, subj)
        return bool(np.all(outer | ~inner))
    if relation in ("in front of", "behind"):
        front, back = (subj, obj) if subj_over else (obj, subj)
        shared = int((front & back).sum())
        return shared >= 0.15 * min(front.sum(), back.sum()) and (back & ~front).sum() >= 0.4 * back.sum()
    return not (subj & obj).any()


# -- sampling ---------------------------------------------------------------------------------------

def _side(rng: np.random.Generator, size: int, lo: float, hi: float) -> int:
    return int(rng.integers(max(3, round(lo * size)), max(4, round(hi * size)) + 1))


def _place(rng: np.random.Generator, side: int, size: int) -> Box:
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return (x0, y0, x0 + side, y0 + side)


def _propose(relation: str, rng: np.random.Generator, size: int) -> tuple[Box, Box]:
    """Candidate (subject, object) boxes likely to satisfy ``relation``; the caller checks the rules."""
    sa, sb = _side(rng, size, 0.14, 0.26), _side(rng, size, 0.14, 0.26)
    if relation in ("inside", "contains"):
        outer_side, inner_side = _side(rng, size, 0.45, 0.65), _side(rng, size, 0.12, 0.2)
        outer = _place(rng, outer_side, size)
        ix, iy = (int(v) for v in rng.integers(0, outer_side - inner_side + 1, size=2))
        inner = (outer[0] + ix, outer[1] + iy, outer[0] + ix + inner_side, outer[1] + iy + inner_side)
        return (inner, outer) if relation == "inside" else (outer, inner)
    b = _place(rng, sb, size)
    bcx, bcy = (b[0] + b[2]) // 2, (b[1] + b[3]) // 2
    jitter = int(rng.integers(-sb // 4, sb // 4 + 1))
    if relation in ("on top of", "under", "touching"):
        side_of_b = {"on top of": "top", "under": "bottom"}.get(relation) or str(
            rng.choice(["top", "bottom", "left", "right"]))
        x0 = bcx + jitter - sa // 2
        y0 = bcy + jitter - sa // 2
        x0, y0 = {"top": (x0, b[1] - sa), "bottom": (x0, b[3]), "left": (b[0] - sa, y0),
                  "right": (b[2], y0)}[side_of_b]
        return (x0, y0, x0 + sa, y0 + sa), b
    if relation in ("in front of", "behind"):
        shift = [int(s) * int(rng.integers(round(0.35 * sb), round(0.7 * sb) + 1)) for s in rng.choice([-1, 1], 2)]
        x0, y0 = bcx + shift[0] - sa // 2, bcy + shift[1] - sa // 2
        return (x0, y0, x0 + sa, y0 + sa), b
    if relation == "near":
        reach = math.floor(NEAR_FRAC * size)
        x0 = int(rng.integers(b[0] - sa - reach, b[2] + reach + 1))
        y0 = int(rng.integers(b[1] - sa - reach, b[3] + reach + 1))
        return (x0, y0, x0 + sa, y0 + sa), b
    return _place(rng, sa, size), b


def _acceptable(relation: str, subj: Obj, obj: Obj, subj_over: bool, size: int) -> bool:
    """The scene's relation holds, its false partners do not, and the pixels agree."""
    a, b = subj.box, obj.box
    if min(a[0], a[1], b[0], b[1]) < 0 or max(a[2], a[3], b[2], b[3]) > size:
        return False
    if not relation_holds(relation, a, b, subj_over, size):
        return False
    if any(relation_holds(p, a, b, subj_over, size) for p in FALSE_PARTNERS[relation]):
        return False
    dx, dy = _gaps(a, b)
    if relation == "near" and math.hypot(max(dx, 0), max(dy, 0)) < 2:
        return False  # "near" scenes keep a visible gap, so they are clearly not touching
    if relation in ("in front of", "behind") and (_within(a, b) or _within(b, a)):
        return False  # occlusion scenes show partial overlap, not containment
    return _pixels_agree(relation, _mask(subj, size), _mask(obj, size), subj_over)


def _distractor(rng: np.random.Generator, size: int, used: Sequence[Obj]) -> Obj | None:
    """Half the time, a third shape in a free colour with a gap of at least 3 px to the others."""
    if rng.random() < 0.5:
        return None
    colour = str(rng.choice(sorted(set(COLOURS) - {o.colour for o in used})))
    shape = str(rng.choice(SHAPES))
    side = _side(rng, size, 0.1, 0.18)
    for _ in range(20):
        box = _place(rng, side, size)
        if all(max(_gaps(box, o.box)) >= 3 for o in used):  # apart by >= 3 px along some axis
            return Obj(colour, shape, box)
    return None


def _pick_colours(rng: np.random.Generator) -> tuple[Glyph, Glyph]:
    """Subject and object glyphs of a scene: two distinct colours, any shapes, solid."""
    c_subj, c_obj = (str(c) for c in rng.choice(sorted(COLOURS), size=2, replace=False))
    s_subj, s_obj = (str(s) for s in rng.choice(SHAPES, size=2))
    return Glyph(c_subj, s_subj), Glyph(c_obj, s_obj)


def _sample_pair(relation: str, rng: np.random.Generator, size: int,
                 pick: Callable[[np.random.Generator], tuple[Glyph, Glyph]]) -> tuple[Obj, Obj, list[Obj]]:
    """Subject, object and both in draw order, for which ``relation`` holds (rejection sampling over proposals).

    ``pick`` draws the subject's and object's glyphs afresh for every proposal.
    """
    for _ in range(_MAX_TRIES):
        g_subj, g_obj = pick(rng)
        a, b = _propose(relation, rng, size)
        subj, obj = g_subj.at(a), g_obj.at(b)
        # Inner shapes and occluders must be drawn last; elsewhere nothing overlaps, so order is random.
        subj_over = {"inside": True, "contains": False, "in front of": True, "behind": False}.get(
            relation, bool(rng.random() < 0.5))
        if _acceptable(relation, subj, obj, subj_over, size):
            return subj, obj, [obj, subj] if subj_over else [subj, obj]
    raise DataError(f"could not place a {relation!r} scene in {_MAX_TRIES} tries at image size {size}")


def _sample_scene(relation: str, rng: np.random.Generator, size: int, image: str) -> Scene:
    """One scene for which ``relation`` holds, with a distractor half the time."""
    subj, obj, pair = _sample_pair(relation, rng, size, _pick_colours)
    extra = _distractor(rng, size, pair)
    objects = tuple(pair) if extra is None else (extra, *pair)
    return Scene(image, relation, objects, subj=objects.index(subj), obj=objects.index(obj))


def _generate(n_per_relation: int, seed: int, image_size: int) -> list[Scene]:
    """``n_per_relation`` scenes per relation, relation-major, from one seeded generator."""
    if n_per_relation < 1:
        raise DataError(f"n_per_relation must be at least 1, got {n_per_relation}")
    if not 48 <= image_size <= 1024:
        raise DataError(f"image_size must be between 48 and 1024 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    scenes = []
    for relation in RELATIONS:
        for _ in range(n_per_relation):
            scenes.append(_sample_scene(relation, rng, image_size, f"scene_{len(scenes):06d}.png"))
    return scenes


def render(scene: Scene, image_size: int) -> Image.Image:
    """The RGB image of a scene: shapes painted back to front on the background."""
    pixels = np.empty((image_size, image_size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    for obj in scene.objects:
        pixels[_mask(obj, image_size)] = COLOURS[obj.colour]
        if obj.fill != "solid":
            pixels[_pattern(obj, image_size)] = PATTERN_COLOUR
    return Image.fromarray(pixels)


def _rows(scenes: Sequence[Scene], name: str, source: str) -> SpatialRows:
    """One row per caption; extra columns hold subject/object names, boxes and draw order."""
    records = []
    for scene in scenes:
        s, o = scene.objects[scene.subj], scene.objects[scene.obj]
        for caption, relation, label in scene.captions():
            records.append((caption, relation, label, scene.image, s.name, o.name, s.box, o.box,
                            scene.subj, scene.obj))
    columns = list(zip(*records, strict=True)) if records else [()] * 10
    return SpatialRows(
        name=name, captions=columns[0], relations=columns[1], labels=np.array(columns[2], dtype=np.int8),
        images=columns[3], image_links=(None,) * len(records), source=source,
        extra={"subj": columns[4], "obj": columns[5], "subj_box": columns[6], "obj_box": columns[7],
               "subj_z": columns[8], "obj_z": columns[9]},
    )


def generate_scenes(n_per_relation: int, seed: int, image_size: int = 96) -> tuple[SpatialRows, dict[str, Image.Image]]:
    """All rows of a scene set (``scenes/all``) and its images by name; the same arguments give the same bytes.

    ``n_per_relation`` scenes are made per relation, giving each relation ``n_per_relation`` true and
    ``n_per_relation`` false captions. Extra columns: ``subj``, ``obj`` (names), ``subj_box``,
    ``obj_box`` and ``subj_z``, ``obj_z`` (draw order; higher is drawn later, i.e. in front).
    """
    scenes = _generate(n_per_relation, seed, image_size)
    source = f"scenes:n_per_relation={n_per_relation},seed={seed},image_size={image_size}"
    return _rows(scenes, "scenes/all", source), {s.image: render(s, image_size) for s in scenes}


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions``: largest deficits first, then every nonzero split gets at least one."""
    counts = [math.floor(n * f) for f in fractions]
    while sum(counts) < n:
        counts[max(range(len(counts)), key=lambda i: n * fractions[i] - counts[i])] += 1
    for i, f in enumerate(fractions):
        donor = max(range(len(counts)), key=lambda j: counts[j])
        if f > 0 and counts[i] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def write_scenes(out_dir: str | Path, n_per_relation: int = 40, seed: int = 0, image_size: int = 96,
                 splits: Sequence[float] = (0.8, 0.1, 0.1)) -> Path:
    """Write scenes as a VSR-format directory: ``{train,dev,test}.jsonl``, ``images/*.png``, ``scenes.json``.

    Scenes (not captions) are split, per relation in the same proportions, so an image's captions stay
    in one split and each split keeps true and false captions balanced per relation. The directory is
    built under a temporary name and renamed into place; ``scenes.json`` (the parameters) is written
    last. A complete directory written with the same parameters is reused as it is.
    """
    out = Path(out_dir).expanduser()
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0) or splits[0] <= 0:
        raise DataError(f"splits must be three fractions (train > 0, dev, test) summing to 1, got {tuple(splits)}")
    params = {"generator_version": GENERATOR_VERSION, "n_per_relation": n_per_relation, "seed": seed,
              "image_size": image_size, "splits": [float(f) for f in splits]}
    if _existing(out, params):
        return out
    scenes = _generate(n_per_relation, seed, image_size)
    parts = _assign_splits(scenes, splits, seed)

    def fill(tmp: Path) -> dict:
        (tmp / "images").mkdir()
        for scene in scenes:
            render(scene, image_size).save(tmp / "images" / scene.image, format="PNG")
        counts = {}
        for split, members in zip(("train", "dev", "test"), parts, strict=True):
            rows = _rows(members, f"scenes/{split}", str(out))
            _write_jsonl(rows, tmp / f"{split}.jsonl")
            counts[split] = len(rows)
        return {"params": params, "relations": list(RELATIONS), "rows": counts, "near_frac": NEAR_FRAC,
                "far_frac": FAR_FRAC}

    return _publish(out, params, fill)


def _publish(out: Path, params: dict, fill: Callable[[Path], dict], marker: str = "scenes.json") -> Path:
    """Build a directory with ``fill(tmp)`` under a temporary name, write its returned info to ``marker``
    last, and rename it into place (a concurrent writer with the same ``params`` is fine)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        info = fill(tmp)
        (tmp / marker).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, out)  # atomic; replaces an empty directory, fails on a non-empty one
        except OSError:
            if not _existing(out, params, marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _existing(out: Path, params: dict, marker_name: str = "scenes.json") -> bool:
    """True if ``out`` is a complete scene directory with ``params`` (in ``marker_name``); error if it holds
    anything else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / marker_name
    if not marker.is_file():
        raise DataError(f"{out} exists and is not a scene directory (no {marker_name}); choose an empty or new path")
    stored = json.loads(marker.read_text(encoding="utf-8")).get("params")
    if stored != params:
        raise DataError(f"{out} holds scenes written with {stored}, not {params}; use another directory "
                        "or delete this one")
    return True


def _assign_splits(scenes: Sequence[Scene], fractions: Sequence[float], seed: int) -> list[list[Scene]]:
    """Scenes of each relation shuffled and cut by ``fractions``; each split's scenes then shuffled."""
    rng = np.random.default_rng([seed, 1])  # independent of the scene stream, so splits do not shift scenes
    parts: list[list[Scene]] = [[], [], []]
    for relation in RELATIONS:
        group = [s for s in scenes if s.relation == relation]
        order = rng.permutation(len(group))
        bounds = np.cumsum([0, *_split_counts(len(group), fractions)])
        for k in range(3):
            parts[k].extend(group[i] for i in order[bounds[k]:bounds[k + 1]])
    return [[part[i] for i in rng.permutation(len(part))] for part in parts]


def _write_jsonl(rows: SpatialRows, path: Path) -> None:
    """VSR-format lines (image, image_link, caption, label, relation) plus the scene's extra fields."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(rows)):
            line = {"image": rows.images[i], "image_link": None, "caption": rows.captions[i],
                    "label": int(rows.labels[i]), "relation": rows.relations[i]}
            line |= {key: values[i] for key, values in rows.extra.items()}
            f.write(json.dumps(line) + "\n")
