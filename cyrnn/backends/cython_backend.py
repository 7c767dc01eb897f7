"""Cython backend: the kernel contract on the compiled ``cyrnn._cython_kernels``.

Same signatures, results and cache layout as :mod:`cyrnn.backends.numpy_backend`
(the specification). This module only prepares arrays: it makes inputs
C-contiguous in the working dtype, turns ``mask`` into a ``(T, N)`` uint8 array,
allocates outputs and scratch, and calls the compiled time loops with the cell's
``Cell.codes``; they run without the GIL.

Threads: fused forwards of at least 4 rows (backwards: 4 rows and 32 row-steps) run
each op's time loop on row chunks that OpenMP threads take dynamically, with the
per-step products in the extension's packed GEMM, or for a few steps on the weights
as stored with the same sums (no BLAS inside the loop, no barrier per step: rows
never interact); one parallel region per op and call. Smaller batches run on the
calling thread, recurrent products through BLAS (mid-sized GEMMs cut into blocks that
OpenBLAS keeps on the calling thread, see ``_cython_kernels._gemm``), input
projections through the extension's own row-count independent kernels. The whole-sequence GEMMs of
the backward (weight gradients, input gradients) are BLAS's, threaded by it.
``cyrnn.set_num_threads``, ``OMP_NUM_THREADS=1`` or threadpoolctl limit the threads.

The OpenMP runtime keeps its default wait policy (threads spin briefly, then
sleep). This module used to set ``OMP_WAIT_POLICY=PASSIVE`` for the per-step
parallel regions it no longer has; with one region per call a sleeping team is
woken onto the busy core and the second thread found no chunk left (medium
inference: 6.96 ms with PASSIVE, 4.50 ms without, 2 threads), and the variable
leaked into other libraries (PyTorch imported afterwards, child processes).

Importing this module raises ImportError when the extension is not built; the
backend registry then reports the backend as unavailable.
"""

from __future__ import annotations

import os

import numpy as np

from .. import threads as _threads


def _import_kernels():
    """Import the extension. It takes its BLAS from ``scipy.linalg.cython_blas``, whose
    import would first run ``scipy.linalg``'s package ``__init__`` (0.1-0.2 s of modules
    the kernels never use: a third of a scoring process's cold start). When
    ``scipy.linalg`` is not imported yet, the ``cython_blas`` module alone is loaded for
    the extension and then dropped from ``sys.modules``: the extension keeps the BLAS
    functions it read, and a later ``import scipy.linalg`` loads the package as usual
    (getting the same module object back). Any failure: the ordinary import."""
    import sys
    name = "scipy.linalg.cython_blas"
    if "scipy.linalg" not in sys.modules and name not in sys.modules:
        try:
            import importlib.machinery
            import importlib.util
            folder = os.path.join(importlib.util.find_spec("scipy").submodule_search_locations[0],
                                  "linalg")
            path = next(os.path.join(folder, f) for f in sorted(os.listdir(folder))
                        if f.startswith("cython_blas.") and f.endswith(
                            tuple(importlib.machinery.EXTENSION_SUFFIXES)))
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
            sys.modules[name] = module
            try:
                loader.exec_module(module)
                from .. import _cython_kernels
                return _cython_kernels
            finally:
                sys.modules.pop(name, None)
        except Exception:  # noqa: BLE001 - any trouble: the ordinary import below
            pass
    from .. import _cython_kernels
    return _cython_kernels


_k = _import_kernels()
if _threads._gomp_pool_forked:  # forked after the Numba backend's OpenMP pool started
    _k._forked_serial()

NAME = "cython"

_empty = np.empty
_zeros = np.zeros
_contig = np.ascontiguousarray
_uint8 = np.uint8


def matmul(a, trans_a, b, trans_b, out, beta=0.0):
    """``out = op(a) @ op(b) + beta * out`` for C-contiguous 2-D arrays of one dtype
    (the layer-side GEMMs: input projection, dW_ih, dx).

    Optional backend function: ``cyrnn.layers.recurrent`` uses it when present, so
    that every GEMM of a layer goes through one BLAS (scipy's) with one blocking
    rule. Interleaving NumPy's and scipy's OpenBLAS thread pools made each call
    wait for the other pool's spinning threads.
    """
    if 0 in out.shape or (a.shape[0] if trans_a else a.shape[1]) == 0:
        res = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if beta == 0:
            out[...] = res
        else:
            out *= beta
            out += res
        return
    _k.matmul(a, bool(trans_a), b, bool(trans_b), out, float(beta))


# The compiled plan's calls (docs/architecture.md; the spec layout is
# cyrnn.backends.spec's): inference with states in and out, and the training forward /
# backward pair, for any layer or Sequential the spec describes. They validate the
# input's exact form in C and return None for anything the layer path must handle.
infer = _k.infer
# infer converts float64 features of a float32 model itself (as NumPy's astype would)
INFER_TAKES_FLOAT64 = True
# infer takes one time step in step form (step=True: (n, F) or (n,) ids) and a
# state_shape for the states it returns (CompiledPlan.step)
INFER_TAKES_STEPS = True
# the fused calls take sequences of padding only (mask_zero): all their steps masked,
# zero outputs and the initial state carried, as on the layer path; a scorer's batch
# with an empty review then runs fused like any other (its rows do not depend on it)
FUSED_EMPTY_ROWS = True
train_forward = _k.train_forward
train_backward = _k.train_backward
# the classifiers' probabilities from the model's outputs (cyrnn.sequences)
probabilities = _k.probabilities
# x @ w.T + b summed in an order that depends on the input size only (so a row's
# result does not depend on the rows beside it): Sequential's layer path runs
# its Dense layers through it in inference, where steps must equal whole sequences
projection = _k.projection
# a scorer's whole-sequence call bound to one plan, post-processing included
# (CompiledPlan.scoring_call: the one compiled call of a batch-1 predict_proba)
ScoringCall = _k.ScoringCall
# a scorer's streaming step bound the same way (CompiledPlan.step_call)
StepCall = _k.StepCall
# weights packed once for a scorer's repeated ``infer`` calls (``infer(..., weights)``)
PackedWeights = _k.PackedWeights
# whether PackedWeights(..., arithmetic="bfloat16") can run here (AVX-512 BF16)
bf16_arithmetic_available = _k.bf16_arithmetic_available
# whether that arithmetic runs on AMX tiles here (AMX-BF16; CYRNN_AMX=0 keeps VDPBF16PS)
bf16_tiles_in_use = _k.bf16_tiles_in_use
# cyrnn.optim's compiled kernels (the Numba module cyrnn._optim_kernels has the same five)
sgd_update = _k.sgd_update
rmsprop_update = _k.rmsprop_update
adam_update = _k.adam_update
clip_by_value_flat = _k.clip_by_value_flat
clip_by_global_norm_flat = _k.clip_by_global_norm_flat


def _mask_u8(mask, T, N):
    if mask is None:
        return np.ones((T, N), _uint8)
    m = _contig(mask)
    if m.dtype == np.bool_:
        return m.view(_uint8)
    return _contig(m != 0).view(_uint8)


def _degenerate(*sizes):
    # Empty time/batch/hidden axes: nothing to compute; the reference handles
    # these shapes (and BLAS would reject zero leading dimensions).
    return 0 in sizes


def forward(cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False, peep=None):
    """Run the cell over ``T`` steps; see ``numpy_backend.forward``."""
    peep = cell.peephole_weights(peep)
    xp = _contig(xp)
    dt = xp.dtype
    T, N, GH = xp.shape
    H = w_hh.shape[1]
    if _degenerate(T, N, H):
        from . import numpy_backend
        return numpy_backend.forward(cell, xp, w_hh, b_hh, h0, c0, mask, keep_cache, peep)
    has_c, has_aux = cell.has_cell_state, cell.has_aux
    S = T + 1 if keep_cache else 2
    h = _empty((S, N, H), dt)
    h[0] = h0
    c = None
    if has_c:
        c = _empty((S, N, H), dt)
        c[0] = c0
    G = T if keep_cache else 1
    gates = _empty((G, N, GH), dt)
    aux = _empty((G, N, H), dt) if has_aux else None
    h_seq = _empty((T, N, H), dt)
    _k.forward(*cell.codes, keep_cache, xp, _contig(w_hh, dt), _contig(b_hh, dt),
               None if peep is None else _contig(peep, dt), _mask_u8(mask, T, N),
               h, c, gates, aux, h_seq, _empty((N, GH), dt))
    if keep_cache:
        cache = {"h": h, "gates": gates}
        if has_c:
            cache["c"] = c
        if has_aux:
            cache["aux"] = aux
        return h_seq, h[T].copy(), (c[T].copy() if has_c else None), cache
    s = T % 2
    return h_seq, h[s], (c[s] if has_c else None), None


def backward(cell, cache, w_hh, mask=None, dh_seq=None, dh_T=None, dc_T=None, truncate=None,
             peep=None):
    """Gradients through ``forward``; see ``numpy_backend.backward``."""
    peep = cell.peephole_weights(peep)
    gates = _contig(cache["gates"])
    dt = gates.dtype
    T, N, GH = gates.shape
    H = GH // cell.n_gates
    if _degenerate(T, N, H):
        from . import numpy_backend
        return numpy_backend.backward(cell, cache, w_hh, mask, dh_seq, dh_T, dc_T, truncate,
                                      peep)
    has_c = cell.has_cell_state
    c = _contig(cache["c"], dt) if has_c else None
    aux = _contig(cache["aux"], dt) if cell.has_aux else None
    trunc = -1 if truncate is None or truncate >= T else int(truncate)
    dxp = _zeros((T, N, GH), dt)
    dh0 = _empty((N, H), dt)
    dc0 = _empty((N, H), dt) if has_c else None
    dw_hh = _empty((GH, H), dt)
    db_hh = _empty(GH, dt)
    dpeep = None if peep is None else _empty((3, H), dt)
    _k.backward(
        *cell.codes, trunc, _contig(cache["h"], dt), c, gates, aux, _contig(w_hh, dt),
        None if peep is None else _contig(peep, dt), _mask_u8(mask, T, N),
        None if dh_seq is None else _contig(dh_seq, dt),
        None if dh_T is None else _contig(dh_T, dt),
        None if (dc_T is None or not has_c) else _contig(dc_T, dt),
        # GRU: its own recurrent pre-activation gradient; the other cells' is dxp itself
        dxp, _zeros((T, N, GH), dt) if cell.kind == "gru" else None, dh0, dc0,
        _empty((5, N, H), dt), _empty((N, GH), dt), _empty(N, np.int64), _empty(N, _uint8),
        dw_hh, db_hh, dpeep)
    return dxp, dh0, dc0, dw_hh, db_hh, dpeep


def step(cell, xp_t, w_hh, b_hh, h, c=None, peep=None):
    """Single step used by generation. Returns ``(h_new, c_new)``."""
    peep = cell.peephole_weights(peep)
    xp_t = _contig(xp_t)
    dt = xp_t.dtype
    N, GH = xp_t.shape
    H = w_hh.shape[1]
    if _degenerate(N, H):
        from . import numpy_backend
        return numpy_backend.step(cell, xp_t, w_hh, b_hh, h, c, peep)
    has_c = cell.has_cell_state
    hs = _empty((2, N, H), dt)
    hs[0] = h
    cs = None
    if has_c:
        cs = _empty((2, N, H), dt)
        cs[0] = c
    _k.forward(*cell.codes, False, xp_t.reshape(1, N, GH), _contig(w_hh, dt),
               _contig(b_hh, dt), None if peep is None else _contig(peep, dt),
               np.ones((1, N), _uint8), hs, cs, _empty((1, N, GH), dt),
               _empty((1, N, H), dt) if cell.has_aux else None,
               _empty((1, N, H), dt), _empty((N, GH), dt))
    return hs[1], (cs[1] if has_c else None)


def generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
             start, forced, banned, uniforms, temperature, top_k, end_token, peep=None):
    """The whole sampling loop in compiled code; see ``numpy_backend.generate``.

    Token-for-token equal to the reference for the same ``uniforms`` (up to
    round-off landing exactly on a sampling boundary).
    """
    peep = cell.peephole_weights(peep)
    xp_table = _contig(xp_table)
    dt = xp_table.dtype
    forced = _contig(forced, np.int64)
    n, T = forced.shape
    L, GH, H = w_hh.shape
    V = w_out.shape[0]
    if _degenerate(n, T, H, V):
        from . import numpy_backend
        return numpy_backend.generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh,
                                      w_out, b_out, h, c, start, forced, banned, uniforms,
                                      temperature, top_k, end_token, peep)
    has_c = cell.has_cell_state
    hs = _empty((L, 2, n, H), dt)
    hs[:, 0] = h
    cs = None
    if has_c:
        cs = _empty((L, 2, n, H), dt)
        cs[:, 0] = c
    rest = L > 1
    tokens = _empty((n, T), np.int64)
    lengths = _empty(n, np.int64)
    _k.generate(
        *cell.codes, xp_table,
        _contig(w_ih_rest, dt) if rest else None, _contig(b_ih_rest, dt) if rest else None,
        _contig(w_hh, dt), _contig(b_hh, dt), None if peep is None else _contig(peep, dt),
        _contig(w_out, dt), _contig(b_out, dt), hs, cs, _contig(start, np.int64), forced,
        _contig(banned, np.bool_).view(_uint8), _contig(uniforms, np.float64),
        float(temperature), int(top_k), int(end_token), tokens, lengths,
        _empty(n, np.int64), _empty(n, _uint8), _empty((n, GH), dt), _empty((n, GH), dt),
        _empty((1, n, GH), dt), _empty((1, n, H), dt) if cell.has_aux else None,
        _empty((1, n, H), dt), _empty((n, V), dt), _empty(V, np.float64),
        _empty(V, np.float64))
    return tokens, lengths
