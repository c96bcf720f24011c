"""What names an encoder: `EncoderSpec` (a parsed encoder name) and the short form tables print.

Parsing a name needs the families (`encoders.registry.parse_encoder`); this module holds only the spec,
so the adapters' shared base (`encoders.base`) and the registry both import it without importing each other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

RANDOM_INIT_SUFFIX = "+random-init"


@dataclass(frozen=True)
class EncoderSpec:
    """What identifies an encoder's features: library family, model, view(s) and random-init flag.

    ``view`` holds one view name or several, comma-separated in the family's order (``image,concat``).
    """

    family: str
    model: str
    view: str
    random_init: bool = False

    @property
    def views(self) -> tuple[str, ...]:
        """The view names this spec extracts (one pass computes them all)."""
        return tuple(self.view.split(","))

    def __str__(self) -> str:
        suffix = RANDOM_INIT_SUFFIX if self.random_init else ""
        return f"{self.family}:{self.model}@{self.view}{suffix}"

    @property
    def slug(self) -> str:
        """A directory-safe name: readable prefix plus a hash of the canonical name, so it is unique."""
        readable = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(self)).strip("_")[:80]
        return f"{readable}-{hashlib.sha256(str(self).encode()).hexdigest()[:10]}"


# a local model directory inside an encoder name, up to its last component
_LOCAL_PATH = re.compile(r"(?<![\w.-])[~/][^@\s]*/")


def short_encoder(encoder: str) -> str:
    """An encoder name with local directories cut to their last component (``sbert:all-mpnet-base-v2@text``)."""
    return _LOCAL_PATH.sub("", encoder)
