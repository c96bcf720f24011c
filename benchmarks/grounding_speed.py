"""Grounding training throughput of every arm, float32 (32-true) against bf16-mixed, same run.

    python benchmarks/grounding_speed.py [--arms mlm contrastive ...] [--steps 20] [--repeats 3]
                                         [--batch-size 128] [--config FILE ...]

Arms: every ``configs/grounding/*.yaml`` but ``base.yaml`` (or ``--arms``, names of such files). Each
arm trains ``--steps`` steps of ``spatial-probing train-grounding`` (in this process, through
``spatial_probing.grounding.cli.train``) in ``32-true`` and in ``bf16-mixed`` at the study's batch
size, with no logger, no progress bar, no validation (``val_check_interval`` beyond the run) and one
epoch's worth of training scenes, so no epoch boundary falls inside the timing. ``--config FILE``
(repeatable) is read after ``base.yaml`` and before each arm's own file, as the transfer study does
(``--config configs/grounding/transfer/base.yaml --batch-size 32``: the MiniLM transfer arms). The throughput is
the run's own ``samples_per_s`` (batch start to batch start, the first 10 steps excluded). The arms
and both precisions alternate for ``--repeats`` rounds (default 3) and the best run of each counts,
so a briefly busy machine penalises neither side; the load average is printed before and after (on an AMX
host, bf16 image arms stall at ~120 samples/s while another process holds a core: docs/grounding.md). Time: on 2
shared cores without bfloat16 instructions (where bf16 image arms train at ~100-180 samples/s) about
80 s per arm for the three rounds, i.e. ~4 min for 3 arms and ~13 min for 10; on the 2-core AMX Xeon about
100 s for all 10; ``--repeats 1`` or ``--arms`` for a quicker look.

Printed first, what decides the ratio: the CPU model, whether it has the bfloat16 instructions
(avx512_bf16 / amx_bf16 / amx_tile, as ``lscpu`` lists them; torch's CPU capability and whether
oneDNN accepts bfloat16 here; without them bf16 autocast falls back to PyTorch's reference kernels:
im2col convolutions and non-BLAS GEMMs, several times slower than float32), torch's version and
threads, and the machine's GEMM rate ([2048 x 768] x [768 x 768] and its transpose, float32 and
bfloat16), and what ``--trainer.precision auto`` (base.yaml's) resolves to here. Then one line per arm (samples/s in float32 and bf16-mixed, their ratio) and LAST the
overall ratio ``bf16-mixed / 32-true``: the geometric mean over the arms.

OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set), as in ``spatial_probing.studies.grounding``:
spinning OpenMP threads made training many times slower on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

from spatial_probing.grounding.arms import CONFIGS, available_arms

PRECISIONS = ("32-true", "bf16-mixed")
WARMUP_STEPS = 10  # GroundingModule.samples_per_second leaves out the steps up to this one


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_facts() -> None:
    """Print what the bf16 / fp32 ratio depends on."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers
    from extract_speed import bf16_flags  # lscpu's bfloat16 flags
    from probe_speed import gemm_pair_ms  # best-of-5 time of X @ P and X.T @ R

    from spatial_probing.machine import auto_precision, bf16_supported

    flags = bf16_flags()
    onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # what routes bf16 convolutions/GEMMs to oneDNN
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; {flags}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; oneDNN bfloat16 {'yes' if onednn else 'no'}; "
          f"native bfloat16 (solver.bf16_supported) {'yes' if bf16_supported() else 'no'}")
    if not bf16_supported():
        print("  no bfloat16 instructions: bf16-mixed runs PyTorch's reference kernels (im2col convolutions, "
              "non-BLAS GEMMs); expect it slower than float32")
    print("--trainer.precision auto trains in {} here ({})".format(*auto_precision("cpu")))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY')}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    n, d = 2048, 768
    X = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    flop = 2 * (2 * n * d * d)  # X @ P and X.T @ R, each 2 n d d
    # best of 3: an emulated bfloat16 pair takes seconds
    rates = {dt: flop / gemm_pair_ms(X, d, dt, repeats=3) / 1e6 for dt in (torch.float32, torch.bfloat16)}
    print(f"GEMM [{n} x {d}] x [{d} x {d}] and its transpose: float32 {rates[torch.float32]:.0f} GFLOP/s, "
          f"bfloat16 {rates[torch.bfloat16]:.0f} GFLOP/s (bf16/fp32 {rates[torch.bfloat16] / rates[torch.float32]:.2f})")


def train_once(arm: str, precision: str, steps: int, batch_size: int, configs: tuple[str, ...] = ()) -> float:
    """Samples/s of one short run of ``arm`` in ``precision`` (the run's own measurement); ``configs`` are read
    before the arm's file."""
    from spatial_probing.grounding.cli import train

    with tempfile.TemporaryDirectory() as out:
        args = [*[a for c in configs for a in ("--config", c)], "--config", str(CONFIGS / f"{arm}.yaml"),
                "--trainer.precision", precision,
                "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(10 * steps + 1000),
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--data.batch_size", str(batch_size), "--data.n_train", str(steps * batch_size),
                "--data.n_val", "16", "--out_dir", out]
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            _, summary = train(args)
    return float(summary["samples_per_s"])


def main() -> None:
    # read by OpenMP when torch loads it, so before anything imports torch (the user's setting wins)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=None,
                        help="config names under configs/grounding (default: every *.yaml but base.yaml)")
    parser.add_argument("--steps", type=int, default=20,
                        help=f"training steps per run; the first {WARMUP_STEPS} are not timed")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over arms x precisions; the best run counts")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step (the study's: 128)")
    parser.add_argument("--config", action="append", default=[],
                        help="a config read after base.yaml and before each arm's (repeatable), e.g. "
                             "configs/grounding/transfer/base.yaml")
    args = parser.parse_args()
    if args.steps < WARMUP_STEPS + 2:
        parser.error(f"--steps must exceed {WARMUP_STEPS + 1}: the first {WARMUP_STEPS} steps are not timed")
    arms = args.arms or available_arms()
    if missing := sorted(set(arms) - set(available_arms())):
        parser.error(f"no such arm config under {CONFIGS}: {', '.join(missing)}")
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: quieten them after it)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    machine_facts()
    print(f"arms: {' '.join(arms)}{''.join(f' over {c}' for c in args.config)}; {args.steps} steps per run ({args.steps - WARMUP_STEPS - 1} timed), batch "
          f"{args.batch_size}, best of {args.repeats} rounds, arms and precisions alternating", flush=True)
    best: dict[tuple[str, str], float] = {}
    failed: dict[str, str] = {}
    start = time.perf_counter()
    for r in range(max(1, args.repeats)):
        for arm in arms:
            for precision in PRECISIONS:
                if arm in failed:
                    continue
                try:
                    rate = train_once(arm, precision, args.steps, args.batch_size, tuple(args.config))
                except (Exception, SystemExit) as exc:  # a broken arm must not hide the others' numbers
                    failed[arm] = f"{precision}: {type(exc).__name__}: {exc}".splitlines()[0][:200]
                    continue
                best[arm, precision] = max(best.get((arm, precision), 0.0), rate)
                print(f"  round {r + 1}: {arm} {precision} {rate:.0f} samples/s", file=sys.stderr, flush=True)
    print(f"timing took {time.perf_counter() - start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine: best runs count)")

    ratios = []
    width = max(len(a) for a in arms)
    for arm in arms:
        if arm in failed:
            print(f"{arm:<{width}}  failed ({failed[arm]})")
            continue
        fp32, bf16 = best[arm, "32-true"], best[arm, "bf16-mixed"]
        ratios.append(bf16 / fp32)
        print(f"{arm:<{width}}  fp32 {fp32:7.0f} samples/s  bf16-mixed {bf16:7.0f} samples/s  "
              f"bf16/fp32 {bf16 / fp32:.3f}")
    if not ratios:
        sys.exit("every arm failed")
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    print(f"throughput ratio bf16-mixed / 32-true, geometric mean over {len(ratios)} arms: {geo:.3f}")


if __name__ == "__main__":
    main()
