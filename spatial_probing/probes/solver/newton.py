"""Truncated Newton-CG over a streaming working set of problems (the solver's inner loop).

Per problem: a few preconditioned CG steps on the Newton system with the intercept eliminated, a
backtracking line search, an exact Newton step on the intercept alone; converged problems leave the
working set and queued ones enter (`solve`). Warm starts (`Init`) come from the union anchors
(`anchor_bank`) or from solved parent folds.
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextvars import copy_context
from dataclasses import dataclass
from functools import partial
from threading import Lock

import torch

from spatial_probing.probes.solver.basis import Basis, columns, set_columns
from spatial_probing.probes.solver.objective import Problems, Solved, loss, loss_derivatives, loss_slope
from spatial_probing.probes.solver.preconditioner import LEAD, Preconditioner, lead_blocks

SLOW_AFTER = 3  # Newton steps after which a problem counts as slow (see `_pcg`)
MIN_WORKER_WIDTH = 112  # problems a worker's working set holds at least: narrower GEMMs re-read Z for little work


@dataclass
class _Active:
    """State of the problems being iterated (float64 unless noted); the last axis is the problem."""

    ids: torch.Tensor  # [A] index into the flat problem order
    W: torch.Tensor  # [d, A] rotated weights
    b: torch.Tensor  # [A]
    m: torch.Tensor  # [u, A] margins Z W + b
    ap: torch.Tensor  # [u, A] weight of the positive rows
    a: torch.Tensor  # [u, A] weight of every row, positive plus negative (kept instead of the negatives')
    C: torch.Tensor  # [A]
    scale: torch.Tensor  # [A] C * sum of weights: scikit-learn's loss scaling
    steps: torch.Tensor  # [A] Newton steps taken
    lead: torch.Tensor  # [k, k, A] HVP dtype: leading curvature block (see Preconditioner)
    lead_dsum: torch.Tensor  # [A] HVP dtype: sum(D) it was taken at; 0 = none (cold start)
    exact: torch.Tensor  # [A] bool: gradients and margin updates in float64 (see `solve`)
    gprev: torch.Tensor  # [A] scaled gradient max at the previous step (inf at the start)
    stored: torch.Tensor  # [A] bool: HVPs at Z's own precision, not bfloat16 (see `_pcg`)

    FIELDS = (
        "ids", "W", "b", "m", "ap", "a", "C", "scale", "steps", "lead", "lead_dsum", "exact", "gprev", "stored"
    )

    def select(self, keep: torch.Tensor) -> _Active:
        """The problems ``keep`` (indices) of the working set."""
        return _Active(*(columns(getattr(self, k), keep) for k in self.FIELDS))

    def join(self, other: _Active) -> _Active:
        return _Active(*(torch.cat([getattr(self, k), getattr(other, k)], -1) for k in self.FIELDS))


@dataclass
class Init:
    """Warm starts: from the union anchors (``*_a``, by ``anchor_key``) or from solved folds
    (``*_f``, by ``parent_key``, -1 for none); leading blocks always from the anchors. A start's margins
    ``Z W + b`` come with it (a fold's rows are not in them, so an anchor's or parent's answer has the
    same margins for every problem it starts): no product at admission."""

    W_a: torch.Tensor  # [d, nC * T]
    b_a: torch.Tensor  # [nC * T]
    m_a: torch.Tensor  # [u, nC * T] margins of the anchors, float64
    lead: torch.Tensor  # [k, k, nC * T]
    lead_dsum: torch.Tensor  # [nC * T]
    W_f: torch.Tensor  # [d, F * nC * T]
    b_f: torch.Tensor  # [F * nC * T]
    m_f: torch.Tensor  # [u, K] margins of the solved problems that are parents
    m_col: torch.Tensor  # [F * nC * T] column of m_f holding a solved problem's margins (-1: none kept)
    anchor_key: torch.Tensor  # [N]
    parent_key: torch.Tensor  # [N]


def anchor_bank(basis: Basis, union: Problems, anchor: Solved) -> dict[str, torch.Tensor]:
    """Anchor weights and the leading curvature blocks at them, for `Init`."""
    d = basis.Z.shape[1]
    W_a, b_a = anchor.Wrot.reshape(-1, d).T, anchor.brot.reshape(-1)
    ap, an = union.weights(torch.arange(len(union), device=W_a.device))
    m_a = basis.mm64(W_a) + b_a
    _, D = loss_derivatives(m_a, ap, ap + an)
    D = D.to(basis.vec_dtype)
    return {"W_a": W_a, "b_a": b_a, "m_a": m_a, "lead": lead_blocks(basis, D, min(LEAD, d)), "lead_dsum": D.sum(0)}


def solve(
    basis: Basis,
    problems: Problems,
    init,
    tol: float,
    max_iter: int,
    capacity: int,
    workers: int | None = None,
    keep_margins: bool = False,
) -> Solved:
    """Truncated Newton on every problem, ``capacity`` at a time, streaming, on ``workers`` threads.

    Converged problems leave the working set and queued ones take their place, so GEMMs keep
    their width until the queue is empty instead of a chunk idling on its slowest problem.
    ``init`` is None (cold starts) or an `Init`. With ``workers`` > 1 each worker thread iterates a
    working set of its own (``capacity / workers`` wide) on ``threads / workers`` CPU threads, taking
    problems from one shared queue (`_Queue`); None: `default_workers`. ``keep_margins`` also returns every
    answer's margins ``[u, N]`` (`Solved.margins`), to start the problems whose parents these are.

    Precision: with Z in float32, gradients and margin updates are float32 GEMMs accumulated
    into float64 margins. For tolerances below 1e-7 a problem whose gradient passes the test, or
    stops falling (float32's rounding floor), is then certified in float64: its margins are recomputed
    and its gradient retaken from Z's values upcast; if that fails it continues with float64
    products (``exact``) from there.
    """
    u, d = basis.Z.shape
    N, dev = len(problems), basis.Z.device
    out = _Out(
        W=torch.zeros(d, N, dtype=torch.float64, device=dev),
        b=torch.zeros(N, dtype=torch.float64, device=dev),
        n_iter=torch.zeros(N, dtype=torch.int64, device=dev),
        converged=torch.zeros(N, dtype=torch.bool, device=dev),
        grad_max=torch.full((N,), float("inf"), dtype=torch.float64, device=dev),
        m=torch.empty(u, N, dtype=torch.float64, device=dev) if keep_margins else None,
    )
    workers = max(1, min(default_workers(N, capacity, dev) if workers is None else workers, N))
    queue = _Queue(_order(problems.shape, capacity, dev), workers)
    run = partial(_iterate, basis, problems, init, tol, max_iter, max(1, capacity // workers), queue, out)
    if workers == 1:
        run()
    else:
        per = max(1, torch.get_num_threads() // workers)
        with ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(copy_context().run, _on_threads, per, run) for _ in range(workers)]
            try:
                wait(jobs, return_when=FIRST_EXCEPTION)
                for job in jobs:
                    if job.done() and job.exception() is not None:
                        raise job.exception()
            except BaseException:  # a worker's error, or Ctrl-C: the others stop at their next Newton step
                queue.cancelled = True
                raise
    return problems.solved(out.W, out.b, out.n_iter, out.converged, out.grad_max, out.m)


def default_workers(n_problems: int, capacity: int, device: torch.device) -> int:
    """Worker threads for ``n_problems`` on a CPU: one per intra-op thread, as long as each keeps a working
    set of at least `MIN_WORKER_WIDTH` problems (of at most ``capacity`` in all); one on other devices.

    Each worker runs its own working set on one thread instead of every operation splitting over all of them:
    the many small elementwise operations of a Newton step then pay no OpenMP fork/join (a passive wait policy
    makes each one a sleep and a wake-up), while a GEMM on one thread keeps its per-core rate (bfloat16 and
    float32 alike, measured). Measured on 2 cores with the CLI's passive policy: the credibility table's four
    nested selections 47 s against 55 s, its MDL solves (360 problems each) 2.4 s against 2.9 s, the union
    anchors of its selections (252 problems each, 126-wide halves) 4.2-4.6 s against 6.5-6.8 s for the four;
    the original protocol's 180 problems split in two (90 wide) took 0.73-0.80 s against 0.68-0.71 s for one
    working set, so below two minimum widths a fit keeps one worker.
    """
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), min(n_problems, capacity) // MIN_WORKER_WIDTH))


@dataclass
class _Out:
    """Every problem's answer so far, written by whichever worker iterates it (disjoint columns)."""

    W: torch.Tensor  # [d, N]
    b: torch.Tensor  # [N]
    n_iter: torch.Tensor
    converged: torch.Tensor
    grad_max: torch.Tensor
    m: torch.Tensor | None  # [u, N] margins of the answers, where kept


class _Queue:
    """The problems not yet admitted to a working set, handed out in ``order`` to whichever worker has room.

    One shared queue rather than a fixed split: problems differ in cost (large C takes several times the
    Newton steps), so a worker that finishes its share early takes more instead of idling.
    """

    def __init__(self, order: torch.Tensor, workers: int):
        self.order, self.n, self.next, self.workers, self.lock = order, len(order), 0, workers, Lock()
        self.cancelled = False  # set when the solve is abandoned: every worker returns at its next step

    def take(self, room: int, capacity: int) -> torch.Tensor | None:
        """Up to ``room`` problems, if that is worth a join (a quarter of ``capacity``, or all that are
        left); at most a worker's share of all of them, so a short queue is split evenly."""
        with self.lock:
            share = min(-(-self.n // self.workers), self.n - self.next)
            if not share or room < min(capacity // 4, share):
                return None
            start, self.next = self.next, self.next + min(room, share)
            return self.order[start : self.next]


def _order(shape: tuple[int, int, int], capacity: int, device: torch.device) -> torch.Tensor:
    """The order in which the flat (fold, C, target) problems are handed out.

    While they stream (more than ``capacity``): (C descending, fold, target). A working set then holds one
    C, so its problems finish together and it keeps its width (interleaving the C values cost the nested
    selections' inner levels 15-20%), and the costliest problems (large C: the most Newton steps) go first,
    leaving a level's end, where one worker may already be idle, to quick ones (the credibility table's
    selection levels ended with one core idle for 2.2-2.3 s in all in flat order, 1.2-1.6 s in this one).
    When every problem is admitted at once, the split between workers is final, so each share mixes the
    C values: (fold, target, C) order (in flat order the first worker took the union anchors' small C
    values and finished at 0.9 s, the other the large ones at 1.9 s).
    """
    flat = torch.arange(shape[0] * shape[1] * shape[2], device=device).view(shape)
    if flat.numel() > capacity:
        return flat.transpose(0, 1).flip(0).reshape(-1)
    return flat.transpose(1, 2).reshape(-1)


def _on_threads(n: int, fn):
    """``fn()`` with this thread's intra-op parallelism set to ``n`` (OpenMP's setting is per thread)."""
    torch.set_num_threads(n)
    return fn()


def _iterate(basis: Basis, problems: Problems, init, tol, max_iter, capacity, queue: _Queue, out: _Out) -> None:
    """One worker's Newton loop: admit problems from ``queue``, iterate them, write answers to ``out``."""
    # Below 1e-7 the test itself needs float64 products (float32 rounding of a sum over rows).
    certify = tol < 1e-7 and basis.Z.dtype != torch.float64
    state = None
    while not queue.cancelled:
        room = capacity - (0 if state is None else len(state.ids))
        take = queue.take(room, capacity)
        if take is not None:
            new = _start(basis, problems, take, init)
            state = new if state is None else state.join(new)
        if state is None:
            break
        r, D, gw, gb, gmax = _gradient(basis, state)
        if certify:
            # A Newton step cuts the gradient by far more than 4x; where the float32 one stops
            # falling it has met its rounding floor (W + C Z^T r, two terms ~|W| that cancel).
            check = ((gmax <= tol) | (gmax > 0.25 * state.gprev)) & ~state.exact
            if bool(check.any()):
                state.exact |= check
                cols = torch.nonzero(check).squeeze(1)
                state.m[:, cols] = basis.mm64(state.W[:, cols]) + state.b[cols]
                r[:, cols], D[:, cols], gw[:, cols], gb[cols], gmax[cols] = _gradient(basis, state, cols)
        ids = state.ids
        state.gprev = gmax
        set_columns(out.W, ids, state.W)
        out.b[ids], out.n_iter[ids], out.grad_max[ids] = state.b, state.steps, gmax
        ok = gmax <= tol
        out.converged[ids[ok]] = True
        done = ok | (state.steps >= max_iter)
        if bool(done.any()):
            if out.m is not None:
                finished = torch.nonzero(done).squeeze(1)
                set_columns(out.m, ids[finished], columns(state.m, finished))
            keep = torch.nonzero(~done).squeeze(1)
            state, D, gw, gb, gmax = state.select(keep), columns(D, keep), columns(gw, keep), gb[keep], gmax[keep]
            if not len(state.ids):
                state = None
                continue
        # The last steps need only tol / |g| of relative residual, not the quadratic-rate sqrt(|g|).
        gnorm = torch.sqrt((gw * gw).sum(0) + gb * gb)
        eta = torch.clamp(torch.maximum(torch.sqrt(gmax), 0.5 * tol * state.scale / gnorm), max=0.1)
        sw_, sb_, zs = _pcg(basis, D.to(basis.vec_dtype), state, gw, gb, eta)
        del D
        if zs is None:  # CG's products were bfloat16: the step's margins at Z's precision
            zs = basis.mm(sw_) + sb_
        if bool(state.exact.any()):  # margins of the step in float64, so they never drift from Z W + b
            cols = torch.nonzero(state.exact).squeeze(1)
            zs[:, cols] = basis.mm64(sw_[:, cols]) + sb_[cols]
        t = _line_search(state, sw_, sb_, zs, gw, gb)
        # Near the optimum a convex problem takes the full Newton step; one that is still cut back
        # this late has a bad direction, which on the encoders' features does not happen: bfloat16's
        # rounding stalled its CG (the masked n-grams at large C), so it goes on at Z's precision.
        state.stored |= (state.steps >= SLOW_AFTER) & (t < 1)
        _polish_intercept(state)
        state.steps += 1


def _gradient(basis: Basis, state: _Active, cols: torch.Tensor | None = None):
    """Loss derivatives ``r, D [u, P]``, gradient ``gw [d, P], gb [P]`` and scaled max ``[P]`` of
    the problems ``cols`` (all: None); float64 products where the problem is ``exact``."""
    sel = slice(None) if cols is None else cols
    W, m, C, exact = state.W[:, sel], state.m[:, sel], state.C[sel], state.exact[sel]
    r, D = loss_derivatives(m, state.ap[:, sel], state.a[:, sel])
    if bool(exact.all()):
        zr = basis.tmm64(r)
    else:
        zr = basis.tmm(r)
        if bool(exact.any()):
            zr[:, exact] = basis.tmm64(r[:, exact])
    gw = W + C * zr
    gb = C * r.sum(0)
    return r, D, gw, gb, _orig_grad_max(basis, gw, gb) / state.scale[sel]


def _start(basis: Basis, problems: Problems, idx: torch.Tensor, init: Init | None) -> _Active:
    """Working state of newly admitted problems: weights, and a cold or warm start."""
    ap, an = problems.weights(idx)
    C = problems.C[idx]
    a = ap + an
    dev, dt, k = ap.device, basis.vec_dtype, min(LEAD, basis.Z.shape[1])
    if init is None:
        W = torch.zeros(basis.Z.shape[1], len(idx), dtype=torch.float64, device=dev)
        # The intercept's optimum at w = 0 (features are centred): the weighted log-odds. Starting
        # there puts the curvature of rare positives at the right scale.
        b = torch.log(ap.sum(0) / an.sum(0))
        m = b.expand_as(ap).clone()
        lead = torch.zeros(k, k, len(idx), dtype=dt, device=dev)
        lead_dsum = torch.zeros(len(idx), dtype=dt, device=dev)
    else:
        ka, kp = init.anchor_key[idx], init.parent_key[idx]
        W, b, m = columns(init.W_a, ka), init.b_a[ka].clone(), columns(init.m_a, ka)
        child = torch.nonzero(kp >= 0).squeeze(1)
        if len(child):
            set_columns(W, child, columns(init.W_f, kp[child]))
            b[child] = init.b_f[kp[child]]
            set_columns(m, child, columns(init.m_f, init.m_col[kp[child]]))
        lead, lead_dsum = columns(init.lead, ka), init.lead_dsum[ka]
    steps = torch.zeros(len(idx), dtype=torch.int64, device=dev)
    exact = torch.full((len(idx),), basis.Z.dtype == torch.float64, device=dev)
    gprev = torch.full((len(idx),), float("inf"), dtype=torch.float64, device=dev)
    stored = torch.zeros(len(idx), dtype=torch.bool, device=dev)
    return _Active(idx, W, b, m, ap, a, C, C * a.sum(0), steps, lead, lead_dsum, exact, gprev, stored)


def _orig_grad_max(basis: Basis, gw: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Max abs gradient in the original coordinates: d/dw = V g_u + mu g_b, d/db = g_b."""
    g = basis.original_gradient(gw, gb)
    return torch.maximum(g.abs().amax(0).double(), gb.abs())


def _pcg(basis: Basis, D, state: _Active, gw, gb, eta, cg_max: int = 6, cg_slow: int = 24):
    """Per-problem preconditioned CG on the Newton system with the intercept eliminated.

    The Hessian is ``[[A, c], [c^T, h]]`` with ``A = I + C Z^T D Z``, ``c = C Z^T D 1`` and
    ``h = C sum(D)``; CG runs on the Schur complement ``A - c c^T / h`` with its vectors in Z's
    dtype and its products at HVP precision (`Basis.hz`), and the intercept step follows
    exactly. Problems whose residual is small enough drop out of the GEMMs (a few slow problems
    would otherwise keep every column iterating). A problem gets ``cg_max`` iterations per Newton
    step, ``cg_slow`` once it has taken `SLOW_AFTER` steps: a problem still going by then is badly
    conditioned (large C on nearly separable, duplicated rows such as the masked n-gram baseline),
    where short CG runs give poor directions and Newton crawls (60+ steps at C = 1e4 with 6 iterations,
    12 with 24). A problem marked ``stored`` (past `SLOW_AFTER` steps, its line search cut a Newton
    step back, see `solve`: the masked n-grams at large C, where bfloat16's rounding stalls CG and
    Newton took several times float32's steps) takes its products at Z's own precision; the encoders'
    slow problems keep bfloat16, at the same steps as float32, so only the stalled ones pay float32's rate. Returns
    the float64 step and ``Z s_w + s_b``, accumulated from CG's products (so it costs no GEMM) when they are in Z's precision, else
    None (bfloat16 products would put their rounding into the margins).
    """
    dt = basis.vec_dtype
    Cq = state.C.to(dt)
    h = Cq * D.sum(0)
    slow, stored = state.steps >= SLOW_AFTER, state.stored
    c = Cq * basis.htz(D, stored)
    precond = Preconditioner(basis, D, Cq, c, h, state.lead, state.lead_dsum)
    x = torch.zeros_like(c)
    zx = torch.zeros_like(D) if basis.Zh is basis.Z else None
    r = (-gw + c.double() * (gb / h.double())).to(dt)
    target = eta.to(dt) * torch.sqrt((r * r).sum(0))
    idx = torch.arange(len(h), device=D.device)  # the problems still iterating
    Da, ca, ha, Ca, ra = D, c, h, Cq, r
    z = precond(ra, idx)
    p = z
    rz = (ra * z).sum(0)
    budget = torch.where(slow, cg_slow, cg_max)
    for it in range(int(budget.max())):
        sa = stored[idx]
        q = basis.hz(p, sa)
        Sp = p + Ca * basis.htz(Da * q, sa) - ca * ((ca * p).sum(0) / ha)
        alpha = rz / (p * Sp).sum(0)
        x.index_add_(1, idx, alpha * p)
        if zx is not None:
            zx.index_add_(1, idx, alpha * q)
        ra = ra - alpha * Sp
        set_columns(r, idx, ra)
        going = (torch.sqrt((ra * ra).sum(0)) > target[idx]) & (budget[idx] > it + 1)
        if not bool(going.all()):
            if not bool(going.any()):
                break
            going = torch.nonzero(going).squeeze(1)
            idx, p, rz, ra = idx[going], columns(p, going), rz[going], columns(ra, going)
            Da, ca, ha, Ca = columns(D, idx), columns(c, idx), h[idx], Cq[idx]
        z = precond(ra, idx)
        rz_new = (ra * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    x = x.double()
    xb = -(gb + (c.double() * x).sum(0)) / h.double()
    return x, xb, None if zx is None else zx.double() + xb


def _line_search(state: _Active, sw_, sb_, zs, gw, gb, c1: float = 1e-4, max_halvings: int = 30) -> torch.Tensor:
    """Per-problem backtracking from the full Newton step; updates ``state`` in place, returns the step lengths.

    A step is accepted when the objective's slope along the direction is still <= 0 there (the
    problem is convex, so the objective decreased all the way), or on Armijo's sufficient
    decrease. The slope test is what works near the optimum, where objective differences drown
    in rounding but the slope, a sum of small terms, does not.
    """
    W, m, C = state.W, state.m, state.C
    slope = (gw * sw_).sum(0) + gb * sb_
    wsw, sws = (W * sw_).sum(0), (sw_ * sw_).sum(0)
    t = torch.ones_like(gb)
    pending = torch.ones_like(gb, dtype=torch.bool)
    idx = torch.arange(len(t), device=t.device)  # problems still searching: only their columns are touched
    base = torch.full_like(t, float("nan"))  # loss at t = 0, computed only where Armijo's test runs
    for _ in range(max_halvings):
        whole = len(idx) == len(t)  # all columns: the arrays themselves, not copies
        ap, a, zi, mi = (v if whole else columns(v, idx) for v in (state.ap, state.a, zs, m))
        ti = t[idx]
        trial = torch.addcmul(mi, zi, ti)
        slope_t = wsw[idx] + ti * sws[idx] + C[idx] * loss_slope(trial, ap, a).mul_(zi).sum(0)
        up = slope_t > 0
        if bool(up.any()):  # Armijo only where the slope test failed: the loss costs two softplus passes
            j, tj = idx[up], ti[up]
            new = j[torch.isnan(base[j])]
            base[new] = loss(*(columns(v, new) for v in (m, state.ap, state.a))).sum(0)
            delta = tj * wsw[j] + 0.5 * tj * tj * sws[j] + C[j] * (
                loss(columns(trial, up), columns(state.ap, j), columns(state.a, j)).sum(0) - base[j]
            )
            up[up.clone()] = delta > c1 * tj * slope[j]
        pending[idx] = up
        idx = idx[up]
        if not len(idx):
            break
        t[idx] *= 0.5
    t = torch.where(pending, torch.zeros_like(t), t)  # no decrease at all: rounding floor, stay
    state.W = W + t * sw_
    state.b = state.b + t * sb_
    m.addcmul_(zs, t)
    return t


def _polish_intercept(state: _Active, steps: int = 1) -> None:
    """A few exact 1-D Newton steps on the intercept alone (elementwise work only), in place.

    Its gradient sums the margin changes of every row, so it is the component a Newton step
    predicts worst; fixing it costs no GEMM.
    """
    for _ in range(steps):
        r, D = loss_derivatives(state.m, state.ap, state.a)
        step = -r.sum(0) / D.sum(0)
        state.b = state.b + step
        state.m += step
