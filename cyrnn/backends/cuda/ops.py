"""Elementwise and gather/scatter kernels of the fused calls (:mod:`.fused`) and of
device-resident training (:mod:`.resident`): the steps between the ops of a model
that are neither a time loop nor a product.

Each kernel does what the Numba backend's fused runner does on the host side of an
op, in the same order of floating point operations where an order exists: the time
reversal of a bidirectional op's reverse direction, the merge of its two directions
and its gradient, dropout, the embedding lookup and its (ordered, per-column)
scatter-add, column sums added into the gradient buffer. One thread per element
(the scatter-add: per embedding column, looping over steps and rows in the Numba
backend's order, so no atomics and a deterministic sum). Built per float type
(``KERNELS[dtype name]``), so float32 kernels hold no float64 constant.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..spec import MERGE_CONCAT, MERGE_MUL, MERGE_SUM
from .config import THREADS


@cuda.jit(device=True, inline=True)
def _tij(k, N, H):
    """``(t, i, j)`` of the flat index ``k`` of a (T, N, H) array."""
    t = k // (N * H)
    r = k - t * N * H
    i = r // H
    return t, i, r - i * H


def _make(F):
    ZERO, HALF = F(0), F(0.5)

    @cuda.jit
    def fill(a, value):
        """``a[k] = value`` (a flat array)."""
        k = cuda.grid(1)
        if k < a.shape[0]:
            a[k] = value

    @cuda.jit
    def reverse_time(src, dst):
        """``dst[t] = src[T - 1 - t]`` ((T, M) arrays)."""
        k = cuda.grid(1)
        T, M = src.shape
        if k < T * M:
            t = k // M
            j = k - t * M
            dst[t, j] = src[T - 1 - t, j]

    @cuda.jit
    def merge(mode, a, b, out):
        """``out[t] = merge(a[t], b[T-1-t])`` (``a``, ``b`` (T, N, H), ``b`` in
        reversed time; ``out`` (T, N, W)): concat (``a`` first), sum, mul, ave."""
        T, N, H = a.shape
        k = cuda.grid(1)
        if k < T * N * H:
            t, i, j = _tij(k, N, H)
            x = a[t, i, j]
            y = b[T - 1 - t, i, j]
            if mode == MERGE_CONCAT:
                out[t, i, j] = x
                out[t, i, H + j] = y
            elif mode == MERGE_SUM:
                out[t, i, j] = x + y
            elif mode == MERGE_MUL:
                out[t, i, j] = x * y
            else:
                out[t, i, j] = (x + y) * HALF

    @cuda.jit
    def unmerge(mode, d, dout, a, b, dst, add):
        """The gradient of ``merge`` on direction ``d``'s sequence, in that direction's
        time order, written (``add`` 0) or added into ``dst`` (T, N, H)."""
        T, N, H = a.shape
        k = cuda.grid(1)
        if k < T * N * H:
            t, i, j = _tij(k, N, H)
            td = t if d == 0 else T - 1 - t
            if mode == MERGE_CONCAT:
                g = dout[t, i, d * H + j]
            elif mode == MERGE_SUM:
                g = dout[t, i, j]
            elif mode == MERGE_MUL:
                g = dout[t, i, j] * (b[T - 1 - t, i, j] if d == 0 else a[t, i, j])
            else:
                g = dout[t, i, j] * HALF
            if add:
                dst[td, i, j] += g
            else:
                dst[td, i, j] = g

    @cuda.jit
    def mul_into(a, m):
        """``a[k] *= m[k]`` (flat arrays; dropout and its gradient)."""
        k = cuda.grid(1)
        if k < a.shape[0]:
            a[k] *= m[k]

    @cuda.jit
    def add_into(dst, off, src):
        """``dst[off + k] += src[k]`` (flat arrays)."""
        k = cuda.grid(1)
        if k < src.shape[0]:
            dst[off + k] += src[k]

    @cuda.jit
    def colsum_into(A, dst, off):
        """``dst[off + g] += sum_k A[k, g]`` (a bias gradient into the gradient buffer)."""
        g = cuda.grid(1)
        if g < A.shape[1]:
            acc = ZERO
            for k in range(A.shape[0]):
                acc += A[k, g]
            dst[off + g] += acc

    @cuda.jit
    def gather(table, off, ids, out):
        """``out[t N + i, j] = table[off + ids[i, t] E + j]``: the embedding lookup into
        time-major rows (``ids`` (N, T), ``out`` (T N, E))."""
        N, T = ids.shape
        E = out.shape[1]
        k = cuda.grid(1)
        if k < T * N * E:
            row = k // E
            j = k - row * E
            t = row // N
            i = row - t * N
            out[row, j] = table[off + ids[i, t] * E + j]

    @cuda.jit
    def scatter_add(grad, off, ids, src):
        """``grad[off + ids[i, t] E + j] += src[t N + i, j]``, one thread per column
        ``j`` looping over steps and rows in order (the Numba backend's sum order)."""
        N, T = ids.shape
        E = src.shape[1]
        j = cuda.grid(1)
        if j < E:
            for t in range(T):
                for i in range(N):
                    grad[off + ids[i, t] * E + j] += src[t * N + i, j]

    return dict(fill=fill, reverse_time=reverse_time, merge=merge, unmerge=unmerge,
                mul_into=mul_into, add_into=add_into, colsum_into=colsum_into, gather=gather,
                scatter_add=scatter_add)


KERNELS = {"float32": _make(np.float32), "float64": _make(np.float64)}


def launch(name, dtype, n, *args):
    """Launch kernel ``name`` of ``dtype`` on ``n`` threads (one per element)."""
    if n > 0:
        KERNELS[np.dtype(dtype).name][name][math.ceil(n / THREADS), THREADS](*args)


def zeros(shape, dtype):
    """A device array of zeros (filled on the device: nothing is copied in)."""
    a = cuda.device_array(shape, dtype)
    launch("fill", dtype, a.size, a.reshape(a.size), np.dtype(dtype).type(0))
    return a
