"""The fused runner: a whole ``Sequential`` ([Embedding] RNN+ (Dense | RNN)*) in one call.

The spec is the int64 array of :mod:`cyrnn.backends.spec` (its layout, field
indices, messages and check rules are defined there only). A call checks the spec
against the parameter buffer and the input (NaN/inf, ids) inside the compiled code,
plans one scratch block, runs each op with the forward time loop (``_fwd_rows``)
and the product routines on it, and, for training, keeps every op's cache in that
block for ``_train_bwd_kernel`` (the backward sweep ``_bwd_rows`` per recurrent op,
the products for Dense heads and inputs). Without the GIL; nothing is kept between
calls, so concurrent calls on one model are safe.
"""

from __future__ import annotations

import numpy as np

from ..._numba_util import njit

from ...cells import N_ACTIVATIONS, N_CELLS
from ..spec import (DENSE_B, DENSE_IN, DENSE_OUT, DENSE_W, EMB_DIM, EMB_FROZEN, EMB_MASK_ZERO,
                    EMB_VOCAB, EMB_W, ERRORS, OP_DENSE, OP_EMBED, OP_RNN, RNN_ACT, RNN_B_HH,
                    RNN_B_IH, RNN_CELL, RNN_HIDDEN, RNN_IN, RNN_PEEP, RNN_RACT, RNN_SEQ,
                    RNN_W_HH, RNN_W_IH, SPEC_HEADER, SPEC_VERSION, SPEC_WIDTH)
from .cells import DGH_IS_DXP, HAS_AUX, HAS_C, N_GATES, N_PEEP, PEEP_ROWS, PEEPHOLE
from .config import _JIT
from .gemm import _acc_colsum, _acc_nt, _add_rows, _gemm_mode, _mm_nn, _mm_nt
from .loops import _bwd_rows, _bwd_scratch_nb, _fwd_rows, _fwd_scratch_nb

# Status of a fused call: 0 a sequence output, -1 the output after a many-to-one
# op, 1 declined (the caller returns None and the general path runs); the others
# raise (as the Cython backend's calls).
DECLINED = 1
_E_HEADER, _E_FIRST, _E_EMBED, _E_CELL, _E_ORDER, _E_RNN, _E_DENSE, _E_OP, _E_MEMORY = range(2, 11)
STATUS_ERRORS = {
    _E_HEADER: (ValueError, ERRORS["header"]),
    _E_FIRST: (ValueError, ERRORS["first"]),
    _E_EMBED: (ValueError, ERRORS["embed"]),
    _E_CELL: (ValueError, ERRORS["cell"]),
    _E_ORDER: (ValueError, ERRORS["order"]),
    _E_RNN: (ValueError, ERRORS["rnn"]),
    _E_DENSE: (ValueError, ERRORS["dense"]),
    _E_OP: (ValueError, ERRORS["op"]),
    _E_MEMORY: (MemoryError, "inference scratch too large"),
}

# Per-op plan slots of a training forward (element offsets into the cache block; -1: none).
P_IN, P_OUT, P_H, P_C, P_GATES, P_AUX, P_HSEQ, P_INSEQ, P_WIDTH = range(9)


def header_ok(spec):
    """The header check of :func:`_check_spec`, in Python (for the wrappers)."""
    S = len(spec)
    return not (S < SPEC_HEADER + SPEC_WIDTH or (S - SPEC_HEADER) % SPEC_WIDTH != 0
                or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
                or spec[1] != (S - SPEC_HEADER) // SPEC_WIDTH)


# ----------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------

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


@njit(**_JIT)
def _check_spec(spec, size):
    """The spec's checks against a parameter buffer of ``size`` values.

    Returns ``(status, first, F0, Fmax, GHmax, Hmax, SCmax)``: status 0 (valid),
    ``DECLINED`` (widths do not chain: the general path explains) or an error;
    ``first`` 1 after an embedding; ``F0`` the model's input width; maxima over
    the ops of widths, gate widths, hidden sizes and time-loop scratch per row.
    """
    S = spec.shape[0]
    # no multiplication: a huge op count must not wrap around to a valid length
    if (S < SPEC_HEADER + SPEC_WIDTH or (S - SPEC_HEADER) % SPEC_WIDTH != 0
            or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
            or spec[1] != (S - SPEC_HEADER) // SPEC_WIDTH):
        return _E_HEADER, 0, 0, 0, 0, 0, 0
    n_ops = spec[1]
    r = SPEC_HEADER
    first = 0
    if spec[r] == OP_EMBED:
        V = spec[r + EMB_VOCAB]
        E = spec[r + EMB_DIM]
        if V < 1 or E < 1 or V > size or E > size or _outside(spec[r + EMB_W], V, E, size):
            return _E_EMBED, 0, 0, 0, 0, 0, 0
        first = 1
        F = E
    elif spec[r] == OP_RNN:
        F = spec[r + RNN_IN]
    else:
        return _E_FIRST, 0, 0, 0, 0, 0, 0
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
            code = spec[r + RNN_CELL]
            act = spec[r + RNN_ACT]
            ract = spec[r + RNN_RACT]
            if (code < 0 or code >= N_CELLS or act < 0 or act >= N_ACTIVATIONS
                    or ract < 0 or ract >= N_ACTIVATIONS):
                return _E_CELL, 0, 0, 0, 0, 0, 0
            if not seq:
                return _E_ORDER, 0, 0, 0, 0, 0, 0
            D = spec[r + RNN_IN]
            H = spec[r + RNN_HIDDEN]
            if D < 1 or H < 1 or D > size or H > size:
                return _E_RNN, 0, 0, 0, 0, 0, 0
            G = N_GATES[code] * H
            if (_outside(spec[r + RNN_W_IH], G, D, size)
                    or _outside(spec[r + RNN_W_HH], G, H, size)
                    or _outside(spec[r + RNN_B_IH], G, 1, size)
                    or _outside(spec[r + RNN_B_HH], G, 1, size)
                    or (PEEPHOLE[code] and _outside(spec[r + RNN_PEEP], N_PEEP[code], H, size))):
                return _E_RNN, 0, 0, 0, 0, 0, 0
            if D != F:
                return DECLINED, 0, 0, 0, 0, 0, 0  # the general path explains
            GHmax = max(GHmax, G)
            Hmax = max(Hmax, H)
            SCmax = max(SCmax, _fwd_scratch_nb(code, H, G, False))
            F = H
            seq = spec[r + RNN_SEQ] != 0
        elif op == OP_DENSE:
            D = spec[r + DENSE_IN]
            O = spec[r + DENSE_OUT]
            if (D < 1 or O < 1 or D > size or O > size
                    or _outside(spec[r + DENSE_W], O, D, size)
                    or _outside(spec[r + DENSE_B], O, 1, size)):
                return _E_DENSE, 0, 0, 0, 0, 0, 0
            if D != F:
                return DECLINED, 0, 0, 0, 0, 0, 0
            F = O
        else:
            return _E_OP, 0, 0, 0, 0, 0, 0
        Fmax = max(Fmax, F)
    return 0, first, F0, Fmax, GHmax, Hmax, SCmax


@njit(**_JIT)
def _check_input(spec, first, F0, x, ids, is_ids, mask, has_mask):
    """The input's checks, and the time-major validity mask.

    ``x`` (N, T, F0) floats (``is_ids`` 0), or ``ids`` (N, T) int64 (``is_ids`` 1);
    ``is_ids`` -1: no input in a form the kernel takes. ``mask`` (N, T) uint8 valid
    steps when ``has_mask``, combined with ``ids != 0`` under the embedding's
    ``mask_zero``. Returns ``(status, N, T, masked, tmask, idc)``: status 0, or
    ``DECLINED`` for input the general path must judge (another form, NaN/inf, ids
    out of range, a sequence of padding only); ``idc`` the checked copy of the ids
    (the run reads exactly the ids that were checked).
    """
    no_mask = np.ones((1, 1), np.bool_)
    no_ids = np.empty((0, 0), np.int64)
    if is_ids < 0 or (is_ids == 1) != (first == 1):
        return DECLINED, 0, 0, False, no_mask, no_ids
    if first:
        N, T = ids.shape
    else:
        N, T, D = x.shape
        if D != F0:
            return DECLINED, 0, 0, False, no_mask, no_ids
    if N < 1 or T < 1:
        return DECLINED, 0, 0, False, no_mask, no_ids
    idc = ids.copy()
    mzero = first == 1 and spec[SPEC_HEADER + EMB_MASK_ZERO] != 0
    if first:
        V = spec[SPEC_HEADER + EMB_VOCAB]
        for i in range(N):
            for t in range(T):
                v = idc[i, t]
                if v < 0 or v >= V:
                    return DECLINED, 0, 0, False, no_mask, no_ids
    elif not _all_finite(x.reshape(T * N * F0)):
        return DECLINED, 0, 0, False, no_mask, no_ids
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
            if mzero and not any_valid:  # padding only: the layer path (zero outputs)
                return DECLINED, 0, 0, False, no_mask, no_ids
    return 0, N, T, masked, tmask, idc


@njit(**_JIT)
def _plan(spec, first, T, N, pos):
    """Training: every op's cache at offsets from ``pos`` on (``P_*`` slots per op):
    states h (and c) for T + 1 steps, gates, aux, the output sequence; a Dense op's
    output. Returns ``(plan, end)``."""
    n_ops = spec[1]
    TN = T * N
    plan = np.full((n_ops, P_WIDTH), -1, np.int64)
    cur = 0
    seq = True
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        p = plan[o]
        p[P_IN] = cur
        p[P_INSEQ] = 1 if seq else 0
        if spec[r] == OP_RNN:
            code = spec[r + RNN_CELL]
            H = spec[r + RNN_HIDDEN]
            p[P_H] = pos
            pos += (T + 1) * N * H
            if HAS_C[code]:
                p[P_C] = pos
                pos += (T + 1) * N * H
            p[P_GATES] = pos
            pos += TN * N_GATES[code] * H
            if HAS_AUX[code]:
                p[P_AUX] = pos
                pos += TN * H
            p[P_HSEQ] = pos
            pos += TN * H
            seq = spec[r + RNN_SEQ] != 0
            p[P_OUT] = p[P_HSEQ] if seq else p[P_H] + TN * H  # many-to-one: h_T
        else:
            p[P_OUT] = pos
            pos += (TN if seq else N) * spec[r + DENSE_OUT]
        cur = p[P_OUT]
    return plan, pos


@njit(**_JIT)
def _peep_of(data, spec, r, code, H):
    """The (3, H) peephole weights of the recurrent op at ``r`` ((3, 0) without)."""
    if PEEPHOLE[code]:
        off = spec[r + RNN_PEEP]
        return data[off:off + PEEP_ROWS * H].reshape((PEEP_ROWS, H))
    return data[0:0].reshape((PEEP_ROWS, 0))


@njit(**_JIT)
def _fused_run(spec, data, x, ids, is_ids, mask, has_mask, keep):
    """Check ``spec`` against ``data`` and the input, then run the model.

    Returns ``(status, masked, out, buf, plan, tmask, idc)``: status 0 and the
    output (N, T, F) of a sequence model, or -1 and (N, 1, F) after a many-to-one
    op; ``DECLINED`` or an error status (``STATUS_ERRORS``) with empty arrays.
    ``keep`` (training): ``buf`` holds every op's cache at the offsets of ``plan``
    (n_ops x P_WIDTH), ``tmask`` the time-major validity mask (``masked`` 1) and
    ``idc`` the checked copy of the ids.

    The spec is checked whatever the input (as the Cython backend does).
    """
    dt = data.dtype
    none = np.empty((0, 0, 0), dt)
    none1 = np.empty(0, dt)
    no_plan = np.empty((0, 0), np.int64)
    no_mask = np.ones((1, 1), np.bool_)
    no_ids = np.empty((0, 0), np.int64)
    status, first, F0, Fmax, GHmax, Hmax, SCmax = _check_spec(spec, data.shape[0])
    if status != 0:
        return status, 0, none, none1, no_plan, no_mask, no_ids
    n_ops = spec[1]
    status, N, T, masked, tmask, idc = _check_input(spec, first, F0, x, ids, is_ids, mask,
                                                    has_mask)
    if status != 0:
        return status, 0, none, none1, no_plan, no_mask, no_ids
    TN = T * N
    need = (2.0 * TN * Fmax + float(TN) * GHmax + float(N) * SCmax + 4.0 * N * Hmax)
    if keep:
        need += (T + 1.0) * N * (3.0 * GHmax + 4.0 * Hmax + 2.0 * Fmax) * n_ops
    if need * data.itemsize > 1e15:
        return _E_MEMORY, 0, none, none1, no_plan, no_mask, no_ids
    hm = 1 if masked else 0
    # Layout: [input (T, N, F0) | xp (T, N, GHmax) | time-loop scratch | h0, c0, hT, cT]
    # then, inference: the ping-pong buffers (T*N*Fmax each); training: every op's
    # own cache and output (_plan).
    o_xp = 2 * TN * Fmax if not keep else TN * F0
    o_sc = o_xp + TN * GHmax
    o_st = o_sc + N * SCmax
    plan = no_plan
    if keep:
        plan, end = _plan(spec, first, T, N, o_st + 4 * N * Hmax)
        buf = np.empty(end, dt)
    else:
        buf = np.empty(2 * TN * Fmax + TN * GHmax + N * SCmax + 4 * N * Hmax, dt)
    a = 0
    b = 0 if keep else TN * Fmax
    # The input, time-major (T, N, F0).
    cur = buf[0:TN * F0]
    if first:
        E = spec[SPEC_HEADER + EMB_DIM]
        o_e = spec[SPEC_HEADER + EMB_W]
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
            code = spec[r + RNN_CELL]
            act = spec[r + RNN_ACT]
            ract = spec[r + RNN_RACT]
            H = spec[r + RNN_HIDDEN]
            GH = N_GATES[code] * H
            w_ih = data[spec[r + RNN_W_IH]:spec[r + RNN_W_IH] + GH * F].reshape((GH, F))
            w_hh = data[spec[r + RNN_W_HH]:spec[r + RNN_W_HH] + GH * H].reshape((GH, H))
            b_ih = data[spec[r + RNN_B_IH]:spec[r + RNN_B_IH] + GH]
            b_hh = data[spec[r + RNN_B_HH]:spec[r + RNN_B_HH] + GH]
            peep = _peep_of(data, spec, r, code, H)
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
            mode = _gemm_mode(N, GH * H)
            if keep:
                p = plan[o]
                ch = buf[p[P_H]:p[P_H] + (T + 1) * NH].reshape((T + 1, N, H))
                cc = none
                if HAS_C[code]:
                    cc = buf[p[P_C]:p[P_C] + (T + 1) * NH].reshape((T + 1, N, H))
                cg = buf[p[P_GATES]:p[P_GATES] + TN * GH].reshape((T, N, GH))
                cax = none
                if HAS_AUX[code]:
                    cax = buf[p[P_AUX]:p[P_AUX] + TN * H].reshape((T, N, H))
                h_seq = buf[p[P_HSEQ]:p[P_HSEQ] + TN * H].reshape((T, N, H))
                _fwd_rows(code, act, ract, mode, 1, hm, xp.reshape((T, N, GH)), w_hh, b_hh,
                          peep, h0, c0, tmask, h_seq, hT, cT, ch, cc, cg, cax, sc, 0, N)
                seq = spec[r + RNN_SEQ] != 0
            else:
                h_seq = buf[b:b + TN * H].reshape((T, N, H))
                _fwd_rows(code, act, ract, mode, 0, hm, xp.reshape((T, N, GH)), w_hh, b_hh,
                          peep, h0, c0, tmask, h_seq, hT, cT, none, none, none, none, sc, 0, N)
                if spec[r + RNN_SEQ] == 0:  # many-to-one: the final state
                    dst = buf[b:b + NH]
                    src = st[2 * NH:3 * NH]
                    for k in range(NH):
                        dst[k] = src[k]
                    seq = False
            F = H
        else:  # dense on (T*N or N, F) rows
            O = spec[r + DENSE_OUT]
            w = data[spec[r + DENSE_W]:spec[r + DENSE_W] + O * F].reshape((O, F))
            y = buf[b:b + rows * O].reshape((rows, O))
            _mm_nt(x2, w, y, 0, rows, _gemm_mode(rows, O * F))
            _add_rows(y, data[spec[r + DENSE_B]:spec[r + DENSE_B] + O])
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
    F0 = spec[SPEC_HEADER + EMB_DIM] if first else spec[SPEC_HEADER + RNN_IN]
    Fmax = F0
    GHmax = 1
    nrec = 0
    seq_out = True  # the output is a sequence unless some recurrent op is many-to-one
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        if spec[r] == OP_RNN:
            nrec += 1
            H = spec[r + RNN_HIDDEN]
            GHmax = max(GHmax, N_GATES[spec[r + RNN_CELL]] * H)
            Fmax = max(Fmax, H)
            if spec[r + RNN_SEQ] == 0:
                seq_out = False
        else:
            Fmax = max(Fmax, spec[r + DENSE_OUT])
    TN = T * N
    # one scratch block (several big arrays freed together made glibc trim and
    # re-fault the heap every call: 800k page faults per 2,000 steps at B=32)
    ws = np.empty(2 * TN * Fmax + 2 * TN * GHmax, dt)
    dcur = ws[:TN * Fmax]
    dnext = ws[TN * Fmax:2 * TN * Fmax]
    dxp_buf = ws[2 * TN * Fmax:2 * TN * Fmax + TN * GHmax]
    dgh_buf = ws[2 * TN * Fmax + TN * GHmax:]
    F = d_out.shape[2]
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
    frozen = first == 1 and spec[SPEC_HEADER + EMB_FROZEN] != 0
    allv = np.ones(max(TN, 1), np.bool_)
    for o in range(n_ops - 1, first - 1, -1):
        r = SPEC_HEADER + o * SPEC_WIDTH
        p = plan[o]
        rows = TN if p[P_INSEQ] else N
        # the first op's input is data; a frozen embedding needs no gradient
        need_din = o > 0 and not (o == first and frozen)
        if spec[r] == OP_DENSE:
            D = spec[r + DENSE_IN]
            O = spec[r + DENSE_OUT]
            inp = buf[p[P_IN]:p[P_IN] + rows * D].reshape((rows, D))
            dc2 = dcur[:rows * O].reshape((rows, O))
            _acc_nt(grad, spec[r + DENSE_W], dc2, inp)
            _acc_colsum(grad, spec[r + DENSE_B], dc2)
            if need_din:
                w = data[spec[r + DENSE_W]:spec[r + DENSE_W] + O * D].reshape((O, D))
                _mm_nn(dc2, w, dnext[:rows * D].reshape((rows, D)), 0, rows,
                       _gemm_mode(rows, O * D), allv)
        else:
            nrec -= 1
            code = spec[r + RNN_CELL]
            D = spec[r + RNN_IN]
            H = spec[r + RNN_HIDDEN]
            G = N_GATES[code] * H
            NH = N * H
            has_c = HAS_C[code]
            ch = buf[p[P_H]:p[P_H] + (T + 1) * NH].reshape((T + 1, N, H))
            cc = none
            if has_c:
                cc = buf[p[P_C]:p[P_C] + (T + 1) * NH].reshape((T + 1, N, H))
            cg = buf[p[P_GATES]:p[P_GATES] + TN * G].reshape((T, N, G))
            cax = none
            if HAS_AUX[code]:
                cax = buf[p[P_AUX]:p[P_AUX] + TN * H].reshape((T, N, H))
            dxp = dxp_buf[:TN * G].reshape((T, N, G))
            dxp[:] = 0
            dgh = dxp
            if not DGH_IS_DXP[code]:
                dgh = dgh_buf[:TN * G].reshape((T, N, G))
                dgh[:] = 0
            zs = np.zeros(2 * NH, dt)
            dh0 = np.empty((N, H), dt)
            dc0 = np.empty((N, H), dt) if has_c else none2
            dw = np.empty((G, H), dt)
            db = np.empty(G, dt)
            peep = _peep_of(data, spec, r, code, H)
            dpeep = np.empty(peep.shape, dt)
            if spec[r + RNN_SEQ] != 0:
                dh_seq = dcur[:TN * H].reshape((T, N, H))
                dh_T = zs[:NH].reshape((N, H))
                has_dhseq = 1
            else:
                dh_seq = none
                dh_T = dcur[:NH].reshape((N, H))
                has_dhseq = 0
            dc_T = zs[NH:].reshape((N, H)) if has_c else none2
            w_hh = data[spec[r + RNN_W_HH]:spec[r + RNN_W_HH] + G * H].reshape((G, H))
            tk = trunc[nrec]
            if tk < 0 or tk >= T:  # full BPTT
                tk = -1
            _bwd_rows(code, spec[r + RNN_ACT], spec[r + RNN_RACT], _gemm_mode(N, G * H), tk,
                      has_mask, has_dhseq, 1, ch, cc, cg, cax, w_hh, peep, tmask, dh_seq, dh_T,
                      dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep,
                      np.empty(N * _bwd_scratch_nb(code, H, G), dt), 0, N)
            gw = grad[spec[r + RNN_W_HH]:spec[r + RNN_W_HH] + G * H]
            dwf = dw.reshape(G * H)
            for k in range(G * H):
                gw[k] += dwf[k]
            gb = grad[spec[r + RNN_B_HH]:spec[r + RNN_B_HH] + G]
            for k in range(G):
                gb[k] += db[k]
            if PEEPHOLE[code]:
                gp = grad[spec[r + RNN_PEEP]:spec[r + RNN_PEEP] + dpeep.size]
                dpf = dpeep.reshape(dpeep.size)
                for k in range(dpeep.size):
                    gp[k] += dpf[k]
            inp = buf[p[P_IN]:p[P_IN] + TN * D].reshape((TN, D))
            dx2 = dxp.reshape((TN, G))
            _acc_nt(grad, spec[r + RNN_W_IH], dx2, inp)
            _acc_colsum(grad, spec[r + RNN_B_IH], dx2)
            if need_din:
                w_ih = data[spec[r + RNN_W_IH]:spec[r + RNN_W_IH] + G * D].reshape((G, D))
                _mm_nn(dx2, w_ih, dnext[:TN * D].reshape((TN, D)), 0, TN,
                       _gemm_mode(TN, G * D), allv)
        dcur, dnext = dnext, dcur
    if first and not frozen:  # scatter-add into the (trainable) embedding table
        E = spec[SPEC_HEADER + EMB_DIM]
        off = spec[SPEC_HEADER + EMB_W]
        for t in range(T):
            for i in range(N):
                g = grad[off + idc[i, t] * E:off + (idc[i, t] + 1) * E]
                src = dcur[(t * N + i) * E:(t * N + i + 1) * E]
                for j in range(E):
                    g[j] += src[j]
