"""Peak RSS of probing 50,000 x 1,024 float16 features read memory-mapped from a cache entry (issue 4).

    python benchmarks/probe_memory.py [--rows 50000] [--dim 1024] [--folds 5] [--targets 8] [--Cs 0.1 1]
                                      [--dtype float64|float32] [--tol 1e-6] [--max-iter 100] [--max-problems P]

Writes a synthetic float16 entry through the feature store's own path (one shard per batch, then
``FeatureStore.finalize``), with a relation column of ``--targets`` relations. Then two fresh child
processes run: a baseline that only makes this module's imports, and the probe: ``load_entry`` (checksums
verified, features memory-mapped) and one ``fit_logreg`` call over every (fold, C, target) problem,
one-vs-rest per relation, on ``--folds`` random fold masks. Each child reports its own peak RSS (VmHWM).
The last line printed is ``peak RSS: X.XX GiB (target < 1.5 GiB)``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from spatial_probing.data.rows import SpatialRows
from spatial_probing.features.entry import load_entry
from spatial_probing.features.key import CacheKey
from spatial_probing.features.store import FeatureStore
from spatial_probing.machine import peak_rss_gib
from spatial_probing.probes.solver import fit_logreg

TARGET_GIB = 1.5


def write_entry(root: Path, n_rows: int, dim: int, n_relations: int, batch: int = 5000) -> Path:
    """A float16 cache entry of Gaussian features whose class means differ per relation; returns its path."""
    rng = np.random.default_rng(0)
    relation_ids = rng.integers(0, n_relations, n_rows)
    rows = SpatialRows(
        name="synthetic/train",
        captions=tuple(f"synthetic caption {i}" for i in range(n_rows)),
        relations=tuple(f"relation {r}" for r in relation_ids),
        labels=rng.integers(0, 2, n_rows),
        images=tuple(f"img{i}.jpg" for i in range(n_rows)),
        image_links=(None,) * n_rows,
        source="benchmarks/probe_memory.py",
    )
    key = CacheKey(encoder="synthetic:gaussian@text", view="text", dataset=rows.name, fingerprint=rows.fingerprint,
                   dtype="float16", precision="32-true")
    store = FeatureStore(root)
    partial = store.prepare_partial(key, {"batch_size": batch, "n_rows": n_rows})
    means = rng.standard_normal((n_relations, dim)).astype(np.float32) * 0.2
    for batch_id, start in enumerate(range(0, n_rows, batch)):
        idx = np.arange(start, min(start + batch, n_rows))
        feats = rng.standard_normal((len(idx), dim), dtype=np.float32) + means[relation_ids[idx]]
        store.write_shard(store.shard_path(partial, "text", batch_id), idx, {"text": feats}, [])
    meta = {"encoder": "synthetic:gaussian", "family": "synthetic", "view": "text", "view_parts": [["text", ["text"]]]}
    return store.finalize(key, rows, {"text": ["text"]}, meta).path


def probe(entry_path: str, n_folds: int, n_targets: int, Cs: list[float], dtype: str, tol: float,
          max_iter: int, max_problems: int | None) -> dict:
    """Load the entry memory-mapped and fit every (fold, C, target) probe at once; a summary of the fit."""
    start = time.perf_counter()
    entry = load_entry(entry_path)
    after_load = peak_rss_gib()
    relations = np.asarray(entry.rows.relations)
    names = np.array(sorted(set(entry.rows.relations))[:n_targets])
    targets = (relations[:, None] == names[None, :]).astype(np.int8)  # one-vs-rest, [n, T]
    fold = np.random.default_rng(0).permutation(len(relations)) % n_folds
    train_mask = np.repeat((fold[None, :] != np.arange(n_folds)[:, None])[:, :, None], len(names), axis=2)
    fit = fit_logreg(entry.features, targets, train_mask, Cs, tol=tol, max_iter=max_iter,
                     dtype=getattr(torch, dtype), max_problems=max_problems)
    return {"seconds": time.perf_counter() - start, "problems": int(fit.converged.numel()),
            "converged": int(fit.converged.sum()), "max_grad": fit.max_grad, "after_load_gib": after_load,
            "features_type": type(entry.features).__name__}


def _child(args: argparse.Namespace) -> None:
    """Child process (this module's imports only, then in probe mode the fit); prints one JSON line."""
    # torch.from_numpy on the read-only memory map warns that writes would be undefined; none are made.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    summary = {} if args.child == "baseline" else probe(args.entry, args.folds, args.targets, args.Cs, args.dtype,
                                                        args.tol, args.max_iter, args.max_problems)
    print(json.dumps(summary | {"peak_rss_gib": peak_rss_gib()}))


def run_child(mode: str, entry: Path, args: argparse.Namespace) -> dict:
    """Run one child in a fresh interpreter; its JSON summary."""
    cmd = [sys.executable, __file__, "--child", mode, "--entry", str(entry), "--folds", str(args.folds),
           "--targets", str(args.targets), "--dtype", args.dtype, "--tol", str(args.tol),
           "--max-iter", str(args.max_iter), "--Cs", *map(str, args.Cs)]
    if args.max_problems is not None:
        cmd += ["--max-problems", str(args.max_problems)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--targets", type=int, default=8, help="relations, one one-vs-rest target each")
    parser.add_argument("--Cs", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="solver dtype (LinearProbe's default is float64)")
    parser.add_argument("--tol", type=float, default=1e-6, help="solver tolerance (memory does not depend on it)")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--max-problems", type=int, default=None,
                        help="problems solved together (fit_logreg's memory knob; default: the solver's)")
    parser.add_argument("--child", choices=("baseline", "probe"), help=argparse.SUPPRESS)
    parser.add_argument("--entry", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    with tempfile.TemporaryDirectory(prefix="probe-memory-") as root:
        entry = write_entry(Path(root), args.rows, args.dim, args.targets)
        size = (entry / "parts" / "text.npy").stat().st_size
        print(f"entry: {args.rows} x {args.dim} float16, parts/text.npy {size / 2**20:.1f} MiB")
        n_problems = args.folds * args.targets * len(args.Cs)
        print(f"probe: fit_logreg, {args.folds} folds x {args.targets} targets x {len(args.Cs)} Cs {args.Cs} = "
              f"{n_problems} problems, dtype {args.dtype}, tol {args.tol:g}, max_iter {args.max_iter}, "
              f"max_problems {args.max_problems or 'solver default'}")
        baseline = run_child("baseline", entry, args)["peak_rss_gib"]
        print(f"baseline RSS (same imports, no work): {baseline:.2f} GiB")
        summary = run_child("probe", entry, args)
    print(f"probe child: features read as {summary['features_type']}; peak RSS after load_entry "
          f"{summary['after_load_gib']:.2f} GiB; fit: {summary['converged']}/{summary['problems']} converged, "
          f"max scaled gradient {summary['max_grad']:.2e}, {summary['seconds']:.1f} s")
    print(f"peak RSS: {summary['peak_rss_gib']:.2f} GiB (target < {TARGET_GIB} GiB)")


if __name__ == "__main__":
    main()
