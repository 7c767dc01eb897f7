"""Numba backend: the kernel contract compiled with Numba.

Same signatures, results and cache layout as :mod:`cyrnn.backends.numpy_backend`
(the specification, ``docs/architecture.md``), float32 and float64, every cell
(rnn tanh/relu/sigmoid, lstm, gru with ``reset_after`` True/False), masks and
truncated BPTT exactly as the reference defines them; ``generate`` (the whole
sampling loop, token for token as the reference) and the optional fused
calls ``infer``, ``train_forward`` / ``train_backward`` (a whole ``Sequential`` in
one call, with validity masks: ``FUSED_MASKS``) are compiled too.

Design
------
* **Cell math in one place per cell**: ``_rnn_fwd``/``_rnn_bwd``,
  ``_lstm_fwd``/``_lstm_bwd``, ``_gru_fwd``/``_gru_bwd`` (plain ``njit``) update a
  block of batch rows for one step, given the recurrent product; GRU's are
  split in phases around the products. ``_fwd_step`` (product, then the cell)
  is the one step used by the forward time loop and hence by ``step`` (a
  one-step forward); ``_bwd_step`` is its backward.
* **One forward time loop, one backward sweep** for every cell
  (``_fwd_rows``, ``_bwd_rows``), dispatching on an integer cell code. The
  sweep serves full BPTT (one sweep from the last step, adding ``dh_seq``) and
  truncation (one budgeted sweep per gradient source, as the reference's
  ``_sweep``).
* **Whole-model entry points** (``_infer_kernel`` and ``_train_fwd_kernel``,
  both ``_fused_run`` without or with every op's cache; ``_train_bwd_kernel``;
  ``_generate_kernel``) run the same forward time loop (``_fwd_rows``, serial,
  on all rows), the same backward sweep (``_bwd_rows``, with truncation and the
  mask) and the same product routines (``_mm_nt``/``_mm_nn``, for input
  projections, Dense heads and logits), so the cell math still lives in one
  place. ``infer`` validates the spec
  against the parameter buffer and the input (NaN/inf, ids) inside the
  compiled call; its Python wrapper only checks the array's exact form, so a
  batch-1 call costs about a microsecond more than the kernel. The sampling
  rule (``_sample_token``) is compiled without fast-math flags, so its sums
  and comparisons are the reference's, in the same order.
* **Rows are independent through time**, so a block of rows can run the whole
  time loop alone. ``_forward_par``/``_backward_par`` (``parallel=True``) split
  the batch into one fixed block per thread (``prange`` over blocks): a single
  parallel region per call, not per step, and no barrier inside the time loop.
  Calls below ``_PAR_MIN_WORK`` multiply-adds or with fewer than
  ``2 * _PAR_MIN_ROWS`` rows call the serial entry point (``_fwd_rows`` /
  ``_bwd_rows`` on all rows), which opens no parallel region at all.
* **Recurrent products**: BLAS (``np.dot`` into preallocated rows, scipy's
  OpenBLAS) for batches of several rows, own loops for single rows and tiny
  shapes (four weight rows per pass; they match or beat the BLAS call there).
  ``_blas_mode`` also keeps OpenBLAS's threads out of the per-step products:
  serial mid-sized products (up to 16.7M multiply-adds) run in row blocks
  that OpenBLAS keeps on one thread unless BLAS is single-threaded anyway (as
  the Cython backend does: a threaded GEMM per step synchronises every step,
  measured up to 50x slower on the busy 2-core machine), and parallel row
  blocks use BLAS only if it is single-threaded, else the own loops (a
  threaded BLAS nested in the blocks oversubscribes the cores). BLAS's thread
  count is read with threadpoolctl (~2 us, only for such calls). ``dW_hh`` is
  one contraction over all steps after the sweep (in single-thread-sized row
  blocks below 16.7M multiply-adds), ``db_hh`` a float64 sum.
* **Vectorised activations**: ``exp`` (Cody-Waite reduction, Cephes rational
  (float64) / polynomial (float32) core, exponent bits for ``2**n``),
  ``sigmoid`` and ``tanh`` (Taylor polynomial below 0.1) in plain arithmetic,
  so LLVM vectorises the cell loops (libm's scalar ``tanh`` costs 15 ns per
  element, these 0.5-1.5 ns). Max error vs NumPy about 3 ulp (float64) and
  2 ulp (float32); NaN and inf propagate. Cell loops run on 1-D row views
  indexed from 0 (a loop index of unknown sign, e.g. ``range(c0, c1)`` over a
  2-D array, makes Numba's negative-index handling block vectorisation).
* **Flags**: every kernel is ``nogil``, ``cache=True``, ``error_model="numpy"``
  (IEEE division, no exception branch) and uses only
  ``fastmath={"contract", "arcp", "nsz", "afn", "reassoc"}`` (the activations a
  subset of them); never ``nnan``/``ninf``, so NaN/inf checks stay.
* **No allocation in the time loop**: the wrapper allocates outputs and one
  flat scratch array per call, of which the loops only take views; the
  kernels allocate only at their start (per-row flags and budgets) and after
  the sweep (``dW_hh`` staging).
* **Reproducibility**: a row's arithmetic does not depend on the blocking;
  results are identical run to run for a given Numba and BLAS thread count
  (blocks are a fixed partition of the rows; BLAS may pick other kernels for
  other block sizes, and the BLAS/own-loop choice depends on BLAS threads).
* **Per-call overhead** is a few microseconds (``step`` at batch 1, H=8: about
  5 us): each kernel is compiled once per dtype for an explicit signature
  whose input arrays are typed read-only (so writable and read-only inputs
  share one compiled version, and nothing recompiles per call), and the
  wrapper calls that compiled entry point directly, skipping the dispatcher's
  type resolution. It therefore always passes C-contiguous arrays of the
  kernel's dtype (``np.ascontiguousarray`` is a no-op on conforming input).

Threading layer
---------------
Numba's default order tries ``tbb``, ``omp``, then ``workqueue``, and
``workqueue`` terminates the process when two Python threads launch parallel
kernels at once. At import, before any parallel kernel is compiled or run,
this module sets ``numba.config.THREADING_LAYER`` to ``"omp"`` if Numba's
OpenMP pool can be loaded, else ``"tbb"`` (both thread-safe), else
``"workqueue"``; a layer chosen with ``NUMBA_THREADING_LAYER``, or a pool
already started, is respected. Unless the layer is known thread-safe, the
parallel kernels are serialised with a lock (serial calls never take it).
Like the Cython backend, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
chose a policy, so that idle OpenMP threads do not spin against BLAS.
GNU OpenMP cannot be used in a process forked after its parent used it (Numba
terminates such a child): in a child forked while the pool was running, this
backend runs everything on the serial entry points (``os.register_at_fork``).
``cyrnn.set_num_threads`` caps the number of row blocks.

Compilation and the on-disk cache
---------------------------------
Kernels compile lazily, per dtype, on first use: the serial entry points on
the first call, the parallel ones on the first call big enough for them.
``cache=True`` stores them in ``__pycache__`` next to this module; when that is
not writable (read-only install) Numba falls back to its user-wide cache
directory (``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``), and
``NUMBA_CACHE_DIR`` overrides both. Checked: with the package copied to a
directory where ``__pycache__`` cannot be created, a first process compiled
and wrote 38 index/data files under ``$XDG_CACHE_HOME/numba/``, and a second
process loaded them (first forward 0.47 s instead of 11 s); with
``NUMBA_CACHE_DIR`` set, the same happens in that directory.

First-call latency in a fresh process, LSTM, serial kernels (T=10, N=4, H=8)
then parallel ones (T=10, N=64, H=64), forward with cache then backward, on
the 2-core AMD EPYC test machine while other jobs kept both cores busy: wall
clock, with the process's CPU time in brackets (the load-independent part)::

    NUMBA_CACHE_DIR=/tmp/nbfc python -c "from cyrnn.backends import \
        numba_backend as m; m._first_call_demo('float64')"

                   serial forward  serial backward  parallel fwd   parallel bwd
    cold float64   10.0 s [6.5]    12.5 s [8.2]     8.2 s [5.2]    15.2 s [9.7]
    cold float32   10.0 s [6.7]     9.7 s [7.3]     8.4 s [5.7]    15.3 s [10.3]
    warm (either)  0.47 s [0.33]    0.03 s           0.05 s         0.04 s

Cold means an empty cache directory (compilation); a small-batch user only
pays the two serial columns. Warm means loading from the on-disk cache; the
first call also pays Numba's one-time initialisation (~0.3 s). Importing this
module takes about 0.5 s (0.3 s of it is ``import cyrnn`` itself). Any edit to
this file invalidates the cache (Numba keys it on the source file's stamp).
"""

from __future__ import annotations

import importlib
import os
import threading

# Before any OpenMP runtime is loaded (same policy as the Cython backend).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import overload  # noqa: E402

from .. import threads as _threads  # noqa: E402

NAME = "numba"

# ----------------------------------------------------------------------------
# Threading layer.
# ----------------------------------------------------------------------------

_THREADSAFE_LAYERS = ("omp", "tbb", "safe", "threadsafe")


def _select_threading_layer():
    """Pick a thread-safe layer before the pool starts; return the layer name."""
    from numba.np.ufunc import parallel as _npar

    if getattr(_npar, "_is_initialized", False):
        return numba.threading_layer()
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER  # the user's choice
    for name, module in (("omp", "omppool"), ("tbb", "tbbpool")):
        try:
            importlib.import_module("numba.np.ufunc." + module)
        except ImportError:
            continue
        numba.config.THREADING_LAYER = name
        return name
    numba.config.THREADING_LAYER = "workqueue"
    return "workqueue"


THREADING_LAYER = _select_threading_layer()
# Parallel launches are serialised only when the layer may be workqueue.
_par_lock = None if THREADING_LAYER in _THREADSAFE_LAYERS else threading.Lock()
_parallel_ok = True


def _after_fork_in_child():
    global _parallel_ok
    from numba.np.ufunc import parallel as _npar

    if getattr(_npar, "_is_initialized", False) and THREADING_LAYER != "tbb":
        _parallel_ok = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# ----------------------------------------------------------------------------
# Cell codes and tuning constants.
# ----------------------------------------------------------------------------

RNN_TANH, RNN_RELU, RNN_SIGMOID, LSTM, GRU, GRU_CHO = range(6)
_CODES = {
    ("rnn", "tanh"): RNN_TANH, ("rnn", "relu"): RNN_RELU, ("rnn", "sigmoid"): RNN_SIGMOID,
    ("lstm", True): LSTM, ("lstm", False): LSTM, ("gru", True): GRU, ("gru", False): GRU_CHO,
}

# Per-step recurrent products go through BLAS for batches of 2+ rows with at
# least _BLAS_MIN multiply-adds (N*G*H*H), and for single rows above
# _BLAS_MIN_ROW; below, the own loops (_mm_nt, _mm_nn) match or beat the BLAS
# call (measured on the 2-core AMD EPYC test machine, float32 and float64).
_BLAS_MIN = 4096
_BLAS_MIN_ROW = 65536
# The parallel kernels split the batch only when every block gets at least
# _PAR_MIN_ROWS rows and the call has at least _PAR_MIN_WORK multiply-adds.
_PAR_MIN_ROWS = 4
_PAR_MIN_WORK = 1 << 23  # ~8M multiply-adds: 1-3 ms of serial work
# OpenBLAS runs a GEMM with m*n*k <= 262144 on one thread (interface/gemm.c);
# dW_hh is split into such blocks up to _THREADED_GEMM_MNK (as the Cython
# backend does), above which one threaded call pays off.
_SERIAL_GEMM_MNK = 262144
_THREADED_GEMM_MNK = 16777216

_FASTMATH = {"contract", "arcp", "nsz", "afn", "reassoc"}
# error_model="numpy": IEEE division (no ZeroDivisionError branch, which would
# also block vectorisation), as the reference.
_JIT = dict(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
_JIT_PAR = dict(_JIT, parallel=True)
# The exp/sigmoid/tanh below: no "reassoc" (it could merge the two-constant
# ln 2 reduction) nor "arcp"; "contract" only makes them more accurate.
_FN_OPTS = dict(fastmath={"contract", "nsz"}, error_model="numpy")


# ----------------------------------------------------------------------------
# exp, sigmoid and tanh without libm calls, so that loops over them vectorise
# (libm's scalar tanh/exp cost 5-17 ns per element, these about 1-2 ns).
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


# ----------------------------------------------------------------------------
# Recurrent products on a block of rows.
# ----------------------------------------------------------------------------

@njit(**_JIT)
def _mm_nt(a, w, out, lo, hi, blas):
    """``out[lo:hi] = a[lo:hi] @ w.T`` (forward recurrent product): BLAS
    (``blas`` 2: one call; 1: row blocks small enough for OpenBLAS to keep on
    one thread, see ``_blas_mode``), or (0) dot products four weight rows at a
    time (one pass over ``a[i]`` feeds four vectorised accumulators)."""
    if blas:
        step = hi - lo if blas == 2 else max(1, _SERIAL_GEMM_MNK // (w.shape[0] * w.shape[1]))
        for r in range(lo, hi, step):
            e = min(r + step, hi)
            np.dot(a[r:e], w.T, out[r:e])
        return
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
    """``out[lo:hi] = a[lo:hi] @ w`` (backward): BLAS (``blas`` as in
    ``_mm_nt``), or four scaled weight rows added at a time (each group of
    weight rows reused across the block's rows); the loop skips invalid rows."""
    if blas:
        step = hi - lo if blas == 2 else max(1, _SERIAL_GEMM_MNK // (w.shape[0] * w.shape[1]))
        for r in range(lo, hi, step):
            e = min(r + step, hi)
            np.dot(a[r:e], w, out[r:e])
        return
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


# ----------------------------------------------------------------------------
# Cell math: one batch row of one step; the only place it lives here.
# ``gh`` is the recurrent product without bias, ``g`` receives the gates.
# Each row is a few simple loops over the hidden units, each touching few
# arrays, so that LLVM vectorises them.
# ----------------------------------------------------------------------------

@njit(**_JIT)
def _gates(kind, lo, hi, c0, c1, xt, gh, b, g):
    """``g[i, c] = f(xt[i, c] + gh[i, c] + b[c])`` for rows ``lo:hi`` and
    ``c0 <= c < c1``; ``f`` = tanh, relu, sigmoid for kind = RNN_TANH,
    RNN_RELU, RNN_SIGMOID.

    Works on 1-D row views indexed from 0: a loop index of unknown sign
    (``range(c0, c1)``) makes Numba's negative-index handling block
    vectorisation.
    """
    one = g.dtype.type(1)
    zero = g.dtype.type(0)
    bs = b[c0:c1]
    for i in range(lo, hi):
        xs = xt[i, c0:c1]
        hs = gh[i, c0:c1]
        gs = g[i, c0:c1]
        if kind == RNN_TANH:
            for c in range(gs.shape[0]):
                gs[c] = _tanh(xs[c] + hs[c] + bs[c], one)
        elif kind == RNN_RELU:
            for c in range(gs.shape[0]):
                a = xs[c] + hs[c] + bs[c]
                gs[c] = zero if a <= zero else a  # NaN propagates, as np.maximum
        else:
            for c in range(gs.shape[0]):
                gs[c] = _sigmoid(xs[c] + hs[c] + bs[c], one)


@njit(**_JIT)
def _emit(lo, hi, has_mask, mt, hp, hn, hs):
    """After a cell wrote the new state of its valid rows into ``hn``: the
    outputs ``hs`` (the new state, or zero where masked) and, where masked,
    the old state carried over."""
    for i in range(lo, hi):
        hni = hn[i]
        hsi = hs[i]
        if (not has_mask) or mt[i]:
            for j in range(hni.shape[0]):
                hsi[j] = hni[j]
        else:
            hpi = hp[i]
            for j in range(hni.shape[0]):
                hni[j] = hpi[j]
            for j in range(hni.shape[0]):
                hsi[j] = 0


@njit(**_JIT)
def _rnn_fwd(code, lo, hi, has_mask, mt, xt, gh, b, hp, g, hn, hs):
    _gates(code, lo, hi, 0, hp.shape[1], xt, gh, b, g)
    for i in range(lo, hi):
        if (not has_mask) or mt[i]:
            gi = g[i]
            hni = hn[i]
            for j in range(hni.shape[0]):
                hni[j] = gi[j]
    _emit(lo, hi, has_mask, mt, hp, hn, hs)


@njit(**_JIT)
def _lstm_fwd(lo, hi, has_mask, mt, xt, gh, b, hp, cp, g, hn, cn, hs):
    one = g.dtype.type(1)
    H = hp.shape[1]
    # Activation kinds as runtime values (0 * lo): a literal argument would
    # make Numba compile one more version of _gates per kind.
    sig, tanh = RNN_SIGMOID + 0 * lo, RNN_TANH + 0 * lo
    _gates(sig, lo, hi, 0, 2 * H, xt, gh, b, g)          # i, f
    _gates(tanh, lo, hi, 2 * H, 3 * H, xt, gh, b, g)     # g
    _gates(sig, lo, hi, 3 * H, 4 * H, xt, gh, b, g)      # o
    for i in range(lo, hi):
        cpi = cp[i]
        cni = cn[i]
        if (not has_mask) or mt[i]:
            gi, gf, gg, go = g[i, :H], g[i, H:2 * H], g[i, 2 * H:3 * H], g[i, 3 * H:]
            hni = hn[i]
            for j in range(H):
                c = gf[j] * cpi[j] + gi[j] * gg[j]
                cni[j] = c
                hni[j] = go[j] * _tanh(c, one)
        else:
            for j in range(H):
                cni[j] = cpi[j]
    _emit(lo, hi, has_mask, mt, hp, hn, hs)


@njit(**_JIT)
def _gru_fwd(phase, lo, hi, has_mask, mt, xt, gh, ghn, b, hp, g, ax, hn, hs):
    """phase 0: reset_after (gh holds the 3 blocks). Cho's GRU: phase 1 computes
    r, z and ``ax = r*h`` (gh holds the r, z blocks), phase 2 finishes once
    ``ghn = (r*h) W_hn^T`` is known."""
    one = g.dtype.type(1)
    H = hp.shape[1]
    bn = b[2 * H:]
    if phase != 2:
        _gates(RNN_SIGMOID + 0 * lo, lo, hi, 0, 2 * H, xt, gh, b, g)  # r, z (see _lstm_fwd)
    for i in range(lo, hi):
        gr, gz, gn = g[i, :H], g[i, H:2 * H], g[i, 2 * H:]
        hpi = hp[i]
        axi = ax[i]
        if phase == 1:
            for j in range(H):
                axi[j] = gr[j] * hpi[j]
            continue
        xn = xt[i, 2 * H:]
        if phase == 0:
            ghi = gh[i, 2 * H:]
            for j in range(H):
                axi[j] = ghi[j] + bn[j]
            for j in range(H):
                gn[j] = _tanh(xn[j] + gr[j] * axi[j], one)
        else:
            ghi = ghn[i]
            for j in range(H):
                gn[j] = _tanh(xn[j] + ghi[j] + bn[j], one)
        if (not has_mask) or mt[i]:
            hni = hn[i]
            for j in range(H):
                hni[j] = (one - gz[j]) * gn[j] + gz[j] * hpi[j]
    if phase != 1:
        _emit(lo, hi, has_mask, mt, hp, hn, hs)


@njit(**_JIT)
def _rnn_bwd(code, lo, hi, valid, dh, g, da, dxp):
    one = g.dtype.type(1)
    zero = g.dtype.type(0)
    for i in range(lo, hi):
        dai = da[i]
        if not valid[i]:
            for j in range(dai.shape[0]):
                dai[j] = zero
            continue
        gi = g[i]
        dhi = dh[i]
        dxi = dxp[i]
        H = dhi.shape[0]
        if code == RNN_TANH:
            for j in range(H):
                dai[j] = dhi[j] * (one - gi[j] * gi[j])
        elif code == RNN_RELU:
            for j in range(H):
                dai[j] = dhi[j] * (one if gi[j] > zero else zero)
        else:
            for j in range(H):
                dai[j] = dhi[j] * (gi[j] * (one - gi[j]))
        for j in range(H):
            dxi[j] += dai[j]


@njit(**_JIT)
def _lstm_bwd(lo, hi, valid, dh, dc, cp, cn, g, da, dxp):
    """Also replaces ``dc`` by the gradient on the previous cell state."""
    one = g.dtype.type(1)
    zero = g.dtype.type(0)
    H = dh.shape[1]
    for i in range(lo, hi):
        dai = da[i]
        if not valid[i]:
            for c in range(4 * H):
                dai[c] = zero
            continue
        gi, gf, gg, go = g[i, :H], g[i, H:2 * H], g[i, 2 * H:3 * H], g[i, 3 * H:]
        di, df, dg, do = da[i, :H], da[i, H:2 * H], da[i, 2 * H:3 * H], da[i, 3 * H:]
        dhi = dh[i]
        dci = dc[i]
        cpi = cp[i]
        cni = cn[i]
        for j in range(H):
            tc = _tanh(cni[j], one)
            dci[j] = dci[j] + dhi[j] * go[j] * (one - tc * tc)
            do[j] = dhi[j] * tc * go[j] * (one - go[j])
        for j in range(H):
            d = dci[j]
            di[j] = d * gg[j] * gi[j] * (one - gi[j])
            df[j] = d * cpi[j] * gf[j] * (one - gf[j])
            dg[j] = d * gi[j] * (one - gg[j] * gg[j])
            dci[j] = d * gf[j]
        dxi = dxp[i]
        for c in range(4 * H):
            dxi[c] += dai[c]


@njit(**_JIT)
def _gru_bwd(phase, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh):
    """reset_after: phase 0 (everything before the product ``da @ W_hh``, where
    ``da`` is the gradient on the recurrent pre-activation), then phase 3.
    Cho's GRU: phase 1 writes ``dn`` into ``dnb`` (before ``drh = dn @ W_hn``),
    phase 2 the r, z gradients into ``da`` (before ``da @ W_hh[:2H]``), then
    phase 4. Phases 3 and 4 replace ``dh`` by the gradient on the previous
    state, given the products ``dhp`` (and ``drh``). Phases 0-2 zero the
    product inputs of invalid rows; no phase touches their ``dh``."""
    one = g.dtype.type(1)
    zero = g.dtype.type(0)
    H = dh.shape[1]
    for i in range(lo, hi):
        gr, gz, gn = g[i, :H], g[i, H:2 * H], g[i, 2 * H:]
        dhi = dh[i]
        if not valid[i]:
            if phase == 1:
                dni = dnb[i]
                for j in range(H):
                    dni[j] = zero
            elif phase == 0 or phase == 2:
                dai = da[i]
                for c in range(dai.shape[0]):
                    dai[c] = zero
            continue
        if phase == 3:
            dhpi = dhp[i]
            for j in range(H):
                dhi[j] = dhi[j] * gz[j] + dhpi[j]
            continue
        if phase == 4:
            dhpi = dhp[i]
            drhi = drh[i]
            for j in range(H):
                dhi[j] = dhi[j] * gz[j] + drhi[j] * gr[j] + dhpi[j]
            continue
        if phase == 1:
            dni = dnb[i]
            for j in range(H):
                dni[j] = dhi[j] * (one - gz[j]) * (one - gn[j] * gn[j])
            continue
        hpi = hp[i]
        dr, dz = da[i, :H], da[i, H:2 * H]
        for j in range(H):
            dz[j] = dhi[j] * (hpi[j] - gn[j]) * gz[j] * (one - gz[j])
        if phase == 2:
            drhi = drh[i]
            for j in range(H):
                dr[j] = drhi[j] * hpi[j] * gr[j] * (one - gr[j])
        else:
            dn = da[i, 2 * H:]
            axi = ax[i]
            for j in range(H):
                d = dhi[j] * (one - gz[j]) * (one - gn[j] * gn[j])
                dr[j] = d * axi[j] * gr[j] * (one - gr[j])
                dn[j] = d * gr[j]
        dai = da[i]
        dxi = dxp[i]
        for c in range(2 * H):
            dxi[c] += dai[c]
        dxn = dxp[i, 2 * H:]
        if phase == 2:
            dni = dnb[i]
            for j in range(H):
                dxn[j] += dni[j]
            continue
        for j in range(H):
            dxn[j] += dhi[j] * (one - gz[j]) * (one - gn[j] * gn[j])
        dgi = dgh[i]
        for c in range(3 * H):
            dgi[c] += dai[c]


# ----------------------------------------------------------------------------
# One step on a block of rows (forward: used by the time loop, hence by ``step``).
# ----------------------------------------------------------------------------

@njit(inline="always", **_JIT)
def _fwd_step(code, blas, has_mask, mt, xt, w, b, hp, hn, cp, cn, g, ax, hs, gh, ghn, lo, hi):
    H = w.shape[1]
    # GRU phases are derived from the (runtime) cell code: 0 reset_after; 1, 2
    # Cho. A literal argument would make Numba compile one version per phase.
    ph = code - GRU
    if code == GRU_CHO:
        _mm_nt(hp, w[:2 * H], gh, lo, hi, blas)
        _gru_fwd(ph, lo, hi, has_mask, mt, xt, gh, ghn, b, hp, g, ax, hn, hs)
        _mm_nt(ax, w[2 * H:], ghn, lo, hi, blas)
        _gru_fwd(ph + 1, lo, hi, has_mask, mt, xt, gh, ghn, b, hp, g, ax, hn, hs)
        return
    _mm_nt(hp, w, gh, lo, hi, blas)
    if code == LSTM:
        _lstm_fwd(lo, hi, has_mask, mt, xt, gh, b, hp, cp, g, hn, cn, hs)
    elif code == GRU:
        _gru_fwd(ph, lo, hi, has_mask, mt, xt, gh, ghn, b, hp, g, ax, hn, hs)
    else:
        _rnn_fwd(code, lo, hi, has_mask, mt, xt, gh, b, hp, g, hn, hs)


@njit(**_JIT)
def _fwd_rows(code, blas, keep, has_mask, xp, w, b, h0, c0, mask, h_seq, hT, cT,
              ch, cc, cg, cax, scratch, lo, hi):
    """The forward time loop over rows ``lo:hi``, for every cell.

    The serial entry point (``lo, hi = 0, N``), and the body of the parallel
    kernel's blocks. ``scratch`` holds ``N * _fwd_scratch(...)`` values.
    """
    T, N, GH = xp.shape
    H = w.shape[1]
    lstm = code == LSTM
    gw = 2 * H if code == GRU_CHO else GH
    gh = scratch[:N * gw].reshape((N, gw))  # recurrent product (r, z only for Cho)
    ghn = scratch[N * gw:N * (gw + H)].reshape((N, H))  # Cho: (r*h) W_hn^T
    if keep:  # states, gates and aux go to the cache
        gs, axs, h2, c2 = cg[0], ghn, hT, cT
    else:  # gates and aux of the current step to scratch; states alternate
        # between hT/cT and h2/c2 (distinct input and output rows vectorise)
        o = N * (gw + H)
        gs = scratch[o:o + N * GH].reshape((N, GH))
        o += N * GH
        axs = scratch[o:o + N * H].reshape((N, H))
        h2 = scratch[o + N * H:o + 2 * N * H].reshape((N, H))
        c2 = scratch[o + 2 * N * H:o + 3 * N * H].reshape((N, H))
    hbuf = ch[0] if keep else hT
    cbuf = cc[0] if keep else cT
    for i in range(lo, hi):
        for j in range(H):
            hbuf[i, j] = h0[i, j]
        if lstm:
            for j in range(H):
                cbuf[i, j] = c0[i, j]
    for t in range(T):
        if keep:
            hp, hn, g, ax = ch[t], ch[t + 1], cg[t], cax[t]
            cp, cn = cc[t], cc[t + 1]
        elif t % 2 == 0:
            hp, hn, g, ax = hT, h2, gs, axs
            cp, cn = cT, c2
        else:
            hp, hn, g, ax = h2, hT, gs, axs
            cp, cn = c2, cT
        _fwd_step(code, blas, has_mask, mask[t], xp[t], w, b, hp, hn, cp, cn, g, ax,
                  h_seq[t], gh, ghn, lo, hi)
    if keep or T % 2 == 1:
        hsrc = ch[T] if keep else h2
        csrc = cc[T] if keep else c2
        for i in range(lo, hi):
            for j in range(H):
                hT[i, j] = hsrc[i, j]
            if lstm:
                for j in range(H):
                    cT[i, j] = csrc[i, j]


@njit(**_JIT_PAR)
def _forward_par(nb, code, blas, keep, has_mask, xp, w, b, h0, c0, mask, h_seq, hT, cT,
                 ch, cc, cg, cax, scratch):
    """``_fwd_rows`` on ``nb`` fixed blocks of rows, one per thread."""
    N = xp.shape[1]
    for k in prange(nb):
        _fwd_rows(code, blas, keep, has_mask, xp, w, b, h0, c0, mask, h_seq, hT, cT,
                  ch, cc, cg, cax, scratch, k * N // nb, (k + 1) * N // nb)


# ----------------------------------------------------------------------------
# Backward: one step on a block of rows, and the sweep.
# ----------------------------------------------------------------------------

@njit(inline="always", **_JIT)
def _bwd_step(code, blas, valid, w, hp, cp, cn, g, ax, dh, dc, dxp, dgh,
              da, dhp, drh, dnb, lo, hi):
    """Backward through one step for the valid rows of ``lo:hi``: accumulates
    into ``dxp``/``dgh`` and replaces ``dh`` (and ``dc``) by the gradient on the
    previous state; invalid rows pass ``dh``/``dc`` through unchanged."""
    H = w.shape[1]
    # GRU phases from the runtime cell code (see _fwd_step): reset_after 0
    # then 3; Cho 1, 2, then 4.
    ph = code - GRU
    if code == GRU_CHO:
        _gru_bwd(ph, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh)
        _mm_nn(dnb, w[2 * H:], drh, lo, hi, blas, valid)
        _gru_bwd(ph + 1, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh)
        _mm_nn(da, w[:2 * H], dhp, lo, hi, blas, valid)
        _gru_bwd(ph + 3, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh)
        return
    if code == LSTM:
        _lstm_bwd(lo, hi, valid, dh, dc, cp, cn, g, da, dxp)
    elif code == GRU:
        _gru_bwd(ph, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh)
    else:
        _rnn_bwd(code, lo, hi, valid, dh, g, da, dxp)
    _mm_nn(da, w, dhp, lo, hi, blas, valid)
    if code == GRU:
        _gru_bwd(ph + 3, lo, hi, valid, dh, hp, g, ax, drh, dhp, da, dnb, dxp, dgh)
        return
    for i in range(lo, hi):
        if valid[i]:
            dhi = dh[i]
            dhpi = dhp[i]
            for j in range(H):
                dhi[j] = dhpi[j]


@njit(**_JIT)
def _contract(code, ch, cax, dgh, dw, db):
    """``dw = sum_t dgh_t^T hin_t`` over all steps and ``db = sum dgh`` (float64
    accumulation). Cho's GRU: the n block's recurrent input is ``r * h`` (the
    cache's aux).

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
    cho = code == GRU_CHO
    for part in range(2 if cho else 1):
        r0 = 0 if part == 0 else 2 * H
        r1 = (2 * H if cho else GH) if part == 0 else GH
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


@njit(**_JIT)
def _bwd_rows(code, blas, trunc, has_mask, has_dhseq, contract, ch, cc, cg, cax, w, mask,
              dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, scratch, lo, hi):
    """The backward sweep over rows ``lo:hi``, for every cell.

    The serial entry point (``lo, hi = 0, N``, ``contract=1``: also computes
    ``dw``/``db``), and the body of the parallel kernel's blocks.

    ``trunc < 0``: full BPTT, a single sweep from the last step that adds
    ``dh_seq[t]`` at every valid step. ``trunc = k``: one sweep per gradient
    source (step ``s``), each row passing through at most ``k + 1`` valid
    cells, exactly as the reference's ``_sweep`` with a budget. Rows whose
    source gradient is zero are skipped.
    """
    T, N, GH = cg.shape
    H = w.shape[1]
    NH = N * H
    lstm = code == LSTM
    full = trunc < 0
    zero = w.dtype.type(0)
    dh = scratch[:NH].reshape((N, H))
    dc = scratch[NH:2 * NH].reshape((N, H))
    dhp = scratch[2 * NH:3 * NH].reshape((N, H))
    drh = scratch[3 * NH:4 * NH].reshape((N, H))
    dnb = scratch[4 * NH:5 * NH].reshape((N, H))
    gw = 2 * H if code == GRU_CHO else GH  # Cho multiplies only da's r, z blocks
    da = scratch[5 * NH:5 * NH + N * gw].reshape((N, gw))
    valid = np.empty(N, np.bool_)
    budget = np.empty(N, np.int64)
    for i in range(lo, hi):
        for j in range(H):
            dh0[i, j] = zero
            if lstm:
                dc0[i, j] = zero
    for s in range(T - 1 if full else 0, T):
        # Initial gradients: full BPTT, those on the final state; truncated,
        # the one arriving at step s (the output's if valid, plus the final
        # state's at the last step).
        alive = False
        for i in range(lo, hi):
            v = has_dhseq and not full and ((not has_mask) or mask[s, i])
            nonzero = full
            for j in range(H):
                x = dh_seq[s, i, j] if v else zero
                if s == T - 1:
                    x = x + dh_T[i, j]
                dh[i, j] = x
                nonzero = nonzero or x != 0
                if lstm:
                    y = dc_T[i, j] if s == T - 1 else zero
                    dc[i, j] = y
                    nonzero = nonzero or y != 0
            budget[i] = (T + 1 if full else trunc + 1) if nonzero else 0
            alive = alive or nonzero
        t = s
        while alive and t >= 0:
            for i in range(lo, hi):
                v = budget[i] > 0 and ((not has_mask) or mask[t, i])
                valid[i] = v
                if v and full and has_dhseq:
                    for j in range(H):
                        dh[i, j] += dh_seq[t, i, j]
            _bwd_step(code, blas, valid, w, ch[t], cc[t], cc[t + 1], cg[t], cax[t], dh, dc,
                      dxp[t], dgh[t], da, dhp, drh, dnb, lo, hi)
            alive = False
            for i in range(lo, hi):
                if valid[i]:
                    budget[i] -= 1
                    if budget[i] == 0:
                        for j in range(H):
                            dh[i, j] = zero
                            if lstm:
                                dc[i, j] = zero
                alive = alive or budget[i] > 0
            t -= 1
        if t < 0:  # reached the start with budget left: the gradient on h0
            for i in range(lo, hi):
                for j in range(H):
                    dh0[i, j] += dh[i, j]
                    if lstm:
                        dc0[i, j] += dc[i, j]
    if contract:
        _contract(code, ch, cax, dgh, dw, db)


def _bwd_scratch(code, H, GH):
    """Scratch values per batch row needed by ``_bwd_rows``."""
    return 5 * H + (2 * H if code == GRU_CHO else GH)


@njit(**_JIT_PAR)
def _backward_par(nb, code, blas, trunc, has_mask, has_dhseq, ch, cc, cg, cax, w, mask,
                  dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, scratch):
    """``_bwd_rows`` on ``nb`` fixed blocks of rows, one per thread, then the
    ``dw``/``db`` contraction (one GEMM, BLAS-threaded)."""
    N = cg.shape[1]
    for k in prange(nb):
        _bwd_rows(code, blas, trunc, has_mask, has_dhseq, 0, ch, cc, cg, cax, w, mask,
                  dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, scratch,
                  k * N // nb, (k + 1) * N // nb)
    _contract(code, ch, cax, dgh, dw, db)


# ----------------------------------------------------------------------------
# Products inside the compiled entry points (infer, generate).
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
    mid-sized ones (the same products in blocks), else one BLAS call."""
    if not _use_blas_nb(rows, mk):
        return 0
    work = rows * mk
    if _SERIAL_GEMM_MNK < work <= _THREADED_GEMM_MNK:
        return 1
    return 2


@njit(**_JIT)
def _add_rows(y, b):
    """``y[i, :] += b`` for every row."""
    for i in range(y.shape[0]):
        yi = y[i]
        for j in range(yi.shape[0]):
            yi[j] += b[j]


def _fwd_scratch(code, H, GH, keep):
    """Scratch values per batch row needed by ``_fwd_rows``."""
    gw = 2 * H if code == GRU_CHO else GH
    return gw + H + (0 if keep else GH + 3 * H)


_fwd_scratch_nb = njit(**_JIT)(_fwd_scratch)


@njit(**_JIT)
def _cell_code(kind, act, reset_after):
    """The cell code of ``(Cell.kind_code, Cell.activation_code, reset_after)``
    (as ``_code`` for a ``Cell``)."""
    if kind == 0:
        return RNN_TANH + act  # RNN_TANH, RNN_RELU, RNN_SIGMOID in activation order
    if kind == 1:
        return LSTM
    return GRU if reset_after else GRU_CHO


@njit(**_JIT)
def _n_gates(code):
    return 4 if code == LSTM else (3 if code >= GRU else 1)


# ----------------------------------------------------------------------------
# Fused inference: a whole Sequential ([Embedding] RNN+ (Dense | RNN)*) in one call.
#
# The spec is the int64 array built by ``cyrnn.model.Sequential`` (layout in
# docs/architecture.md, "Fused model calls"): a header (version, number of ops,
# record width) and one fixed-width record per op; parameter offsets index the
# model's flat buffer. The kernel validates the spec against the buffer, then
# runs each op with the forward time loop (``_fwd_rows``) and ``_mm_nt`` on
# scratch allocated per call, without the GIL: concurrent calls on one model are
# safe, and nothing is kept between calls.
# ----------------------------------------------------------------------------

SPEC_VERSION, SPEC_HEADER, SPEC_WIDTH = 1, 3, 12
OP_EMBED, OP_RNN, OP_DENSE = 0, 1, 2
INFER_SPEC_VERSION, INFER_SPEC_HEADER, INFER_SPEC_WIDTH = SPEC_VERSION, SPEC_HEADER, SPEC_WIDTH
# Status codes of _infer_kernel: 0 and -1 done, 1 not taken (the caller returns None
# and the general path runs), others raise (as the Cython backend's ``infer``).
_INFER_ERRORS = {
    2: (ValueError, "unsupported inference spec"),
    3: (ValueError, "inference spec: the first op must be an embedding or recurrent"),
    4: (ValueError, "inference spec: embedding outside the parameter buffer"),
    5: (ValueError, "inference spec: unknown cell"),
    6: (ValueError, "inference spec: recurrent op after a many-to-one op"),
    7: (ValueError, "inference spec: recurrent op outside the parameter buffer"),
    8: (ValueError, "inference spec: dense op outside the parameter buffer"),
    9: (ValueError, "inference spec: unknown op"),
    10: (MemoryError, "inference scratch too large"),
}


@njit(**_JIT)
def _all_finite(x):
    """No NaN or infinity in ``x`` (``x * 0`` is NaN exactly for those; the sum
    of those products vectorises, and without ``nnan`` it is not folded)."""
    acc = x.dtype.type(0)
    for k in range(x.shape[0]):
        acc += x[k] * 0
    return acc == 0


@njit(**_JIT)
def _outside(off, a, b, size):
    """Whether ``[off, off + a*b)`` is not inside ``[0, size)`` (``0 <= a, b``; no
    int64 overflow: the product is compared in floating point first)."""
    if off < 0 or float(a) * float(b) > size:
        return True
    return off > size - a * b


# Per-op plan slots of a training forward (element offsets into the cache block; -1: none).
P_IN, P_OUT, P_H, P_C, P_GATES, P_AUX, P_HSEQ, P_INSEQ, P_WIDTH = range(9)
_bwd_scratch_nb = njit(**_JIT)(_bwd_scratch)


@njit(**_JIT)
def _fused_run(spec, data, x, ids, is_ids, mask, has_mask, keep):
    """Validate ``spec`` against ``data`` and the input, then run the model.

    ``x`` (N, T, D) floats (``is_ids`` 0), or ``ids`` (N, T) int64 (``is_ids``
    1); ``is_ids`` -1: no input in a form the kernel takes, only check the spec.
    ``mask`` (N, T) uint8 valid steps when ``has_mask`` (combined with
    ``ids != 0`` under the embedding's ``mask_zero``).
    Returns ``(status, masked, out, buf, plan, tmask, idc)``: status 0 and the
    output (N, T, F) of a sequence model, or -1 and (N, 1, F) after a many-to-one
    op; 1 when the input is not taken; >= 2 a corrupt spec (see
    ``_INFER_ERRORS``), with empty arrays. ``keep`` (training): ``buf`` holds
    every op's cache at the offsets of ``plan`` (n_ops x P_WIDTH), ``tmask`` the
    time-major validity mask (``masked`` 1) and ``idc`` the checked copy of the ids.

    The spec is checked whatever the input (as the Cython backend does): every
    tensor of every record must lie inside ``data`` (else an error status), and
    each record's input width must be the previous output width (else 1: the
    general path explains).
    """
    dt = data.dtype
    none = np.empty((0, 0, 0), dt)
    none1 = np.empty(0, dt)
    no_plan = np.empty((0, 0), np.int64)
    no_mask = np.ones((1, 1), np.bool_)
    no_ids = np.empty((0, 0), np.int64)
    S = spec.shape[0]
    # no multiplication: a huge op count must not wrap around to a valid length
    if (S < SPEC_HEADER + SPEC_WIDTH or (S - SPEC_HEADER) % SPEC_WIDTH != 0
            or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
            or spec[1] != (S - SPEC_HEADER) // SPEC_WIDTH):
        return 2, 0, none, none1, no_plan, no_mask, no_ids
    n_ops = spec[1]
    size = data.shape[0]
    r = SPEC_HEADER
    first = 0
    V = spec[r + 1]
    E = spec[r + 2]
    if spec[r] == OP_EMBED:
        if (V < 1 or E < 1 or V > size or E > size
                or _outside(spec[r + 3], V, E, size)):
            return 4, 0, none, none1, no_plan, no_mask, no_ids
        first = 1
        F = E
    elif spec[r] == OP_RNN:
        F = spec[r + 4]
    else:
        return 3, 0, none, none1, no_plan, no_mask, no_ids
    F0 = F
    Fmax = F
    GHmax = 1
    Hmax = 1
    SCmax = 1
    seq = True
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        op = spec[r]
        if op == OP_RNN:
            if spec[r + 1] < 0 or spec[r + 1] > 2 or spec[r + 2] < 0 or spec[r + 2] > 2:
                return 5, 0, none, none1, no_plan, no_mask, no_ids
            if not seq:
                return 6, 0, none, none1, no_plan, no_mask, no_ids
            D = spec[r + 4]
            H = spec[r + 5]
            code = _cell_code(spec[r + 1], spec[r + 2], spec[r + 3] != 0)
            if D < 1 or H < 1 or D > size or H > size:
                return 7, 0, none, none1, no_plan, no_mask, no_ids
            G = _n_gates(code) * H
            if (_outside(spec[r + 6], G, D, size) or _outside(spec[r + 7], G, H, size)
                    or _outside(spec[r + 8], G, 1, size) or _outside(spec[r + 9], G, 1, size)):
                return 7, 0, none, none1, no_plan, no_mask, no_ids
            if D != F:
                return 1, 0, none, none1, no_plan, no_mask, no_ids  # the general path explains
            GHmax = max(GHmax, G)
            Hmax = max(Hmax, H)
            SCmax = max(SCmax, _fwd_scratch_nb(code, H, G, False))
            F = H
            seq = spec[r + 10] != 0
        elif op == OP_DENSE:
            D = spec[r + 1]
            O = spec[r + 2]
            if (D < 1 or O < 1 or D > size or O > size or _outside(spec[r + 3], O, D, size)
                    or _outside(spec[r + 4], O, 1, size)):
                return 8, 0, none, none1, no_plan, no_mask, no_ids
            if D != F:
                return 1, 0, none, none1, no_plan, no_mask, no_ids
            F = O
        else:
            return 9, 0, none, none1, no_plan, no_mask, no_ids
        Fmax = max(Fmax, F)
    # The input: exactly (N, T, F0) floats, or (N, T) ids after an embedding.
    if is_ids < 0 or (is_ids == 1) != (first == 1):
        return 1, 0, none, none1, no_plan, no_mask, no_ids
    if first:
        N, T = ids.shape
    else:
        N, T, D = x.shape
        if D != F0:
            return 1, 0, none, none1, no_plan, no_mask, no_ids
    if N < 1 or T < 1:
        return 1, 0, none, none1, no_plan, no_mask, no_ids
    TN = T * N
    need = (2.0 * TN * Fmax + float(TN) * GHmax + float(N) * SCmax + 4.0 * N * Hmax)
    if keep:
        need += (T + 1.0) * N * (3.0 * GHmax + 4.0 * Hmax + 2.0 * Fmax) * n_ops
    if need * data.itemsize > 1e15:
        return 10, 0, none, none1, no_plan, no_mask, no_ids
    # Inputs the general path must judge: non-finite values, ids out of range
    # (copied first: the run reads exactly the ids that were checked).
    idc = ids.copy()
    mzero = first == 1 and spec[SPEC_HEADER + 4] != 0
    if first:
        for i in range(N):
            for t in range(T):
                v = idc[i, t]
                if v < 0 or v >= V:
                    return 1, 0, none, none1, no_plan, no_mask, no_ids
    elif not _all_finite(x.reshape(TN * F0)):
        return 1, 0, none, none1, no_plan, no_mask, no_ids
    # The validity mask: the given one, and ids != 0 under mask_zero.
    masked = has_mask != 0
    if mzero and not masked:
        for i in range(N):
            for t in range(T):
                if idc[i, t] == 0:
                    masked = True
    tmask = no_mask
    if masked:
        tmask = np.empty((T, N), np.bool_)
        for i in range(N):
            any_valid = False
            for t in range(T):
                pad = mzero and idc[i, t] == 0
                tmask[t, i] = (has_mask == 0 or mask[i, t] != 0) and not pad
                any_valid = any_valid or not pad
            if mzero and not any_valid:
                return 1, 0, none, none1, no_plan, no_mask, no_ids  # padding only: the layer path raises
    hm = 1 if masked else 0
    # Layout: [input (T, N, F0) | xp (T, N, GHmax) | time-loop scratch | h0, c0, hT, cT]
    # then, inference: the ping-pong buffers (T*N*Fmax each); training: every op's
    # own cache (h, c: T+1 states; gates; aux; the output sequence) and output.
    o_xp = 2 * TN * Fmax if not keep else TN * F0
    o_sc = o_xp + TN * GHmax
    o_st = o_sc + N * SCmax
    pos = o_st + 4 * N * Hmax
    plan = no_plan
    if keep:
        plan = np.full((n_ops, P_WIDTH), -1, np.int64)
        cur = 0
        sq = True
        for o in range(first, n_ops):
            r = SPEC_HEADER + o * SPEC_WIDTH
            p = plan[o]
            p[P_IN] = cur
            p[P_INSEQ] = 1 if sq else 0
            if spec[r] == OP_RNN:
                H = spec[r + 5]
                code = _cell_code(spec[r + 1], spec[r + 2], spec[r + 3] != 0)
                G = _n_gates(code) * H
                p[P_H] = pos
                pos += (T + 1) * N * H
                if code == LSTM:
                    p[P_C] = pos
                    pos += (T + 1) * N * H
                p[P_GATES] = pos
                pos += TN * G
                if code >= GRU:
                    p[P_AUX] = pos
                    pos += TN * H
                p[P_HSEQ] = pos
                pos += TN * H
                sq = spec[r + 10] != 0
                p[P_OUT] = p[P_HSEQ] if sq else p[P_H] + TN * H
            else:
                p[P_OUT] = pos
                pos += (TN if sq else N) * spec[r + 2]
            cur = p[P_OUT]
        buf = np.empty(pos, dt)
    else:
        buf = np.empty(2 * TN * Fmax + TN * GHmax + N * SCmax + 4 * N * Hmax, dt)
    a = 0
    b = TN * Fmax
    if keep:
        b = 0
    # The input, time-major (T, N, F0).
    cur = buf[0:TN * F0]
    if first:
        o_e = spec[SPEC_HEADER + 3]
        for t in range(T):
            for i in range(N):
                row = data[o_e + idc[i, t] * E:o_e + (idc[i, t] + 1) * E]
                dst = cur[(t * N + i) * E:(t * N + i + 1) * E]
                for j in range(E):
                    dst[j] = row[j]
    else:
        for t in range(T):
            for i in range(N):
                src = x[i, t]
                dst = cur[(t * N + i) * F0:(t * N + i + 1) * F0]
                for j in range(F0):
                    dst[j] = src[j]
    F = F0
    seq = True
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        rows = TN if seq else N
        if keep:
            a = plan[o, P_IN]
            b = plan[o, P_OUT]
        x2 = buf[a:a + rows * F].reshape((rows, F))
        if spec[r] == OP_RNN:
            H = spec[r + 5]
            code = _cell_code(spec[r + 1], spec[r + 2], spec[r + 3] != 0)
            GH = _n_gates(code) * H
            w_ih = data[spec[r + 6]:spec[r + 6] + GH * F].reshape((GH, F))
            w_hh = data[spec[r + 7]:spec[r + 7] + GH * H].reshape((GH, H))
            b_ih = data[spec[r + 8]:spec[r + 8] + GH]
            b_hh = data[spec[r + 9]:spec[r + 9] + GH]
            # xp = x W_ih^T + b_ih over all T*N rows (as layers.recurrent.project)
            xp = buf[o_xp:o_xp + TN * GH].reshape((TN, GH))
            _mm_nt(x2, w_ih, xp, 0, TN, _gemm_mode(TN, GH * F))
            _add_rows(xp, b_ih)
            NH = N * H
            st = buf[o_st:o_st + 4 * NH]
            st[:2 * NH] = 0
            h0 = st[:NH].reshape((N, H))
            c0 = st[NH:2 * NH].reshape((N, H))
            hT = st[2 * NH:3 * NH].reshape((N, H))
            cT = st[3 * NH:].reshape((N, H))
            sc = buf[o_sc:o_sc + N * _fwd_scratch_nb(code, H, GH, keep != 0)]
            if keep:
                p = plan[o]
                ch = buf[p[P_H]:p[P_H] + (T + 1) * NH].reshape((T + 1, N, H))
                cc = none
                if code == LSTM:
                    cc = buf[p[P_C]:p[P_C] + (T + 1) * NH].reshape((T + 1, N, H))
                cg = buf[p[P_GATES]:p[P_GATES] + TN * GH].reshape((T, N, GH))
                cax = none
                if code >= GRU:
                    cax = buf[p[P_AUX]:p[P_AUX] + TN * H].reshape((T, N, H))
                h_seq = buf[p[P_HSEQ]:p[P_HSEQ] + TN * H].reshape((T, N, H))
                _fwd_rows(code, _gemm_mode(N, GH * H), 1, hm, xp.reshape((T, N, GH)), w_hh,
                          b_hh, h0, c0, tmask, h_seq, hT, cT, ch, cc, cg, cax, sc, 0, N)
                seq = spec[r + 10] != 0
            else:
                h_seq = buf[b:b + TN * H].reshape((T, N, H))
                _fwd_rows(code, _gemm_mode(N, GH * H), 0, hm, xp.reshape((T, N, GH)), w_hh,
                          b_hh, h0, c0, tmask, h_seq, hT, cT, none, none, none, none, sc, 0, N)
                if spec[r + 10] == 0:  # many-to-one: the final state
                    dst = buf[b:b + NH]
                    src = st[2 * NH:3 * NH]
                    for k in range(NH):
                        dst[k] = src[k]
                    seq = False
            F = H
        else:  # dense on (T*N or N, F) rows
            O = spec[r + 2]
            w = data[spec[r + 3]:spec[r + 3] + O * F].reshape((O, F))
            y = buf[b:b + rows * O].reshape((rows, O))
            _mm_nt(x2, w, y, 0, rows, _gemm_mode(rows, O * F))
            _add_rows(y, data[spec[r + 4]:spec[r + 4] + O])
            F = O
        if not keep:
            a, b = b, a
        else:
            a = b
    if seq:  # time-major (T, N, F) -> batch-first (N, T, F)
        out = np.empty((N, T, F), dt)
        for t in range(T):
            for i in range(N):
                src = buf[a + (t * N + i) * F:a + (t * N + i + 1) * F]
                dst = out[i, t]
                for j in range(F):
                    dst[j] = src[j]
    else:
        out = np.empty((N, 1, F), dt)
        for i in range(N):
            src = buf[a + i * F:a + (i + 1) * F]
            dst = out[i, 0]
            for j in range(F):
                dst[j] = src[j]
    if not keep:
        buf = none1
    return (0 if seq else -1), hm, out, buf, plan, tmask, idc


@njit(**_JIT)
def _infer_kernel(spec, data, x, ids, is_ids, mask, has_mask):
    """``_fused_run`` without a cache: ``(status, out)``."""
    res = _fused_run(spec, data, x, ids, is_ids, mask, has_mask, 0)
    return res[0], res[2]


@njit(**_JIT)
def _train_fwd_kernel(spec, data, x, ids, is_ids, mask, has_mask):
    """``_fused_run`` keeping every op's cache."""
    return _fused_run(spec, data, x, ids, is_ids, mask, has_mask, 1)


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


@njit(**_JIT)
def _train_bwd_kernel(spec, data, grad, buf, plan, idc, tmask, has_mask, d_out, trunc, T):
    """Gradients of a ``_train_fwd_kernel`` run (its spec, cache block ``buf`` at
    ``plan``, ids, mask), added into ``grad``. ``d_out`` (N, T, F), or (N, 1, F)
    after a many-to-one op; ``trunc`` one entry per recurrent op (-1 full BPTT)."""
    dt = data.dtype
    none = np.empty((0, 0, 0), dt)
    none2 = np.empty((0, 0), dt)
    n_ops = spec[1]
    first = 1 if spec[SPEC_HEADER] == OP_EMBED else 0
    N = d_out.shape[0]
    F0 = spec[SPEC_HEADER + 2] if first else spec[SPEC_HEADER + 4]
    Fmax = F0
    GHmax = 1
    Hmax = 1
    nrec = 0
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        if spec[r] == OP_RNN:
            nrec += 1
            H = spec[r + 5]
            G = _n_gates(_cell_code(spec[r + 1], spec[r + 2], spec[r + 3] != 0)) * H
            GHmax = max(GHmax, G)
            Hmax = max(Hmax, H)
            Fmax = max(Fmax, H)
        else:
            Fmax = max(Fmax, spec[r + 2])
    TN = T * N
    # one scratch block (several big arrays freed together made glibc trim and
    # re-fault the heap every call: 800k page faults per 2,000 steps at B=32)
    ws = np.empty(2 * TN * Fmax + 2 * TN * GHmax, dt)
    dcur = ws[:TN * Fmax]
    dnext = ws[TN * Fmax:2 * TN * Fmax]
    dxp_buf = ws[2 * TN * Fmax:2 * TN * Fmax + TN * GHmax]
    dgh_buf = ws[2 * TN * Fmax + TN * GHmax:]
    F = d_out.shape[2]
    seq_out = True
    # the output is a sequence unless some recurrent op is many-to-one
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        if spec[r] == OP_RNN and spec[r + 10] == 0:
            seq_out = False
    if seq_out:  # batch-first -> time-major
        for t in range(T):
            for i in range(N):
                src = d_out[i, t]
                dst = dcur[(t * N + i) * F:(t * N + i + 1) * F]
                for j in range(F):
                    dst[j] = src[j]
    else:
        for i in range(N):
            src = d_out[i, 0]
            dst = dcur[i * F:(i + 1) * F]
            for j in range(F):
                dst[j] = src[j]
    frozen = first == 1 and spec[SPEC_HEADER + 5] != 0
    allv = np.ones(max(TN, 1), np.bool_)
    for o in range(n_ops - 1, first - 1, -1):
        r = SPEC_HEADER + o * SPEC_WIDTH
        p = plan[o]
        rows = TN if p[P_INSEQ] else N
        # the first op's input is data; a frozen embedding needs no gradient
        need_din = o > 0 and not (o == first and frozen)
        if spec[r] == OP_DENSE:
            D = spec[r + 1]
            O = spec[r + 2]
            inp = buf[p[P_IN]:p[P_IN] + rows * D].reshape((rows, D))
            dc2 = dcur[:rows * O].reshape((rows, O))
            _acc_nt(grad, spec[r + 3], dc2, inp)
            _acc_colsum(grad, spec[r + 4], dc2)
            if need_din:
                w = data[spec[r + 3]:spec[r + 3] + O * D].reshape((O, D))
                _mm_nn(dc2, w, dnext[:rows * D].reshape((rows, D)), 0, rows,
                       _gemm_mode(rows, O * D), allv)
        else:
            nrec -= 1
            D = spec[r + 4]
            H = spec[r + 5]
            code = _cell_code(spec[r + 1], spec[r + 2], spec[r + 3] != 0)
            G = _n_gates(code) * H
            NH = N * H
            lstm = code == LSTM
            ch = buf[p[P_H]:p[P_H] + (T + 1) * NH].reshape((T + 1, N, H))
            cc = none
            if lstm:
                cc = buf[p[P_C]:p[P_C] + (T + 1) * NH].reshape((T + 1, N, H))
            cg = buf[p[P_GATES]:p[P_GATES] + TN * G].reshape((T, N, G))
            cax = none
            if code >= GRU:
                cax = buf[p[P_AUX]:p[P_AUX] + TN * H].reshape((T, N, H))
            dxp = dxp_buf[:TN * G].reshape((T, N, G))
            dxp[:] = 0
            dgh = dxp
            if code == GRU:
                dgh = dgh_buf[:TN * G].reshape((T, N, G))
                dgh[:] = 0
            zs = np.zeros(2 * NH, dt)
            dh0 = np.empty((N, H), dt)
            dc0 = np.empty((N, H), dt) if lstm else none2
            dw = np.empty((G, H), dt)
            db = np.empty(G, dt)
            if spec[r + 10] != 0:
                dh_seq = dcur[:TN * H].reshape((T, N, H))
                dh_T = zs[:NH].reshape((N, H))
                has_dhseq = 1
            else:
                dh_seq = none
                dh_T = dcur[:NH].reshape((N, H))
                has_dhseq = 0
            dc_T = zs[NH:].reshape((N, H)) if lstm else none2
            w_hh = data[spec[r + 7]:spec[r + 7] + G * H].reshape((G, H))
            tk = trunc[nrec]
            if tk < 0 or tk >= T:  # full BPTT
                tk = -1
            _bwd_rows(code, _gemm_mode(N, G * H), tk, has_mask, has_dhseq, 1, ch, cc,
                      cg, cax, w_hh, tmask, dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db,
                      np.empty(N * _bwd_scratch_nb(code, H, G), dt), 0, N)
            gw = grad[spec[r + 7]:spec[r + 7] + G * H]
            dwf = dw.reshape(G * H)
            for k in range(G * H):
                gw[k] += dwf[k]
            gb = grad[spec[r + 9]:spec[r + 9] + G]
            for k in range(G):
                gb[k] += db[k]
            inp = buf[p[P_IN]:p[P_IN] + TN * D].reshape((TN, D))
            dx2 = dxp.reshape((TN, G))
            _acc_nt(grad, spec[r + 6], dx2, inp)
            _acc_colsum(grad, spec[r + 8], dx2)
            if need_din:
                w_ih = data[spec[r + 6]:spec[r + 6] + G * D].reshape((G, D))
                _mm_nn(dx2, w_ih, dnext[:TN * D].reshape((TN, D)), 0, TN,
                       _gemm_mode(TN, G * D), allv)
        dcur, dnext = dnext, dcur
    if first and not frozen:  # scatter-add into the (trainable) embedding table
        E = spec[SPEC_HEADER + 2]
        off = spec[SPEC_HEADER + 3]
        for t in range(T):
            for i in range(N):
                g = grad[off + idc[i, t] * E:off + (idc[i, t] + 1) * E]
                src = dcur[(t * N + i) * E:(t * N + i + 1) * E]
                for j in range(E):
                    g[j] += src[j]


# ----------------------------------------------------------------------------
# Generation: the whole sampling loop (one-to-many), reusing the forward loop.
# ----------------------------------------------------------------------------

# The sampling rule runs without fast-math: its sums and comparisons are those of
# the reference, in the same order (a reassociated running sum could move a draw).
_EXACT = dict(nogil=True, cache=True, error_model="numpy")


@njit(**_EXACT)
def _kth_largest(a, n, k):
    """The k-th largest (1-based) of ``a[:n]`` (quickselect; reorders ``a``).

    The value is unique whatever the pivots, so the result is deterministic.
    """
    lo = 0
    hi = n - 1
    target = k - 1
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i = lo
        j = hi
        while i <= j:  # descending order: larger values to the left
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]


@njit(**_EXACT)
def _sample_token(logits, banned, temperature, top_k, u, z, work):
    """Draw one token by inverse CDF: the rule of ``numpy_backend.sample_token``.

    ``z_v = logits_v / temperature`` (float64); candidates are the tokens not
    banned; ``top_k > 0`` keeps the ``top_k`` largest ``z`` among them (ties:
    lower ids first); ``p_v = exp(z_v - max)`` over the kept tokens, summed in
    token order; the token is the first whose running sum exceeds ``u * sum``
    (round-off fallback: the last kept token with ``p > 0``). -1 if every token
    is banned (callers prevent it). ``z`` and ``work`` are (V,) float64 scratch.
    """
    V = logits.shape[0]
    n = 0
    m = 0.0
    for v in range(V):
        if not banned[v]:
            zv = np.float64(logits[v]) / temperature
            z[v] = zv
            work[n] = zv
            if n == 0 or zv > m:
                m = zv
            n += 1
    if n == 0:
        return -1
    use_k = top_k > 0 and top_k < n
    thr = 0.0
    ties = 0
    if use_k:
        thr = _kth_largest(work, n, top_k)
        ties = top_k
        for v in range(V):  # how many ties at the threshold may stay
            if not banned[v] and z[v] > thr:
                ties -= 1
    s = 0.0
    for v in range(V):
        if banned[v]:
            z[v] = -1.0
            continue
        if use_k and not (z[v] > thr):
            if z[v] == thr and ties > 0:
                ties -= 1
            else:
                z[v] = -1.0
                continue
        p = np.exp(z[v] - m)
        z[v] = p
        s += p
    target = u * s
    cum = 0.0
    last = -1
    for v in range(V):
        p = z[v]
        if p < 0:
            continue
        cum += p
        if p > 0:
            last = v
        if cum > target:
            return v
    return last


@njit(**_JIT)
def _generate_kernel(code, blas, blas_out, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh,
                     w_out, b_out, h, c, start, forced, banned, uniforms, temperature,
                     top_k, end_token, tokens, lengths):
    """The generation loop (see ``numpy_backend.generate``): feed each row's token
    through every layer (``_fwd_rows`` with T = 1, finished rows masked so their
    state stays), project the top state to logits (``_mm_nt``), choose the next
    token per row (forced, or ``_sample_token``), repeat.

    ``h``/``c`` (L, N, H) are copied, not modified; ``tokens`` (N, T) and
    ``lengths`` (N,) are written. Token ids were checked by the caller.
    """
    L, GH, H = w_hh.shape
    N = h.shape[1]
    V = w_out.shape[0]
    T = forced.shape[1]
    dt = xp_table.dtype
    lstm = code == LSTM
    NC = N if lstm else 0
    HC = H if lstm else 0
    hs = np.empty((L, N, H), dt)
    cs = np.empty((L, NC, HC), dt)
    for layer in range(L):
        for i in range(N):
            for j in range(H):
                hs[layer, i, j] = h[layer, i, j]
            for j in range(HC):
                cs[layer, i, j] = c[layer, i, j]
    tok = np.empty(N, np.int64)
    active = np.ones((1, N), np.bool_)  # the time loop's mask (T = 1)
    for i in range(N):
        tok[i] = start[i]
        lengths[i] = T
        for t in range(T):
            tokens[i, t] = end_token
    xp = np.empty((1, N, GH), dt)
    xp0 = xp[0]
    hseq = np.empty((1, N, H), dt)
    hT = np.empty((N, H), dt)
    cT = np.empty((NC, HC), dt)
    none3 = np.empty((0, 0, 0), dt)
    scratch = np.empty(N * _fwd_scratch_nb(code, H, GH, False), dt)
    logits = np.empty((N, V), dt)
    z = np.empty(V, np.float64)
    work = np.empty(V, np.float64)
    n_active = N
    for t in range(T):
        if n_active == 0:
            break
        for layer in range(L):
            if layer == 0:
                for i in range(N):
                    src = xp_table[tok[i]]
                    dst = xp0[i]
                    for j in range(GH):
                        dst[j] = src[j]
            else:
                # xp = h_{l-1} W_ih^T + b_ih (layer l reads the new state of l - 1)
                _mm_nt(hs[layer - 1], w_ih_rest[layer - 1], xp0, 0, N, blas)
                _add_rows(xp0, b_ih_rest[layer - 1])
            hl = hs[layer]
            cl = cs[layer]
            _fwd_rows(code, blas, 0, 1, xp, w_hh[layer], b_hh[layer], hl, cl, active, hseq,
                      hT, cT, none3, none3, none3, none3, scratch, 0, N)
            for i in range(N):
                for j in range(H):
                    hl[i, j] = hT[i, j]
                for j in range(HC):
                    cl[i, j] = cT[i, j]
        # logits = h_top W_out^T + b_out (the bias only where a token is drawn)
        _mm_nt(hs[L - 1], w_out, logits, 0, N, blas_out)
        for i in range(N):
            if not active[0, i]:
                continue
            v = forced[i, t]
            if v < 0:
                li = logits[i]
                for j in range(V):
                    li[j] += b_out[j]
                v = _sample_token(li, banned, temperature, top_k, uniforms[i, t], z, work)
            if v == end_token or v < 0:
                lengths[i] = t
                active[0, i] = False
                n_active -= 1
            else:
                tokens[i, t] = v
                tok[i] = v


# ----------------------------------------------------------------------------
# Compiled entry points, per dtype (lazy; explicit signatures).
# ----------------------------------------------------------------------------

def _signatures(F):
    def ro(nd, dtype=F):
        return types.Array(dtype, nd, "C", readonly=True)

    def rw(nd):
        return types.Array(F, nd, "C")

    i64 = types.int64
    fwd = (i64, i64, i64, i64, ro(3), ro(2), ro(1), ro(2), ro(2), ro(2, types.boolean),
           rw(3), rw(2), rw(2), rw(3), rw(3), rw(3), rw(3), rw(1))
    bwd = (i64, i64, i64, i64, i64, i64, ro(3), ro(3), ro(3), ro(3), ro(2),
           ro(2, types.boolean), ro(3), ro(2), ro(2), rw(3), rw(3), rw(2), rw(2), rw(2), rw(1),
           rw(1))
    fused_in = (ro(1, i64), ro(1), ro(3), ro(2, i64), i64, ro(2, types.uint8), i64)
    return {
        "infer": types.Tuple((i64, rw(3)))(*fused_in),
        "train_fwd": types.Tuple((i64, i64, rw(3), rw(1), types.Array(i64, 2, "C"),
                                  types.Array(types.boolean, 2, "C"),
                                  types.Array(i64, 2, "C")))(*fused_in),
        "train_bwd": types.void(ro(1, i64), ro(1), rw(1), ro(1), ro(2, i64), ro(2, i64),
                                ro(2, types.boolean), i64, ro(3), ro(1, i64), i64),
        "generate": types.void(i64, i64, i64, ro(2), ro(3), ro(2), ro(3), ro(2), ro(2), ro(1),
                               ro(3), ro(3), ro(1, i64), ro(2, i64), ro(1, types.boolean),
                               ro(2, types.float64), types.float64, i64, i64,
                               types.Array(i64, 2, "C"), types.Array(i64, 1, "C")),
        "fwd_rows": types.void(*fwd, i64, i64),
        "forward_par": types.void(i64, *fwd),
        "bwd_rows": types.void(*bwd, i64, i64),
        "backward_par": types.void(i64, *bwd[:5], *bwd[6:]),
    }


_DISPATCHERS = {"infer": _infer_kernel, "train_fwd": _train_fwd_kernel,
                "train_bwd": _train_bwd_kernel, "generate": _generate_kernel, "fwd_rows": _fwd_rows,
                "forward_par": _forward_par, "bwd_rows": _bwd_rows,
                "backward_par": _backward_par}
_entry = {}
_compile_lock = threading.Lock()


def _kernel(name, dtype):
    """The compiled entry point of kernel ``name`` for ``dtype``, compiled (or
    loaded from the on-disk cache) on first use."""
    key = (name, dtype)
    fn = _entry.get(key)
    if fn is None:
        with _compile_lock:
            fn = _entry.get(key)
            if fn is None:
                sig = _signatures(numba.from_dtype(dtype))[name]
                disp = _DISPATCHERS[name]
                disp.compile(sig)
                # The compiled version itself: no type resolution per call.
                fn = getattr(disp.overloads.get(sig.args), "entry_point", None) or disp
                _entry[key] = fn
    return fn


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_A1 = {dt: np.empty(0, dt) for dt in (_F32, _F64)}
_A2 = {dt: np.empty((0, 0), dt) for dt in (_F32, _F64)}
_A3 = {dt: np.empty((0, 0, 0), dt) for dt in (_F32, _F64)}
_NO_MASK = np.ones((1, 1), np.bool_)
_empty = np.empty
_zeros = np.zeros
_contig = np.ascontiguousarray
_get_num_threads = numba.get_num_threads


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


def _blocks(T, N, H, GH):
    """Row blocks for a problem: 1 (the serial entry point) or one per thread
    (capped by ``cyrnn.set_num_threads``), each of at least ``_PAR_MIN_ROWS``
    rows, when the whole call has at least ``_PAR_MIN_WORK`` multiply-adds
    (one parallel region per call, so its cost is paid once, not per step)."""
    if N < 2 * _PAR_MIN_ROWS or T * N * GH * H < _PAR_MIN_WORK or not _parallel_ok:
        return 1
    n = _get_num_threads()
    cap = _threads._num_threads
    if cap is not None and cap < n:
        n = cap
    return min(n, N // _PAR_MIN_ROWS)


def _mask(mask):
    m = _contig(mask)
    return m if m.dtype == np.bool_ else m != 0


def _code(cell):
    return _CODES[cell.kind, cell.activation if cell.kind == "rnn" else cell.reset_after]


def _reference():
    from . import numpy_backend
    return numpy_backend


# ----------------------------------------------------------------------------
# The kernel contract.
# ----------------------------------------------------------------------------

def forward(cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False):
    """Run the cell over ``T`` steps; see ``numpy_backend.forward``."""
    xp = _contig(xp)
    dt = xp.dtype
    T, N, GH = xp.shape
    H = w_hh.shape[1]
    if dt not in _A1 or T == 0 or N == 0 or H == 0:
        return _reference().forward(cell, xp, w_hh, b_hh, h0, c0, mask, keep_cache)
    code = _code(cell)
    lstm = code == LSTM
    gru = code >= GRU
    h_seq = _empty((T, N, H), dt)
    hT = _empty((N, H), dt)
    cT = _empty((N, H), dt) if lstm else _A2[dt]
    if keep_cache:
        ch = _empty((T + 1, N, H), dt)
        cc = _empty((T + 1, N, H), dt) if lstm else _A3[dt]
        cg = _empty((T, N, GH), dt)
        cax = _empty((T, N, H), dt) if gru else _A3[dt]
    else:
        ch = cc = cg = cax = _A3[dt]
    nb = _blocks(T, N, H, GH)
    args = (code, _blas_mode(N, GH * H, nb), 1 if keep_cache else 0,
            0 if mask is None else 1, xp, _contig(w_hh, dt), _contig(b_hh, dt),
            _contig(h0, dt), _contig(c0, dt) if lstm else _A2[dt],
            _NO_MASK if mask is None else _mask(mask), h_seq, hT, cT, ch, cc, cg, cax,
            _empty(N * _fwd_scratch(code, H, GH, keep_cache), dt))
    if nb <= 1:
        (_entry.get(("fwd_rows", dt)) or _kernel("fwd_rows", dt))(*args, 0, N)
    else:
        _run_par("forward_par", dt, nb, args)
    if not keep_cache:
        return h_seq, hT, (cT if lstm else None), None
    cache = {"h": ch, "gates": cg}
    if lstm:
        cache["c"] = cc
    if gru:
        cache["aux"] = cax
    return h_seq, hT, (cT if lstm else None), cache


def backward(cell, cache, w_hh, mask=None, dh_seq=None, dh_T=None, dc_T=None, truncate=None):
    """Gradients through ``forward``; see ``numpy_backend.backward``."""
    cg = _contig(cache["gates"])
    dt = cg.dtype
    T, N, GH = cg.shape
    H = w_hh.shape[1]
    if dt not in _A1 or T == 0 or N == 0 or H == 0:
        return _reference().backward(cell, cache, w_hh, mask, dh_seq, dh_T, dc_T, truncate)
    code = _code(cell)
    lstm = code == LSTM
    dxp = _zeros((T, N, GH), dt)
    # dgh differs from dxp only in reset_after GRU's n block (dn * r).
    dgh = _zeros((T, N, GH), dt) if code == GRU else dxp
    dh0 = _empty((N, H), dt)
    dc0 = _empty((N, H), dt) if lstm else _A2[dt]
    dw = _empty((GH, H), dt)
    db = _empty(GH, dt)
    nb = _blocks(T, N, H, GH)
    head = (code, _blas_mode(N, GH * H, nb),
            -1 if truncate is None or truncate >= T else int(truncate),
            0 if mask is None else 1, 0 if dh_seq is None else 1)
    args = (_contig(cache["h"], dt), _contig(cache["c"], dt) if lstm else _A3[dt], cg,
            _contig(cache["aux"], dt) if code >= GRU else _A3[dt], _contig(w_hh, dt),
            _NO_MASK if mask is None else _mask(mask),
            _A3[dt] if dh_seq is None else _contig(dh_seq, dt),
            _zeros((N, H), dt) if dh_T is None else _contig(dh_T, dt),
            (_zeros((N, H), dt) if dc_T is None else _contig(dc_T, dt)) if lstm else _A2[dt],
            dxp, dgh, dh0, dc0, dw, db, _empty(N * _bwd_scratch(code, H, GH), dt))
    if nb <= 1:
        (_entry.get(("bwd_rows", dt)) or _kernel("bwd_rows", dt))(*head, 1, *args, 0, N)
    else:
        _run_par("backward_par", dt, nb, head + args)
    return dxp, dh0, (dc0 if lstm else None), dw, db


def step(cell, xp_t, w_hh, b_hh, h, c=None):
    """Single step used by generation: the forward time loop's step with
    ``T = 1`` and no cache. Returns ``(h_new, c_new)``."""
    xp_t = _contig(xp_t)
    dt = xp_t.dtype
    N, GH = xp_t.shape
    H = w_hh.shape[1]
    if dt not in _A1 or N == 0 or H == 0:
        return _reference().step(cell, xp_t, w_hh, b_hh, h, c)
    code = _code(cell)
    lstm = code == LSTM
    hT = _empty((N, H), dt)
    cT = _empty((N, H), dt) if lstm else _A2[dt]
    a3 = _A3[dt]
    nb = _blocks(1, N, H, GH)
    args = (code, _blas_mode(N, GH * H, nb), 0, 0, xp_t.reshape(1, N, GH),
            _contig(w_hh, dt), _contig(b_hh, dt), _contig(h, dt),
            _contig(c, dt) if lstm else _A2[dt], _NO_MASK, _empty((1, N, H), dt), hT, cT,
            a3, a3, a3, a3, _empty(N * _fwd_scratch(code, H, GH, False), dt))
    if nb <= 1:
        (_entry.get(("fwd_rows", dt)) or _kernel("fwd_rows", dt))(*args, 0, N)
    else:
        _run_par("forward_par", dt, nb, args)
    return hT, (cT if lstm else None)


_ndarray = np.ndarray
_I64 = np.dtype(np.int64)
_NO_IDS = np.empty((0, 0), np.int64)


_U8 = np.dtype(np.uint8)
_BOOL = np.dtype(np.bool_)
_NO_MASK_U8 = np.ones((1, 1), np.uint8)
FUSED_MASKS = True  # infer / train_forward take the (N, T) validity mask


def _fused_args(name, spec, data, x, mask):
    """The compiled entry point ``name`` and its arguments for ``spec``, ``data``,
    ``x`` and ``mask`` (shared by ``infer`` and ``train_forward``): raises for a
    parameter buffer of the wrong kind, passes ``x``/``mask`` on only in the
    exact form the kernel takes (else only the spec is checked, status 1)."""
    if type(data) is not _ndarray:
        raise TypeError(f"parameter buffer must be a numpy array, got {type(data).__name__}")
    dt = data.dtype
    if not dt.isnative:
        raise ValueError("parameter buffer must be native-endian")
    fn = _entry.get((name, dt))
    if fn is None:
        if dt not in _A1:
            S = len(spec)
            if (S < SPEC_HEADER + SPEC_WIDTH or (S - SPEC_HEADER) % SPEC_WIDTH != 0
                    or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
                    or spec[1] != (S - SPEC_HEADER) // SPEC_WIDTH):
                raise ValueError("unsupported inference spec")  # checked first, as Cython
            raise TypeError("parameter buffer must be float32 or float64")
        fn = _kernel(name, dt)
    if (type(spec) is not _ndarray or spec.dtype is not _I64 or spec.ndim != 1
            or not spec.flags.c_contiguous):
        spec = np.ascontiguousarray(spec)  # a list, or strided: the kernel checks it
        if spec.ndim != 1 or spec.dtype != _I64:
            raise ValueError("unsupported inference spec")
    if data.ndim != 1 or not data.flags.c_contiguous or not data.flags.aligned:
        raise ValueError("parameter buffer must be a C-contiguous 1-D array")
    spec_only = (fn, spec, data, _A3[dt], _NO_IDS, -1, _NO_MASK_U8, 0)
    if type(x) is not _ndarray:
        return spec_only
    flags = x.flags
    if not (flags.c_contiguous and flags.aligned):
        return spec_only
    xd = x.dtype
    if xd == dt and x.ndim == 3:
        xa, ids, is_ids = x, _NO_IDS, 0
    elif xd == _I64 and x.ndim == 2 and xd.isnative:
        xa, ids, is_ids = _A3[dt], x, 1
    else:
        return spec_only
    if mask is None:
        return fn, spec, data, xa, ids, is_ids, _NO_MASK_U8, 0
    if type(mask) is not _ndarray:
        return spec_only
    md = mask.dtype
    if ((md is not _BOOL and md != _BOOL and md != _U8) or mask.ndim != 2
            or not mask.flags.c_contiguous or mask.shape != x.shape[:2]):
        return spec_only
    return fn, spec, data, xa, ids, is_ids, (mask if md == _U8 else mask.view(_U8)), 1


def infer(spec, data, x, mask=None):
    """Fused inference of a ``Sequential`` (see ``docs/architecture.md``, "Fused
    model calls"): the whole model in one compiled call, without the GIL.

    ``spec``: ``Sequential.inference_spec()`` (int64); ``data``: the model's flat
    parameter buffer (float32/float64, C-contiguous). ``x``: (N, T, D) floats of
    ``data``'s dtype, or (N, T) int64 token ids when the first op is an
    embedding; C-contiguous and aligned. ``mask``: None or an (N, T) bool/uint8
    C-contiguous array of valid steps (combined with ``ids != 0`` under the
    embedding's ``mask_zero``). Returns the output array, or None when ``x`` or
    ``mask`` is not in that exact form or holds values the general path must
    judge (NaN/inf, ids out of range, a sequence of padding ids only under
    ``mask_zero``): the caller then takes the validating layer-by-layer path. A
    corrupt spec raises ``ValueError``.

    Only the exact form of ``x`` and ``mask`` is checked here (a few attribute
    reads); the spec's checks (whatever ``x`` is), the scan of ``x`` and the model
    run in the compiled ``_fused_run``.
    """
    fn, *args = _fused_args("infer", spec, data, x, mask)
    status, out = fn(*args)
    if status <= 0:  # 0: a sequence (N, T, F); -1: after many-to-one, (N, 1, F)
        return out if status == 0 else out[:, 0]
    if status == 1:
        return None
    exc, msg = _INFER_ERRORS[status]
    raise exc(msg)


# Largest T * N * 4 * max(hidden or width) the fused training step takes (see train_forward).
_FUSED_TRAIN_MAX = 32768
_SPEND_LOCK = threading.Lock()  # guards FusedCache.buf hand-over in train_backward


class FusedCache:
    """What ``train_forward`` keeps for ``train_backward``: the private copy of the
    spec it ran, the parameter buffer, every op's cache in one block (``buf`` at
    the offsets of ``plan``), the checked ids and the time-major validity mask.
    ``buf`` is None once the backward ran."""

    __slots__ = ("spec", "spec_bytes", "data", "buf", "plan", "ids", "mask", "masked",
                 "N", "T", "seq_out", "F_out", "nrec")


def train_forward(spec, data, x, mask=None):
    """Training forward of a ``Sequential``: ``(output, cache)``, or None as in
    :func:`infer` (same ``x`` and ``mask``). The cache goes to
    :func:`train_backward` once."""
    if type(spec) is _ndarray and spec.dtype is _I64 and spec.ndim == 1:
        spec = spec.copy()  # private: the backward refuses a spec changed since
    else:
        spec = np.array(spec, np.int64)
        if spec.ndim != 1:
            raise ValueError("unsupported inference spec")
    if type(x) is _ndarray and x.ndim >= 2 and spec.shape[0] > SPEC_HEADER:
        # Bigger steps take the layer path: the fused step's per-call arrays then
        # come from fresh pages every call (glibc trims them between calls): at
        # dino-b32 (T*N*4H = 76,800) 780k page faults per 2,000 steps and 1.6 ms per
        # step against 0.83 ms on the layer path; at batch 1 fused is ~2x faster.
        width = int(spec[SPEC_HEADER + 5::SPEC_WIDTH].max(initial=1)) * 4
        if x.shape[0] * x.shape[1] * width > _FUSED_TRAIN_MAX:
            return None
    fn, *args = _fused_args("train_fwd", spec, data, x, mask)
    status, masked, out, buf, plan, tmask, ids = fn(*args)
    if status > 1:
        exc, msg = _INFER_ERRORS[status]
        raise exc(msg)
    if status == 1:
        return None
    cache = FusedCache()
    cache.spec = spec
    cache.spec_bytes = spec.tobytes()
    cache.data = data
    cache.buf = buf
    cache.plan = plan
    cache.ids = ids
    cache.mask = tmask
    cache.masked = masked
    cache.N = out.shape[0]
    cache.T = x.shape[1]
    cache.F_out = out.shape[2]
    cache.seq_out = status == 0
    cache.nrec = spec[SPEC_HEADER::SPEC_WIDTH].tolist().count(OP_RNN)
    return (out if status == 0 else out[:, 0]), cache


def train_backward(spec, data, grad, cache, d_out, truncate):
    """Add the gradients of the forward that made ``cache`` into ``grad``.

    ``spec`` and ``data`` must be those of the forward (same spec values, same
    buffer object). ``d_out``: the loss gradient, shaped and typed like the
    output (C order). ``truncate``: one entry per recurrent op, in op order: -1
    for full BPTT, else k (the gradient through at most k+1 cells, as the
    layers' ``bptt_truncate``). Arguments are checked first (an error leaves the
    cache usable); the run then spends the cache (a second call raises).
    """
    if type(cache) is not FusedCache:
        raise TypeError("cache must be a FusedCache from train_forward")
    buf = cache.buf
    if buf is None:
        raise RuntimeError("this training forward was already backpropagated")
    if type(spec) is not _ndarray or spec.dtype is not _I64:
        spec = np.asarray(spec)
    if (data is not cache.data or spec.dtype != _I64 or spec.ndim != 1
            or spec.tobytes() != cache.spec_bytes):
        raise ValueError("train_backward needs the spec and parameters of its forward")
    if type(grad) is not _ndarray:
        raise TypeError(f"grad must be a numpy array, got {type(grad).__name__}")
    dt = data.dtype
    gf = grad.flags
    if (grad.dtype != dt or not grad.dtype.isnative or grad.ndim != 1
            or grad.size != data.size or not gf.c_contiguous or not gf.aligned
            or not gf.writeable):
        raise ValueError("grad must be an aligned, native-endian, C-contiguous 1-D array "
                         "like the parameter buffer (writable)")
    if type(d_out) is not _ndarray:
        raise TypeError("d_out must be a numpy array")
    N, T, F = cache.N, cache.T, cache.F_out
    df = d_out.flags
    if (d_out.dtype != dt or not d_out.dtype.isnative or not df.c_contiguous
            or not df.aligned
            or d_out.shape != ((N, T, F) if cache.seq_out else (N, F))):
        raise ValueError("d_out must be a C-contiguous array shaped and typed like the output")
    tr = truncate
    if (type(tr) is not _ndarray or tr.dtype is not _I64 or tr.ndim != 1
            or not tr.flags.c_contiguous):
        tr = np.asarray(truncate)
        if tr.dtype.kind not in "iu":
            raise ValueError("truncate must hold one integer per recurrent op")
        tr = np.ascontiguousarray(tr, np.int64)
    nrec = cache.nrec
    if tr.ndim != 1 or tr.shape[0] != nrec:
        raise ValueError(f"truncate needs {nrec} entries")
    with _SPEND_LOCK:  # check-and-spend at once: of two concurrent calls one runs
        buf = cache.buf
        if buf is None:
            raise RuntimeError("this training forward was already backpropagated")
        cache.buf = None  # spent from here on
    fn = _entry.get(("train_bwd", dt)) or _kernel("train_bwd", dt)
    fn(cache.spec, data, grad, buf, cache.plan, cache.ids, cache.mask, cache.masked,
       d_out if cache.seq_out else d_out.reshape(N, 1, F), tr, T)


def generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
             start, forced, banned, uniforms, temperature, top_k, end_token):
    """The whole sampling loop in compiled code; see ``numpy_backend.generate``.

    Token-for-token equal to the reference for the same ``uniforms`` (up to
    round-off landing exactly on a sampling boundary). Inputs the kernel does not
    take as they are (degenerate or inconsistent shapes, another dtype, token ids
    outside ``xp_table``) go to the reference, which gives its result or error.
    """
    xp_table = _contig(xp_table)
    dt = xp_table.dtype
    forced = _contig(forced, np.int64)
    start = _contig(start, np.int64)
    banned = _contig(banned, np.bool_)
    uniforms = _contig(uniforms, np.float64)
    w_hh = _contig(w_hh, dt)
    w_out = _contig(w_out, dt)
    n, T = forced.shape if forced.ndim == 2 else (0, 0)
    L, GH, H = w_hh.shape if w_hh.ndim == 3 else (0, 0, 0)
    V = w_out.shape[0] if w_out.ndim == 2 else 0
    Vx = xp_table.shape[0] if xp_table.ndim == 2 else 0
    lstm = cell.kind == "lstm"
    h = _contig(h, dt)
    c = _contig(c, dt) if lstm and c is not None else None
    rest = L > 1
    if rest:
        w_ih_rest = _contig(w_ih_rest, dt)
        b_ih_rest = _contig(b_ih_rest, dt)
    b_out = _contig(b_out, dt)
    b_hh = _contig(b_hh, dt)
    if (dt not in _A1 or min(n, T, L, H, V, Vx) == 0 or GH != cell.n_gates * H
            or xp_table.shape != (Vx, GH) or b_hh.shape != (L, GH) or w_out.shape != (V, H)
            or b_out.shape != (V,) or h.shape != (L, n, H)
            or (lstm and (c is None or c.shape != h.shape))
            or (rest and (w_ih_rest.shape != (L - 1, GH, H) or b_ih_rest.shape != (L - 1, GH)))
            or start.shape != (n,) or banned.shape != (V,) or uniforms.shape != (n, T)
            or start.min() < 0 or start.max() >= Vx or forced.max() >= Vx
            or V > Vx):  # a sampled token indexes xp_table
        return _reference().generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out,
                                     b_out, h, c, start, forced, banned, uniforms, temperature,
                                     top_k, end_token)
    tokens = _empty((n, T), np.int64)
    lengths = _empty(n, np.int64)
    fn = _entry.get(("generate", dt)) or _kernel("generate", dt)
    fn(_code(cell), _blas_mode(n, GH * H, 1), _blas_mode(n, V * H, 1), xp_table,
       w_ih_rest if rest else _A3[dt], b_ih_rest if rest else _A2[dt], w_hh, b_hh, w_out,
       b_out, h, c if lstm else _A3[dt], start, forced, banned, uniforms, float(temperature),
       int(top_k), int(end_token), tokens, lengths)
    return tokens, lengths


def _run_par(name, dt, nb, args):
    """The parallel kernel ``name`` on ``nb`` row blocks."""
    fn = _entry.get((name, dt)) or _kernel(name, dt)
    if _par_lock is not None:
        with _par_lock:
            fn(nb, *args)
    else:
        fn(nb, *args)


def _first_call_demo(dtype="float64"):  # pragma: no cover - measurement helper
    """Print the first-call latencies (compilation, or loading from the on-disk
    cache) of the serial and the parallel kernels, for an LSTM in ``dtype``:
    wall clock, and this process's CPU time in brackets."""
    import time

    from ._cell import Cell

    rng = np.random.default_rng(0)
    cell = Cell("lstm")
    report = []
    for what, (T, N, H) in (("serial", (10, 4, 8)), ("parallel", (10, 64, 64))):
        xp = rng.standard_normal((T, N, 4 * H)).astype(dtype)
        w = (rng.standard_normal((4 * H, H)) * 0.3).astype(dtype)
        b = np.zeros(4 * H, dtype)
        h0 = np.zeros((N, H), dtype)
        t0, c0 = time.perf_counter(), time.process_time()
        out = forward(cell, xp, w, b, h0, h0, None, True)
        t1, c1 = time.perf_counter(), time.process_time()
        backward(cell, out[3], w, None, np.ones((T, N, H), dtype))
        t2, c2 = time.perf_counter(), time.process_time()
        report.append(f"{what} ({_blocks(T, N, H, 4 * H)} block(s)): forward {t1 - t0:.2f} s "
                      f"[{c1 - c0:.2f}], backward {t2 - t1:.2f} s [{c2 - c1:.2f}]")
    print(f"numba backend, {dtype}, threading layer {THREADING_LAYER}: " + "; ".join(report))
