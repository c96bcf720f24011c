"""Batched probe against the strongest scikit-learn set-up on the original study's 180 problems, same run.

    python benchmarks/probe_speed.py [--features DIR] [--solvers lbfgs newton-cholesky] [--repeats 3] [--skip-grid] [--skip-default]

DIR is a feature-cache entry (its first view's features [n, d] and ``rows.jsonl`` with caption, relation,
label, image per row); default ``$SPATIAL_PROBING_BENCH_FEATURES``, else the all-mpnet-base-v2 entry
of VSR random train under outputs/features. Protocol: the relations with >= 50 rows one-vs-rest
(36 on VSR random train), L2-normalised features, ``StratifiedKFold(5, shuffle=True,
random_state=42)`` per relation, C=1, no class weights: 180 problems.

scikit-learn set-ups, each at ``tol=1e-10`` on float64 features (lbfgs runs in the features'
dtype, and float32 cannot resolve a 1e-10 gradient): lbfgs and newton-cholesky, each with joblib
over every core (one BLAS thread per worker process, threadpoolctl), the folds of each relation
in one worker, each fold warm-started from the previous one (``warm_start=True``). The batched
solver runs at the same tolerance with bfloat16 Hessian-vector products where the CPU has
AMX-BF16 / AVX512-BF16 (float32 elsewhere). Prints the machine's time for one round of
Hessian-vector products (a GEMM pair over every problem, float32 and bfloat16: what the batched
solver's time is made of), each time, the scaled gradient every answer reaches, per-relation macro-F1 agreement (max |dF1| against each converged set-up; the goal is
<= 0.002), the batched probe's peak memory, optionally the original study's default-tolerance
serial loop (0.7097) and a 7-value C grid with nested inner-CV selection, the batched fit's GEMM floor
and ``batched / floor``, and LAST the ratio ``speedup (best scikit-learn set-up / batched)``.

The floor: every matrix product the batched fit performs is counted by shape, dtype and layout
(`spatial_probing.probes.solver.basis.counting_products`), each distinct shape is timed on this machine
(best of 3) and multiplied by its count, and the eigendecomposition of the set-up is added. Whatever
the fit takes beyond that is elementwise work, indexing and Python: ``batched / floor`` is what a
faster implementation of the same algorithm could still gain, fewer products being the other way.

Every solver is run once untimed on a small slice first, so one-off start-up (thread pools,
joblib's worker processes, first-call dispatch) is not charged to whichever runs first, and then
``--repeats`` times (default 3) on the full problem set: the best time of each set-up counts.
OpenMP keeps its default wait policy: scikit-learn's workers run one BLAS thread each, so a passive
policy would only slow the batched solver's multithreaded products.
"""

from __future__ import annotations

import argparse
import operator
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from extract_speed import bf16_flags  # the sibling benchmark's lscpu reader

from spatial_probing.features.entry import load_entry
from spatial_probing.machine import bf16_supported
from spatial_probing.probes.folds import fold_masks, target_folds
from spatial_probing.probes.metrics import fit_metrics
from spatial_probing.probes.selection import select_C
from spatial_probing.probes.sklearn_ref import fit_sklearn
from spatial_probing.probes.solver import fit_logreg, scaled_gradient_max
from spatial_probing.probes.solver.basis import Basis, Csr, Shape, counting_products
from spatial_probing.tasks.relation_type import RelationType

# the entry `spatial-probing extract --config configs/extract/sbert_mpnet.yaml` writes (any mpnet entry
# of VSR random train under outputs/features), unless named with --features
DEFAULT_FEATURES = os.environ.get("SPATIAL_PROBING_BENCH_FEATURES") or next(
    (str(p.parent) for p in sorted(Path("outputs/features/vsr_random_train").glob("sbert_*mpnet*@text/*/meta.json"))),
    "outputs/features/vsr_random_train")
GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
SETUPS = {"lbfgs": 20000, "newton-cholesky": 100}  # scikit-learn solver -> max_iter (never reached)


def load(entry: Path, min_count: int = 50) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """L2-normalised float32 features, one-vs-rest targets ``[n, T]`` and the relation names."""
    cached = load_entry(entry)
    task = RelationType(min_count=min_count).build(cached.rows)
    X = np.array(cached.features, dtype=np.float32)  # a writable copy of the memory map
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, task.targets, list(task.target_names)


class PeakRSS:
    """Peak resident memory of a block above the memory resident when it starts (Linux ``VmHWM``)."""

    def __enter__(self) -> PeakRSS:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self._status("VmHWM") - self.start

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")


def timed(repeats: int, fn, *args, **kwargs):
    """``fn``'s result and its best wall time over ``repeats`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def gemm_pair_ms(X: np.ndarray, columns: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best time (ms) of ``X @ P`` and ``X.T @ R`` with ``columns`` columns in ``dtype``: one round of
    Hessian-vector products for every problem, the unit the batched solver's cost is made of."""
    gen = torch.Generator().manual_seed(0)
    Z = torch.from_numpy(X).to(dtype)
    P = torch.randn(X.shape[1], columns, generator=gen).to(dtype)
    R = torch.randn(X.shape[0], columns, generator=gen).to(dtype)
    return 1e3 * timed(repeats, lambda: (Z @ P, Z.T @ R))[1]


def product_seconds(counts: dict[Shape, int], repeats: int = 3) -> float:
    """What the counted products take at this machine's rates: each distinct shape (and layout) timed
    once, best of ``repeats``, times the number of its calls; a sparse one (nnz > 0) on a random CSR
    matrix with as many stored entries."""
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for (m, k, n, dtype, transposed, nnz), calls in counts.items():
        if nnz:
            flat = torch.randperm(m * k, generator=gen)[:nnz].sort().values
            index = torch.stack([flat // k, flat % k])
            values = torch.rand(nnz, generator=gen).to(dtype)
            A = Csr.from_coo(torch.sparse_coo_tensor(index, values, (m, k), check_invariants=False))
        else:
            A = torch.randn(*((k, m) if transposed else (m, k)), generator=gen).to(dtype)
            A = A.T if transposed else A
        B = torch.randn(k, n, generator=gen).to(dtype)
        total += calls * timed(repeats, operator.matmul, A, B)[1]
    return total


def product_flop(counts: dict[Shape, int]) -> float:
    """Floating-point operations of the counted products (a sparse one: 2 per stored entry and column)."""
    return sum(2 * (nnz or m * k) * n * calls for (m, k, n, _, _, nnz), calls in counts.items())


def gemm_floor(X: np.ndarray, Y: np.ndarray, train: np.ndarray, **fit_kwargs) -> tuple[float, str]:
    """The batched fit's floor on this machine: its counted products at this machine's rates plus the
    eigendecomposition of its set-up (everything else it does, elementwise work and Python, is left out);
    returns the floor in seconds and a line describing it."""
    with counting_products() as counts:
        fit_logreg(X, Y, train, [1.0], **fit_kwargs)
    t_products = product_seconds(counts)
    used = train.any(axis=(0, 2))
    basis, t_build = timed(3, Basis.build, X, torch.from_numpy(used), fit_kwargs["dtype"])
    gram = torch.from_numpy(np.cov(X[used].T.astype(np.float64)))
    t_eigh = timed(3, lambda: torch.linalg.eigh(gram))[1]
    flop = product_flop(counts)
    line = (
        f"GEMM floor of the batched fit: {sum(counts.values())} products in {len(counts)} shapes "
        f"({flop / 1e9:.1f} GFLOP) take {t_products:.3f} s at this machine's rates, + eigh of the "
        f"{gram.shape[0]} x {gram.shape[0]} Gram matrix {t_eigh:.3f} s = floor {t_products + t_eigh:.3f} s "
        f"(its set-up, Basis.build over {basis.Z.shape[0]} distinct rows: {t_build:.3f} s)"
    )
    return t_products + t_eigh, line


def per_relation_f1(X, Y, test, fit) -> np.ndarray:
    """Macro-F1 per relation, mean over folds: ``[T]``."""
    return fit_metrics(X, Y, test, fit)["f1_macro"][:, 0].mean(0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--features", type=Path, default=Path(DEFAULT_FEATURES), help="feature-cache entry dir"
    )
    parser.add_argument(
        "--solvers", nargs="+", default=list(SETUPS), choices=list(SETUPS),
        help="scikit-learn set-ups to time (newton-cholesky takes several times lbfgs' time)",
    )  # fmt: skip
    parser.add_argument("--skip-grid", action="store_true", help="skip the C-grid timing")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each solver; the best time counts (same for every set-up)")
    parser.add_argument(
        "--skip-default", action="store_true", help="skip the serial default-tolerance loop (the original study's)"
    )
    args = parser.parse_args()

    X, Y, names = load(args.features)
    train, test = fold_masks(target_folds(Y, n_splits=5, seed=42))
    n_jobs = os.cpu_count() or 1
    print(
        f"features: {args.features} {X.shape[0]} x {X.shape[1]}, {len(names)} relations x 5 folds = "
        f"{train.shape[0] * len(names)} problems; torch threads {torch.get_num_threads()}, joblib workers {n_jobs}"
    )
    hvp = torch.bfloat16 if bf16_supported() else torch.float32
    print(f"CPU: {bf16_flags()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    n_problems = train.shape[0] * len(names)
    # The machine's rate for the solver's unit of work, so ratios from different hosts can be compared.
    print(
        f"GEMM pair [{X.shape[0]} x {X.shape[1]}] x [{X.shape[1]} x {n_problems}] and its transpose: float32 "
        f"{gemm_pair_ms(X, n_problems, torch.float32):.1f} ms, bfloat16 {gemm_pair_ms(X, n_problems, torch.bfloat16):.1f} ms "
        f"(native bfloat16: {'yes' if bf16_supported() else 'no'})"
    )
    batched = dict(tol=1e-10, max_iter=100, dtype=hvp)
    X64 = X.astype(np.float64)
    setups = {
        name: dict(solver=name, tol=1e-10, max_iter=SETUPS[name], n_jobs=n_jobs, warm_start=True)
        for name in args.solvers
    }
    warm = slice(0, 2000)
    fit_logreg(X[warm], Y[warm], train[:, warm], [1.0], **batched)
    for kw in setups.values():
        fit_sklearn(X64[warm], Y[warm], train[:, warm, : 2 * n_jobs], [1.0], **kw)

    with PeakRSS() as mem:
        fit_b, t_b = timed(args.repeats, fit_logreg, X, Y, train, [1.0], **batched)
    f1_b = per_relation_f1(X, Y, test, fit_b)
    # graded on the same scale as scikit-learn's: float64 gradient on the original features
    grad_b = float(scaled_gradient_max(X, Y, train, fit_b).max())
    print(
        f"batched ({str(hvp).removeprefix('torch.')} HVPs, float64 gradient test, tol 1e-10): "
        f"mean macro-F1 {f1_b.mean():.4f}  time {t_b:.2f} s  max scaled grad {grad_b:.1e}  "
        f"converged {int(fit_b.converged.sum())}/{fit_b.converged.numel()}  Newton steps mean {fit_b.n_iter.double().mean():.1f}"
    )
    floor, floor_line = gemm_floor(X, Y, train, **batched)
    print(floor_line)
    times, diffs = {}, {}
    for name, kw in setups.items():
        fit_s, times[name] = timed(args.repeats, fit_sklearn, X64, Y, train, [1.0], **kw)
        f1_s = per_relation_f1(X, Y, test, fit_s)
        diffs[name] = np.abs(f1_b - f1_s)
        print(
            f"sklearn {name} (tol 1e-10, joblib {n_jobs} workers x 1 BLAS thread, warm starts across folds): "
            f"mean macro-F1 {f1_s.mean():.4f}  time {times[name]:.1f} s  max scaled grad {fit_s.max_grad:.1e}  "
            f"stopped at max_iter {int(fit_s.stopped_at_cap.sum())}; per-relation |dF1 macro| vs batched: "
            f"max {diffs[name].max():.4f} ({names[int(diffs[name].argmax())]}), max |W diff| "
            f"{float((fit_b.W - fit_s.W).abs().max()):.1e}"
        )
    worst = max(float(d.max()) for d in diffs.values())
    print(f"per-relation |dF1 macro| batched vs converged scikit-learn, max over set-ups: {worst:.4f} (goal <= 0.002)")
    print(
        f"peak memory of the batched probe: {mem.peak / 2**20:.1f} MiB = {mem.peak / X.nbytes:.2f}x "
        f"the feature matrix ({X.nbytes / 2**20:.1f} MiB float32)"
    )
    if not args.skip_default:
        fit_d, t_d = timed(args.repeats, fit_sklearn, X, Y, train, [1.0], max_iter=1000)
        f1_d = per_relation_f1(X, Y, test, fit_d)
        print(
            f"original study (serial lbfgs, default tol 1e-4, max_iter 1000, float32): mean macro-F1 "
            f"{f1_d.mean():.4f}  time {t_d:.1f} s  stopped at max_iter {int(fit_d.stopped_at_cap.sum())}"
        )
    if not args.skip_grid:
        # Selection compares converged probes: at tol 1e-4 large-C fits are still far from their
        # optimum (outer macro-F1 moves by ~0.01), at 1e-6 they agree with the converged ones.
        grid_kw = {**batched, "tol": 1e-6}
        sel, t_g = timed(1, select_C, X, Y, train, test, GRID, inner_splits=5, seed=42, **grid_kw)
        chosen = Counter(sel.best_C.flatten().tolist())
        print(
            f"C grid {[f'{c:g}' for c in GRID]} x nested 5-fold inner CV (batched, tol 1e-6, "
            f"{5 * 6 * len(GRID) * len(names)} problems in one solve): {t_g:.1f} s; chosen C counts "
            f"{dict(sorted(chosen.items()))}; mean outer macro-F1 at the chosen C {sel.selected().mean():.4f}"
        )
    print(f"batched / its GEMM floor: {t_b:.2f} s / {floor:.3f} s = {t_b / floor:.2f}x (goal <= 1.25x)")
    best = min(times, key=times.get)
    print(f"speedup (best scikit-learn set-up, {best} {times[best]:.1f} s / batched {t_b:.2f} s): {times[best] / t_b:.1f}x")


if __name__ == "__main__":
    main()
