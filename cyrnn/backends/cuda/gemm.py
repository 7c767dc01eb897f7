"""Whole-sequence products of the CUDA backend: a tiled GEMM kernel and the
column sums and peephole contractions of the weight gradients.

Built per float type (``KERNELS[dtype name]``). ``gemm_tn`` computes ``C[c0 + m, p] = sum_k A[k, a0 + m] B[k, p]`` for ``m < M``:
with ``A`` the ``(T N, G H)`` gate gradients and ``B`` the ``(T N, H)`` recurrent
inputs it is ``dW_hh`` (one contraction after the sweep, as the contract says).
Each block computes a ``TILE x TILE`` tile of ``C``, staging tiles of ``A`` and ``B``
through shared memory.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .config import TILE


def _make(F, NF):
    """``(gemm_tn, colsum, peep_grad)`` for one float type (``F`` its NumPy scalar
    type, ``NF`` its Numba type)."""
    ZERO = F(0)

    @cuda.jit
    def gemm_tn(A, a0, M, B, C, c0):
        As = cuda.shared.array((TILE, TILE), NF)
        Bs = cuda.shared.array((TILE, TILE), NF)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        p = cuda.blockIdx.x * TILE + tx
        m = cuda.blockIdx.y * TILE + ty
        K = A.shape[0]
        P = B.shape[1]
        acc = ZERO
        for k0 in range(0, K, TILE):
            # As[kk, mm] = A[k0 + kk, a0 + m-tile + mm]; Bs[kk, pp] = B[k0 + kk, p-tile + pp]
            ka = k0 + ty
            ma = cuda.blockIdx.y * TILE + tx
            As[ty, tx] = A[ka, a0 + ma] if ka < K and ma < M else ZERO
            Bs[ty, tx] = B[ka, p] if ka < K and p < P else ZERO
            cuda.syncthreads()
            for kk in range(TILE):
                acc += As[kk, ty] * Bs[kk, tx]
            cuda.syncthreads()
        if m < M and p < P:
            C[c0 + m, p] = acc

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

    return gemm_tn, colsum, peep_grad


KERNELS = {"float32": _make(np.float32, numba.float32),
           "float64": _make(np.float64, numba.float64)}


def weight_grad(dgh, hin, dw, row0, col0, rows):
    """``dw[row0:row0 + rows] = dgh[:, col0:col0 + rows]^T hin`` (device arrays)."""
    kernel = KERNELS[str(dgh.dtype)][0]
    grid = (math.ceil(hin.shape[1] / TILE), math.ceil(rows / TILE))
    kernel[grid, (TILE, TILE)](dgh, col0, rows, hin, dw, row0)
