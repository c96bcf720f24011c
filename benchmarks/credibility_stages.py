"""Where the credibility table's time goes: one run of the command, in this process, its stages timed.

    python benchmarks/credibility_stages.py [--features DIR] [--config configs/probe/credibility.yaml]

Runs ``spatial-probing fit --config configs/probe/credibility.yaml`` on one encoder entry (default: the
all-mpnet-base-v2 entry of VSR random train, as ``benchmarks/credibility_speed.py``) in this process, with
OpenMP's passive wait policy as the CLI sets it, and prints the CPU's bfloat16 flags and GEMM rates, then the
wall time of each stage: importing the
command's modules, building the probe sets and folds, the solves of the nested C selection, its inner and
outer scoring, MDL, the bootstraps and permutation tests, the report, and what is left (Lightning's loop,
logging, result files). Stages are timed by wrapping the functions that run them; nested calls are not
double-counted, as each function belongs to one stage. A single run on a shared machine: compare stages
within one run, and take ``credibility_speed.py``'s best of 3 for the command's time. Prints the total last,
beside the table's goal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `spatial-probing fit` sets it, before torch loads

START = time.perf_counter()
from spatial_probing.cli import _importing  # noqa: E402

with _importing():  # as `spatial-probing fit` imports its modules
    import spatial_probing.cli.fit as fit_cli

IMPORTED = time.perf_counter() - START
from spatial_probing.probes import data, module, selection  # noqa: E402

# stage -> (module, attribute) of the functions that run it
STAGES = {
    "probe sets and folds": [(data.ProbeDataModule, "setup"), (selection, "nested_masks")],
    "nested C selection: solves": [(selection, "fit_logreg")],
    "nested C selection: inner and outer scoring": [(selection, "fit_metrics")],
    "MDL (solves and codelengths)": [(module, "online_codelength")],
    "held-out decisions for the statistics": [(module.LinearProbe, "_held_out_decision")],
    "bootstraps and permutation tests": [(module.LinearProbe, "credibility")],
    "report (figures, HTML)": [(fit_cli, "write_report")],
}


def timed_stages() -> dict[str, float]:
    """Wrap each stage's functions so their wall time adds up under the stage's name."""
    seconds: dict[str, float] = defaultdict(float)
    for stage, targets in STAGES.items():
        for owner, name in targets:
            original = getattr(owner, name)

            def wrapper(*args, _original=original, _stage=stage, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    seconds[_stage] += time.perf_counter() - start

            setattr(owner, name, wrapper)
    return seconds


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from credibility_speed import machine_line
    from probe_speed import DEFAULT_FEATURES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path(DEFAULT_FEATURES), help="feature-cache entry dir")
    parser.add_argument("--config", type=Path, default=Path("configs/probe/credibility.yaml"))
    args = parser.parse_args()
    feature_root, entry = args.features.parents[2], args.features.relative_to(args.features.parents[2])
    print(machine_line(), flush=True)
    seconds = timed_stages()
    # the command's own tables go nowhere (as the benchmark's subprocess runs send them to /dev/null)
    with tempfile.TemporaryDirectory() as out, open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        start = time.perf_counter()
        fit_cli.run_fit(["--config", str(args.config), "--data.feature_root", str(feature_root),
                         "--data.features", f"[{entry}]", "--out_dir", out, "--trainer.logger", "false",
                         "--trainer.enable_progress_bar", "false"])  # fmt: skip
        run = time.perf_counter() - start
    print(f"features: {args.features}; OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"{'import of spatial_probing.cli.fit (Lightning and its dependencies)':<60} {IMPORTED:6.1f} s")
    for stage, value in seconds.items():
        print(f"{stage:<60} {value:6.1f} s")
    print(f"{'the rest (Lightning loop, logging, result files)':<60} {run - sum(seconds.values()):6.1f} s")
    print(f"{'total (one run in-process; goal for the table <= 60 s)':<60} {IMPORTED + run:6.1f} s")


if __name__ == "__main__":
    main()
