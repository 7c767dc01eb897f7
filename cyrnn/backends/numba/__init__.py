"""Numba backend: the kernel contract compiled with Numba.

Same signatures, results and cache layout as :mod:`cyrnn.backends.numpy_backend`
(the specification), float32 and float64, every row of the cell table with every
activation, peepholes, masks and truncated BPTT exactly as the reference defines
them; ``generate`` (the whole sampling loop, token for token as the reference) and
the compiled plan's calls ``infer``, ``train_forward`` / ``train_backward`` (a whole
layer or ``Sequential`` in one call: spec v3, docs/architecture.md) are compiled too.

Where things live: :mod:`.config` (threading layer, fork handling, JIT flags,
tuning constants), :mod:`.mathfn` (exp/sigmoid/tanh, activations by code),
:mod:`.gemm` (products, BLAS policy, weight-gradient contractions), :mod:`.cells`
(the cell math, the only place it lives), :mod:`.loops` (forward time loop,
backward sweep, parallel row blocks), :mod:`.fused` (the fused runner),
:mod:`.generate` (sampling); this module holds the entry points.

The entry points validate nothing beyond array forms: they make inputs
C-contiguous in the working dtype, allocate outputs and one flat scratch array,
and call a compiled kernel. Each kernel is compiled once per dtype for an explicit
signature, and the wrappers call that compiled entry point directly, skipping the
dispatcher's type resolution (a few microseconds per call); the entry point does
not check the writeable flag, so writable and read-only inputs share the one
compiled version. Inputs are typed read-only, except those the fused runner passes
to the same loops as writable arrays of its own (``xp``, the states, the mask,
``dh_seq``, ``dh_T``, ``dc_T``, the cache and its plan): typed writable, as there,
so the loops compile once (``config``, "Compile time"); the loops only read them (a
test compiles them with those inputs read-only, which Numba refuses for an array
written to).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import types

from .. import spec as _spec
from . import config as _config
from . import gemm as _gemm
from .cells import DGH_IS_DXP, HAS_AUX, HAS_C, N_PEEP, PEEP_ROWS, PEEPHOLE
from .cells import N_GATES as N_GATES_TABLE
from .config import THREADING_LAYER  # noqa: F401 - reported by cyrnn.threads
from .fused import (_E_HEADER, DECLINED, STATUS_ERRORS, _infer_kernel, _infer_state_kernel,
                    _train_bwd_kernel, _train_fwd_kernel, header_ok)
from .generate import _generate_kernel
from .loops import _backward_par, _bwd_rows, _bwd_scratch, _forward_par, _fwd_rows, _fwd_scratch

NAME = "numba"
# The spec layout this backend reads (imported, for the conformance test).
INFER_SPEC_VERSION = _spec.SPEC_VERSION
INFER_SPEC_HEADER = _spec.SPEC_HEADER
INFER_SPEC_WIDTH = _spec.SPEC_WIDTH

# ----------------------------------------------------------------------------
# Compiled entry points, per dtype (lazy; explicit signatures).
# ----------------------------------------------------------------------------


def _signatures(F, readonly_inputs=False):
    """The entry points' signatures for float type ``F`` (``readonly_inputs``: with
    every input read-only, which compiles only if no loop writes one: a test)."""
    def ro(nd, dtype=F):
        return types.Array(dtype, nd, "C", readonly=True)

    def rw(nd):
        return types.Array(F, nd, "C")

    def rw_in(nd, dtype=F):
        # An input the loops only read, typed writable as the arrays the fused runner
        # passes to the same loops are: one compiled loop serves both callers (Numba
        # compiles a function once per argument type, read-only being part of the
        # type). The entry points do not check the flag, so read-only arrays pass.
        return types.Array(dtype, nd, "C", readonly=readonly_inputs)

    i64 = types.int64
    # code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask, h_seq, hT, cT,
    # ch, cc, cg, cax, scratch
    fwd = (i64, i64, i64, i64, i64, i64, rw_in(3), ro(2), ro(1), ro(2), rw_in(2), rw_in(2),
           rw_in(2, types.boolean), rw(3), rw(2), rw(2), rw(3), rw(3), rw(3), rw(3), rw(1))
    # code, act, ract, blas, trunc, has_mask, has_dhseq, [contract], ch, cc, cg, cax, w, peep,
    # mask, dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep, scratch
    bwd_head = (i64,) * 7
    bwd_tail = (rw_in(3), rw_in(3), rw_in(3), rw_in(3), ro(2), ro(2), rw_in(2, types.boolean),
                rw_in(3), rw_in(2), rw_in(2), rw(3), rw(3), rw(2), rw(2), rw(2), rw(1), rw(2),
                rw(1))
    # spec, data, x, ids, is_ids, mask, has_mask, h0, has_h0, c0, has_c0, nthr, blas_par
    fused_in = (ro(1, i64), ro(1), ro(3), ro(2, i64), i64, ro(2, types.uint8), i64,
                ro(1), i64, ro(1), i64, i64, i64)
    return {
        "infer": types.Tuple((i64, rw(3)))(*fused_in),
        "infer_state": types.Tuple((i64, rw(3), rw(1), rw(1)))(*fused_in),
        "train_fwd": types.Tuple((i64, i64, rw(3), rw(1), types.Array(i64, 2, "C"),
                                  types.Array(types.boolean, 2, "C"),
                                  types.Array(i64, 2, "C"), rw(1), rw(1)))(
                                      *fused_in, ro(1), i64),
        "train_bwd": types.Tuple((rw(3), rw(1), rw(1)))(
            ro(1, i64), ro(1), rw(1), rw_in(1), rw_in(2, i64), ro(2, i64), ro(2, types.boolean),
            i64, ro(3), ro(1, i64), i64, ro(1), i64, ro(1), i64, i64, i64, i64),
        "generate": types.void(i64, i64, i64, i64, i64, ro(2), ro(3), ro(2), ro(3), ro(2),
                               ro(3), ro(2), ro(1), ro(3), ro(3), ro(1, i64), ro(2, i64),
                               ro(1, types.boolean), ro(2, types.float64), types.float64, i64,
                               i64, types.Array(i64, 2, "C"), types.Array(i64, 1, "C")),
        "fwd_rows": types.void(*fwd, i64, i64),
        "forward_par": types.void(i64, *fwd),
        "bwd_rows": types.void(*bwd_head, i64, *bwd_tail, i64, i64),
        "backward_par": types.void(i64, *bwd_head, *bwd_tail),
    }


_DISPATCHERS = {"infer": _infer_kernel, "infer_state": _infer_state_kernel, "train_fwd": _train_fwd_kernel,
                "train_bwd": _train_bwd_kernel, "generate": _generate_kernel,
                "fwd_rows": _fwd_rows, "forward_par": _forward_par, "bwd_rows": _bwd_rows,
                "backward_par": _backward_par}
# The entry points that contain the parallel loops (the others run serially).
_PARALLEL_ENTRIES = frozenset(("infer", "infer_state", "train_fwd", "train_bwd", "forward_par",
                               "backward_par"))
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
                if name in _PARALLEL_ENTRIES:  # before loading one from the cache
                    _config._start_parallel_runtime()
                disp.compile(sig)
                # The compiled version itself: no type resolution per call.
                fn = getattr(disp.overloads.get(sig.args), "entry_point", None) or disp
                _entry[key] = fn
    return fn


def _run_par(name, dt, nb, args):
    """The parallel kernel ``name`` on ``nb`` row blocks."""
    fn = _entry.get((name, dt)) or _kernel(name, dt)
    if _config._par_lock is not None:
        with _config._par_lock:
            fn(nb, *args)
    else:
        fn(nb, *args)


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_A1 = {dt: np.empty(0, dt) for dt in (_F32, _F64)}
_A2 = {dt: np.empty((0, 0), dt) for dt in (_F32, _F64)}
_A3 = {dt: np.empty((0, 0, 0), dt) for dt in (_F32, _F64)}
_NO_MASK = np.ones((1, 1), np.bool_)
_NO_PEEP = {dt: np.empty((PEEP_ROWS, 0), dt) for dt in (_F32, _F64)}
_empty = np.empty
_zeros = np.zeros
_contig = np.ascontiguousarray
_blocks = _config._blocks


def _mask(mask):
    m = _contig(mask)
    return m if m.dtype == np.bool_ else m != 0


def _peep(peep, dt, H):
    """A peephole cell's (3, H) weights for the kernels; zeros when none are given
    (as the reference, which then skips the terms). Cells without peepholes pass
    ``_NO_PEEP`` (3, 0)."""
    if peep is None:
        return _zeros((PEEP_ROWS, H), dt)
    return _contig(peep, dt)


_INFO = {}  # Cell -> _info(cell): one dict lookup per call instead of several


def _info(cell):
    """``(code, act, ract, has_c, has_aux, peephole, dgh_is_dxp)`` of a Cell."""
    try:
        return _INFO[cell]
    except KeyError:
        code, act, ract = cell.codes
        _INFO[cell] = info = (code, act, ract, HAS_C[code], HAS_AUX[code], PEEPHOLE[code],
                              DGH_IS_DXP[code])
        return info


def _reference():
    from .. import numpy_backend
    return numpy_backend


# ----------------------------------------------------------------------------
# The kernel contract.
# ----------------------------------------------------------------------------

def forward(cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False, peep=None):
    """Run the cell over ``T`` steps; see ``numpy_backend.forward``."""
    xp = _contig(xp)
    dt = xp.dtype
    T, N, GH = xp.shape
    H = w_hh.shape[1]
    if dt not in _A1 or T == 0 or N == 0 or H == 0:
        return _reference().forward(cell, xp, w_hh, b_hh, h0, c0, mask, keep_cache, peep)
    code, act, ract, has_c, has_aux, peephole, _ = _info(cell)
    h_seq = _empty((T, N, H), dt)
    hT = _empty((N, H), dt)
    cT = _empty((N, H), dt) if has_c else _A2[dt]
    if keep_cache:
        ch = _empty((T + 1, N, H), dt)
        cc = _empty((T + 1, N, H), dt) if has_c else _A3[dt]
        cg = _empty((T, N, GH), dt)
        cax = _empty((T, N, H), dt) if has_aux else _A3[dt]
    else:
        ch = cc = cg = cax = _A3[dt]
    nb = _blocks(T, N, H, GH)
    args = (code, act, ract, _gemm._blas_mode(N, GH * H, nb), 1 if keep_cache else 0,
            0 if mask is None else 1, xp, _contig(w_hh, dt), _contig(b_hh, dt),
            _peep(peep, dt, H) if peephole else _NO_PEEP[dt], _contig(h0, dt),
            _contig(c0, dt) if has_c else _A2[dt],
            _NO_MASK if mask is None else _mask(mask), h_seq, hT, cT, ch, cc, cg, cax,
            _empty(N * _fwd_scratch(code, H, GH, keep_cache), dt))
    if nb <= 1:
        (_entry.get(("fwd_rows", dt)) or _kernel("fwd_rows", dt))(*args, 0, N)
    else:
        _run_par("forward_par", dt, nb, args)
    if not keep_cache:
        return h_seq, hT, (cT if has_c else None), None
    cache = {"h": ch, "gates": cg}
    if has_c:
        cache["c"] = cc
    if has_aux:
        cache["aux"] = cax
    return h_seq, hT, (cT if has_c else None), cache


def backward(cell, cache, w_hh, mask=None, dh_seq=None, dh_T=None, dc_T=None, truncate=None,
             peep=None):
    """Gradients through ``forward``; see ``numpy_backend.backward``. Returns
    ``(dxp, dh0, dc0, dw_hh, db_hh, dpeep)``."""
    cg = _contig(cache["gates"])
    dt = cg.dtype
    T, N, GH = cg.shape
    H = w_hh.shape[1]
    if dt not in _A1 or T == 0 or N == 0 or H == 0:
        return _reference().backward(cell, cache, w_hh, mask, dh_seq, dh_T, dc_T, truncate,
                                     peep)
    code, act, ract, has_c, has_aux, peephole, dgh_is_dxp = _info(cell)
    dxp = _zeros((T, N, GH), dt)
    dgh = dxp if dgh_is_dxp else _zeros((T, N, GH), dt)
    dh0 = _empty((N, H), dt)
    dc0 = _empty((N, H), dt) if has_c else _A2[dt]
    dw = _empty((GH, H), dt)
    db = _empty(GH, dt)
    if peephole:
        pk = _peep(peep, dt, H)
        dpeep = _empty(pk.shape, dt)
    else:
        pk = dpeep = _NO_PEEP[dt]
    nb = _blocks(T, N, H, GH)
    head = (code, act, ract, _gemm._blas_mode(N, GH * H, nb),
            -1 if truncate is None or truncate >= T else int(truncate),
            0 if mask is None else 1, 0 if dh_seq is None else 1)
    args = (_contig(cache["h"], dt), _contig(cache["c"], dt) if has_c else _A3[dt], cg,
            _contig(cache["aux"], dt) if has_aux else _A3[dt], _contig(w_hh, dt), pk,
            _NO_MASK if mask is None else _mask(mask),
            _A3[dt] if dh_seq is None else _contig(dh_seq, dt),
            _zeros((N, H), dt) if dh_T is None else _contig(dh_T, dt),
            (_zeros((N, H), dt) if dc_T is None else _contig(dc_T, dt)) if has_c else _A2[dt],
            dxp, dgh, dh0, dc0, dw, db, dpeep, _empty(N * _bwd_scratch(code, H, GH), dt))
    if nb <= 1:  # the serial entry point also contracts (1)
        (_entry.get(("bwd_rows", dt)) or _kernel("bwd_rows", dt))(*head, 1, *args, 0, N)
    else:
        _run_par("backward_par", dt, nb, head + args)
    return (dxp, dh0, (dc0 if has_c else None), dw, db,
            (dpeep if peephole and peep is not None else None))


def step(cell, xp_t, w_hh, b_hh, h, c=None, peep=None):
    """Single step used by generation: the forward time loop's step with
    ``T = 1`` and no cache. Returns ``(h_new, c_new)``."""
    xp_t = _contig(xp_t)
    dt = xp_t.dtype
    N, GH = xp_t.shape
    H = w_hh.shape[1]
    if dt not in _A1 or N == 0 or H == 0:
        return _reference().step(cell, xp_t, w_hh, b_hh, h, c, peep)
    code, act, ract, has_c, _, peephole, _ = _info(cell)
    hT = _empty((N, H), dt)
    cT = _empty((N, H), dt) if has_c else _A2[dt]
    a3 = _A3[dt]
    nb = _blocks(1, N, H, GH)
    args = (code, act, ract, _gemm._blas_mode(N, GH * H, nb), 0, 0, xp_t.reshape(1, N, GH),
            _contig(w_hh, dt), _contig(b_hh, dt),
            _peep(peep, dt, H) if peephole else _NO_PEEP[dt], _contig(h, dt),
            _contig(c, dt) if has_c else _A2[dt], _NO_MASK, _empty((1, N, H), dt), hT, cT,
            a3, a3, a3, a3, _empty(N * _fwd_scratch(code, H, GH, False), dt))
    if nb <= 1:
        (_entry.get(("fwd_rows", dt)) or _kernel("fwd_rows", dt))(*args, 0, N)
    else:
        _run_par("forward_par", dt, nb, args)
    return hT, (cT if has_c else None)


# ----------------------------------------------------------------------------
# Fused calls (the compiled runner: .fused).
# ----------------------------------------------------------------------------

_ndarray = np.ndarray
_I64 = np.dtype(np.int64)
_U8 = np.dtype(np.uint8)
_BOOL = np.dtype(np.bool_)
_NO_IDS = np.empty((0, 0), np.int64)
_NO_MASK_U8 = np.ones((1, 1), np.uint8)
_SPEC_ERROR = _spec.ERRORS["header"]


def _raise(status):
    exc, msg = STATUS_ERRORS[status]
    raise exc(msg)


def _fused_args(name, spec, data, x, mask):
    """The compiled entry point ``name`` and its arguments for ``spec``, ``data``,
    ``x`` and ``mask`` (shared by ``infer`` and ``train_forward``): raises for a
    parameter buffer of the wrong kind, passes ``x``/``mask`` on only in the
    exact form the kernel takes (else only the spec is checked: declined)."""
    if type(data) is _ndarray:
        fn = _entry.get((name, data.dtype))
        if fn is not None and data.dtype.isnative:
            return (fn, *fused_forms(spec, data, x, mask))
    forms = fused_forms(spec, data, x, mask)  # raises for a buffer of the wrong kind
    return (_kernel(name, data.dtype), *forms)


def fused_forms(spec, data, x, mask):
    """``(spec, data, x, ids, is_ids, mask, has_mask)`` as the fused kernels take them
    (``is_ids`` -1: ``x`` or ``mask`` not in the exact form they take, so only the
    spec is checked and the call declines); raises for a parameter buffer of the
    wrong kind. Shared with the CUDA backend's fused calls (same rules)."""
    if type(data) is not _ndarray:
        raise TypeError(f"parameter buffer must be a numpy array, got {type(data).__name__}")
    dt = data.dtype
    if not dt.isnative:
        raise ValueError("parameter buffer must be native-endian")
    if dt not in _A1:
        if not header_ok(spec):
            _raise(_E_HEADER)  # checked first, as the Cython backend
        raise TypeError("parameter buffer must be float32 or float64")
    if (type(spec) is not _ndarray or spec.dtype is not _I64 or spec.ndim != 1
            or not spec.flags.c_contiguous):
        spec = np.ascontiguousarray(spec)  # a list, or strided: the kernel checks it
        if spec.ndim != 1 or spec.dtype != _I64:
            raise ValueError(_SPEC_ERROR)
    if data.ndim != 1 or not data.flags.c_contiguous or not data.flags.aligned:
        raise ValueError("parameter buffer must be a C-contiguous 1-D array")
    spec_only = (spec, data, _A3[dt], _NO_IDS, -1, _NO_MASK_U8, 0)
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
        return spec, data, xa, ids, is_ids, _NO_MASK_U8, 0
    if type(mask) is not _ndarray:
        return spec_only
    md = mask.dtype
    if ((md is not _BOOL and md != _BOOL and md != _U8) or mask.ndim != 2
            or not mask.flags.c_contiguous or mask.shape != x.shape[:2]):
        return spec_only
    return spec, data, xa, ids, is_ids, (mask if md == _U8 else mask.view(_U8)), 1


def _split_args(x_or_n):
    """``(nthr, blas_par)`` of a fused call on ``x`` (or ``N`` rows): the threads its
    ops may split their rows over, as the layer path would (``config._blocks``), and
    the product flag inside those blocks (``gemm._blas_mode``)."""
    N = x_or_n if type(x_or_n) is int else (
        x_or_n.shape[0] if type(x_or_n) is _ndarray and x_or_n.ndim >= 2 else 1)
    if N < _PAR_MIN_ROWS2:
        return 1, 0
    n = _config._block_threads()
    if n <= 1:
        return 1, 0
    return n, (2 if _gemm._blas_single_threaded() else 0)


def _call(fn, args, nthr, spec, N, T):
    """``fn(*args)``, holding the parallel-launch lock where the threading layer needs
    one (workqueue) and some op of ``spec`` may split its rows."""
    lock = _config._par_lock
    if lock is not None and nthr > 1 and _may_split(spec, N, T):
        with lock:
            return fn(*args)
    return fn(*args)


def _flat_arg(a, dt, name):
    """A state, dropout or gradient argument as the kernels take it: ``(array, 1)``,
    or ``(empty, 0)`` for None. Raises ``ValueError`` for anything but a
    C-contiguous, aligned, native array of the parameters' dtype (its size is
    checked against the call's shapes later, before any memory is touched)."""
    if a is None:
        return _A1[dt], 0
    if type(a) is not _ndarray or a.dtype != dt or not a.dtype.isnative:
        raise ValueError(f"{name} must be a numpy array of the parameters' dtype ({dt})")
    fl = a.flags
    if not (fl.c_contiguous and fl.aligned):
        raise ValueError(f"{name} must be a C-contiguous, aligned array")
    return a.reshape(-1), 1


def infer(spec, data, x, mask=None, h0=None, c0=None, return_state=False):
    """Fused inference of a model: the whole model in one compiled call, without
    the GIL (the contract: docs/architecture.md, "Fused model calls").

    ``spec``: :func:`cyrnn.plan.build_spec`'s int64 array (:mod:`cyrnn.backends.spec`);
    ``data``: the model's flat parameter buffer (float32/float64, C-contiguous).
    ``x``: (N, T, D) floats of ``data``'s dtype, or (N, T) int64 token ids when the
    first op is an embedding; C-contiguous and aligned. ``mask``: None or an (N, T)
    bool/uint8 C-contiguous array of valid steps (combined with ``ids != 0`` under
    the embedding's ``mask_zero``). ``h0``/``c0``: None (zeros) or the initial
    states in the flat layout. Returns the output array, or ``(output, h_n, c_n)``
    with ``return_state`` (``c_n`` None when no op has a cell state), or None when
    ``x`` or ``mask`` is not in that exact form or holds values the general path
    must judge (NaN/inf, ids out of range, a sequence of padding ids only under
    ``mask_zero``), or a state holds NaN/inf: the caller then takes the validating
    layer-by-layer path. A
    corrupt spec, or a state of the wrong dtype, size or layout, raises
    ``ValueError``.

    Only the exact form of the arguments is checked here (a few attribute reads);
    the spec's checks (whatever ``x`` is), the scan of ``x``, the states' sizes and
    the model run in the compiled ``_fused_run``.
    """
    fn, *args = _fused_args("infer_state" if return_state else "infer", spec, data, x, mask)
    dt = data.dtype
    if h0 is None and c0 is None:
        args += _NO_STATES[dt]
    else:
        args += (*_flat_arg(h0, dt, "h0"), *_flat_arg(c0, dt, "c0"))
    if args[4] < 0 or x.shape[0] < _PAR_MIN_ROWS2:  # declined, or too few rows to split
        res = fn(*args, 1, 0)
    else:
        nthr, blas_par = _split_args(x)
        res = _call(fn, (*args, nthr, blas_par), nthr, spec, x.shape[0], x.shape[1])
    status = res[0]
    if status <= 0 and not all(np.isfinite(a).all() for a in (h0, c0) if a is not None):
        # decided after the compiled call checked the states' sizes (which raises first,
        # as the Cython backend does): the layer path's state checks name the problem
        return None
    if status <= 0:  # 0: a sequence (N, T, F); -1: after many-to-one, (N, 1, F)
        out = res[1] if status == 0 else res[1][:, 0]
        if return_state:
            return out, res[2], (res[3] if res[3].size else None)
        return out
    if status == DECLINED:
        return None
    _raise(status)


# The largest T * N * 4 * max(hidden size) the fused training step takes (None: any);
# train_forward returns None above it and the layer path runs. The fused step runs
# the layer path's row blocks and product choices (config._blocks, gemm._blas_mode),
# but allocates its cache and scratch per call in a few large blocks, which some
# allocation histories fault in afresh every call. Measured (docs/architecture.md,
# "Fused model calls"): faster than the layer path at dino-b32 (76,800) in every run;
# above, faster in most runs but 1.1-1.5x slower at (8, 50, 32) -> 64 (102,400)
# after other sizes ran in the process (450 page faults per step against 40).
FUSED_TRAIN_MAX = 76800
_NO_STATES = {dt: (_A1[dt], 0, _A1[dt], 0) for dt in (_F32, _F64)}
_PAR_MIN_ROWS2 = 2 * _config._PAR_MIN_ROWS
_N_GATES = np.array(N_GATES_TABLE, np.int64)
_SPEND_LOCK = threading.Lock()  # guards FusedCache.buf hand-over in train_backward


def _may_split(spec, N, T):
    """Whether some recurrent op of ``spec`` runs in more than one row block for an
    (N, T) input (``config._blocks``, the layer path's rule; an unchecked spec
    counts as serial: the kernel checks it)."""
    W = _spec.SPEC_WIDTH
    if not header_ok(spec):
        return False
    ops = spec[_spec.SPEC_HEADER::W]
    rnn = ops == _spec.OP_RNN
    codes = spec[_spec.SPEC_HEADER + _spec.RNN_CELL::W][rnn]
    H = spec[_spec.SPEC_HEADER + _spec.RNN_HIDDEN::W][rnn]
    if not codes.size or codes.min() < 0 or codes.max() >= _N_GATES.size or H.min() < 1:
        return False
    ghh = int((_N_GATES[codes] * H * H).max())
    return _blocks(T, N, 1, ghh) > 1


class FusedCache:
    """What ``train_forward`` keeps for ``train_backward``: the private copy of the
    spec it ran, the parameter buffer, every op's cache in one block (``buf`` at
    the offsets of ``plan``), the checked ids, the time-major validity mask and
    the sizes of the states. ``buf`` is None once the backward ran."""

    __slots__ = ("spec", "spec_bytes", "data", "buf", "plan", "ids", "mask", "masked",
                 "N", "T", "seq_out", "F_out", "nrec", "n_state")


def train_forward(spec, data, x, mask=None, h0=None, c0=None, dropout=None):
    """Training forward of a model: ``(output, h_n, c_n, cache)``, or None as in
    :func:`infer` (same ``x``, ``mask``, ``h0`` and ``c0``). ``dropout``: None or the
    masks of the ops with dropout (the contract's layout). The cache goes to
    :func:`train_backward` once."""
    if type(spec) is _ndarray and spec.dtype is _I64 and spec.ndim == 1:
        spec = spec.copy()  # private: the backward refuses a spec changed since
    else:
        spec = np.array(spec, np.int64)
        if spec.ndim != 1:
            raise ValueError(_SPEC_ERROR)
    H0 = _spec.SPEC_HEADER
    limit = FUSED_TRAIN_MAX
    if limit is not None and type(x) is _ndarray and x.ndim >= 2 and spec.shape[0] > H0:
        width = int(spec[H0 + _spec.RNN_HIDDEN::_spec.SPEC_WIDTH].max(initial=1)) * 4
        if x.shape[0] * x.shape[1] * width > limit:
            return None  # the layer path (FUSED_TRAIN_MAX)
    fn, *args = _fused_args("train_fwd", spec, data, x, mask)
    dt = data.dtype
    nthr, blas_par = _split_args(x)
    args += (*_flat_arg(h0, dt, "h0"), *_flat_arg(c0, dt, "c0"), nthr, blas_par,
             *_flat_arg(dropout, dt, "dropout"))
    status, masked, out, buf, plan, tmask, ids, h_n, c_n = (
        fn(*args) if nthr == 1 else _call(fn, args, nthr, spec, x.shape[0], x.shape[1]))
    if status > DECLINED:
        _raise(status)
    if status == DECLINED:
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
    cache.nrec = spec[H0::_spec.SPEC_WIDTH].tolist().count(_spec.OP_RNN)
    cache.n_state = h_n.size
    return (out if status == 0 else out[:, 0]), h_n, (c_n if c_n.size else None), cache


def train_backward(spec, data, grad, cache, d_out, truncate, dh_n=None, dc_n=None,
                   input_grad=False):
    """Add the gradients of the forward that made ``cache`` into ``grad``; return
    ``(dx, dh0, dc0)``.

    ``spec`` and ``data`` must be those of the forward (same spec values, same
    buffer object). ``d_out``: the loss gradient, shaped and typed like the
    output (C order), or None (no output gradient). ``truncate``: one entry per
    recurrent op, in op order: -1 for full BPTT, else k (the gradient through at
    most k+1 cells, as the layers' ``bptt_truncate``). ``dh_n``/``dc_n``: None
    (zero) or the gradients on the final states (flat layout). ``dx``: the
    gradient on ``x``, (N, T, D), when ``input_grad`` and the first op is
    recurrent, else None; ``dh0``/``dc0`` those on the initial states (``dc0``
    None when no op has a cell state). Arguments are checked first (an error
    leaves the cache usable); the run then spends the cache (a second call raises).
    """
    if type(cache) is not FusedCache:
        raise TypeError("cache must be a FusedCache from train_forward")
    d_out, dh, has_dh, dc, has_dc, tr = backward_args(spec, data, grad, cache, d_out, truncate,
                                                      dh_n, dc_n)
    with _SPEND_LOCK:  # check-and-spend at once: of two concurrent calls one runs
        buf = cache.buf
        if buf is None:
            raise RuntimeError("this training forward was already backpropagated")
        cache.buf = None  # spent from here on
    dt = data.dtype
    N, T, F = cache.N, cache.T, cache.F_out
    fn = _entry.get(("train_bwd", dt)) or _kernel("train_bwd", dt)
    nthr, blas_par = _split_args(N)
    dx, dh0, dc0 = _call(fn, (cache.spec, data, grad, buf, cache.plan, cache.ids, cache.mask,
                              cache.masked, d_out if cache.seq_out else d_out.reshape(N, 1, F),
                              tr, T, dh, has_dh, dc, has_dc, 1 if input_grad else 0, nthr,
                              blas_par), nthr, cache.spec, N, T)
    return (dx if dx.size else None), dh0, (dc0 if dc0.size else None)


def backward_args(spec, data, grad, cache, d_out, truncate, dh_n, dc_n):
    """The checks of ``train_backward`` before it spends ``cache`` (any object with the
    fields of :class:`FusedCache` that the checks read: ``buf`` (None once spent),
    ``data``, ``spec_bytes``, ``N``, ``T``, ``F_out``, ``seq_out``, ``n_state``,
    ``nrec``); returns ``(d_out, dh, has_dh, dc, has_dc, truncate)`` as the kernels
    take them. Shared with the CUDA backend's fused calls (same rules, same
    messages)."""
    if cache.buf is None:
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
    N, T, F = cache.N, cache.T, cache.F_out
    shape = (N, T, F) if cache.seq_out else (N, F)
    if d_out is None:
        d_out = _zeros(shape, dt)
    elif type(d_out) is not _ndarray:
        raise TypeError("d_out must be a numpy array")
    df = d_out.flags
    if (d_out.dtype != dt or not d_out.dtype.isnative or not df.c_contiguous
            or not df.aligned or d_out.shape != shape):
        raise ValueError("d_out must be a C-contiguous array shaped and typed like the output")
    dh, has_dh = _flat_arg(dh_n, dt, "dh_n")
    dc, has_dc = _flat_arg(dc_n, dt, "dc_n")
    if (has_dh and dh.size != cache.n_state) or (has_dc and dc.size != cache.n_state):
        raise ValueError(f"dh_n and dc_n must hold {cache.n_state} values (the flat state "
                         "layout)")
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
    return d_out, dh, has_dh, dc, has_dc, tr


# ----------------------------------------------------------------------------
# Generation (the compiled sampling loop: .generate).
# ----------------------------------------------------------------------------

def _generate_loop(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
                   start, forced, banned, uniforms, peep, temperature, top_k, end_token):
    """The whole sampling loop in compiled code; see ``numpy_backend.generate``.

    Token-for-token equal to the reference for the same ``uniforms`` (up to
    round-off landing exactly on a sampling boundary). Inputs the kernel does not
    take as they are (degenerate or inconsistent shapes, another dtype, token ids
    outside ``xp_table``) go to the reference, which gives its result or error.
    """
    dt = xp_table.dtype
    n, T = forced.shape
    L, GH, H = w_hh.shape
    V = w_out.shape[0]
    code, act, ract = cell.codes
    tokens = _empty((n, T), np.int64)
    lengths = _empty(n, np.int64)
    fn = _entry.get(("generate", dt)) or _kernel("generate", dt)
    fn(code, act, ract, _gemm._blas_mode(n, GH * H, 1), _gemm._blas_mode(n, V * H, 1),
       xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, peep, w_out, b_out, h,
       _A3[dt] if c is None else c, start, forced, banned, uniforms, float(temperature),
       int(top_k), int(end_token), tokens, lengths)
    return tokens, lengths


def checked_generate(loop):
    """``generate`` (``numpy_backend.generate``'s signature) for a sampling ``loop``
    that takes :func:`generate_args`'s arrays, then ``temperature``, ``top_k`` and
    ``end_token``; what those checks do not take goes to the reference. Shared with
    the CUDA backend."""
    def generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
                 start, forced, banned, uniforms, temperature, top_k, end_token, peep=None):
        args = generate_args(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out,
                             h, c, start, forced, banned, uniforms, peep)
        if args is None:
            return _reference().generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh,
                                         w_out, b_out, h, c, start, forced, banned, uniforms,
                                         temperature, top_k, end_token, peep)
        return loop(cell, *args, temperature, top_k, end_token)

    generate.__doc__ = loop.__doc__
    return generate


generate = checked_generate(_generate_loop)


def generate_args(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
                  start, forced, banned, uniforms, peep):
    """The arrays of ``generate`` as the compiled loops take them (C-contiguous, the
    table's float dtype; ``c`` None without a cell state, ``peep`` (L, 3, H) or
    (L, 3, 0)), or None for inputs they do not take as they are (degenerate or
    inconsistent shapes, another dtype, token ids outside ``xp_table``): the
    reference then gives its result or error. Shared with the CUDA backend."""
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
    code, act, ract, has_c, _, _, _ = _info(cell)
    h = _contig(h, dt)
    c = _contig(c, dt) if has_c and c is not None else None
    rest = L > 1
    if rest:
        w_ih_rest = _contig(w_ih_rest, dt)
        b_ih_rest = _contig(b_ih_rest, dt)
    b_out = _contig(b_out, dt)
    b_hh = _contig(b_hh, dt)
    P = N_PEEP[code]
    if P and peep is not None:
        peep = _contig(peep, dt)
    if (dt not in _A1 or min(n, T, L, H, V, Vx) == 0 or GH != cell.n_gates * H
            or xp_table.shape != (Vx, GH) or b_hh.shape != (L, GH) or w_out.shape != (V, H)
            or b_out.shape != (V,) or h.shape != (L, n, H)
            or (has_c and (c is None or c.shape != h.shape))
            or (rest and (w_ih_rest.shape != (L - 1, GH, H) or b_ih_rest.shape != (L - 1, GH)))
            or (P and peep is not None and peep.shape != (L, P, H))
            or start.shape != (n,) or banned.shape != (V,) or uniforms.shape != (n, T)
            or start.min() < 0 or start.max() >= Vx or forced.max() >= Vx
            or V > Vx):  # a sampled token indexes xp_table
        return None
    if not P:
        peep = _zeros((L, PEEP_ROWS, 0), dt)
    elif peep is None:  # as the reference: no peephole terms
        peep = _zeros((L, P, H), dt)
    return (xp_table, w_ih_rest if rest else _A3[dt], b_ih_rest if rest else _A2[dt], w_hh,
            b_hh, w_out, b_out, h, c if has_c else None, start, forced, banned, uniforms, peep)
