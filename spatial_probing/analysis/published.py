"""Published VSR test accuracies: literature figures, shown as "published", never mixed with computed ones.

Source: Fangyu Liu, Guy Emerson, Nigel Collier, "Visual Spatial Reasoning", Transactions of the ACL 11
(2023), test accuracy on the random split (human and majority baselines as reported there).
"""

from __future__ import annotations

import pandas as pd

CITATION = "Liu, Emerson & Collier, Visual Spatial Reasoning, TACL 11 (2023)"
#: (split, model, test accuracy in %) as published.
VSR_PUBLISHED: tuple[tuple[str, str, float], ...] = (
    ("random", "majority", 53.8),
    ("random", "CLIP (frozen)", 56.0),
    ("random", "VisualBERT", 55.2),
    ("random", "ViLT", 69.3),
    ("random", "LXMERT", 70.1),
    ("random", "human", 95.4),
)


def published_table() -> pd.DataFrame:
    """The published figures as a table with a ``source`` column (``published: <citation>``)."""
    frame = pd.DataFrame(VSR_PUBLISHED, columns=["split", "model", "test_accuracy_pct"])
    return frame.assign(source=f"published: {CITATION}")
