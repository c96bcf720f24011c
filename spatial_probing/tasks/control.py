"""Hewitt & Liang (2019) control tasks: the same targets' label distribution, labels a function of a word.

A control task wraps any task. For each of its targets it gives every *lexical type* of the rows
(by default the subject noun parsed from "The A is R the B.") one fixed, seeded random label, chosen
so that the control keeps the target's label distribution: types are taken in a seeded random order
and labelled positive until their rows add up as closely as possible to the target's positive count.
A probe that scores well on the control memorises words, not the property; selectivity = task score
- control score (Hewitt & Liang's measure) shows how much of a score the property itself explains.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError
from spatial_probing.tasks.base import ProbeTask, Task

Lexical = Literal["subject", "object", "pair"]
_ARTICLES = ("the ", "a ", "an ")
_COPULAS = (" is", " are")


def lexical_type(caption: str, relation: str, part: Lexical = "subject") -> str:
    """The subject (``A``), object (``B``) or both (``A|B``) of "The A is R the B.", lower-cased, no article.

    The relation phrase is located in the caption; when it is absent (a caption of another form) the
    whole caption minus its final period is the type, so such rows still get one fixed label.
    """
    if part == "pair":
        return f"{lexical_type(caption, relation, 'subject')}|{lexical_type(caption, relation, 'object')}"
    text = caption.strip().rstrip(".").lower()
    at = text.find(f" {relation.lower()} ")
    if at < 0:
        return text
    phrase = text[:at] if part == "subject" else text[at + len(relation) + 2 :]
    phrase = phrase.strip()
    for copula in _COPULAS:
        if part == "subject" and phrase.endswith(copula):
            phrase = phrase[: -len(copula)]
    for article in _ARTICLES:
        if phrase.startswith(article):
            phrase = phrase[len(article) :]
            break
    return phrase.strip()


def control_labels(
    types: np.ndarray, targets: np.ndarray, row_mask: np.ndarray, seed: Sequence[int]
) -> np.ndarray:
    """``[n, T]`` int8 control labels: per target, a seeded random set of types is positive.

    Types are visited in a random order (seeded by ``seed`` and the target's column); a type is
    labelled positive while its row count (within the target's mask) fits in what is left of the
    target's positive count, then the unused type that lands closest is added if it helps. Every row of one type gets the same label, and the positive rate stays as close
    to the task's as the type counts allow.
    """
    names, inverse = np.unique(np.asarray(types, dtype=object).astype(str), return_inverse=True)
    out = np.zeros(targets.shape, dtype=np.int8)
    for t in range(targets.shape[1]):
        mask = row_mask[:, t]
        counts = np.bincount(inverse[mask], minlength=len(names))
        remaining = int(targets[mask, t].sum())
        positive = np.zeros(len(names), dtype=bool)
        for k in np.random.default_rng([*seed, t]).permutation(len(names)):
            if 0 < counts[k] <= remaining:  # never overshoot while filling
                positive[k] = True
                remaining -= counts[k]
        unused = np.flatnonzero(~positive & (counts > 0))
        if remaining > 0 and len(unused):  # then the one type that lands closest, if it helps
            k = unused[np.argmin(np.abs(counts[unused] - remaining))]
            positive[k] = abs(counts[k] - remaining) < remaining
        out[:, t] = positive[inverse]
    return out


class ControlTask(Task):
    """The control of ``task``: its targets, masks and groups, labels a seeded function of a lexical type.

    Args:
        task: the task to control (``class_path``/``init_args``), e.g. ``RelationType``.
        lexical: what the labels are a function of: the ``subject`` noun, the ``object`` noun, or the
            ``pair`` of both (many more types, so the label distribution is kept more closely).
        seed: seed of the random type -> label function.
    """

    def __init__(self, task: Task, lexical: Lexical = "subject", seed: int = 0) -> None:
        if lexical not in ("subject", "object", "pair"):
            raise DataError(f"data.control lexical must be 'subject', 'object' or 'pair', got {lexical!r}")
        self.task = task
        self.lexical = lexical
        self.seed = seed

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.task.name}/control"

    def build(self, rows: SpatialRows) -> ProbeTask:
        base = self.task.build(rows)
        types = np.array([lexical_type(c, r, self.lexical) for c, r in zip(rows.captions, rows.relations, strict=True)])
        # the seed mixes in the task name so two tasks' controls are different functions
        seed = (self.seed, zlib.crc32(self.task.name.encode()))
        return ProbeTask(
            name=self.name,
            targets=control_labels(types, base.targets, base.row_mask, seed),
            target_names=base.target_names,
            row_mask=base.row_mask,
            groups=base.groups,
            captions=base.captions,
        )
