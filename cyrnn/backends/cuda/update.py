"""Optimizer updates and gradient clipping on the device (device-resident training,
:mod:`.resident`).

One thread per parameter, the operations of :mod:`cyrnn.optim`'s NumPy reference
(``_sgd_update``, ``_rmsprop_update``, ``_adam_update``, ``clip_by_value``,
``clip_by_global_norm``) in the same order, with the scalars the reference derives
on the host (``-lr``, ``1 - alpha``, the bias corrections) derived the same way on
the host and passed in the parameters' type, as NumPy casts a Python float against
a float32 array. Built per float type (``KERNELS[dtype name]``), so the float32
updates compute in float32. The squared norm of global-norm clipping is summed in
float64 whatever the gradient's type, as the reference does (``sumsq``, one kernel
for both types: the one place a float32 gradient meets float64 arithmetic).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .config import THREADS

# Blocks of the squared-norm reduction (partial sums come back: a few values).
NORM_BLOCKS = 32


def _make(F):
    ZERO = F(0)  # comparisons against an int literal would convert to float64

    @cuda.jit(device=True, inline=True)
    def _lerp(start, end, w, w1, low):
        """``start + w (end - start)`` with torch.lerp's two branches (``_lerp``;
        ``w1 = w - 1`` and ``low = |w| < 0.5`` computed on the host, as there)."""
        tmp = end - start
        if low:
            return start + tmp * w
        return end + tmp * w1

    @cuda.jit
    def sgd(param, grad, buf, lr_neg, momentum, one_minus_damp, damp, nesterov, wd, first):
        """``_sgd_update`` (``buf`` empty without momentum)."""
        k = cuda.grid(1)
        if k < param.shape[0]:
            g = grad[k]
            if wd != ZERO:
                g = grad[k] + param[k] * wd
            d = g
            if momentum != ZERO:
                if first:
                    b = g
                else:
                    b = buf[k] * momentum
                    if damp:
                        b = b + g * one_minus_damp
                    else:
                        b = b + g
                buf[k] = b
                d = g + b * momentum if nesterov else b
            param[k] = param[k] + d * lr_neg

    @cuda.jit
    def rmsprop(param, grad, sq, gavg, buf, lr_neg, alpha, one_minus_alpha, w1, low, eps,
                momentum, centered, wd):
        """``_rmsprop_update`` (``gavg`` empty unless centered, ``buf`` without momentum)."""
        k = cuda.grid(1)
        if k < param.shape[0]:
            g = grad[k]
            if wd != ZERO:
                g = grad[k] + param[k] * wd
            s = sq[k] * alpha + g * one_minus_alpha * g
            sq[k] = s
            if centered:
                m = _lerp(gavg[k], g, one_minus_alpha, w1, low)
                gavg[k] = m
                avg = math.sqrt(s - m * m)
            else:
                avg = math.sqrt(s)
            avg = avg + eps
            if momentum > ZERO:
                b = buf[k] * momentum + g / avg
                buf[k] = b
                param[k] = param[k] + b * lr_neg
            else:
                param[k] = param[k] + (g * lr_neg) / avg

    @cuda.jit
    def adam(param, grad, m1, m2, mx, one_minus_b1, w1, low, beta2, one_minus_b2, step_neg,
             bc2_sqrt, eps, wd, amsgrad):
        """``_adam_update`` (``mx`` empty unless amsgrad)."""
        k = cuda.grid(1)
        if k < param.shape[0]:
            g = grad[k]
            if wd != ZERO:
                g = grad[k] + param[k] * wd
            m = _lerp(m1[k], g, one_minus_b1, w1, low)
            m1[k] = m
            v = m2[k] * beta2 + g * one_minus_b2 * g
            m2[k] = v
            if amsgrad:
                v = max(mx[k], v)
                mx[k] = v
            denom = math.sqrt(v) / bc2_sqrt + eps
            param[k] = param[k] + (m * step_neg) / denom

    @cuda.jit
    def clip_value(grad, c):
        """``clip_by_value``: ``grad`` into ``[-c, c]`` (NaN stays NaN)."""
        k = cuda.grid(1)
        if k < grad.shape[0]:
            g = grad[k]
            if g > c:
                grad[k] = c
            elif g < -c:
                grad[k] = -c

    @cuda.jit
    def scale(grad, coef):
        """``grad *= coef`` (global-norm clipping)."""
        k = cuda.grid(1)
        if k < grad.shape[0]:
            grad[k] *= coef

    return dict(sgd=sgd, rmsprop=rmsprop, adam=adam, clip_value=clip_value, scale=scale)


KERNELS = {"float32": _make(np.float32), "float64": _make(np.float64)}


@cuda.jit
def sumsq(grad, partial):
    """``partial[b]``: block ``b``'s float64 sum of ``grad[k]^2`` over a grid-stride
    loop, reduced through (dynamic) shared memory."""
    acc = cuda.shared.array(0, numba.float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for k in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
        v = numba.float64(grad[k])
        s += v * v
    acc[tid] = s
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            acc[tid] += acc[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = acc[0]


def launch(name, dtype, n, *args):
    """Launch update kernel ``name`` of ``dtype`` on ``n`` threads."""
    if n > 0:
        KERNELS[np.dtype(dtype).name][name][math.ceil(n / THREADS), THREADS](*args)


def global_norm(d_grad):
    """The L2 norm of the device array ``d_grad`` (float64 sums; the partial sums of
    ``NORM_BLOCKS`` blocks come back and are added on the host)."""
    blocks = max(1, min(NORM_BLOCKS, math.ceil(d_grad.shape[0] / THREADS)))
    partial = cuda.device_array(blocks, np.float64)
    sumsq[blocks, THREADS, 0, THREADS * 8](d_grad, partial)
    return math.sqrt(float(partial.copy_to_host().sum()))
