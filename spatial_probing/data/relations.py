"""Data about spatial relations: VSR's meta-categories, imported by the loader and the reports alike."""

from __future__ import annotations

# The paper's 7 meta-categories, copied from VSR's rel_meta_category_dict.txt (commit b27a0af).
# That file lists "among" under both Topological and Unallocated; it is kept only in Topological, the
# first listing, so every relation maps to one category.
META_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Adjacency": ("adjacent to", "alongside", "at the side of", "at the right side of", "at the left side of",
                  "attached to", "at the back of", "ahead of", "against", "at the edge of"),
    "Directional": ("off", "past", "toward", "down", "deep down", "up", "away from", "along", "around", "from",
                    "into", "to", "across", "across from", "through", "down from"),
    "Orientation": ("facing", "facing away from", "parallel to", "perpendicular to"),
    "Projective": ("on top of", "beneath", "beside", "behind", "left of", "right of", "under", "in front of",
                   "below", "above", "over", "in the middle of"),
    "Proximity": ("by", "close to", "near", "far from", "far away from"),
    "Topological": ("connected to", "detached from", "has as a part", "part of", "contains", "within", "at", "on",
                    "in", "with", "surrounding", "among", "consists of", "out of", "between", "inside",
                    "outside", "touching"),
    "Unallocated": ("beyond", "next to", "opposite to", "after", "enclosed by"),
}
_CATEGORY_OF = {rel: cat for cat, rels in META_CATEGORIES.items() for rel in rels}


def meta_category(relation: str) -> str:
    """The VSR meta-category of a relation; ``Unallocated`` for a relation VSR does not list."""
    return _CATEGORY_OF.get(relation, "Unallocated")


def is_known_relation(name: str) -> bool:
    """Whether VSR's meta-category table lists ``name``."""
    return name in _CATEGORY_OF
