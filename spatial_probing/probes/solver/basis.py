"""The feature matrix as every problem of one fit reads it: distinct used rows, centred, rotated.

``Z = (X_u - mu) V`` in the eigenbasis of the centred Gram matrix (`Basis.build`), or for sparse
features (the n-gram baselines) ``Z = X_u - mu`` in the original coordinates, held as CSR with the
centring applied in each product; with the products the Newton loop needs at each precision, and the
helpers that read rows of X (numpy, memory map or torch; any float dtype) and bound the threads a
small operation runs on.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from threading import Lock

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
# Features with at most this fraction of nonzero entries, and at least SPARSE_MIN_COLUMNS columns, are
# held sparse: a CSR product of the word n-grams (17 stored entries per row, 2,327 columns) takes 4-9 ms
# where the rotated dense one (1,801 directions) takes 50 ms, and no eigendecomposition is needed. With
# fewer columns the rotated products cost little and the eigenbasis conditions CG better: the
# relation-masked n-grams (616 columns) took 9.9 Newton steps on average held sparse, 5.3 rotated.
SPARSE = 0.05
SPARSE_MIN_COLUMNS = 1024


# (m, k, n, dtype, transposed, nnz) of an [m, k] x [k, n] product; transposed: A is a transposed view;
# nnz: A's stored entries when it is sparse (CSR), 0 when dense
Shape = tuple[int, int, int, torch.dtype, bool, int]
_PRODUCTS: ContextVar[Counter[Shape] | None] = ContextVar("solver_products", default=None)
_COUNTING = Lock()


def held_sparse(nnz: int, rows: int, columns: int) -> bool:
    """Whether features of ``rows x columns`` with ``nnz`` nonzero entries are multiplied as CSR (`SPARSE`)."""
    return columns >= SPARSE_MIN_COLUMNS and nnz <= SPARSE * rows * columns


def as_tensor(a: ArrayLike) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


@contextmanager
def counting_products() -> Iterator[Counter[Shape]]:
    """Count every matrix product the solver performs inside the block, by shape and dtype.

    ``benchmarks/probe_speed.py`` times each counted shape at this machine's rates: the sum is the
    fit's GEMM floor, what it would take if nothing but its products cost time.
    """
    counts: Counter[Shape] = Counter()
    token = _PRODUCTS.set(counts)
    try:
        yield counts
    finally:
        _PRODUCTS.reset(token)


def matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B`` (A may be batched: its leading axes count as rows), counted when `counting_products` is on."""
    counts = _PRODUCTS.get()
    if counts is not None:
        sparse = isinstance(A, Csr)
        transposed = not sparse and A.ndim == 2 and A.stride(0) == 1 and A.shape[1] > 1
        m = A.shape[0] if sparse else A.numel() // A.shape[-1]
        nnz = A.nnz if sparse else 0
        with _COUNTING:  # the solver's worker threads share one counter
            counts[(m, A.shape[-1], B.shape[-1] if B.ndim > 1 else 1, A.dtype, transposed, nnz)] += 1
    return A @ B


def csr(coo: torch.Tensor) -> torch.Tensor:
    """A COO tensor as CSR, without torch's one "CSR support is in beta" notice (not the user's concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return coo.coalesce().to_sparse_csr()


class Csr:
    """A sparse matrix in CSR beside its transpose, also in CSR: torch multiplies CSR by a dense matrix
    several times faster than the CSC a transposed view would be, so ``Z.T @ R`` reads the stored copy."""

    def __init__(self, A: torch.Tensor, At: torch.Tensor | None = None):
        self.A = A
        self.At = csr(A.to_sparse_coo().t()) if At is None else At
        self._copies: dict[torch.dtype, Csr] = {}

    @classmethod
    def from_coo(cls, coo: torch.Tensor) -> Csr:
        """A sparse COO tensor (duplicates summed) as `Csr`."""
        return cls(csr(coo))

    shape = property(lambda self: self.A.shape)
    dtype = property(lambda self: self.A.dtype)
    device = property(lambda self: self.A.device)
    nnz = property(lambda self: int(self.A.values().numel()))
    T = property(lambda self: Csr(self.At, self.A))

    def to(self, dtype: torch.dtype) -> Csr:
        """This matrix in ``dtype``; the copy is kept, as the float64 one serves every certification."""
        if dtype == self.dtype:
            return self
        if dtype not in self._copies:
            self._copies[dtype] = Csr(self.A.to(dtype), self.At.to(dtype))
        return self._copies[dtype]

    def __matmul__(self, M: torch.Tensor) -> torch.Tensor:
        return self.A @ M

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """Columns ``idx`` as a dense ``[m, len(idx)]`` tensor."""
        return self.At.to_dense()[idx].T


@dataclass
class Basis:
    """The distinct used rows of X, centred and rotated: ``Z = (X_u - mu) V``.

    Rows with identical features are merged (their weights add up per label), which leaves every
    objective unchanged: VSR repeats each caption and image across rows. ``row_of[i]`` is row
    i's index in Z, -1 for rows no problem trains on (they may hold NaN, e.g. a failed image).
    Z is stored in float64 or float32 (the problems are defined on these values); ``Zh`` is the
    copy the Hessian-vector products read: Z itself, or a bfloat16 copy.

    Wide sparse features (at most `SPARSE` of the entries nonzero: the word n-gram baseline) keep their
    original coordinates instead (``V`` None): Z holds the uncentred rows as `Csr` and every product
    subtracts the centring, so a product reads the stored entries (17 per row for the word n-grams,
    not the 1,801 of the rotated dense rows). The preconditioner then takes its exact block in the
    columns of largest variance (`lead_index`), as the dense basis does in its leading eigenvectors.
    """

    Z: torch.Tensor | Csr  # [u, r] dense; sparse: [u, d] uncentred rows
    Zh: torch.Tensor | Csr  # [u, r] Z, or Z in bfloat16 (dense only)
    mu: torch.Tensor  # [d] float64
    V: torch.Tensor | None  # [d, r] float64: the r directions the rows vary in; None: original coordinates
    lam: torch.Tensor  # [r] float64: eigenvalues of the count-weighted centred Gram matrix (sparse: its diagonal)
    row_of: torch.Tensor  # [n] int64
    n_rows: int  # rows behind Z, with multiplicity
    block: int  # rows per float64 block product when Z is stored in lower precision
    V32: torch.Tensor | None = None  # V in float32, for `original_gradient`

    @classmethod
    def build(
        cls,
        X: ArrayLike,
        used: torch.Tensor,
        dtype: torch.dtype,
        block: int = 1024,
        layout: str = "auto",
        low_min_entries: int = 0,
    ) -> Basis:
        """Merge, centre and rotate X in row blocks; Z (and its bfloat16 copy) are the only full-size copies.

        ``dtype`` is the HVP precision: bfloat16 stores Z in float32 plus a bfloat16 copy (dense
        only, and only where Z has at least ``low_min_entries`` entries: smaller ones multiply at
        float32). ``layout``: ``"dense"`` (rotated), ``"sparse"`` (original coordinates, CSR) or
        ``"auto"``, sparse where at most `SPARSE` of the used rows' entries are nonzero and X has at
        least `SPARSE_MIN_COLUMNS` columns.
        """
        if layout not in ("auto", "dense", "sparse"):
            raise ValueError(f"layout must be 'auto', 'dense' or 'sparse', got {layout!r}")
        dev = used.device
        rows = torch.nonzero(used).squeeze(1).cpu().numpy()
        first, inverse = _distinct_rows(X, rows, block)
        counts = torch.bincount(torch.as_tensor(inverse, device=dev), minlength=len(first)).double()
        row_of = torch.full((used.numel(),), -1, dtype=torch.int64, device=dev)
        row_of[torch.as_tensor(rows, device=dev)] = torch.as_tensor(inverse, device=dev)

        def blocks():  # (slice of Z's rows, their features as float64)
            for i in range(0, len(first), block):
                yield slice(i, i + block), rows64(X, first[i : i + block], dev)

        n_rows = float(counts.sum())
        mu, sq, nnz = torch.zeros(X.shape[1], dtype=torch.float64, device=dev), 0.0, 0
        for sl, xb in blocks():
            mu += (counts[sl, None] * xb).sum(0)
            sq += (counts[sl, None] * xb * xb).sum(0)
            nnz += int(torch.count_nonzero(xb))
        mu /= n_rows
        store = torch.float32 if dtype == torch.bfloat16 else dtype
        common = dict(mu=mu, row_of=row_of, n_rows=int(n_rows), block=block)
        sparse = held_sparse(nnz, len(first), X.shape[1])
        if layout == "sparse" or (layout == "auto" and sparse):
            parts = [(sl.start, xb.to(store).to_sparse()) for sl, xb in blocks()]
            index = torch.cat([c.indices() + torch.tensor([[start], [0]], device=dev) for start, c in parts], 1)
            values = torch.cat([c.values() for _, c in parts])
            Z = Csr.from_coo(torch.sparse_coo_tensor(index, values, (len(first), X.shape[1]), check_invariants=False))
            # the diagonal of the count-weighted centred Gram matrix: sum_i c_i x_ij^2 - n mu_j^2
            return cls(Z=Z, Zh=Z, V=None, lam=(sq - n_rows * mu * mu).clamp_min(0), **common)
        # float32 products suffice: the Gram matrix only sets the basis (orthogonal to float64
        # precision whatever its accuracy, as eigh runs in float64) and the preconditioner's scale.
        gram = sum(
            matmul(((xb - mu) * counts[sl, None].sqrt()).float().T, ((xb - mu) * counts[sl, None].sqrt()).float())
            for sl, xb in blocks()
        )
        lam, V = _eigh(gram.double())
        # Directions the used rows do not vary in (identical columns, as n-grams that always occur
        # together; eigenvalue at float64 rounding) carry no loss: the optimum's weight there is 0, so
        # the problems are solved without them (the masked n-gram baseline keeps 287 of 616).
        null = lam <= lam.max() * len(lam) * torch.finfo(torch.float64).eps
        null[-1] = False  # at least one direction, even for constant features
        lam, V = lam[~null], V[:, ~null]
        Z = torch.empty(len(first), len(lam), dtype=store, device=dev)
        for sl, xb in blocks():
            Z[sl] = matmul(xb - mu, V).to(store)
        Zh = Z.to(dtype) if Z.numel() >= low_min_entries else Z
        return cls(Z=Z, Zh=Zh, V=V, lam=lam.clamp_min(0), V32=V.float(), **common)

    @property
    def vec_dtype(self) -> torch.dtype:
        """Precision of CG's vectors: Z's (bfloat16 is only ever the matrix side of a product)."""
        return self.Z.dtype

    def hz(self, P: torch.Tensor, stored: torch.Tensor | None = None) -> torch.Tensor:
        """``Z @ P`` at HVP precision, returned in `vec_dtype`; the columns ``stored`` marks at Z's own precision."""
        return self._hvp(self._zm, P, stored)

    def htz(self, R: torch.Tensor, stored: torch.Tensor | None = None) -> torch.Tensor:
        """``Z.T @ R`` at HVP precision, returned in `vec_dtype`; the columns ``stored`` marks at Z's own precision."""
        return self._hvp(self._ztm, R, stored)

    def _zm(self, Z: torch.Tensor | Csr, M: torch.Tensor) -> torch.Tensor:
        """``Z @ M`` for a stored copy of Z, the centring applied where Z holds uncentred sparse rows."""
        out = matmul(Z, M)
        return out if self.V is not None else out - (self.mu.to(M.dtype) @ M)

    def _ztm(self, Z: torch.Tensor | Csr, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` for a stored copy of Z, the centring applied where Z holds uncentred sparse rows."""
        out = matmul(Z.T, R)
        return out if self.V is not None else out - self.mu.to(R.dtype)[:, None] * R.sum(0)

    def _hvp(self, product, M: torch.Tensor, stored: torch.Tensor | None) -> torch.Tensor:
        """``product(Zh, M)``, except the columns ``stored`` marks, which get ``product(Z, M)``: badly
        conditioned problems, whose CG stalls on bfloat16's rounding (see `newton._pcg`)."""
        if self.Zh is self.Z or stored is None or not bool(stored.any()):
            return product(self.Zh, M.to(self.Zh.dtype)).to(self.Z.dtype)
        if bool(stored.all()):
            return product(self.Z, M)
        here, there = torch.nonzero(stored).squeeze(1), torch.nonzero(~stored).squeeze(1)
        exact = product(self.Z, columns(M, here))
        out = exact.new_empty(exact.shape[0], M.shape[1])
        set_columns(out, here, exact)
        set_columns(out, there, product(self.Zh, columns(M, there).to(self.Zh.dtype)))
        return out

    def mm(self, B: torch.Tensor) -> torch.Tensor:
        """``Z @ B`` at Z's precision, as float64 (B float64)."""
        return self._zm(self.Z, B.to(self.Z.dtype)).double()

    def tmm(self, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` at Z's precision, as float64 (R float64)."""
        return self._ztm(self.Z, R.to(self.Z.dtype)).double()

    def mm64(self, B: torch.Tensor) -> torch.Tensor:
        """``Z @ B`` in float64 (Z's stored values, upcast block by block)."""
        if self.Z.dtype == torch.float64 or self.V is None:
            return self._zm(self.Z.to(torch.float64), B)
        out = torch.empty(self.Z.shape[0], B.shape[1], dtype=torch.float64, device=B.device)
        for i in range(0, self.Z.shape[0], self.block):
            out[i : i + self.block] = matmul(self.Z[i : i + self.block].double(), B)
        return out

    def tmm64(self, R: torch.Tensor) -> torch.Tensor:
        """``Z.T @ R`` in float64 (Z's stored values, upcast block by block)."""
        if self.Z.dtype == torch.float64 or self.V is None:
            return self._ztm(self.Z.to(torch.float64), R)
        out = torch.zeros(self.Z.shape[1], R.shape[1], dtype=torch.float64, device=R.device)
        for i in range(0, self.Z.shape[0], self.block):
            out += matmul(self.Z[i : i + self.block].double().T, R[i : i + self.block])
        return out

    def lead_index(self, k: int) -> slice | torch.Tensor:
        """The ``k`` coordinates of largest variance, where the preconditioner is exact (eigh sorts ascending)."""
        d = self.Z.shape[1]
        return slice(d - k, d) if self.V is not None else torch.argsort(self.lam, stable=True)[d - k :]

    def lead_columns(self, k: int) -> torch.Tensor:
        """Z's columns `lead_index` (k), dense: ``[u, k]``."""
        idx = self.lead_index(k)
        return self.Z[:, idx] if self.V is not None else self.Z.columns(idx) - self.mu[idx].to(self.Z.dtype)

    def to_original(self, W: torch.Tensor) -> torch.Tensor:
        """Weights ``[..., r]`` in Z's coordinates to the original features' ``[..., d]``."""
        return W if self.V is None else matmul(W, self.V.T)

    def original_gradient(self, gw: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        """Gradient ``[r, P]`` in Z's coordinates to the original features' ``[d, P]``: ``V g_u + mu g_b``, in float32.

        It only feeds the stopping test (its largest entry against ``tol``), where float32's relative rounding
        (6e-8 of entries no larger than the gradient's own) is immaterial; float64 took twice as long, once
        per Newton step of every problem.
        """
        gw32, gb32 = gw.float(), gb.float()
        return (gw32 if self.V32 is None else matmul(self.V32, gw32)) + self.mu.float()[:, None] * gb32

    def merge(self, A: torch.Tensor) -> torch.Tensor:
        """Per-row ``[P, n]`` weights (one problem per row) summed onto Z's rows: ``[u, P]``."""
        used = torch.nonzero(self.row_of >= 0).squeeze(1)
        if len(used) < A.shape[1]:  # rows no problem trains on (row_of -1) add nothing
            A = A.index_select(1, used)
        out = torch.zeros(A.shape[0], self.Z.shape[0], dtype=A.dtype, device=A.device)
        return out.index_add_(1, self.row_of[used], A).T


class BasisCache:
    """`Basis.build` kept for the next fit of the same rows of the same features.

    A probe module fits one feature matrix more than once over the same rows: the task's nested C selection
    and its control task's (same features, other labels), then their MDL blocks (both over the same
    prefixes). Each build merges, centres and eigendecomposes X (0.15-0.3 s on VSR): the credibility table
    of one encoder builds 6 bases instead of 8. Entries are keyed by the content of X and of the used rows
    (SHA-256 of their bytes: ~12 ms for 7680 x 768 float32), never by identity, so an edited or reloaded
    matrix gets its own basis; the least recently used entry leaves beyond ``max_entries``.
    """

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._kept: OrderedDict[tuple, Basis] = OrderedDict()

    def build(self, X: ArrayLike, used: torch.Tensor, dtype: torch.dtype, **kwargs) -> Basis:
        """`Basis.build` ``(X, used, dtype, **kwargs)``, or the kept basis of the same arguments."""
        key = (content_key(X), content_key(used), str(dtype), str(used.device), tuple(sorted(kwargs.items())))
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        basis = Basis.build(X, used, dtype, **kwargs)
        self._kept[key] = basis
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)
        return basis


def content_key(a: ArrayLike) -> tuple[tuple[int, ...], str, bytes]:
    """Key of an array by its content (numpy, memory map or torch): its shape, dtype and the SHA-256 of its
    bytes. Caches of results computed from arrays (`BasisCache`, `folds.stratified_folds`) key on it, never
    on identity, so an edited or reloaded array gets its own entry."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu().contiguous()
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
    else:
        data = np.ascontiguousarray(a)
    return tuple(data.shape), str(a.dtype).removeprefix("torch."), hashlib.sha256(data).digest()


def columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[..., idx]``: the problems ``idx`` (indices, or a mask over the last axis) of a state array.

    A gather over the flattened leading axes: on row-major ``[rows, problems]`` arrays advanced
    indexing of the last axis copies element by element, 4-6x slower (measured: [3762, 445] float64,
    4.5 ms against 1.2 ms); the working set is compacted so at nearly every Newton step.
    """
    if idx.dtype == torch.bool:
        idx = torch.nonzero(idx).squeeze(1)
    flat = x.reshape(-1, x.shape[-1])
    return torch.gather(flat, 1, idx.expand(flat.shape[0], -1)).reshape(*x.shape[:-1], len(idx))


def set_columns(x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
    """``x[..., idx] = values`` in place (``x`` contiguous) as a scatter, for the reason `columns` gives."""
    flat = x.view(-1, x.shape[-1])
    flat.scatter_(1, idx.expand(flat.shape[0], -1), values.reshape(flat.shape[0], -1).to(x.dtype))


def rows64(X: ArrayLike, idx: np.ndarray, dev: torch.device) -> torch.Tensor:
    """Rows ``idx`` of X (numpy, memory map or torch; any float dtype) as a float64 tensor."""
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(idx, device=X.device)].to(dev, torch.float64)
    return torch.from_numpy(np.asarray(X[idx], dtype=np.float64)).to(dev)


def _distinct_rows(X: ArrayLike, rows: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct feature vectors among ``rows``: (a representative row of each, index of each row's).

    Rows are grouped by a random projection and every member is then checked bitwise against
    its group's representative; a row that differs (a projection tie) stays on its own, so the
    merge is exact whatever the hash does.
    """
    proj = torch.from_numpy(np.random.default_rng(0).standard_normal(X.shape[1]))
    h = np.concatenate(
        [
            matmul(rows64(X, rows[i : i + block], torch.device("cpu")), proj).numpy()
            for i in range(0, len(rows), block)
        ]
    )
    _, rep_pos, group = np.unique(h, return_index=True, return_inverse=True)
    rep = rep_pos[group]  # position (in rows) of each row's representative
    dup = np.flatnonzero(rep != np.arange(len(rows)))  # only these need the bitwise check
    cpu = torch.device("cpu")
    same = np.concatenate(
        [np.zeros(0, dtype=bool)]
        + [
            (rows64(X, rows[dup[i : i + block]], cpu) == rows64(X, rows[rep[dup[i : i + block]]], cpu)).all(1).numpy()
            for i in range(0, len(dup), block)
        ]
    )
    rep[dup[~same]] = dup[~same]
    first_pos, inverse = np.unique(rep, return_inverse=True)
    return rows[first_pos], inverse


@contextmanager
def threads(n: int):
    """Run a block on ``n`` CPU threads. Small operations gain nothing from more, and on cores
    shared with other processes each multithreaded operation can stall for a scheduler quantum."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eigh(gram: torch.Tensor, threaded_from: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh``, multithreaded only for matrices of ``threaded_from`` rows or more.

    Measured on 2 cores: d = 768 takes 0.08-0.15 s either way, but a multithreaded eigensolver
    stalls for seconds when other processes hold the cores; d = 2,327 (the n-gram baseline) takes
    5-6 s on one thread and 3 s on two, a gain worth that risk.
    """
    with threads(torch.get_num_threads() if gram.shape[0] >= threaded_from else 1):
        return torch.linalg.eigh(gram)
