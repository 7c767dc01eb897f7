"""CUDA backend: the kernel contract on an NVIDIA GPU, compiled with Numba CUDA.

Optional (``pip install "cyrnn[cuda]"``: numba-cuda with its CUDA 12 toolkit
wheels) and never chosen by ``backend="auto"``: ask for ``backend="cuda"``.
Importing this package is the availability check (:mod:`.config`): without
numba-cuda, or without a usable device, it raises ``ImportError`` and
``get_backend("cuda")`` raises ``ValueError`` with the reason. Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) counts as a device; the tests run there.

Same signatures, results and cache layout as
:mod:`cyrnn.backends.numpy_backend` (the specification): ``forward``,
``backward`` and ``step``, float32 and float64, every row of the cell table with
every activation, peepholes, masks and truncated BPTT. Host NumPy arrays in, host
NumPy arrays out (the cache too). The fused plan calls ``infer``,
``train_forward`` and ``train_backward`` (:mod:`.fused`) run a whole layer or
``Sequential`` on the device with the Numba backend's signatures and checks, so
layers, models, ``train_step``, the estimators and the language model on this
backend take the plan path; during training they keep the parameters, gradients and
optimizer state on the device (:mod:`.resident`). ``generate`` runs the whole sampling
loop on the device (:mod:`.sampling`). The layer path's GEMMs (the input
projection of all steps, ``dW_ih``, ``dx``) go through ``matmul``, the device's
tiled GEMM.

Where things live: :mod:`.config` (availability, threads, shared-memory limit,
cooperative grid sizes), :mod:`.mathfn` (activations), :mod:`.cells` (the cell
math, the only place it lives), :mod:`.loops` (the per-(row, unit) step bodies, the
persistent kernels and the per-step kernels), :mod:`.gemm` (the tiled GEMM: per-step
products, ``dW_hh``, ``matmul``; bias and peephole sums), :mod:`.ops` (the
elementwise, gather and scatter kernels between the ops of a fused call),
:mod:`.fused` (the fused calls), :mod:`.resident` (where they find the parameters
and gradients on the device; device-resident training), :mod:`.update` (optimizer and
clipping kernels), :mod:`.sampling` (``generate``); this module holds the per-layer
entry points, the time loops on device arrays (``_run_forward``, ``_run_backward``),
the choice of path and the per-step path's host loops.
"""

from __future__ import annotations

import math

import numpy as np

from . import config  # first: the availability check, with its messages
from numba import cuda  # noqa: E402 - after the check
from .cells import GRU_CHO, HAS_C, N_GATES
from .gemm import KERNELS as GEMM_KERNELS
from .gemm import matmul as _matmul
from .gemm import weight_grad
from .loops import BWD_CELL, BWD_CHO, BWD_END, BWD_PREV, BWD_START, KERNELS

NAME = "cuda"

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _reference():
    from .. import numpy_backend
    return numpy_backend


def _dev(a, dt, shape=None):
    """A device copy of ``a`` in ``dt`` (zeros of ``shape`` when ``a`` is None)."""
    if a is None:
        return cuda.to_device(np.zeros(shape, dt))
    return cuda.to_device(np.ascontiguousarray(a, dt))


def _mask(mask):
    """The (T, N) uint8 mask on the device and ``has_mask`` (nonzero = valid)."""
    if mask is None:
        return cuda.to_device(np.ones((1, 1), np.uint8)), 0
    return cuda.to_device(np.ascontiguousarray(np.asarray(mask) != 0, np.uint8)), 1


def _peep(cell, peep, dt, H):
    """The peephole weights the kernels read ((3, H); zeros when a peephole cell gets
    None, as the reference skips the terms; a (3, 1) placeholder otherwise)."""
    if cell.n_peepholes:
        return _dev(cell.peephole_weights(peep), dt, (3, H))
    return cuda.to_device(np.zeros((3, 1), dt))


# Both persistent kernels take ``U`` at this position.
_U_ARG = 6


def _persistent(kernel, args, G, H, itemsize):
    """Launch a persistent kernel sized by ``config.launch_plan`` (``args`` hold a
    placeholder for ``U``); False when the layer must take the per-step path."""
    global _COOPERATIVE
    if not _COOPERATIVE:
        return False
    plan = config.launch_plan(kernel, args, G, H, itemsize)
    if plan is None:
        return False
    blocks, U, shared_bytes = plan
    try:
        kernel[blocks, config.THREADS, 0, shared_bytes](*args[:_U_ARG], U,
                                                        *args[_U_ARG + 1:])
    except _LAUNCH_ERRORS:
        # a device or setup that refuses cooperative launches (an old GPU, some MPS or
        # virtualised setups): nothing ran; this process uses the per-step path from now
        if config.SIMULATOR:
            raise
        _COOPERATIVE = False
        return False
    return True


def _launch_errors():
    try:
        from numba.cuda.cudadrv.driver import CudaAPIError, CudaDriverError
        return (CudaAPIError, CudaDriverError)
    except ImportError:  # pragma: no cover - another numba-cuda layout
        return ()


_LAUNCH_ERRORS = _launch_errors()
_COOPERATIVE = True  # False once a cooperative launch was refused


def _grid(N, H):
    """Blocks of a per-step launch: one thread per (row, unit)."""
    return math.ceil(N * H / config.THREADS)


def _forward_steps(step_kernel, args, T, N, H, keep, cho):
    """The per-step path of ``forward``: per step the tiled GEMM ``gh = h W_hh^T + b_hh``
    (Cho's GRU: the r, z blocks, then ``(r h) W_hn^T + b_hn`` between its phases) and one
    launch of ``fwd_step_kernel`` (``args`` as ``forward_kernel``'s)."""
    code, act, ract, _, has_c, has_mask, _, d_xp, d_w, d_b, d_peep, d_mask, d_hs, d_cs, \
        d_hseq, d_gates, d_aux, d_gh = args
    GH = d_gh.shape[1]
    NH = N * H
    grid = _grid(N, H)
    for t in range(T):
        s0 = t if keep else t & 1
        tail = (keep, has_c, has_mask, d_xp, d_peep, d_mask, d_hs, d_cs, d_hseq, d_gates,
                d_aux, d_gh)
        _matmul(N, 2 * H if cho else GH, H, d_hs, (s0 * NH, H, 1), d_w, (0, 1, H), d_gh,
               (0, GH), bias=d_b)
        step_kernel[grid, config.THREADS](code, act, ract, 0 if cho else -1, t, *tail)
        if cho:
            _matmul(N, H, H, d_aux, ((t if keep else 0) * NH, H, 1), d_w, (2 * H * H, 1, H),
                   d_gh, (2 * H, GH), bias=d_b, bias0=2 * H)
            step_kernel[grid, config.THREADS](code, act, ract, 1, t, *tail)


def _run_forward(codes, d_xp, d_w, d_b, d_peep, d_mask, has_mask, d_hs, d_cs, d_hseq,
                 d_gates, d_aux, keep):
    """The time loop of ``forward`` on device arrays (one cooperative launch, or the
    per-step path for large layers): ``d_hs[0]`` (``d_cs[0]``) hold the initial state;
    ``d_hs``, ``d_cs`` hold ``T + 1`` slots with ``keep`` (training), else 2
    (alternating; the final state in slot ``T & 1``); ``d_gates``, ``d_aux`` the
    cache (``T`` steps with ``keep``, else 1)."""
    code, act, ract = codes
    dt = np.dtype(d_xp.dtype)
    T, N, GH = d_xp.shape
    H = d_w.shape[1]
    args = (code, act, ract, keep, int(HAS_C[code]), has_mask, 1, d_xp, d_w, d_b, d_peep,
            d_mask, d_hs, d_cs, d_hseq, d_gates, d_aux, cuda.device_array((N, GH), dt))
    kernels = KERNELS[dt.name]
    if not _persistent(kernels[0], args, N_GATES[code], H, dt.itemsize):
        _forward_steps(kernels[2], args, T, N, H, keep, code == GRU_CHO)


def _state_slots(dt, S, N, H, has_c):
    """``(d_hs, d_cs)``: ``S`` state slots (a (1, 1, 1) placeholder for ``c`` when the
    cell has none)."""
    d_hs = cuda.device_array((S, N, H), dt)
    return d_hs, (cuda.device_array((S, N, H), dt) if has_c
                  else cuda.device_array((1, 1, 1), dt))


def forward(cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False, peep=None):
    """Run the cell over ``T`` steps (one cooperative launch, or the per-step path for
    large layers); see ``numpy_backend.forward``."""
    xp = np.ascontiguousarray(xp)
    dt = xp.dtype
    T, N, GH = xp.shape
    H = w_hh.shape[1]
    if dt not in _FLOATS or T == 0 or N == 0 or H == 0:
        return _reference().forward(cell, xp, w_hh, b_hh, h0, c0, mask, keep_cache, peep)
    code = cell.code
    has_c = HAS_C[code]
    keep = 1 if keep_cache else 0
    d_hs, d_cs = _state_slots(dt, T + 1 if keep else 2, N, H, has_c)
    d_hs[0].copy_to_device(np.ascontiguousarray(h0, dt))
    if has_c:
        d_cs[0].copy_to_device(np.ascontiguousarray(c0, dt))
    d_mask, has_mask = _mask(mask)
    d_hseq = cuda.device_array((T, N, H), dt)
    d_gates = cuda.device_array((T if keep else 1, N, GH), dt)
    d_aux = cuda.device_array((T if keep else 1, N, H), dt)
    _run_forward(cell.codes, _dev(xp, dt), _dev(w_hh, dt), _dev(b_hh, dt),
                 _peep(cell, peep, dt, H), d_mask, has_mask, d_hs, d_cs, d_hseq, d_gates,
                 d_aux, keep)
    h_seq = d_hseq.copy_to_host()
    last = T if keep else T & 1
    hs = d_hs.copy_to_host()
    cs = d_cs.copy_to_host() if has_c else None
    h_T = hs[last].copy()
    c_T = cs[last].copy() if has_c else None
    if not keep:
        return h_seq, h_T, c_T, None
    cache = {"h": hs, "gates": d_gates.copy_to_host()}
    if has_c:
        cache["c"] = cs
    if cell.kind == "gru":
        cache["aux"] = d_aux.copy_to_host()
    return h_seq, h_T, c_T, cache


def _sources(valid, T, truncate, live):
    """``(full, budget, src_t, src_lo)`` of the backward sweeps: full BPTT is one
    sweep from ``T - 1``; truncation ``k`` one sweep per step ``t0`` with ``live(t0)``
    (a nonzero output gradient at a valid step; ``T - 1`` also with a final-state
    gradient), each down to the lowest step where some row still has budget left (its
    ``k + 1``-th valid step counted back from the source). ``valid``: the (T, N) bool
    mask of valid steps."""
    if truncate is None or truncate < 0 or truncate >= T:
        return 1, T + 1, np.array([T - 1], np.int64), np.zeros(1, np.int64)
    count = np.cumsum(valid, axis=0)            # valid steps in [0, t]
    before = count - valid                      # valid steps in [0, t)
    src_t, src_lo = [], []
    for t0 in range(T - 1, -1, -1):
        if not live(t0):
            continue
        reach = count[t0][None, :] - before[:t0 + 1] >= truncate + 1  # (t0 + 1, N)
        stop = np.where(reach.any(axis=0), (t0 - np.argmax(reach[::-1], axis=0)), 0)
        src_t.append(t0)
        src_lo.append(int(stop.min()))
    return 0, truncate + 1, np.array(src_t, np.int64), np.array(src_lo, np.int64)


def _backward_steps(step_kernel, head, tail, src_t, src_lo, d_w, d_dg, d_prod, cho):
    """The per-step path of ``backward``: the sweeps of ``src_t`` on the host, per step
    the cell gradients, (Cho's GRU: the GEMM ``dn W_hn`` and its phase,) the GEMM
    ``dg W_hh`` and ``dh_prev`` (``bwd_step_kernel``'s arguments ``head`` + phase, step
    + ``tail``; ``d_dg`` and ``d_prod`` its step gradients and product buffers)."""
    GH, H = d_w.shape
    N = d_dg.shape[0]
    grid = _grid(N, H)

    def launch(phase, t):
        step_kernel[grid, config.THREADS](*head, phase, t, *tail)

    for t0, lo in zip(src_t.tolist(), src_lo.tolist()):
        launch(BWD_START, t0)
        for t in range(t0, lo - 1, -1):
            launch(BWD_CELL, t)
            if cho:
                _matmul(N, H, H, d_dg, (2 * H, GH, 1), d_w, (2 * H * H, H, 1), d_prod, (0, H))
                launch(BWD_CHO, t)
            _matmul(N, H, 2 * H if cho else GH, d_dg, (0, GH, 1), d_w, (0, H, 1), d_prod,
                   (0, H))
            launch(BWD_PREV, t)
        launch(BWD_END, t0)


def _run_backward(codes, sweeps, d_hs, d_cs, d_gates, d_aux, d_w, d_peep, d_mask, has_mask,
                  d_dhseq, d_dhT, d_dcT, d_dxp, d_dgh, d_dh0, d_dc0, d_dw, d_db, d_dp):
    """The backward sweeps and contractions on device arrays: ``sweeps`` as
    ``_sources`` gives them; ``d_dhseq`` None without sequence gradients; ``d_dxp``,
    ``d_dgh`` (T, N, G H) and ``d_dh0``, ``d_dc0`` (N, H) accumulate from zero (the
    caller zeroes them); ``d_dw`` (G H, H), ``d_db`` (G H,) and ``d_dp`` ((3, H), or
    None: no peephole gradient) are written."""
    code, act, ract = codes
    full, budget, src_t, src_lo = sweeps
    dt = np.dtype(d_gates.dtype)
    T, N, GH = d_gates.shape
    H = d_w.shape[1]
    has_c = HAS_C[code]
    if src_t.size:
        state = (d_hs, d_cs, d_gates, d_aux)
        d_dg = cuda.device_array((N, GH), dt)
        grads = (d_peep, d_mask, cuda.device_array((1, 1, 1), dt) if d_dhseq is None
                 else d_dhseq, d_dhT, d_dcT, d_dxp, d_dgh, d_dg,
                 cuda.device_array((N, H), dt), cuda.device_array((N, H), dt),
                 cuda.device_array((N, H), dt), cuda.device_array((N, H), np.int64))
        flags = (int(has_c), has_mask, int(d_dhseq is not None))
        kernels = KERNELS[dt.name]
        args = (code, act, ract, *flags, 1, full, budget, cuda.to_device(src_t),
                cuda.to_device(src_lo), *state, d_w, *grads, d_dh0, d_dc0)
        if not _persistent(kernels[1], args, N_GATES[code], H, dt.itemsize):
            d_prod = cuda.device_array((N, H), dt)
            tail = (full, *flags, budget, *state, *grads, d_prod, d_dh0, d_dc0)
            _backward_steps(kernels[3], (code, act, ract), tail, src_t, src_lo, d_w, d_dg,
                            d_prod, code == GRU_CHO)
    # dW_hh, db_hh, dpeep: contractions over all T * N rows
    dgh2 = d_dgh.reshape(T * N, GH)
    h_in = d_hs[:T].reshape(T * N, H)
    if code == GRU_CHO:
        weight_grad(dgh2, h_in, d_dw, 0, 0, 2 * H)
        weight_grad(dgh2, d_aux.reshape(T * N, H), d_dw, 2 * H, 2 * H, H)
    else:
        weight_grad(dgh2, h_in, d_dw, 0, 0, GH)
    threads = config.THREADS
    _, colsum, peep_grad = GEMM_KERNELS[dt.name]
    colsum[math.ceil(GH / threads), threads](dgh2, d_db)
    if d_dp is not None:
        peep_grad[math.ceil(3 * H / threads), threads](dgh2, d_cs.reshape((T + 1) * N, H), N,
                                                        d_dp)


def backward(cell, cache, w_hh, mask=None, dh_seq=None, dh_T=None, dc_T=None, truncate=None,
             peep=None):
    """Gradients through ``forward`` (the sweeps in one cooperative launch, or the
    per-step path, then the whole-sequence contractions); see
    ``numpy_backend.backward``. Returns ``(dxp, dh0, dc0, dw_hh, db_hh, dpeep)``."""
    gates = np.ascontiguousarray(cache["gates"])
    dt = gates.dtype
    T, N, GH = gates.shape
    H = w_hh.shape[1]
    if dt not in _FLOATS or T == 0 or N == 0 or H == 0:
        return _reference().backward(cell, cache, w_hh, mask, dh_seq, dh_T, dc_T, truncate,
                                     peep)
    has_c = HAS_C[cell.code]
    valid = np.ones((T, N), bool) if mask is None else np.asarray(mask) != 0

    def live(t0):
        out = dh_seq is not None and bool((np.asarray(dh_seq[t0]) * valid[t0][:, None]).any())
        if t0 == T - 1:
            out = out or bool(np.any(dh_T)) or (dc_T is not None and bool(np.any(dc_T)))
        return out

    d_mask, has_mask = _mask(mask)
    d_dxp = cuda.to_device(np.zeros((T, N, GH), dt))
    d_dgh = cuda.to_device(np.zeros((T, N, GH), dt))
    d_dh0 = cuda.to_device(np.zeros((N, H), dt))
    d_dc0 = cuda.to_device(np.zeros((N, H), dt))
    d_dw = cuda.device_array((GH, H), dt)
    d_db = cuda.device_array(GH, dt)
    d_dp = cuda.device_array((3, H), dt) if cell.n_peepholes and peep is not None else None
    _run_backward(cell.codes, _sources(valid, T, truncate, live), _dev(cache["h"], dt),
                  _dev(cache["c"], dt) if has_c else cuda.device_array((1, 1, 1), dt),
                  _dev(gates, dt),
                  _dev(cache["aux"], dt) if cell.kind == "gru"
                  else cuda.device_array((1, 1, 1), dt),
                  _dev(w_hh, dt), _peep(cell, peep, dt, H), d_mask, has_mask,
                  None if dh_seq is None else _dev(dh_seq, dt), _dev(dh_T, dt, (N, H)),
                  _dev(dc_T if has_c else None, dt, (N, H)), d_dxp, d_dgh, d_dh0, d_dc0,
                  d_dw, d_db, d_dp)
    return (d_dxp.copy_to_host(), d_dh0.copy_to_host(),
            d_dc0.copy_to_host() if has_c else None, d_dw.copy_to_host(),
            d_db.copy_to_host(), None if d_dp is None else d_dp.copy_to_host())


def matmul(a, trans_a, b, trans_b, out, beta=0.0):
    """``out = op(a) @ op(b) + beta * out`` on the device, one tiled GEMM, for C-contiguous
    2-D host arrays of one float dtype: the layer path's hook (``layers.recurrent``) for
    the input projection of all steps, ``dW_ih`` and ``dx``."""
    M, K = a.shape[::-1] if trans_a else a.shape
    P = b.shape[0] if trans_b else b.shape[1]
    if out.dtype not in _FLOATS or 0 in (M, K, P):
        res = (a.T if trans_a else a) @ (b.T if trans_b else b)
        out[...] = res if beta == 0 else beta * out + res
        return
    dt = out.dtype
    d_out = cuda.to_device(out) if beta != 0 else cuda.device_array(out.shape, dt)
    _matmul(M, P, K, _dev(a, dt), (0, 1, M) if trans_a else (0, K, 1), _dev(b, dt),
            (0, 1, K) if trans_b else (0, P, 1), d_out, (0, P), beta=beta)
    d_out.copy_to_host(out)


def step(cell, xp_t, w_hh, b_hh, h, c=None, peep=None):
    """Single step used by generation: ``forward`` over ``T = 1`` without a cache.
    Returns ``(h_new, c_new)``."""
    xp_t = np.ascontiguousarray(xp_t)
    _, h_T, c_T, _ = forward(cell, xp_t[None], w_hh, b_hh, h, c, None, False, peep)
    return h_T, c_T


from .fused import infer, train_backward, train_forward  # noqa: E402,F401 - needs the above
from .resident import resident_session  # noqa: E402,F401
from .sampling import generate  # noqa: E402,F401
