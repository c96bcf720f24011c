"""Converse relations and the caption triplets built from them (paraphrase, contradiction, argument swap).

VSR captions follow "The A is R the B." (verb relations such as "contains" take no "is"; a plural subject
takes "are"). For a relation R with a converse R' (the table `CONVERSES`, which the project owns):

=================  =========================  ===========================================
role               caption                    meaning
=================  =========================  ===========================================
``caption``        The A is R the B.          the original
``paraphrase``     The B is R' the A.         the same meaning (converse paraphrase)
``contradiction``  The A is R' the B.         the opposite meaning
``swap``           The B is R the A.          the opposite meaning (argument swap)
=================  =========================  ===========================================

Paraphrase and contradiction hold exactly the same words, so a bag of words cannot tell them apart:
it scores chance (0.5) by construction on "is the paraphrase nearer the caption than the contradiction?".
The swap holds exactly the caption's words, so a bag of words puts it nearer the caption than any
paraphrase (score 0 on "is the paraphrase nearer than the swap?").

The derived subject "B" takes "is": VSR's objects are singular nouns ("The cats are ..." keeps "are"
only where the plural noun stays the subject, i.e. in the contradiction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spatial_probing.errors import DataError

#: Converse pairs (VSR relation names): "A R B" means "B R' A". Only strict converses of asymmetric
#: relations are listed; symmetric relations (near, touching, ...) have no contradiction by converse.
CONVERSE_PAIRS: tuple[tuple[str, str], ...] = (
    ("left of", "right of"),
    ("at the left side of", "at the right side of"),
    ("above", "below"),
    ("on top of", "under"),
    ("over", "beneath"),
    ("in front of", "behind"),
    ("inside", "contains"),
    ("enclosed by", "surrounding"),
    ("part of", "has as a part"),
)
CONVERSES: dict[str, str] = {a: b for a, b in CONVERSE_PAIRS} | {b: a for a, b in CONVERSE_PAIRS}
#: Relations that are verbs (no copula): singular form -> plural form.
VERB_RELATIONS: dict[str, str] = {"contains": "contain", "has as a part": "have as a part",
                                  "consists of": "consist of"}
ROLES = ("caption", "paraphrase", "contradiction", "swap")


@dataclass(frozen=True)
class ParsedCaption:
    """``The <subject> <copula> <relation> the <object>.``; copula is "is", "are" or "" (verb relations)."""

    subject: str
    copula: str
    relation: str
    object: str


def _pattern(relation: str) -> re.Pattern[str]:
    plural = VERB_RELATIONS.get(relation)
    if plural is not None:
        verb = f"(?P<verb>{re.escape(relation)}|{re.escape(plural)})"
        return re.compile(rf"^The (?P<a>.+?) {verb} the (?P<b>.+?)\.?$")
    return re.compile(rf"^The (?P<a>.+?) (?P<copula>is|are) {re.escape(relation)} the (?P<b>.+?)\.?$")


def parse_caption(caption: str, relation: str) -> ParsedCaption:
    """Split a caption of known ``relation`` into subject, copula and object; DataError if it does not fit."""
    match = _pattern(relation).match(caption.strip())
    if match is None:
        raise DataError(f"caption {caption!r} does not follow 'The A is {relation} the B.'")
    groups = match.groupdict()
    if "verb" in groups:
        copula = "are" if groups["verb"] != relation else ""
    else:
        copula = groups["copula"]
    return ParsedCaption(subject=groups["a"], copula=copula, relation=relation, object=groups["b"])


def render(subject: str, relation: str, obj: str, plural: bool = False) -> str:
    """"The <subject> is|are <relation> the <obj>." (verb relations conjugated, no copula)."""
    if relation in VERB_RELATIONS:
        predicate = VERB_RELATIONS[relation] if plural else relation
    else:
        predicate = f"{'are' if plural else 'is'} {relation}"
    return f"The {subject} {predicate} the {obj}."


def triplet(caption: str, relation: str) -> dict[str, tuple[str, str]] | None:
    """The four roles' (caption, relation) for a caption whose relation has a converse; None otherwise."""
    converse = CONVERSES.get(relation)
    if converse is None:
        return None
    p = parse_caption(caption, relation)
    plural = p.copula == "are"
    return {
        "caption": (caption, relation),
        "paraphrase": (render(p.object, converse, p.subject), converse),
        "contradiction": (render(p.subject, converse, p.object, plural), converse),
        "swap": (render(p.object, relation, p.subject), relation),
    }
