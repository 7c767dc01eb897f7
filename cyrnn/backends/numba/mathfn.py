"""Math functions: exp, sigmoid, tanh without libm, and activations by code.

``exp`` (Cody-Waite reduction, Cephes rational (float64) / polynomial (float32)
core, exponent bits for ``2**n``), ``sigmoid`` and ``tanh`` (Taylor polynomial
below 0.1) are plain arithmetic, so LLVM vectorises the loops over them (libm's
scalar ``tanh``/``exp`` cost 5-17 ns per element, these about 1-2 ns). Max error
vs NumPy about 3 ulp (float64) and 2 ulp (float32); NaN and inf propagate.

The activations of :data:`cyrnn.cells.ACTIVATION_TABLE` are applied by code
(:func:`act_sum`, :func:`act_to`, :func:`activate`, :func:`act_mul`) and differentiated through
their output (:func:`dact_to`) on a block of rows and columns per call (a call
per row costs more than the work at small sizes); each branches on the code
outside its loops over the columns, so every loop still vectorises.
Loops run on 1-D views indexed from 0 (a loop index of unknown sign over a 2-D
array makes Numba's negative-index handling block vectorisation).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ..._numba_util import njit

from ...cells import ACT_HARD_SIGMOID, ACT_RELU, ACT_SIGMOID, ACT_TANH
from .config import _FN_OPTS, _JIT_ROWS

# ----------------------------------------------------------------------------
# exp(x) for x <= 0: x = n ln2 + r (ln 2 split in two constants), exp(r) by
# Cephes' rational (float64) or polynomial (float32) approximation, 2**n built
# from the exponent bits. Max relative error about 1e-15 (float64), 2e-7
# (float32). Arguments below -708 (float64) / -87 (float32) give the smallest
# normal number instead of a denormal or 0; NaN propagates.
# ----------------------------------------------------------------------------


def _expm(x):  # pragma: no cover - typed by the overload below
    """exp(x) for x <= 0."""
    raise NotImplementedError


def _expm64(x):
    x = -708.0 if x < -708.0 else x  # NaN passes through
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 0.693145751953125
    r = r - n * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
          + 2.27265548208155028766e-1) * rr + 2.0
    e = 1.0 + 2.0 * px / (qx - px)
    return e * np.int64((np.int64(n) + 1023) << 52).view(np.float64)


_f32 = np.float32


def _expm32(x):
    x = _f32(-87.0) if x < _f32(-87.0) else x
    n = np.floor(x * _f32(1.44269504088896341) + _f32(0.5))
    r = x - n * _f32(0.693359375)
    r = r + n * _f32(2.12194440e-4)
    p = (((((_f32(1.9875691500e-4) * r + _f32(1.3981999507e-3)) * r + _f32(8.3334519073e-3))
           * r + _f32(4.1665795894e-2)) * r + _f32(1.6666665459e-1)) * r + _f32(5.0000001201e-1))
    e = p * (r * r) + r + _f32(1.0)
    return e * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


@overload(_expm, jit_options=_FN_OPTS)
def _expm_overload(x):
    if x == types.float64:
        return _expm64
    if x == types.float32:
        return _expm32
    return None


@njit(**_FN_OPTS)
def _sigmoid(x, one):
    """Logistic function from exp(-|x|) only, as scipy's expit."""
    e = _expm(-abs(x))
    s = one / (one + e)
    return s if x >= 0 else e * s


def _tanh_taylor(x):  # pragma: no cover - typed by the overload below
    """tanh(x) for |x| < 0.1."""
    raise NotImplementedError


def _tanh_taylor64(x):
    x2 = x * x
    return x + x * x2 * (-0.33333333333333333 + x2 * (0.13333333333333333 + x2 * (
        -0.053968253968253968 + x2 * (0.021869488536155203 + x2 * (
            -0.0088632355299021966 + x2 * 0.0035921280365724810)))))


def _tanh_taylor32(x):
    x2 = x * x
    return x + x * x2 * (_f32(-0.33333333) + x2 * (_f32(0.13333333) + x2 * _f32(-0.053968254)))


@overload(_tanh_taylor, jit_options=_FN_OPTS)
def _tanh_taylor_overload(x):
    if x == types.float64:
        return _tanh_taylor64
    if x == types.float32:
        return _tanh_taylor32
    return None


@njit(**_FN_OPTS)
def _tanh(x, one):
    """sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); for |x| < 0.1, where
    1 - e cancels, the Taylor polynomial keeps the relative accuracy."""
    ax = abs(x)
    e = _expm(-(ax + ax))
    t = np.copysign((one - e) / (one + e), x)
    return _tanh_taylor(x) if ax < 0.1 else t


@njit(**_FN_OPTS)
def _relu(x, zero):
    return zero if x <= zero else x  # NaN passes, as np.maximum


@njit(**_FN_OPTS)
def _hard_sigmoid(x, one, zero):
    """Keras 3's ``clip(x / 6 + 1/2, 0, 1)`` (in the dtype of ``one``); NaN passes,
    as np.clip."""
    three = one + one + one
    a = x / (three + three) + one / (one + one)
    a = zero if a < zero else a
    return one if a > one else a


# ----------------------------------------------------------------------------
# Activations by code (the rows of cyrnn.cells.ACTIVATION_TABLE) on the columns
# c0:c1 of the rows lo:hi of 2-D arrays: one call per gate block and step, the
# branch on the code outside the loops over the columns.
# ----------------------------------------------------------------------------

@njit(**_JIT_ROWS)
def act_sum(act, lo, hi, c0, c1, x, h, h0, b, y):
    """``y[i, c0:c1] = f(x[i, c0:c1] + h[i, h0:h0 + c1 - c0] + b[c0:c1])``: gates from
    the input projection, the recurrent product and the bias, in one pass."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    n = c1 - c0
    bs = b[c0:c1]
    for i in range(lo, hi):
        xs = x[i, c0:c1]
        hs = h[i, h0:h0 + n]
        ys = y[i, c0:c1]
        if act == ACT_TANH:
            for j in range(n):
                ys[j] = _tanh(xs[j] + hs[j] + bs[j], one)
        elif act == ACT_SIGMOID:
            for j in range(n):
                ys[j] = _sigmoid(xs[j] + hs[j] + bs[j], one)
        elif act == ACT_RELU:
            for j in range(n):
                ys[j] = _relu(xs[j] + hs[j] + bs[j], zero)
        elif act == ACT_HARD_SIGMOID:
            for j in range(n):
                ys[j] = _hard_sigmoid(xs[j] + hs[j] + bs[j], one, zero)
        else:  # linear
            for j in range(n):
                ys[j] = xs[j] + hs[j] + bs[j]


@njit(**_JIT_ROWS)
def act_to(act, lo, hi, c0, c1, x, y):
    """``y[i, c0:c1] = f(x[i, c0:c1])`` (``x`` and ``y`` distinct)."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    n = c1 - c0
    for i in range(lo, hi):
        xs = x[i, c0:c1]
        ys = y[i, c0:c1]
        if act == ACT_TANH:
            for j in range(n):
                ys[j] = _tanh(xs[j], one)
        elif act == ACT_SIGMOID:
            for j in range(n):
                ys[j] = _sigmoid(xs[j], one)
        elif act == ACT_RELU:
            for j in range(n):
                ys[j] = _relu(xs[j], zero)
        elif act == ACT_HARD_SIGMOID:
            for j in range(n):
                ys[j] = _hard_sigmoid(xs[j], one, zero)
        else:  # linear
            for j in range(n):
                ys[j] = xs[j]


@njit(**_JIT_ROWS)
def activate(act, lo, hi, c0, c1, y):
    """``y[i, c0:c1] = f(y[i, c0:c1])`` in place (``act_to`` with ``x`` = ``y`` would
    fail LLVM's runtime overlap check and run its scalar loop)."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    n = c1 - c0
    for i in range(lo, hi):
        ys = y[i, c0:c1]
        if act == ACT_TANH:
            for j in range(n):
                ys[j] = _tanh(ys[j], one)
        elif act == ACT_SIGMOID:
            for j in range(n):
                ys[j] = _sigmoid(ys[j], one)
        elif act == ACT_RELU:
            for j in range(n):
                ys[j] = _relu(ys[j], zero)
        elif act == ACT_HARD_SIGMOID:
            for j in range(n):
                ys[j] = _hard_sigmoid(ys[j], one, zero)
        # linear: the identity


@njit(**_JIT_ROWS)
def act_mul(act, lo, hi, x, m, m0, y):
    """``y[i, :] = m[i, m0:m0 + n] * f(x[i, :])`` (n the width of ``x``, ``y``)."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    n = y.shape[1]
    for i in range(lo, hi):
        xs = x[i]
        ms = m[i, m0:m0 + n]
        ys = y[i]
        if act == ACT_TANH:
            for j in range(n):
                ys[j] = ms[j] * _tanh(xs[j], one)
        elif act == ACT_SIGMOID:
            for j in range(n):
                ys[j] = ms[j] * _sigmoid(xs[j], one)
        elif act == ACT_RELU:
            for j in range(n):
                ys[j] = ms[j] * _relu(xs[j], zero)
        elif act == ACT_HARD_SIGMOID:
            for j in range(n):
                ys[j] = ms[j] * _hard_sigmoid(xs[j], one, zero)
        else:  # linear
            for j in range(n):
                ys[j] = ms[j] * xs[j]


@njit(**_JIT_ROWS)
def dact_to(act, lo, hi, c0, c1, y, d):
    """``d[i, c0:c1] = f'(a)`` expressed through the output ``y[i, c0:c1] = f(a)``.
    The cells multiply it in (as the reference: an infinite gradient times a zero
    derivative is NaN)."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    sixth = one / y.dtype.type(6)
    n = c1 - c0
    for i in range(lo, hi):
        ys = y[i, c0:c1]
        ds = d[i, c0:c1]
        if act == ACT_TANH:
            for j in range(n):
                ds[j] = one - ys[j] * ys[j]
        elif act == ACT_SIGMOID:
            for j in range(n):
                ds[j] = ys[j] * (one - ys[j])
        elif act == ACT_RELU:
            for j in range(n):
                ds[j] = one if ys[j] > zero else zero
        elif act == ACT_HARD_SIGMOID:
            for j in range(n):
                ds[j] = sixth if (ys[j] > zero and ys[j] < one) else zero
        else:  # linear
            for j in range(n):
                ds[j] = one
