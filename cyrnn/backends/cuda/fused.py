"""The fused calls of the CUDA backend: ``infer``, ``train_forward``, ``train_backward``.

Same signatures, checks, results and declines as the Numba backend's
(:mod:`cyrnn.backends.numba`, whose argument forms, spec checks and input checks
are reused as they are: one rule for both). A call interprets the spec op by op
on the device: the input goes in once (time-major, or the token ids), each
recurrent op projects its input with the tiled GEMM (bias included), runs each
direction's time loop (the persistent kernel or the per-step path of
:mod:`.loops`, the reverse direction on time-reversed copies of its projection and
mask, as the Numba runner), merges the directions and applies dropout; a Dense op
is one GEMM. Every intermediate stays on the device; the output, the final states
(and, in training, nothing else) come back. The training cache holds the device
arrays of every op for ``train_backward``, which runs the ops in reverse: the
Dense products, the directions' backward sweeps and contractions, the input
projection's gradients, the embedding's scatter-add, all added into a device copy
of the gradient buffer that comes back once (or, during device-resident training,
:mod:`.resident`, stays there).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import cuda

from ...cells import CELL_TABLE
from .. import spec as _spec
from ..numba import _flat_arg, _raise, backward_args, fused_forms
from ..numba.fused import _E_DROP, _E_MEMORY, _E_STATE, DECLINED, _check_input, _check_spec
from ..spec import (DENSE_B, DENSE_OUT, DENSE_W, EMB_DIM, EMB_FROZEN, EMB_W, MERGE_CONCAT,
                    OP_RNN, RNN_ACT, RNN_B_HH, RNN_B_IH, RNN_CELL, RNN_DIRS,
                    RNN_DROP, RNN_HIDDEN, RNN_IN, RNN_MERGE, RNN_PEEP, RNN_RACT, RNN_SEQ,
                    RNN_W_HH, RNN_W_IH, RNN_W_IH_R, SPEC_HEADER, SPEC_WIDTH)
from . import ops
from . import resident
from .cells import HAS_C, N_GATES
from .gemm import matmul as _matmul

_R = RNN_W_IH_R - RNN_W_IH  # the reverse direction's tensor fields
_SPEND_LOCK = threading.Lock()  # check-and-spend of a cache at once


def _peephole(code):
    return CELL_TABLE[code].n_peepholes > 0


def _width(spec, r):
    """The output width of the recurrent op at ``r`` (``2 H`` for a bidirectional
    concat op, else ``H``)."""
    H = int(spec[r + RNN_HIDDEN])
    return 2 * H if spec[r + RNN_DIRS] == 2 and spec[r + RNN_MERGE] == MERGE_CONCAT else H


class _Checked:
    """A call's arguments after every check the Numba backend makes."""

    __slots__ = ("spec", "data", "x", "ids", "first", "F0", "N", "T", "masked", "tmask",
                 "SH", "anyc", "h0", "c0", "dropout")


def _checks(spec, data, x, mask, h0, c0, dropout=None):
    """The Numba backend's checks, in its order: argument forms (raise), the spec
    (raise; None when widths do not chain), the input (None: declined), the states'
    and dropout masks' sizes (raise), non-finite states (None). Returns a
    :class:`_Checked` or None."""
    spec, data, xa, ids, is_ids, mask_u8, has_mask = fused_forms(spec, data, x, mask)
    dt = data.dtype
    h0f, has_h0 = _flat_arg(h0, dt, "h0")
    c0f, has_c0 = _flat_arg(c0, dt, "c0")
    drop, has_drop = _flat_arg(dropout, dt, "dropout")
    (status, first, F0, Fmax, GHmax, Hmax, _, Hbi, SH, anyc,
     DW) = _check_spec(spec, data.shape[0])
    if status == DECLINED:
        return None
    if status:
        _raise(status)
    status, N, T, masked, tmask, idc = _check_input(spec, first, F0, xa, ids, is_ids, mask_u8,
                                                    has_mask)
    if status:
        return None
    if (has_h0 and h0f.shape[0] != N * SH) or (has_c0 and c0f.shape[0] != N * SH):
        _raise(_E_STATE)
    if has_drop and drop.shape[0] != T * N * DW:
        _raise(_E_DROP)
    TN = float(T) * N
    need = (T + 1.0) * N * (3.0 * GHmax + 4.0 * Hmax + 2.0 * Fmax) * spec[1] * 2 + TN * Hbi
    if need * dt.itemsize > 1e15:
        _raise(_E_MEMORY)
    if not all(np.isfinite(a).all() for a, has in ((h0f, has_h0), (c0f, has_c0)) if has):
        return None  # the layer path's state checks name the problem
    c = _Checked()
    c.spec, c.data, c.first, c.F0, c.N, c.T = spec, data, int(first), int(F0), int(N), int(T)
    c.x, c.ids = xa, idc
    c.masked, c.tmask = bool(masked), tmask
    c.SH, c.anyc = int(SH), bool(anyc)
    c.h0 = h0f if has_h0 else None
    c.c0 = c0f if has_c0 else None
    c.dropout = drop if has_drop else None
    return c


class _Op:
    """One op of a training forward, as its backward needs it: its input (time-major
    rows on the device), whether that is a sequence, its output; for a recurrent op
    each direction's cache ``(hs, cs, gates, aux, h_seq, peep)`` (the reverse
    direction's in reversed time) and its dropout mask."""

    __slots__ = ("r", "inp", "inseq", "out", "dirs", "drop", "s0")


class DeviceCache:
    """What ``train_forward`` keeps for ``train_backward`` (the fields
    :func:`cyrnn.backends.numba.backward_args` checks, and the device arrays of every
    op in ``buf``; ``buf`` is None once the backward ran)."""

    __slots__ = ("spec", "spec_bytes", "data", "buf", "N", "T", "F_out", "seq_out", "nrec",
                 "n_state", "first", "F0", "d_data", "d_ids", "valid", "d_masks", "masked",
                 "anyc")


def _mask_pair(c):
    """The (T, N) uint8 validity masks on the device, natural and reversed time, and
    ``has_mask`` (placeholders when unmasked)."""
    if not c.masked:
        one = cuda.to_device(np.ones((1, 1), np.uint8))
        return one, one, 0
    tm = np.ascontiguousarray(c.tmask, np.uint8)
    return cuda.to_device(tm), cuda.to_device(np.ascontiguousarray(tm[::-1])), 1


def _run(c, keep):
    """Run the checked call ``c`` on the device. Returns ``(out, h_n, c_n, ops, d_data,
    d_ids, d_masks, seq)``: the output ((N, T, F), or (N, F) after a many-to-one op)
    and the final states on the host; with ``keep``, every op's :class:`_Op`; the
    device parameters, ids and masks the backward reuses; whether the output is a
    sequence."""
    from . import _run_forward, _state_slots  # the package's time-loop entry

    spec, dt, N, T = c.spec, c.data.dtype, c.N, c.T
    TN = T * N
    d_data = resident.device_data(c.data)
    d_masks = _mask_pair(c)
    d_ids = None
    if c.first:
        E = int(spec[SPEC_HEADER + EMB_DIM])
        d_ids = cuda.to_device(c.ids)
        cur = cuda.device_array((TN, E), dt)
        ops.launch("gather", dt, TN * E, d_data, int(spec[SPEC_HEADER + EMB_W]), d_ids, cur)
    else:
        cur = cuda.to_device(np.ascontiguousarray(c.x.transpose(1, 0, 2)).reshape(TN, c.F0))
    n_state = N * c.SH
    d_h0 = cuda.to_device(c.h0) if c.h0 is not None else ops.zeros(n_state, dt)
    d_c0 = cuda.to_device(c.c0) if c.c0 is not None else ops.zeros(n_state, dt)
    d_hn = cuda.device_array(n_state, dt)
    d_cn = ops.zeros(n_state if c.anyc else 0, dt)
    d_drop = None if c.dropout is None else cuda.to_device(c.dropout)
    no_peep = ops.zeros((3, 1), dt)
    F, seq, so, do = c.F0, True, 0, 0
    kept = []
    for o in range(c.first, int(spec[1])):
        r = SPEC_HEADER + o * SPEC_WIDTH
        op = _Op()
        op.r, op.inp, op.inseq, op.drop, op.s0 = r, cur, seq, None, so
        rows = TN if seq else N
        if spec[r] == OP_RNN:
            code = int(spec[r + RNN_CELL])
            codes = (code, int(spec[r + RNN_ACT]), int(spec[r + RNN_RACT]))
            H, dirs, W = int(spec[r + RNN_HIDDEN]), int(spec[r + RNN_DIRS]), _width(spec, r)
            GH, NH, has_c = N_GATES[code] * H, N * H, HAS_C[code]
            op.dirs = []
            for d in range(dirs):
                k = r + d * _R
                xp = cuda.device_array((TN, GH), dt)
                _matmul(TN, GH, F, cur, (0, F, 1), d_data, (int(spec[k + RNN_W_IH]), 1, F), xp,
                        (0, GH), bias=d_data, bias0=int(spec[k + RNN_B_IH]))
                if d == 1:  # the reverse direction runs on reversed time
                    rev = cuda.device_array((TN, GH), dt)
                    ops.launch("reverse_time", dt, TN * GH, xp.reshape(T, N * GH),
                               rev.reshape(T, N * GH))
                    xp = rev
                d_hs, d_cs = _state_slots(dt, T + 1 if keep else 2, N, H, has_c)
                s0 = so + d * NH
                d_hs[0].copy_to_device(d_h0[s0:s0 + NH].reshape(N, H))
                if has_c:
                    d_cs[0].copy_to_device(d_c0[s0:s0 + NH].reshape(N, H))
                hseq = cuda.device_array((T, N, H), dt)
                gates = cuda.device_array((T if keep else 1, N, GH), dt)
                aux = cuda.device_array((T if keep else 1, N, H), dt)
                w_hh = d_data[int(spec[k + RNN_W_HH]):int(spec[k + RNN_W_HH]) + GH * H]
                b_hh = d_data[int(spec[k + RNN_B_HH]):int(spec[k + RNN_B_HH]) + GH]
                peep = no_peep
                if _peephole(code):
                    off = int(spec[k + RNN_PEEP])
                    peep = d_data[off:off + 3 * H].reshape(3, H)
                _run_forward(codes, xp.reshape(T, N, GH), w_hh.reshape(GH, H), b_hh, peep,
                             d_masks[d], d_masks[2], d_hs, d_cs, hseq, gates, aux, keep)
                last = T if keep else T & 1
                d_hn[s0:s0 + NH].copy_to_device(d_hs[last].reshape(NH))
                if has_c:
                    d_cn[s0:s0 + NH].copy_to_device(d_cs[last].reshape(NH))
                op.dirs.append((d_hs, d_cs, gates, aux, hseq, peep))
            hseq0 = op.dirs[0][4]
            seq = spec[r + RNN_SEQ] != 0
            if seq:
                if dirs == 2:
                    out = cuda.device_array((TN, W), dt)
                    ops.launch("merge", dt, TN * H, int(spec[r + RNN_MERGE]), hseq0,
                               op.dirs[1][4], out.reshape(T, N, W))
                else:
                    out = hseq0.reshape(TN, H)
                if keep and d_drop is not None and spec[r + RNN_DROP] != 0:
                    if dirs == 1:  # the sequence stays as it was in the cache
                        out = cuda.device_array((TN, W), dt)
                        out.copy_to_device(hseq0.reshape(TN, H))
                    op.drop = d_drop[do:do + TN * W]
                    ops.launch("mul_into", dt, TN * W, out.reshape(TN * W), op.drop)
            else:  # many-to-one: the (merged) final states
                fin = d_hn[so:so + dirs * NH]
                if dirs == 2:
                    out = cuda.device_array((N, W), dt)
                    ops.launch("merge", dt, NH, int(spec[r + RNN_MERGE]),
                               fin[:NH].reshape(1, N, H), fin[NH:].reshape(1, N, H),
                               out.reshape(1, N, W))
                else:
                    out = fin.reshape(N, H)
            if spec[r + RNN_DROP] != 0:
                do += TN * W
            so += dirs * NH
            F = W
        else:  # dense on (T N or N, F) rows
            O = int(spec[r + DENSE_OUT])
            out = cuda.device_array((rows, O), dt)
            _matmul(rows, O, F, cur, (0, F, 1), d_data, (int(spec[r + DENSE_W]), 1, F), out,
                    (0, O), bias=d_data, bias0=int(spec[r + DENSE_B]))
            F = O
        op.out = out
        cur = out
        if keep:
            kept.append(op)
    host = cur.copy_to_host()
    out = (np.ascontiguousarray(host.reshape(T, N, F).transpose(1, 0, 2)) if seq
           else host.reshape(N, F))
    h_n = d_hn.copy_to_host()
    c_n = d_cn.copy_to_host() if c.anyc else None
    return out, h_n, c_n, kept, d_data, d_ids, d_masks, seq


def infer(spec, data, x, mask=None, h0=None, c0=None, return_state=False):
    """Fused inference on the device; see :func:`cyrnn.backends.numba.infer` (same
    arguments, results, declines and errors)."""
    c = _checks(spec, data, x, mask, h0, c0)
    if c is None:
        resident.release(data)  # the layer path that runs instead reads the host arrays
        return None
    out, h_n, c_n, *_ = _run(c, 0)
    return (out, h_n, c_n) if return_state else out


def train_forward(spec, data, x, mask=None, h0=None, c0=None, dropout=None):
    """Training forward on the device: ``(output, h_n, c_n, cache)`` or None; see
    :func:`cyrnn.backends.numba.train_forward`. The cache holds device arrays."""
    if type(spec) is np.ndarray and spec.dtype == np.int64 and spec.ndim == 1:
        spec = spec.copy()  # private: the backward refuses a spec changed since
    else:
        spec = np.array(spec, np.int64)
        if spec.ndim != 1:
            raise ValueError(_spec.ERRORS["header"])
    c = _checks(spec, data, x, mask, h0, c0, dropout)
    if c is None:
        resident.release(data)
        return None
    out, h_n, c_n, kept, d_data, d_ids, d_masks, seq = _run(c, 1)
    cache = DeviceCache()
    cache.spec, cache.spec_bytes, cache.data, cache.buf = c.spec, c.spec.tobytes(), data, kept
    cache.N, cache.T, cache.F_out, cache.seq_out = c.N, c.T, out.shape[-1], seq
    cache.nrec = sum(1 for op in kept if c.spec[op.r] == OP_RNN)
    cache.n_state = h_n.size
    cache.first, cache.F0, cache.anyc = c.first, c.F0, c.anyc
    cache.d_data, cache.d_ids, cache.d_masks = d_data, d_ids, d_masks
    cache.masked = c.masked
    cache.valid = (np.asarray(c.tmask, bool) if c.masked
                   else np.ones((c.T, c.N), bool))
    return out, h_n, c_n, cache


def _live(valid, seqop, T):
    """The sweep sources of a truncated backward (``_sources``'s ``live``): with a
    sequence gradient every step where some row is valid (a source whose gradient is
    zero adds zeros: the same result as skipping it), else the last step."""
    if not seqop:
        return lambda t0: t0 == T - 1
    any_valid = valid.any(axis=1)
    return lambda t0: t0 == T - 1 or bool(any_valid[t0])


def train_backward(spec, data, grad, cache, d_out, truncate, dh_n=None, dc_n=None,
                   input_grad=False):
    """Add the gradients of the forward that made ``cache`` into ``grad``; return
    ``(dx, dh0, dc0)``; see :func:`cyrnn.backends.numba.train_backward` (same checks,
    same messages; the cache is spent once the checks pass). During device-resident
    training (:mod:`.resident`) the gradients go into the device's gradient buffer and
    ``grad`` is left alone."""
    from . import _run_backward, _sources

    if type(cache) is not DeviceCache:
        raise TypeError("cache must be a DeviceCache from train_forward")
    d_out, dh, has_dh, dc, has_dc, tr = backward_args(spec, data, grad, cache, d_out, truncate,
                                                      dh_n, dc_n)
    with _SPEND_LOCK:
        kept = cache.buf
        if kept is None:
            raise RuntimeError("this training forward was already backpropagated")
        cache.buf = None
    spec, dt, N, T = cache.spec, data.dtype, cache.N, cache.T
    TN = T * N
    d_data = cache.d_data
    d_grad, to_host = resident.device_grad(data, grad)
    F = cache.F_out
    dcur = cuda.to_device(np.ascontiguousarray(d_out.transpose(1, 0, 2)).reshape(TN, F)
                          if cache.seq_out else d_out.reshape(N, F))
    n_state = cache.n_state
    d_dhn = cuda.to_device(dh) if has_dh else None
    d_dcn = cuda.to_device(dc) if has_dc else None
    d_dh0 = ops.zeros(n_state, dt)
    d_dc0 = ops.zeros(n_state if cache.anyc else 0, dt)
    first = cache.first
    frozen = first and spec[SPEC_HEADER + EMB_FROZEN] != 0
    valid_r = cache.valid[::-1]
    nrec = cache.nrec
    for idx in range(len(kept) - 1, -1, -1):
        op = kept[idx]
        o = idx + first
        r = op.r
        rows = TN if op.inseq else N
        need_din = (o > 0 and not (o == first and frozen)) or (o == 0 and input_grad)
        dnext = None
        if spec[r] != OP_RNN:
            O, D = int(spec[r + DENSE_OUT]), op.inp.shape[1]
            off_w = int(spec[r + DENSE_W])
            _matmul(O, D, rows, dcur, (0, 1, O), op.inp, (0, D, 1), d_grad, (off_w, D),
                    beta=1.0)
            ops.launch("colsum_into", dt, O, dcur, d_grad, int(spec[r + DENSE_B]))
            if need_din:
                dnext = cuda.device_array((rows, D), dt)
                _matmul(rows, D, O, dcur, (0, O, 1), d_data, (off_w, D, 1), dnext, (0, D))
        else:
            nrec -= 1
            code = int(spec[r + RNN_CELL])
            codes = (code, int(spec[r + RNN_ACT]), int(spec[r + RNN_RACT]))
            D, H, dirs = int(spec[r + RNN_IN]), int(spec[r + RNN_HIDDEN]), int(spec[r + RNN_DIRS])
            merge = int(spec[r + RNN_MERGE]) if dirs == 2 else MERGE_CONCAT
            W, G, NH, has_c = _width(spec, r), N_GATES[code] * H, N * H, HAS_C[code]
            seqop = spec[r + RNN_SEQ] != 0
            if op.drop is not None:  # the gradient on the output before dropout
                ops.launch("mul_into", dt, TN * W, dcur.reshape(TN * W), op.drop)
            tk = int(tr[nrec])
            tk = None if tk < 0 or tk >= T else tk
            hseqs = [cache_d[4] for cache_d in op.dirs]
            fins = [cache_d[0][T:T + 1] for cache_d in op.dirs]  # (1, N, H) final states
            if need_din:
                dnext = cuda.device_array((TN, D), dt)
            for d in range(dirs):
                k = r + d * _R
                s0 = op.s0 + d * NH
                d_hs, d_cs, gates, aux, _, peep = op.dirs[d]
                dxp = ops.zeros((T, N, G), dt)
                dgh = ops.zeros((T, N, G), dt)
                dh_T = ops.zeros((N, H), dt)
                if d_dhn is not None:
                    dh_T.copy_to_device(d_dhn[s0:s0 + NH].reshape(N, H))
                dc_T = ops.zeros((N, H), dt)
                if d_dcn is not None and has_c:
                    dc_T.copy_to_device(d_dcn[s0:s0 + NH].reshape(N, H))
                dh_seq = None
                if seqop:
                    if dirs == 1:
                        dh_seq = dcur.reshape(T, N, H)
                    else:
                        dh_seq = cuda.device_array((T, N, H), dt)
                        ops.launch("unmerge", dt, TN * H, merge, d, dcur.reshape(T, N, W),
                                   hseqs[0], hseqs[1], dh_seq, 0)
                else:
                    ops.launch("unmerge", dt, NH, merge, d, dcur.reshape(1, N, W), fins[0],
                               fins[-1], dh_T.reshape(1, N, H), 1)
                dw = cuda.device_array((G, H), dt)
                db = cuda.device_array(G, dt)
                dp = cuda.device_array((3, H), dt) if _peephole(code) else None
                valid = valid_r if d == 1 else cache.valid
                off_hh = int(spec[k + RNN_W_HH])
                _run_backward(codes, _sources(valid, T, tk, _live(valid, seqop, T)), d_hs,
                              d_cs, gates, aux, d_data[off_hh:off_hh + G * H].reshape(G, H),
                              peep, cache.d_masks[d], cache.d_masks[2], dh_seq, dh_T, dc_T,
                              dxp, dgh, d_dh0[s0:s0 + NH].reshape(N, H),
                              d_dc0[s0:s0 + NH].reshape(N, H) if has_c else
                              ops.zeros((N, H), dt), dw, db, dp)
                ops.launch("add_into", dt, G * H, d_grad, off_hh, dw.reshape(G * H))
                ops.launch("add_into", dt, G, d_grad, int(spec[k + RNN_B_HH]), db)
                if dp is not None:
                    ops.launch("add_into", dt, 3 * H, d_grad, int(spec[k + RNN_PEEP]),
                               dp.reshape(3 * H))
                dx2 = dxp.reshape(TN, G)
                if d == 1:  # back to natural time, the input's order
                    nat = cuda.device_array((TN, G), dt)
                    ops.launch("reverse_time", dt, TN * G, dxp.reshape(T, N * G),
                               nat.reshape(T, N * G))
                    dx2 = nat
                off_ih = int(spec[k + RNN_W_IH])
                _matmul(G, D, TN, dx2, (0, 1, G), op.inp, (0, D, 1), d_grad, (off_ih, D),
                        beta=1.0)
                ops.launch("colsum_into", dt, G, dx2, d_grad, int(spec[k + RNN_B_IH]))
                if need_din:
                    _matmul(TN, D, G, dx2, (0, G, 1), d_data, (off_ih, D, 1), dnext, (0, D),
                            beta=float(d))
        dcur = dnext
    if first and not frozen:  # scatter-add into the (trainable) embedding table
        E = int(spec[SPEC_HEADER + EMB_DIM])
        ops.launch("scatter_add", dt, E, d_grad, int(spec[SPEC_HEADER + EMB_W]), cache.d_ids,
                   dcur)
    dx = None
    if not first and input_grad:
        dx = np.ascontiguousarray(dcur.copy_to_host().reshape(T, N, cache.F0).transpose(1, 0, 2))
    if to_host:
        d_grad.copy_to_host(grad)
    return (dx, d_dh0.copy_to_host(), d_dc0.copy_to_host() if cache.anyc else None)
