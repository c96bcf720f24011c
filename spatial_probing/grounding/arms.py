"""The arms of the grounding decomposition and the one-ingredient contrasts between neighbouring arms.

Each arm is a config under ``configs/grounding/`` (read over ``base.yaml``). Neighbouring arms differ in
one ingredient, and ``INGREDIENTS`` names it together with the config keys where the two resolved configs
may differ: ``tests/test_grounding.py`` checks every pair against the configs, and the study's answer
is written from exactly these paired comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "grounding"

#: every arm of the full study, in the decomposition's reading order
ARMS = ("mlm", "text_pair", "text_pair_hn", "shuffled", "clip_onehot", "clip_onehot_hn", "contrastive",
        "contrastive_hn", "world_state", "layout_grid")
#: the arms every other arm is compared against (paired, Holm over relations)
REFERENCES = ("mlm", "text_pair", "clip_onehot")


@dataclass(frozen=True)
class Ingredient:
    """``arm`` minus ``base`` measures ``name``; their resolved configs differ only under ``keys``."""

    name: str
    base: str
    arm: str
    keys: tuple[str, ...]


INGREDIENTS = (
    Ingredient("pairing without images (co-referring captions as positives)", "mlm", "text_pair",
               ("model.objective.", "model.tower.")),
    Ingredient("pixels instead of a paired caption (same fact-keyed targets)", "text_pair", "contrastive",
               ("model.tower.",)),
    Ingredient("fact-keyed targets (being told which captions co-refer)", "clip_onehot", "contrastive",
               ("model.objective.init_args.targets",)),
    Ingredient("image-caption pairing (images present either way)", "shuffled", "clip_onehot",
               ("model.tower.init_args.shuffle",)),
    Ingredient("symbolic world state instead of rendered pixels", "contrastive", "world_state", ("model.tower.",)),
    Ingredient("2-D layout grid instead of rendered pixels", "contrastive", "layout_grid", ("model.tower.",)),
    *(Ingredient(f"hard negatives ({arm})", arm, f"{arm}_hn", ("model.objective.init_args.hard_negatives",))
      for arm in ("text_pair", "clip_onehot", "contrastive")),
)


def available_arms() -> list[str]:
    """Names of the arm configs under ``configs/grounding`` (the study accepts any of them)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "base")
