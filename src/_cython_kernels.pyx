# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Compiled recurrent kernels for ``cyrnn.backends.cython_backend``.

One implementation of the kernel contract (``docs/architecture.md``) for every
cell, in float32 and float64 (fused type ``floating``):

* the cell math lives in one forward and one backward row function per cell
  (``rnn_fwd``/``rnn_bwd``, ``lstm_fwd``/``lstm_bwd``, ``gru_fwd``/``gru_bwd``);
  a row function updates one sequence (one batch row) of one step;
* one time loop for the forward pass (``_forward_loop``) and one backward sweep
  (``_backward_sweep``) serve all cells; they dispatch on the cell kind per step;
* the recurrent products (``h W_hh^T`` forward, ``dgh W_hh`` backward) and the
  final ``dW_hh`` contraction go through ``scipy.linalg.cython_blas`` GEMM;
  mid-sized GEMMs are cut into blocks OpenBLAS runs on the calling thread
  (``_gemm``), and the own small-GEMM kernels can take batches of at most
  ``small_gemm_rows`` rows (off by default: OpenBLAS's small-matrix kernels were
  faster at every batch size measured, see ``SMALL_GEMM_ROWS``);
* float32 gate activations are vectorised polynomial approximations (a few
  ulp; exact saturation; NaN propagates); float64 uses libm;
* the row loops run in parallel over the batch (OpenMP ``prange``) when the
  step is large enough and the module was built with OpenMP, serially otherwise.

Everything below the ``def`` entry points runs without the GIL. The contract
kernels allocate nothing (the Python wrapper allocates outputs and scratch with
NumPy); the fused whole-model calls at the end allocate their scratch per call.

Layout reminder: a C-contiguous ``(R, C)`` array is the column-major ``(C, R)``
matrix with leading dimension ``C``; the GEMM calls below are written in those
column-major terms.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcmp, memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

# Cell kind and activation codes: Cell.kind_code / Cell.activation_code.
cdef enum:
    RNN = 0
    LSTM = 1
    GRU = 2
    ACT_TANH = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2

cimport numpy as cnp
from libc.stdlib cimport malloc, free

cnp.import_array()

include "config.pxi"
include "mathfn.pxi"
include "gemm.pxi"
include "cells.pxi"
include "loops.pxi"
include "generate.pxi"
include "fused.pxi"


# ----------------------------------------------------------------------------
# Python entry points (called by cyrnn.backends.cython_backend).
# ----------------------------------------------------------------------------

def forward(int kind, int act, bint reset_after, bint keep_cache,
            const floating[:, :, ::1] xp, const floating[:, ::1] w_hh,
            const floating[::1] b_hh, const uint8_t[:, ::1] mask,
            floating[:, :, ::1] h, floating[:, :, ::1] c,
            floating[:, :, ::1] gates, floating[:, :, ::1] aux,
            floating[:, :, ::1] h_seq, floating[:, ::1] gh,
            Py_ssize_t small_gemm_rows=SMALL_GEMM_ROWS):
    """Run the forward time loop.

    xp (T, N, G*H); w_hh (G*H, H); b_hh (G*H,); mask (T, N) uint8;
    h, c: state slots (T+1 or 2, N, H) with slot 0 = h0/c0 (c None unless LSTM);
    gates (T or 1, N, G*H); aux (T or 1, N, H) or None (GRU only);
    h_seq (T, N, H) output; gh (N, G*H) scratch. All shapes are the caller's
    responsibility (no checks). Batches of at most ``small_gemm_rows`` rows
    compute the recurrent products with the own small-GEMM kernel, larger ones
    with BLAS.
    """
    cdef Py_ssize_t T = xp.shape[0], N = xp.shape[1], H = w_hh.shape[1]
    cdef Py_ssize_t S = h.shape[0]
    cdef floating* cptr = NULL
    cdef floating* auxptr = NULL
    if c is not None:
        cptr = &c[0, 0, 0]
    if aux is not None:
        auxptr = &aux[0, 0, 0]
    with nogil:
        _forward_loop(kind, act, reset_after, T, N, H, &xp[0, 0, 0], &w_hh[0, 0],
                      &b_hh[0], &mask[0, 0], &h[0, 0, 0], cptr, S, &gates[0, 0, 0],
                      auxptr, keep_cache, &h_seq[0, 0, 0], &gh[0, 0],
                      small_gemm_rows)


def backward(int kind, int act, bint reset_after, Py_ssize_t truncate,
             const floating[:, :, ::1] h, const floating[:, :, ::1] c,
             const floating[:, :, ::1] gates, const floating[:, :, ::1] aux,
             const floating[:, ::1] w_hh, const uint8_t[:, ::1] mask,
             const floating[:, :, ::1] dh_seq, const floating[:, ::1] dh_T,
             const floating[:, ::1] dc_T,
             floating[:, :, ::1] dxp, floating[:, :, ::1] dgh,
             floating[:, ::1] dh0, floating[:, ::1] dc0,
             floating[:, :, ::1] work, floating[:, ::1] dg, int64_t[::1] budget,
             floating[:, ::1] dw_hh, floating[::1] db_hh,
             Py_ssize_t small_gemm_rows=SMALL_GEMM_ROWS):
    """Gradients through the forward pass.

    truncate: -1 for full BPTT, else k >= 0 (k < T). h (T+1, N, H) cache states;
    c (T+1, N, H) or None; gates (T, N, G*H); aux (T, N, H) or None;
    dh_seq/dh_T/dc_T or None; dxp, dgh (T, N, G*H) zero-filled outputs (dgh
    None for RNN and LSTM, whose recurrent pre-activation gradient equals dxp);
    dh0, dc0 (N, H) outputs (dc0 None unless LSTM); work (5, N, H) and
    dg (N, G*H), budget (N,) scratch; dw_hh (G*H, H), db_hh (G*H,) outputs.
    small_gemm_rows: as in ``forward``.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = w_hh.shape[1]
    cdef const floating* cp = NULL
    cdef const floating* ap = NULL
    cdef const floating* seqp = NULL
    cdef const floating* dhTp = NULL
    cdef const floating* dcTp = NULL
    cdef floating* dc0p = NULL
    cdef floating* dghp = NULL
    if dgh is not None:
        dghp = &dgh[0, 0, 0]
    elif kind == GRU:
        raise ValueError("GRU needs its own dgh array")
    if c is not None:
        cp = &c[0, 0, 0]
    if aux is not None:
        ap = &aux[0, 0, 0]
    if dh_seq is not None:
        seqp = &dh_seq[0, 0, 0]
    if dh_T is not None:
        dhTp = &dh_T[0, 0]
    if dc_T is not None:
        dcTp = &dc_T[0, 0]
    if dc0 is not None:
        dc0p = &dc0[0, 0]
    with nogil:
        _backward_all(kind, act, reset_after, truncate, T, N, H, &w_hh[0, 0],
                      &mask[0, 0], &h[0, 0, 0], cp, &gates[0, 0, 0], ap, seqp,
                      dhTp, dcTp, &dh0[0, 0], dc0p, &work[0, 0, 0], &dg[0, 0],
                      &budget[0], &dxp[0, 0, 0], dghp, &dw_hh[0, 0],
                      &db_hh[0], small_gemm_rows)


def matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b,
           bint trans_b, floating[:, ::1] out, double beta=0.0):
    """``out = op(a) @ op(b) + beta * out`` (row-major; op = transpose if asked).

    The layer-side GEMMs (input projection, dW_ih, dx) of the Cython backend,
    through the same BLAS and blocking rule as the recurrent products. Shapes
    are the caller's responsibility (no checks); no size may be 0.
    """
    cdef int m = out.shape[0], n = out.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    # row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T
    with nogil:
        _gemm(c'T' if trans_b else c'N', c'T' if trans_a else c'N', n, m, k,
              <floating>1, &b[0, 0], <int>b.shape[1], &a[0, 0], <int>a.shape[1],
              <floating>beta, &out[0, 0], n)


def generate(int kind, int act, bint reset_after,
             const floating[:, ::1] xp_table, const floating[:, :, ::1] w_ih_rest,
             const floating[:, ::1] b_ih_rest, const floating[:, :, ::1] w_hh,
             const floating[:, ::1] b_hh, const floating[:, ::1] w_out,
             const floating[::1] b_out, floating[:, :, :, ::1] h,
             floating[:, :, :, ::1] c, const int64_t[::1] start,
             const int64_t[:, ::1] forced, const uint8_t[::1] banned,
             const double[:, ::1] uniforms, double temperature, Py_ssize_t top_k,
             int64_t end_token, int64_t[:, ::1] tokens, int64_t[::1] lengths,
             int64_t[::1] tok, uint8_t[::1] active, floating[:, ::1] xp,
             floating[:, ::1] gh, floating[:, :, ::1] gates, floating[:, :, ::1] aux,
             floating[:, :, ::1] hseq, floating[:, ::1] logits, double[::1] z,
             double[::1] work):
    """Run the generation loop (see ``cyrnn.backends.numpy_backend.generate``).

    xp_table (V, G*H); w_ih_rest (L-1, G*H, H) and b_ih_rest (L-1, G*H) or None
    when L == 1; w_hh (L, G*H, H); b_hh (L, G*H); w_out (V, H); b_out (V,);
    h, c: (L, 2, N, H) state slots, slot 0 = initial state (c None unless LSTM),
    overwritten; start (N,); forced (N, T), -1 = free; banned (V,) uint8;
    uniforms (N, T) float64; outputs tokens (N, T), lengths (N,); scratch tok,
    active (N,), xp, gh (N, G*H), gates (1, N, G*H), aux (1, N, H) or None,
    hseq (1, N, H), logits (N, V), z and work (V,) float64. No checks.
    """
    cdef Py_ssize_t L = w_hh.shape[0], N = h.shape[2], H = h.shape[3]
    cdef Py_ssize_t V = w_out.shape[0], T = forced.shape[1]
    cdef const floating* wr = NULL
    cdef const floating* br = NULL
    cdef floating* cptr = NULL
    cdef floating* auxptr = NULL
    if w_ih_rest is not None:
        wr = &w_ih_rest[0, 0, 0]
        br = &b_ih_rest[0, 0]
    if c is not None:
        cptr = &c[0, 0, 0, 0]
    if aux is not None:
        auxptr = &aux[0, 0, 0]
    with nogil:
        _generate_loop(kind, act, reset_after, L, N, H, V, T, &xp_table[0, 0], wr, br,
                       &w_hh[0, 0, 0], &b_hh[0, 0], &w_out[0, 0], &b_out[0],
                       &h[0, 0, 0, 0], cptr, &start[0], &forced[0, 0], &banned[0],
                       &uniforms[0, 0], temperature, top_k, end_token, &tokens[0, 0],
                       &lengths[0], &tok[0], &active[0], &xp[0, 0], &gh[0, 0],
                       &gates[0, 0, 0], auxptr, &hseq[0, 0, 0], &logits[0, 0], &z[0],
                       &work[0])



INFER_SPEC_VERSION = SPEC_VERSION
INFER_SPEC_WIDTH = SPEC_WIDTH
INFER_SPEC_HEADER = SPEC_HEADER


def infer(const int64_t[::1] spec not None, cnp.ndarray data not None, object x,
          object mask=None):
    """Fused inference of a ``Sequential``.

    ``data``: the model's flat parameter buffer (float32/float64, C-contiguous).
    ``x``: (N, T, D) floats of ``data``'s dtype, or (N, T) int64 token ids when
    the first op is an embedding; C-contiguous. ``mask``: None or (N, T) bool or
    uint8 valid steps (as ``lengths``/``mask`` of the layers). Returns the output
    array, or None when ``x`` or ``mask`` is not in that exact form or holds
    values the layer path must judge (NaN/inf, ids out of range, a sequence of
    padding ids only under ``mask_zero``).
    """
    cdef Dims d
    cdef char* buf = NULL
    cdef uint8_t* mbuf = NULL
    cdef int64_t* plan = NULL
    cdef int64_t* ids = NULL
    cdef uint8_t* valid = NULL
    cdef int64_t* sp = _copy_spec(spec)
    try:
        if _check_call(sp, data, x, mask, &d, &ids, &valid):
            return None
        res = _new_output(&d)
        plan = <int64_t*>_alloc(<double>d.n_ops * P_WIDTH * 8)
        _run_forward(sp, &d, False, plan, data, x, ids, valid, &buf, &mbuf, res)
    finally:
        free(sp)
        free(ids)
        free(valid)
        free(plan)
        free(buf)
        free(mbuf)
    return res


cdef class FusedCache:
    """What ``train_forward`` keeps for ``train_backward``: the per-op caches in
    one block (freed after the backward or with this object)."""
    cdef char* buf
    cdef uint8_t* mask
    cdef int64_t* plan
    cdef int64_t* ids
    cdef int64_t* sp      # the private copy of the spec the forward ran
    cdef Py_ssize_t sp_len
    cdef Dims d
    cdef object data

    def __dealloc__(self):
        free(self.buf)
        free(self.mask)
        free(self.plan)
        free(self.ids)
        free(self.sp)


def train_forward(const int64_t[::1] spec not None, cnp.ndarray data not None, object x,
                  object mask=None):
    """Training forward of a ``Sequential``: ``(output, cache)``, or None as in
    :func:`infer` (same ``mask``). The cache goes to :func:`train_backward` once."""
    cdef Dims d
    cdef uint8_t* valid = NULL
    cdef FusedCache cache = FusedCache.__new__(FusedCache)
    cache.sp = _copy_spec(spec)  # freed with the cache from here on
    cache.sp_len = spec.shape[0]
    if _check_call(cache.sp, data, x, mask, &d, &cache.ids, &valid):
        return None
    try:
        res = _new_output(&d)
        cache.d = d
        cache.data = data
        cache.plan = <int64_t*>_alloc(<double>d.n_ops * P_WIDTH * 8)
        _run_forward(cache.sp, &cache.d, True, cache.plan, data, x, cache.ids, valid,
                     &cache.buf, &cache.mask, res)
    finally:
        free(valid)
    return res, cache


def train_backward(const int64_t[::1] spec not None, cnp.ndarray data not None,
                   cnp.ndarray grad not None, FusedCache cache not None, object d_out,
                   const int64_t[::1] truncate not None):
    """Add the gradients of the forward that made ``cache`` into ``grad``.

    ``spec`` and ``data`` must be those of the forward (same spec values, same
    buffer object). ``d_out``: the loss gradient, shaped and typed like the
    output (C order). ``truncate``: one entry per recurrent op, in op order: -1
    for full BPTT, else k (the gradient through at most k+1 cells, as the
    layers' ``bptt_truncate``). Arguments are checked first (an error leaves the
    cache usable); the run then spends the cache (a second call raises).
    """
    cdef Dims d = cache.d
    cdef cnp.ndarray g
    cdef char* ws = NULL
    cdef Py_ssize_t nrec = 0, o
    cdef int64_t* tr = NULL
    cdef char* buf
    cdef uint8_t* mask
    cdef int64_t* plan
    cdef int64_t* ids
    if cache.buf == NULL:
        raise RuntimeError("this training forward was already backpropagated")
    if (data is not cache.data or spec.shape[0] != cache.sp_len
            or memcmp(&spec[0], cache.sp, cache.sp_len * 8) != 0):
        raise ValueError("train_backward needs the spec and parameters of its forward")
    _check_data(grad, "grad", d.typenum, cnp.PyArray_SIZE(data), True)
    if not cnp.PyArray_Check(d_out):
        raise TypeError("d_out must be a numpy array")
    g = <cnp.ndarray>d_out
    if (cnp.PyArray_TYPE(g) != d.typenum or not cnp.PyArray_IS_C_CONTIGUOUS(g)
            or not cnp.PyArray_ISALIGNED(g) or not cnp.PyArray_ISNOTSWAPPED(g)
            or cnp.PyArray_NDIM(g) != (3 if d.seq_out else 2)
            or cnp.PyArray_DIM(g, 0) != d.N
            or cnp.PyArray_DIM(g, cnp.PyArray_NDIM(g) - 1) != d.F_out
            or (d.seq_out and cnp.PyArray_DIM(g, 1) != d.T)):
        raise ValueError("d_out must be a C-contiguous array shaped and typed like the output")
    for o in range(d.first, d.n_ops):
        if _rec(cache.sp, o)[0] == OP_RNN:
            nrec += 1
    if truncate.shape[0] != nrec:
        raise ValueError(f"truncate needs {nrec} entries")
    tr = <int64_t*>_alloc(<double>max(1, nrec) * 8)
    for o in range(nrec):
        tr[o] = -1 if truncate[o] < 0 or truncate[o] >= d.T else truncate[o]
    # Take the cache's memory while holding the GIL (no other thread runs between
    # the check above and here): a concurrent second call finds a spent cache.
    buf = cache.buf
    mask = cache.mask
    plan = cache.plan
    ids = cache.ids
    cache.buf = NULL
    cache.mask = NULL
    cache.plan = NULL
    cache.ids = NULL
    try:
        ws = <char*>_alloc(<double>_backward_scratch(&d) * d.isz)
        with nogil:
            if d.isz == 4:
                _fused_backward(cache.sp, &d, plan, tr,
                                <const float*>cnp.PyArray_DATA(data),
                                <float*>cnp.PyArray_DATA(grad), <const float*>buf,
                                ids, mask, <const float*>cnp.PyArray_DATA(g), <float*>ws)
            else:
                _fused_backward(cache.sp, &d, plan, tr,
                                <const double*>cnp.PyArray_DATA(data),
                                <double*>cnp.PyArray_DATA(grad), <const double*>buf,
                                ids, mask, <const double*>cnp.PyArray_DATA(g), <double*>ws)
    finally:
        free(ws)
        free(tr)
        free(buf)
        free(mask)
        free(plan)
        free(ids)
