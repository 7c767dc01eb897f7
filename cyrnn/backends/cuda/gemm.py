"""Products of the CUDA backend: one tiled GEMM kernel, the column sums and the
peephole contractions of the weight gradients.

``gemm`` computes ``C[m, p] = sum_k A(m, k) B(k, p) (+ bias[p]) (+ beta C[m, p])`` for
operands given as flat arrays with an offset and a stride per index, so one kernel
serves every layout: the per-step products of the tiled path (``h W_hh^T``,
``dg W_hh``), ``dW_hh`` (one contraction over all ``T N`` rows after the sweep, as the
contract says) and, through the backend's ``matmul`` hook, the layer path's input
projection of all steps, ``dW_ih`` and ``dx``. Each block computes a ``TILE x TILE`` tile of ``C``, staging tiles of ``A``
and ``B`` through (dynamic) shared memory. Built per float type (``KERNELS[dtype name]``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .config import TILE


def _make(F, NF):
    """``(gemm, colsum, peep_grad)`` for one float type (``F`` its NumPy scalar type,
    ``NF`` its Numba type)."""
    ZERO = F(0)

    @cuda.jit
    def gemm(M, P, K, A, a0, sam, sak, B, b0, sbk, sbp, C, c0, scm, beta, bias, bias0,
             has_bias):
        """``C[c0 + m scm + p] = sum_k A[a0 + m sam + k sak] B[b0 + k sbk + p sbp]
        [+ bias[bias0 + p]] [+ beta C[...]]`` for ``m < M``, ``p < P`` (``C`` is read
        only when ``beta != 0``)."""
        # the two tiles in dynamic shared memory (2 TILE^2 values, sized at launch); the
        # simulator allocates a static shared array per thread on a racy first touch
        tiles = cuda.shared.array(0, NF)
        B0 = TILE * TILE
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        # rows on grid x (up to 2^31 - 1 blocks; grid y stops at 65,535, which the
        # layer path's T * N rows would pass), columns on grid y
        m = cuda.blockIdx.x * TILE + ty
        p = cuda.blockIdx.y * TILE + tx
        acc = ZERO
        for k0 in range(0, K, TILE):
            k = k0 + tx
            tiles[ty * TILE + tx] = A[a0 + m * sam + k * sak] if m < M and k < K else ZERO
            k = k0 + ty
            tiles[B0 + ty * TILE + tx] = B[b0 + k * sbk + p * sbp] if k < K and p < P else ZERO
            cuda.syncthreads()
            for kk in range(TILE):
                acc += tiles[ty * TILE + kk] * tiles[B0 + kk * TILE + tx]
            cuda.syncthreads()
        if m < M and p < P:
            if has_bias:
                acc += bias[bias0 + p]
            if beta != ZERO:
                acc += beta * C[c0 + m * scm + p]
            C[c0 + m * scm + p] = acc

    @cuda.jit
    def colsum(A, out):
        """``out[g] = sum_k A[k, g]`` (``db_hh``)."""
        g = cuda.grid(1)
        if g < A.shape[1]:
            acc = ZERO
            for k in range(A.shape[0]):
                acc += A[k, g]
            out[g] = acc

    @cuda.jit
    def peep_grad(dgh, c, N, out):
        """The peephole gradients: ``out[q, j] = sum_k dgh[k, gate_q H + j] c[k + s_q, j]``
        over the ``T N`` rows ``k`` of ``dgh``, with gates i, f, o (0, 1, 3) and ``c`` the
        ``((T + 1) N, H)`` cell states (``s_q`` = 0 for i and f: ``c_{t-1}``; ``N`` for o:
        ``c_t``)."""
        idx = cuda.grid(1)
        H = c.shape[1]
        if idx < 3 * H:
            q = idx // H
            j = idx - q * H
            col = (3 if q == 2 else q) * H + j
            shift = N if q == 2 else 0
            acc = ZERO
            for k in range(dgh.shape[0]):
                acc += dgh[k, col] * c[k + shift, j]
            out[q, j] = acc

    return gemm, colsum, peep_grad


KERNELS = {"float32": _make(np.float32, numba.float32),
           "float64": _make(np.float64, numba.float64)}


def _flat(a):
    return a.reshape(a.size)


def matmul(M, P, K, A, a, B, b, C, c, bias=None, bias0=0, beta=0.0):
    """Launch ``gemm`` on device arrays: ``a = (offset, stride_m, stride_k)`` of ``A``,
    ``b = (offset, stride_k, stride_p)`` of ``B``, ``c = (offset, stride_m)`` of ``C``."""
    kernel = KERNELS[str(C.dtype)][0]
    grid = (math.ceil(M / TILE), math.ceil(P / TILE))
    fc = _flat(C)
    kernel[grid, (TILE, TILE), 0, 2 * TILE * TILE * C.dtype.itemsize](
        M, P, K, _flat(A), *a, _flat(B), *b, fc, *c, C.dtype.type(beta),
        fc if bias is None else _flat(bias), bias0, int(bias is not None))


def weight_grad(dgh, hin, dw, row0, col0, rows):
    """``dw[row0:row0 + rows] = dgh[:, col0:col0 + rows]^T hin`` (device arrays, ``dgh``
    (T N, G H), ``hin`` (T N, H), ``dw`` (G H, H))."""
    GH, H = dgh.shape[1], hin.shape[1]
    matmul(rows, H, dgh.shape[0], dgh, (col0, 1, GH), hin, (0, H, 1), dw, (row0 * H, H))
