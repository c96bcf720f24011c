"""Peak memory of extraction on pathological inputs (reliability round 3, case 8), against a plain baseline.

    python benchmarks/resource_bounds.py [--model DIR] [--vsr ../shared/vsr/random] [--rows 50000] [--caption-mb 1]

Three VSR-format datasets go through ``spatial-probing extract`` (all-MiniLM-L6-v2, CPU, float32), each in a fresh
process that reports its own peak RSS (VmHWM):

- ``baseline``: the first 1,000 rows of VSR random test;
- ``huge caption``: the same rows, the first caption replaced by ``--caption-mb`` MB of words (the tokenizer
  truncates to the model's ``max_seq_length``; nothing else holds the text twice);
- ``repeated``: ``--rows`` rows of one caption (features are written shard by shard: memory is bounded by a
  batch, not by the row count).

The last line is the worst case's peak RSS over the baseline's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spatial_probing.grounding.text import packaged_minilm
from spatial_probing.machine import peak_rss_gib

ROOT = Path(__file__).resolve().parents[1]


def write_split(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def datasets(vsr: Path, out: Path, n_repeated: int, caption_mb: float) -> dict[str, Path]:
    """The three datasets of the module doc, as VSR-format directories under ``out``."""
    base = [json.loads(line) for line in (vsr / "test.jsonl").read_text().splitlines()[:1000]]
    words = "the cat is left of the dog "
    huge = words * int(caption_mb * 2**20 / len(words))
    return {
        "baseline": write_split(out / "baseline", base),
        "huge caption": write_split(out / "huge", [{**base[0], "caption": huge}, *base[1:]]),
        "repeated": write_split(out / "repeated", [base[0]] * n_repeated),
    }


def run_child(dataset: Path, model: str, feature_root: Path) -> dict:
    """``spatial-probing extract`` of ``dataset`` in a fresh interpreter: its exit code, wall time and peak RSS."""
    args = ["extract", "--config", str(ROOT / "configs" / "trainer" / "cpu.yaml"), "--model.encoder", f"sbert:{model}",
            "--data.dataset", str(dataset), "--data.split", "test", "--feature_root", str(feature_root),
            "--trainer.enable_progress_bar", "false"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"rc": done.returncode}
    return result | {"wall_s": wall, "stderr": done.stderr.strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="sentence-transformers directory (default: packaged MiniLM)")
    parser.add_argument("--vsr", default=str(ROOT.parent / "shared" / "vsr" / "random"))
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the repeated-caption dataset")
    parser.add_argument("--caption-mb", type=float, default=1.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        from spatial_probing.cli import main as cli_main

        rc = cli_main(json.loads(a.child))
        print(json.dumps({"rc": rc, "peak_rss_gib": peak_rss_gib()}))
        return
    if a.model is None:
        a.model = packaged_minilm("--model is unset")
    results = {}
    with tempfile.TemporaryDirectory(prefix="resource-bounds-") as tmp:
        for name, path in datasets(Path(a.vsr), Path(tmp) / "data", a.rows, a.caption_mb).items():
            results[name] = r = run_child(path, a.model, Path(tmp) / "features")
            rows = sum(1 for _ in (path / "test.jsonl").open())
            print(f"{name:>13}: {rows:>6} rows, exit {r['rc']}, {r['wall_s']:.1f} s, peak RSS "
                  f"{r.get('peak_rss_gib', float('nan')):.2f} GiB {' '.join(r['stderr']) if r['rc'] else ''}", flush=True)
    worst = max((n for n in results if n != "baseline"), key=lambda n: results[n].get("peak_rss_gib", 0))
    ratio = results[worst]["peak_rss_gib"] / results["baseline"]["peak_rss_gib"]
    print(f"peak RSS, worst case ({worst}) / 1,000-row baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
