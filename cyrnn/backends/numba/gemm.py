"""Matrix products: the own loops, the BLAS policy and the weight-gradient contractions.

Recurrent products run through BLAS (``np.dot`` into preallocated rows, scipy's
OpenBLAS) for batches of several rows, and through own loops for single rows and
tiny shapes (four weight rows per pass; they match or beat the BLAS call there).
:func:`_blas_mode` also keeps OpenBLAS's threads out of the per-step products:
serial mid-sized products (up to ``_THREADED_GEMM_MNK`` multiply-adds) run in row
blocks that OpenBLAS keeps on one thread unless BLAS is single-threaded anyway (as
the Cython backend does: a threaded GEMM per step synchronises every step), and
parallel row blocks use BLAS only if it is single-threaded, else the own loops (a
threaded BLAS nested in the blocks oversubscribes the cores). BLAS's thread count
is read with threadpoolctl (~2 us, only for such calls).

``dW_hh`` is one contraction over all steps after the backward sweep (in
single-thread-sized row blocks below ``_THREADED_GEMM_MNK``), ``db_hh`` and the
peephole gradients float64 sums.
"""

from __future__ import annotations

import numpy as np

from ..._numba_util import njit

from .cells import PEEPHOLE, SPLIT_PRODUCT
from .config import (_BLAS_MIN, _BLAS_MIN_ROW, _JIT, _JIT_ROWS, _SERIAL_GEMM_MNK,
                     _THREADED_GEMM_MNK)

# ----------------------------------------------------------------------------
# Products on a block of rows.
# ----------------------------------------------------------------------------


@njit(**_JIT)
def _mm_nt(a, w, out, lo, hi, blas):
    """``out[lo:hi] = a[lo:hi] @ w.T`` (forward products): BLAS (``blas`` 2: one
    call; 1: row blocks small enough for OpenBLAS to keep on one thread, see
    ``_blas_mode``), or (0) the own loops."""
    if blas:
        step = hi - lo if blas == 2 else max(1, _SERIAL_GEMM_MNK // (w.shape[0] * w.shape[1]))
        for r in range(lo, hi, step):
            e = min(r + step, hi)
            np.dot(a[r:e], w.T, out[r:e])
    else:
        _mm_nt_loops(a, w, out, lo, hi)


@njit(**_JIT_ROWS)
def _mm_nt_loops(a, w, out, lo, hi):
    """``out[lo:hi] = a[lo:hi] @ w.T`` by dot products four weight rows at a time
    (one pass over ``a[i]`` feeds four vectorised accumulators)."""
    K = a.shape[1]
    M = w.shape[0]
    zero = out.dtype.type(0)
    M4 = M - M % 4
    for j in range(0, M4, 4):
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for i in range(lo, hi):
            ai = a[i]
            s0 = s1 = s2 = s3 = zero
            for k in range(K):
                x = ai[k]
                s0 += x * w0[k]
                s1 += x * w1[k]
                s2 += x * w2[k]
                s3 += x * w3[k]
            oi = out[i]
            oi[j] = s0
            oi[j + 1] = s1
            oi[j + 2] = s2
            oi[j + 3] = s3
    for j in range(M4, M):
        wj = w[j]
        for i in range(lo, hi):
            ai = a[i]
            s = zero
            for k in range(K):
                s += ai[k] * wj[k]
            out[i, j] = s


@njit(**_JIT)
def _mm_nn(a, w, out, lo, hi, blas, valid):
    """``out[lo:hi] = a[lo:hi] @ w`` (backward products): BLAS (``blas`` as in
    ``_mm_nt``), or the own loops, which skip invalid rows."""
    if blas:
        step = hi - lo if blas == 2 else max(1, _SERIAL_GEMM_MNK // (w.shape[0] * w.shape[1]))
        for r in range(lo, hi, step):
            e = min(r + step, hi)
            np.dot(a[r:e], w, out[r:e])
    else:
        _mm_nn_loops(a, w, out, lo, hi, valid)


@njit(**_JIT_ROWS)
def _mm_nn_loops(a, w, out, lo, hi, valid):
    """``out[lo:hi] = a[lo:hi] @ w`` for the valid rows, four scaled weight rows
    added at a time (each group of weight rows reused across the block's rows)."""
    M = w.shape[0]
    K = w.shape[1]
    zero = out.dtype.type(0)
    M4 = M - M % 4
    for i in range(lo, hi):
        if valid[i]:
            oi = out[i]
            for k in range(K):
                oi[k] = zero
    for j in range(0, M4, 4):
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for i in range(lo, hi):
            if not valid[i]:
                continue
            oi = out[i]
            a0, a1, a2, a3 = a[i, j], a[i, j + 1], a[i, j + 2], a[i, j + 3]
            for k in range(K):
                oi[k] += (a0 * w0[k] + a1 * w1[k]) + (a2 * w2[k] + a3 * w3[k])
    for j in range(M4, M):
        wj = w[j]
        for i in range(lo, hi):
            if not valid[i]:
                continue
            oi = out[i]
            aj = a[i, j]
            for k in range(K):
                oi[k] += aj * wj[k]


@njit(**_JIT_ROWS)
def _copy_cols(a, c0, c1, out, lo, hi):
    """``out[lo:hi] = a[lo:hi, c0:c1]``: a column block as a contiguous product
    operand (BLAS through ``np.dot`` would copy a strided one, allocating)."""
    for i in range(lo, hi):
        src = a[i, c0:c1]
        dst = out[i]
        for j in range(dst.shape[0]):
            dst[j] = src[j]


@njit(**_JIT_ROWS)
def _add_rows(y, b):
    """``y[i, :] += b`` for every row."""
    for i in range(y.shape[0]):
        yi = y[i]
        for j in range(yi.shape[0]):
            yi[j] += b[j]


# ----------------------------------------------------------------------------
# BLAS policy.
# ----------------------------------------------------------------------------

def _use_blas(N, GHH):
    """0: own loops; else BLAS (see ``_blas_mode``)."""
    work = N * GHH
    return 1 if (work > _BLAS_MIN_ROW or (N > 1 and work >= _BLAS_MIN)) else 0


_use_blas_nb = njit(**_JIT)(_use_blas)  # the same rule, callable from compiled code


@njit(**_JIT)
def _gemm_mode(rows, mk):
    """The ``blas`` flag of ``_mm_nt`` for a ``(rows, k) @ (m, k).T`` product
    (``mk = m * k``) run inside a compiled entry point: ``_blas_mode`` for one
    block, with BLAS taken to be multi-threaded (the threadpoolctl query is
    Python): own loops for tiny products, single-thread-sized row blocks for
    mid-sized ones, else one BLAS call."""
    if not _use_blas_nb(rows, mk):
        return 0
    work = rows * mk
    if _SERIAL_GEMM_MNK < work <= _THREADED_GEMM_MNK:
        return 1
    return 2


def _blas_mode(N, GHH, blocks):
    """The ``blas`` flag of the kernels: 0 own loops; 2 one BLAS call per
    product; 1 BLAS in row blocks of at most ``_SERIAL_GEMM_MNK`` multiply-adds,
    which OpenBLAS runs on one thread (as the Cython backend does): for
    mid-sized products (up to ``_THREADED_GEMM_MNK``) a threaded BLAS costs
    more in synchronisation than it gains, every step, on few or busy cores.
    Parallel row blocks (``blocks > 1``) use BLAS only when it is
    single-threaded (see ``_blas_single_threaded``), else own loops."""
    if not _use_blas(N, GHH):
        return 0
    if blocks > 1:
        return 2 if _blas_single_threaded() else 0
    work = N * GHH
    if _SERIAL_GEMM_MNK < work <= _THREADED_GEMM_MNK and not _blas_single_threaded():
        return 1
    return 2


_blas_controllers = None  # threadpoolctl controllers of the loaded BLAS libraries


def _blas_single_threaded():
    """Whether every loaded BLAS runs on one thread (False when unknown).

    Row blocks call BLAS from inside the parallel region; a multi-threaded
    BLAS there would put ``blocks x BLAS threads`` threads on the cores
    (measured 3-6x slower than serial on 2 cores), so the blocks then use the
    own loops instead.
    """
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_controllers = [c for c in ThreadpoolController().lib_controllers
                                 if c.user_api == "blas"]
        except Exception:  # noqa: BLE001 - threadpoolctl missing or failing
            _blas_controllers = []
    if not _blas_controllers:
        return False
    return all(c.get_num_threads() == 1 for c in _blas_controllers)


# ----------------------------------------------------------------------------
# Weight-gradient contractions.
# ----------------------------------------------------------------------------

@njit(**_JIT)
def _contract(code, ch, cc, cax, dxp, dgh, dw, db, dpeep):
    """After the sweep: ``dw = sum_t dgh_t^T hin_t`` over all steps, ``db = sum
    dgh`` (float64 accumulation) and, for a peephole LSTM, ``dpeep`` (p_i, p_f:
    gate gradients times ``c_{t-1}``; p_o: times ``c_t``; ``dgh`` is ``dxp``
    there). Cho's GRU: the n block's recurrent input is ``r * h`` (the cache's aux).

    ``dw`` is computed in row blocks of at most ``_SERIAL_GEMM_MNK``
    multiply-adds each, which OpenBLAS runs on one thread, unless the whole
    product exceeds ``_THREADED_GEMM_MNK`` (then one threaded call): OpenBLAS
    threads mid-sized GEMMs poorly on few, busy cores.
    """
    T, N, GH = dgh.shape
    H = dw.shape[1]
    TN = T * N
    d2 = dgh.reshape((TN, GH))
    d2t = np.ascontiguousarray(d2.T)  # (GH, TN): row blocks of dw are row blocks of it
    split = SPLIT_PRODUCT[code]
    for part in range(2 if split else 1):
        r0 = 0 if part == 0 else 2 * H
        r1 = (2 * H if split else GH) if part == 0 else GH
        src = (ch[:T] if part == 0 else cax).reshape((TN, H))
        rows = r1 - r0
        if rows * H * TN > _THREADED_GEMM_MNK:
            step = rows
        else:
            step = max(1, _SERIAL_GEMM_MNK // (H * TN))
        for r in range(r0, r1, step):
            e = min(r + step, r1)
            np.dot(d2t[r:e], src, dw[r:e])
    acc = np.zeros(GH, np.float64)
    for r in range(TN):
        d2r = d2[r]
        for j in range(GH):
            acc[j] += d2r[j]
    for j in range(GH):
        db[j] = acc[j]
    if PEEPHOLE[code]:
        p = np.zeros((3, H), np.float64)
        p_i, p_f, p_o = p[0], p[1], p[2]
        for t in range(T):
            for n in range(N):
                d = dxp[t, n]
                d_i, d_f, d_o = d[:H], d[H:2 * H], d[3 * H:]
                c_prev = cc[t, n]
                c_new = cc[t + 1, n]
                for j in range(H):
                    p_i[j] += d_i[j] * c_prev[j]
                    p_f[j] += d_f[j] * c_prev[j]
                    p_o[j] += d_o[j] * c_new[j]
        for k in range(3):
            for j in range(H):
                dpeep[k, j] = p[k, j]


@njit(**_JIT)
def _acc_nt(grad, off, a, b):
    """``grad[off:].reshape(M, K) += a^T b`` for ``a`` (R, M), ``b`` (R, K)."""
    prod = np.dot(a.T, b)
    M, K = prod.shape
    g = grad[off:off + M * K]
    p = prod.reshape(M * K)
    for k in range(M * K):
        g[k] += p[k]


@njit(**_JIT)
def _acc_colsum(grad, off, a):
    """``grad[off:off + M] += a.sum(0)`` (float64 accumulation) for ``a`` (R, M)."""
    R, M = a.shape
    acc = np.zeros(M, np.float64)
    for i in range(R):
        ai = a[i]
        for j in range(M):
            acc[j] += ai[j]
    for j in range(M):
        grad[off + j] += acc[j]
