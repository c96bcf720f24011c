"""The credibility table of one encoder end to end, against its probes solved by scikit-learn, same run.

    python benchmarks/credibility_speed.py [--features DIR] [--config configs/probe/credibility.yaml]
                                           [--repeats 3] [--sklearn-targets 4] [--dtypes D ...]

Ours: ``spatial-probing fit --config configs/probe/credibility.yaml --data.features [DIR]`` in a
subprocess, everything a user waits for (imports, loading, the nested C selection of every probe set,
MDL, bootstraps, permutation tests, report.html), best of ``--repeats``.

scikit-learn: the nested C-selection problems of the same probe sets (the encoder, its control task,
the word n-gram and relation-masked n-gram baselines; the majority baseline fits nothing), built by the
same code (`ProbeDataModule`, `selection.nested_masks`) at the config's settings (C grid, balanced class
weights, ``tol``, L2-normalised rows), the n-grams as sparse CSR matrices, solved by the strongest set-up of
``benchmarks/probe_speed.py``: lbfgs, joblib over every core with one BLAS thread per worker, the folds
of each (C, target) warm-started in order. It runs on ``--sklearn-targets`` evenly spaced targets of
each probe set and is extrapolated linearly to all of them (each target is its own problems, so the
time scales with their number). MDL, bootstraps and the report are not charged to scikit-learn, so
the ratio understates its time.

Our floor: each probe set's nested selection is also run once by itself (the `fit_logreg` call
`select_C` makes) with every matrix product counted (`counting_products`); the counted products timed
at this machine's rates (`probe_speed.product_seconds`) are what the selection would take if nothing
but its products cost time. Their sum bounds the table from below on this machine, whatever the
rest of the command does.

Prints the CPU's bfloat16 flags and GEMM rates, each probe set's scikit-learn time (measured on the
subset, extrapolated), the shape of its solver basis and our selection's time beside its product floor
(also with HVPs in each of ``--dtypes``), the table's time, and LAST
``speedup (scikit-learn / ours)``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers
from extract_speed import bf16_flags  # noqa: E402
from probe_speed import DEFAULT_FEATURES, gemm_pair_ms, product_flop, product_seconds, timed  # noqa: E402

from spatial_probing.probes.baselines import PREFIX, is_majority  # noqa: E402
from spatial_probing.probes.data import ProbeDataModule  # noqa: E402
from spatial_probing.probes.module import HVP_DTYPES  # noqa: E402
from spatial_probing.probes.selection import nested_masks  # noqa: E402
from spatial_probing.probes.sklearn_ref import fit_sklearn  # noqa: E402
from spatial_probing.probes.solver import fit_logreg  # noqa: E402
from spatial_probing.probes.solver.basis import Basis, Csr, counting_products  # noqa: E402
from spatial_probing.tasks.relation_type import RelationType  # noqa: E402


def machine_line(n: int = 7680, d: int = 768) -> str:
    """The CPU's bfloat16 flags, cores, threads and GEMM rates (float32, bfloat16) at the probe's shape: the
    first line of the credibility benchmarks, so their times from two hosts can be read together."""
    X = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    rates = {dt: 2 * (2 * n * d * 180) / gemm_pair_ms(X, 180, dt) / 1e6 for dt in (torch.float32, torch.bfloat16)}
    return (f"CPU: {bf16_flags()}; {os.cpu_count() or 1} cores, torch threads {torch.get_num_threads()}; GEMM pair "
            f"[{n} x {d}] x [{d} x 180]: float32 {rates[torch.float32]:.0f} GFLOP/s, bfloat16 "
            f"{rates[torch.bfloat16]:.0f} GFLOP/s")  # fmt: skip


def table_seconds(config: Path, features: Path, repeats: int) -> float:
    """Best wall time of the whole ``spatial-probing fit`` of the table (a fresh process each time)."""
    feature_root, entry = features.parents[2], features.relative_to(features.parents[2])
    best = float("inf")
    for _ in range(max(1, repeats)):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "spatial_probing.cli", "fit", "--config", str(config),
                   "--data.feature_root", str(feature_root), "--data.features", f"[{entry}]",
                   "--out_dir", out, "--trainer.logger", "false"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            best = min(best, time.perf_counter() - start)
    return best


def probe_sets(config: dict, features: Path) -> ProbeDataModule:
    """The config's probe sets of ``features``, as the fit builds them."""
    data = config["data"]
    task = data["task"]
    if task["class_path"].rsplit(".", 1)[-1] != "RelationType":
        raise SystemExit(f"this benchmark builds the relation-type task; the config asks for {task['class_path']}")
    dm = ProbeDataModule(
        features=[str(features)], task=RelationType(**task.get("init_args", {})), n_splits=data["n_splits"],
        seed=data["seed"], folds=data["folds"], normalize=data["normalize"], baselines=data.get("baselines"),
        control=data.get("control"),
    )  # fmt: skip
    dm.setup()
    return dm


def sklearn_seconds(batch: dict, model: dict, n_targets: int, n_jobs: int) -> tuple[float, int]:
    """scikit-learn's time for the nested selection of ``n_targets`` evenly spaced targets of one probe set,
    and the number of problems it solved."""
    x, y, train = batch["x"].numpy(), batch["y"].numpy(), batch["train_mask"].numpy()
    keep = np.unique(np.linspace(0, y.shape[1] - 1, n_targets).round().astype(int))
    masks, _, _ = nested_masks(y[:, keep], train[..., keep], batch["protocol"]["n_splits"], batch["protocol"]["seed"])
    X = x.astype(np.float64)
    if batch["info"]["encoder"].startswith(PREFIX):  # the n-grams: binary, ~17 of 2,327 entries per row
        X = sparse.csr_matrix(X)
    kwargs = dict(solver="lbfgs", tol=model["tol"], max_iter=20000, class_weight=model.get("class_weight"),
                  n_jobs=n_jobs, warm_start=True)  # fmt: skip
    _, seconds = timed(1, fit_sklearn, X, y[:, keep], masks, model["Cs"], **kwargs)
    return seconds * y.shape[1] / len(keep), masks.shape[0] * len(model["Cs"]) * len(keep)


def selection_floor(batch: dict, model: dict, dtype: str) -> tuple[float, float, int, float]:
    """Our nested selection of one probe set run by itself with HVPs in ``dtype``: (its seconds, its counted
    products' seconds at this machine's rates, how many products, their GFLOP)."""
    y, train = batch["y"].numpy(), batch["train_mask"].numpy()
    masks, parents, _ = nested_masks(y, train, batch["protocol"]["n_splits"], batch["protocol"]["seed"])
    kwargs = dict(tol=model["tol"], class_weight=model.get("class_weight"), dtype=HVP_DTYPES[dtype])
    start = time.perf_counter()
    with counting_products() as counts:
        fit_logreg(batch["x"], y, masks, model["Cs"], parents=parents, **kwargs)
    seconds = time.perf_counter() - start
    return seconds, product_seconds(counts), sum(counts.values()), product_flop(counts) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path(DEFAULT_FEATURES), help="feature-cache entry dir")
    parser.add_argument("--config", type=Path, default=Path("configs/probe/credibility.yaml"))
    parser.add_argument("--repeats", type=int, default=3, help="runs of the table; the best counts")
    parser.add_argument("--sklearn-targets", type=int, default=4, help="targets per probe set scikit-learn solves")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(HVP_DTYPES), default=[],
                        help="also time each selection with HVPs in these precisions (the config's always runs)")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    dtypes = [config["model"]["dtype"]] + [d for d in args.dtypes if d != config["model"]["dtype"]]
    n_jobs = os.cpu_count() or 1
    print(machine_line())

    dm = probe_sets(config, args.features)
    total, ours_total, floor_total = 0.0, 0.0, 0.0
    for index in range(len(dm.probe_sets)):
        batch = dm.batch(index)
        if is_majority(batch["info"]["encoder"]):
            continue
        seconds, problems = sklearn_seconds(batch, config["model"], args.sklearn_targets, n_jobs)
        total += seconds
        print(f"scikit-learn {batch['log_label']} ({tuple(batch['x'].shape)}): {problems} problems of "
              f"{args.sklearn_targets} targets, extrapolated to {batch['y'].shape[1]}: {seconds:.0f} s", flush=True)
        Z = Basis.build(batch["x"], batch["train_mask"].any(dim=(0, 2)), torch.float32).Z
        print(f"  solver basis Z: {Z.shape[0]} x {Z.shape[1]} ({Z.shape[0] * Z.shape[1]:,} entries"
              f"{', sparse' if isinstance(Z, Csr) else ''})")
        for dtype in dtypes:
            mine, floor, n_products, gflop = selection_floor(batch, config["model"], dtype)
            if dtype == dtypes[0]:
                ours_total, floor_total = ours_total + mine, floor_total + floor
            print(f"  ours, all {batch['y'].shape[1]} targets, HVPs {dtype}: {mine:.1f} s; its {n_products} products "
                  f"({gflop:.0f} GFLOP) at this machine's rates: {floor:.1f} s", flush=True)
    print(f"scikit-learn, nested selection of every probe set (lbfgs, joblib {n_jobs} workers, tol "
          f"{config['model']['tol']:g}): {total:.0f} s extrapolated (MDL, bootstraps, report not counted)")
    print(f"ours, nested selection of every probe set (HVPs {dtypes[0]}): {ours_total:.1f} s, of which its products alone take "
          f"{floor_total:.1f} s at this machine's rates (the table's floor here)")
    ours = table_seconds(args.config, args.features, args.repeats)
    print(f"the credibility table ({args.config}), whole command, best of {args.repeats}: {ours:.1f} s (goal <= 60 s)")
    print(f"speedup (scikit-learn {total:.0f} s / ours {ours:.1f} s): {total / ours:.1f}x")


if __name__ == "__main__":
    main()
