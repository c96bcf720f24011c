"""Datasets derived from another dataset's rows, named ``derived:<kind>:<base dataset>``.

A derived dataset is an ordinary dataset to the rest of the toolkit: ``spatial-probing extract
--data.dataset derived:structure:../shared/vsr/random --data.split test`` encodes its captions through
the same extraction path into the same cache as any dataset, and its rows carry the base rows' images,
so image and joint views work too.

Kinds:
    ``structure``: for every base row whose relation has a converse (`data.structure.CONVERSES`), four
        rows in the order of `data.structure.ROLES` (caption, paraphrase, contradiction, swap). Extra
        columns: ``role``, ``triplet`` (0, 1, ... per base row kept), ``base_row`` (row index in the base
        split) and the base rows' own extra columns (scene boxes). ``label`` is the base caption's label
        for every role (the truth of a contradiction is not implied by a false caption).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.data.structure import ROLES, triplet
from spatial_probing.errors import DataError

PREFIX = "derived:"


def structure_rows(base: SpatialRows) -> SpatialRows:
    """Caption, converse paraphrase, contradiction and argument swap of every base row with a converse."""
    picks, captions, relations, roles, triplets = [], [], [], [], []
    for i, (caption, relation) in enumerate(zip(base.captions, base.relations, strict=True)):
        made = triplet(caption, relation)
        if made is None:
            continue
        number = len(picks) // len(ROLES)
        for role in ROLES:
            text, rel = made[role]
            picks.append(i)
            captions.append(text)
            relations.append(rel)
            roles.append(role)
            triplets.append(number)
    if not picks:
        raise DataError(f"{base.name}: no row has a relation with a converse; derived:structure is empty")
    kept = base.subset(np.asarray(picks, dtype=np.int64))
    return SpatialRows(
        name=f"{PREFIX}structure:{base.name}", captions=tuple(captions), relations=tuple(relations),
        labels=kept.labels, images=kept.images, image_links=kept.image_links, source=base.source,
        extra={"role": tuple(roles), "triplet": tuple(triplets), "base_row": tuple(picks)} | kept.extra,
    )


#: kind -> function of the base rows.
DERIVATIONS: dict[str, Callable[[SpatialRows], SpatialRows]] = {"structure": structure_rows}


def split_name(dataset: str) -> tuple[str, str] | None:
    """``derived:<kind>:<base>`` -> (kind, base); None for any other dataset name."""
    if not dataset.startswith(PREFIX):
        return None
    kind, _, base = dataset[len(PREFIX):].partition(":")
    if kind not in DERIVATIONS or not base:
        raise DataError(f"dataset {dataset!r}: expected derived:<kind>:<base dataset> with kind one of "
                        f"{sorted(DERIVATIONS)}")
    return kind, base


def derive(kind: str, base: SpatialRows, relations: list[str] | None = None) -> SpatialRows:
    """The derived rows of ``base`` (kept to ``relations`` when given)."""
    rows = DERIVATIONS[kind](base)
    if relations is not None:
        rows = rows.subset(np.isin(np.asarray(rows.relations, dtype=object), list(relations)))
    return rows
