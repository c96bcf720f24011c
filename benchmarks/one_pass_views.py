"""Time saved by extracting text, image and concat of one encoder in ONE pass instead of three.

    python benchmarks/one_pass_views.py [--encoder openclip:ViT-B-32/openai] [--scenes-per-relation 40]

The demo's CLIP control (random-init open_clip ViT-B/32 on the synthetic scenes of ``make demo``):
one ``extract`` with ``--model.view [text,image,concat]`` against three extractions, one per view (what
each view cost before views were derived from cached parts: concat encoded both streams again). Each
run starts from an empty cache; both sides include building the model. Checks that the one-pass views
equal the separately extracted ones, and prints LAST the time saved and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIEWS = ("text", "image", "concat")


def extract(root: str, encoder: str, views: str, scenes: int) -> tuple[float, Path]:
    """Time one ``spatial-probing extract`` of ``views`` into an empty ``root``; return (seconds, entry dir)."""
    from spatial_probing.cli import main

    args = ["extract", "--config", str(REPO / "configs/trainer/cpu.yaml"), "--model.encoder", encoder,
            "--model.view", views, "--model.random_init", "true", "--data.dataset", "scenes",
            "--data.scenes_per_relation", str(scenes), "--data.batch_size", "32", "--feature_root", root,
            "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    seconds = time.perf_counter() - start
    (meta,) = Path(root).rglob("meta.json")
    return seconds, meta.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="openclip:ViT-B-32/openai")
    parser.add_argument("--scenes-per-relation", type=int, default=40)
    args = parser.parse_args()

    from spatial_probing.data.sources import load_rows
    from spatial_probing.features.entry import load_entry

    rows = load_rows("scenes", "train", None, args.scenes_per_relation, 0)
    print(f"encoder: {args.encoder}+random-init; scenes: {len(rows)} captions, {len(rows.unique_images()[0])} images")
    with tempfile.TemporaryDirectory() as work:
        extract(str(Path(work) / "warm-up"), args.encoder, "text", 1)  # imports and first model build
        one_s, one_dir = extract(str(Path(work) / "one"), args.encoder, ",".join(VIEWS), args.scenes_per_relation)
        print(f"one pass, views {','.join(VIEWS)}: {one_s:.1f} s")
        one = load_entry(one_dir)
        three_s = 0.0
        for view in VIEWS:
            seconds, path = extract(str(Path(work) / view), args.encoder, view, args.scenes_per_relation)
            three_s += seconds
            same = np.array_equal(np.asarray(load_entry(path).features), np.asarray(one.view(view).features),
                                  equal_nan=True)
            print(f"separate pass, view {view}: {seconds:.1f} s (equal to the one-pass view: {same})")
    print(f"three passes: {three_s:.1f} s; one pass: {one_s:.1f} s")
    print(f"time saved by one pass: {three_s - one_s:.1f} s ({three_s / one_s:.2f}x faster)")


if __name__ == "__main__":
    main()
