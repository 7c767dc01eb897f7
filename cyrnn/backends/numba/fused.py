"""The fused runner: a whole ``Sequential`` ([Embedding] RNN+ (Dense | RNN)*) in one call.

The spec is the int64 array of :mod:`cyrnn.backends.spec` (its layout, field
indices, messages and check rules are defined there only). A call checks the spec
against the parameter buffer and the input (NaN/inf, ids) inside the compiled code,
plans one scratch block, runs each op with the forward time loop (``_fwd_rows``)
and the product routines on it, and, for training, keeps every op's cache in that
block for ``_train_bwd_kernel`` (the backward sweep ``_bwd_rows`` per recurrent op,
the products for Dense heads and inputs). Without the GIL; nothing is kept between
calls, so concurrent calls on one model are safe.

Spec v3: a bidirectional op runs the same time loops on time-reversed copies of
its projected input and mask (the reverse direction's cache stays in reversed
time; its ``h_seq`` is merged back in natural order), initial states come in and
final states go out in the contract's flat layout, a training forward multiplies
the outputs of ``dropout`` ops by the caller's masks, and the backward returns the
gradients on the initial states and, on request, on the input.
"""

from __future__ import annotations

import numpy as np

from ..._numba_util import njit

from ...cells import N_ACTIVATIONS, N_CELLS
from ..spec import (DENSE_B, DENSE_IN, DENSE_OUT, DENSE_W, EMB_DIM, EMB_FROZEN, EMB_MASK_ZERO,
                    EMB_VOCAB, EMB_W, ERRORS, MERGE_AVE, MERGE_CONCAT, MERGE_MUL, MERGE_SUM,
                    OP_DENSE, OP_EMBED, OP_RNN, RNN_ACT, RNN_B_HH, RNN_B_IH, RNN_CELL, RNN_DIRS,
                    RNN_DROP, RNN_HIDDEN, RNN_IN, RNN_MERGE, RNN_PEEP, RNN_RACT, RNN_SEQ,
                    RNN_W_HH, RNN_W_IH, RNN_W_IH_R, SPEC_HEADER, SPEC_VERSION, SPEC_WIDTH)
from .cells import DGH_IS_DXP, HAS_AUX, HAS_C, N_GATES, N_PEEP, PEEP_ROWS, PEEPHOLE
from .config import _JIT, _blocks_of
from .gemm import _acc_colsum, _acc_nt, _add_rows, _gemm_mode, _mm_nn, _mm_nt
from .loops import (_backward_par, _bwd_rows, _bwd_scratch_nb, _forward_par, _fwd_rows,
                    _fwd_scratch_nb)

# Status of a fused call: 0 a sequence output, -1 the output after a many-to-one
# op, 1 declined (the caller returns None and the general path runs); the others
# raise (as the Cython backend's calls).
DECLINED = 1
(_E_HEADER, _E_FIRST, _E_EMBED, _E_CELL, _E_ORDER, _E_RNN, _E_DENSE, _E_OP, _E_MEMORY, _E_DIRS,
 _E_STATE, _E_DROP) = range(2, 14)
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
    _E_DIRS: (ValueError, ERRORS["dirs"]),
    _E_STATE: (ValueError, "initial states must hold N * sum(directions * hidden_size) values "
                           "(the flat state layout of the fused calls)"),
    _E_DROP: (ValueError, "dropout must hold T * N * width values per op with dropout"),
}
# Offset of the reverse direction's tensor fields from the forward direction's
# (RNN_W_IH .. RNN_PEEP -> RNN_W_IH_R .. RNN_PEEP_R).
_R = RNN_W_IH_R - RNN_W_IH

# Per-op plan slots of a training forward (element offsets into the cache block; -1: none):
# the op's input and output, whether the input is a sequence, the dropout mask, then
# per direction d the slots P_H .. P_HSEQ at + d * P_DIR (the reverse direction's in
# reversed time).
P_IN, P_OUT, P_INSEQ, P_DROP, P_H, P_C, P_GATES, P_AUX, P_HSEQ = range(9)
P_DIR = 5
P_WIDTH = P_H + 2 * P_DIR


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

    Returns ``(status, first, F0, Fmax, GHmax, Hmax, SCmax, Hbi, SH, anyc, DW)``:
    status 0 (valid), ``DECLINED`` (widths do not chain: the general path
    explains) or an error; ``first`` 1 after an embedding; ``F0`` the model's
    input width; maxima over the ops of widths, gate widths, hidden sizes and
    time-loop scratch per row; ``Hbi`` the largest hidden size of a
    bidirectional op (0: none); ``SH`` the sum of ``directions * hidden`` (the
    states hold ``N * SH`` values); ``anyc`` whether an op has a cell state;
    ``DW`` the sum of the widths of the ops with dropout.
    """
    S = spec.shape[0]
    bad = (_E_HEADER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    # no multiplication: a huge op count must not wrap around to a valid length
    if (S < SPEC_HEADER + SPEC_WIDTH or (S - SPEC_HEADER) % SPEC_WIDTH != 0
            or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
            or spec[1] != (S - SPEC_HEADER) // SPEC_WIDTH):
        return bad
    n_ops = spec[1]
    r = SPEC_HEADER
    first = 0
    if spec[r] == OP_EMBED:
        V = spec[r + EMB_VOCAB]
        E = spec[r + EMB_DIM]
        if V < 1 or E < 1 or V > size or E > size or _outside(spec[r + EMB_W], V, E, size):
            return (_E_EMBED,) + bad[1:]
        first = 1
        F = E
    elif spec[r] == OP_RNN:
        F = spec[r + RNN_IN]
    else:
        return (_E_FIRST,) + bad[1:]
    F0 = F
    Fmax = F
    GHmax = 1
    Hmax = 1
    SCmax = 1
    Hbi = 0
    SH = 0
    anyc = 0
    DW = 0
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
                return (_E_CELL,) + bad[1:]
            if not seq:
                return (_E_ORDER,) + bad[1:]
            dirs = spec[r + RNN_DIRS]
            merge = spec[r + RNN_MERGE]
            if dirs < 1 or dirs > 2 or merge < MERGE_CONCAT or merge > MERGE_AVE:
                return (_E_DIRS,) + bad[1:]
            D = spec[r + RNN_IN]
            H = spec[r + RNN_HIDDEN]
            if D < 1 or H < 1 or D > size or H > size:
                return (_E_RNN,) + bad[1:]
            G = N_GATES[code] * H
            for d in range(dirs):
                k = r + d * _R
                if (_outside(spec[k + RNN_W_IH], G, D, size)
                        or _outside(spec[k + RNN_W_HH], G, H, size)
                        or _outside(spec[k + RNN_B_IH], G, np.int64(1), size)
                        or _outside(spec[k + RNN_B_HH], G, np.int64(1), size)
                        or (PEEPHOLE[code]
                            and _outside(spec[k + RNN_PEEP], N_PEEP[code], H, size))):
                    return (_E_RNN,) + bad[1:]
            if D != F:
                return (DECLINED,) + bad[1:]  # the general path explains
            GHmax = max(GHmax, G)
            Hmax = max(Hmax, H)
            SCmax = max(SCmax, _fwd_scratch_nb(code, H, G, np.int64(0)))
            if dirs == 2:
                Hbi = max(Hbi, H)
            SH += dirs * H
            if HAS_C[code]:
                anyc = 1
            F = _width(spec, r)
            if spec[r + RNN_DROP] != 0:
                DW += F
            seq = spec[r + RNN_SEQ] != 0
        elif op == OP_DENSE:
            D = spec[r + DENSE_IN]
            O = spec[r + DENSE_OUT]
            if (D < 1 or O < 1 or D > size or O > size
                    or _outside(spec[r + DENSE_W], O, D, size)
                    or _outside(spec[r + DENSE_B], O, np.int64(1), size)):
                return (_E_DENSE,) + bad[1:]
            if D != F:
                return (DECLINED,) + bad[1:]
            F = O
        else:
            return (_E_OP,) + bad[1:]
        Fmax = max(Fmax, F)
    return 0, first, F0, Fmax, GHmax, Hmax, SCmax, Hbi, SH, anyc, DW


@njit(**_JIT)
def _width(spec, r):
    """The output width of the recurrent op at ``r``: ``2 H`` for a bidirectional
    ``concat`` op, else ``H``."""
    H = spec[r + RNN_HIDDEN]
    if spec[r + RNN_DIRS] == 2 and spec[r + RNN_MERGE] == MERGE_CONCAT:
        return 2 * H
    return H


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
def _plan(spec, first, T, N, pos, drop):
    """Training: every op's cache at offsets from ``pos`` on (``P_*`` slots per op):
    per direction the states h (and c) for T + 1 steps, gates, aux, the output
    sequence; the merged (and dropped-out) output where it is not a direction's
    own; the dropout mask (``drop``: masks given); a Dense op's output. Returns
    ``(plan, end)``."""
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
            dirs = spec[r + RNN_DIRS]
            W = _width(spec, r)
            for d in range(dirs):
                k = d * P_DIR
                p[P_H + k] = pos
                pos += (T + 1) * N * H
                if HAS_C[code]:
                    p[P_C + k] = pos
                    pos += (T + 1) * N * H
                p[P_GATES + k] = pos
                pos += TN * N_GATES[code] * H
                if HAS_AUX[code]:
                    p[P_AUX + k] = pos
                    pos += TN * H
                p[P_HSEQ + k] = pos
                pos += TN * H
            seq = spec[r + RNN_SEQ] != 0
            dropped = drop and seq and spec[r + RNN_DROP] != 0
            if dropped:
                p[P_DROP] = pos
                pos += TN * W
            if dirs == 2 or dropped:
                p[P_OUT] = pos
                pos += (TN if seq else N) * W
            else:
                p[P_OUT] = p[P_HSEQ] if seq else p[P_H] + TN * H  # many-to-one: h_T
        else:
            p[P_OUT] = pos
            pos += (TN if seq else N) * spec[r + DENSE_OUT]
        cur = p[P_OUT]
    return plan, pos


@njit(**_JIT)
def _rnn_tensors(data, spec, r, d, F):
    """Direction ``d``'s ``(w_ih, w_hh, b_ih, b_hh, peep)`` of the recurrent op at ``r``
    (input width ``F``; ``peep`` (3, H), or (3, 0) for cells without peepholes)."""
    code = spec[r + RNN_CELL]
    H = spec[r + RNN_HIDDEN]
    GH = N_GATES[code] * H
    k = r + d * _R
    w_ih = data[spec[k + RNN_W_IH]:spec[k + RNN_W_IH] + GH * F].reshape((GH, F))
    w_hh = data[spec[k + RNN_W_HH]:spec[k + RNN_W_HH] + GH * H].reshape((GH, H))
    b_ih = data[spec[k + RNN_B_IH]:spec[k + RNN_B_IH] + GH]
    b_hh = data[spec[k + RNN_B_HH]:spec[k + RNN_B_HH] + GH]
    if PEEPHOLE[code]:
        off = spec[k + RNN_PEEP]
        peep = data[off:off + PEEP_ROWS * H].reshape((PEEP_ROWS, H))
    else:
        peep = data[0:0].reshape((PEEP_ROWS, 0))
    return w_ih, w_hh, b_ih, b_hh, peep


_blocks_nb = njit(**_JIT)(_blocks_of)


@njit(**_JIT)
def _fwd_call(nb, code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask, h_seq,
              hT, cT, ch, cc, cg, cax, scratch):
    """The forward time loop on ``nb`` row blocks (as the layer path: ``_forward_par``)
    or, for one block, serially."""
    if nb > 1:
        _forward_par(nb, code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask,
                     h_seq, hT, cT, ch, cc, cg, cax, scratch)
    else:
        _fwd_rows(code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask, h_seq,
                  hT, cT, ch, cc, cg, cax, scratch, np.int64(0), xp.shape[1])


@njit(**_JIT)
def _dir_cache(buf, p, d, code, T, N, H):
    """Direction ``d``'s cache in ``buf`` at the plan row ``p`` of its op:
    ``(h (T+1, N, H), c (T+1, N, H), gates (T, N, G), aux (T, N, H), h_seq (T, N, H))``
    (``c``, ``aux`` empty for cells without them)."""
    none = buf[:0].reshape((0, 0, 0))
    k = d * P_DIR
    NH = N * H
    TN = T * N
    GH = N_GATES[code] * H
    ch = buf[p[P_H + k]:p[P_H + k] + (T + 1) * NH].reshape((T + 1, N, H))
    cc = none
    if HAS_C[code]:
        cc = buf[p[P_C + k]:p[P_C + k] + (T + 1) * NH].reshape((T + 1, N, H))
    cg = buf[p[P_GATES + k]:p[P_GATES + k] + TN * GH].reshape((T, N, GH))
    cax = none
    if HAS_AUX[code]:
        cax = buf[p[P_AUX + k]:p[P_AUX + k] + TN * H].reshape((T, N, H))
    h_seq = buf[p[P_HSEQ + k]:p[P_HSEQ + k] + TN * H].reshape((T, N, H))
    return ch, cc, cg, cax, h_seq


@njit(**_JIT)
def _reverse_time(a):
    """Reverse the rows of ``a`` (T, M) in place: a sequence to reversed time and back."""
    T, M = a.shape
    for t in range(T // 2):
        u = a[t]
        v = a[T - 1 - t]
        for j in range(M):
            tmp = u[j]
            u[j] = v[j]
            v[j] = tmp


@njit(**_JIT)
def _merge(mode, a, b, out):
    """``out[t] = merge(a[t], b[T-1-t])`` (``a``, ``b`` (T, N, H), ``b`` in reversed
    time; ``out`` (T, N, W)): concat along features (``a`` first), sum, mul, ave."""
    T, N, H = a.shape
    for t in range(T):
        for i in range(N):
            ai = a[t, i]
            bi = b[T - 1 - t, i]
            oi = out[t, i]
            if mode == MERGE_CONCAT:
                for j in range(H):
                    oi[j] = ai[j]
                    oi[H + j] = bi[j]
            elif mode == MERGE_SUM:
                for j in range(H):
                    oi[j] = ai[j] + bi[j]
            elif mode == MERGE_MUL:
                for j in range(H):
                    oi[j] = ai[j] * bi[j]
            else:
                for j in range(H):
                    oi[j] = (ai[j] + bi[j]) * 0.5


@njit(**_JIT)
def _unmerge(mode, d, dout, a, b, dst, add):
    """The gradient of :func:`_merge` on direction ``d``'s sequence, in that
    direction's time order (direction 1: reversed), written (``add`` 0) or added
    into ``dst`` (T, N, H); ``dout`` (T, N, W) the gradient on the merged output,
    ``a``, ``b`` the directions' sequences as in ``_merge``."""
    T, N, H = a.shape
    half = dout.dtype.type(0.5)
    for t in range(T):
        td = t if d == 0 else T - 1 - t
        for i in range(N):
            gi = dout[t, i]
            di = dst[td, i]
            oth = b[T - 1 - t, i] if d == 0 else a[t, i]  # the other direction's output
            for j in range(H):
                if mode == MERGE_CONCAT:
                    g = gi[d * H + j]
                elif mode == MERGE_SUM:
                    g = gi[j]
                elif mode == MERGE_MUL:
                    g = gi[j] * oth[j]
                else:
                    g = gi[j] * half
                if add:
                    di[j] += g
                else:
                    di[j] = g


@njit(**_JIT)
def _reversed_mask(tmask, masked):
    """The time-reversed copy of the (T, N) validity mask (a plain copy when
    unmasked: a writable array either way)."""
    if not masked:
        return tmask.copy()
    return tmask[::-1].copy()


@njit(**_JIT)
def _transpose_tn(src, out):
    """``out[i, t] = src[t * N + i]`` rows: a time-major flat (T*N*F) block to an
    (N, T, F) array."""
    N, T, F = out.shape
    for t in range(T):
        for i in range(N):
            s = src[(t * N + i) * F:(t * N + i + 1) * F]
            dst = out[i, t]
            for j in range(F):
                dst[j] = s[j]


@njit(**_JIT)
def _fused_run(spec, data, x, ids, is_ids, mask, has_mask, keep, h0, has_h0, c0, has_c0,
               dropout, has_drop, nthr, blas_par):
    """Check ``spec`` against ``data``, the input and the states, then run the model.

    Returns ``(status, masked, out, buf, plan, tmask, idc, h_n, c_n)``: status 0
    and the output (N, T, F) of a sequence model, or -1 and (N, 1, F) after a
    many-to-one op; ``DECLINED`` or an error status (``STATUS_ERRORS``) with
    empty arrays. ``h0``/``c0`` (``has_h0``/``has_c0``): the initial states in the
    flat layout (else zeros); ``h_n``/``c_n`` the final states (``c_n`` empty when
    no op has a cell state). ``keep`` (training): ``buf`` holds every op's cache at
    the offsets of ``plan`` (n_ops x P_WIDTH), ``tmask`` the time-major validity
    mask (``masked`` 1) and ``idc`` the checked copy of the ids; ``dropout``
    (``has_drop``) the masks of the ops with dropout, applied to their outputs.
    ``nthr``: threads for row blocks (``config._block_threads``; 1: serial), with
    ``blas_par`` the product flag inside blocks (as ``gemm._blas_mode``).

    The spec is checked whatever the input (as the Cython backend does).
    """
    dt = data.dtype
    none = np.empty((0, 0, 0), dt)
    none1 = np.empty(0, dt)
    no_plan = np.empty((0, 0), np.int64)
    no_mask = np.ones((1, 1), np.bool_)
    no_ids = np.empty((0, 0), np.int64)
    (status, first, F0, Fmax, GHmax, Hmax, SCmax, Hbi, SH, anyc,
     DW) = _check_spec(spec, data.shape[0])
    if status != 0:
        return status, 0, none, none1, no_plan, no_mask, no_ids, none1, none1
    n_ops = spec[1]
    status, N, T, masked, tmask, idc = _check_input(spec, first, F0, x, ids, is_ids, mask,
                                                    has_mask)
    if status != 0:
        return status, 0, none, none1, no_plan, no_mask, no_ids, none1, none1
    if (has_h0 and h0.shape[0] != N * SH) or (has_c0 and c0.shape[0] != N * SH):
        return _E_STATE, 0, none, none1, no_plan, no_mask, no_ids, none1, none1
    if has_drop and dropout.shape[0] != T * N * DW:
        return _E_DROP, 0, none, none1, no_plan, no_mask, no_ids, none1, none1
    TN = T * N
    need = (2.0 * TN * Fmax + float(TN) * GHmax + float(N) * SCmax + 4.0 * N * Hmax
            + 2.0 * TN * Hbi)
    if keep:
        need += (T + 1.0) * N * (3.0 * GHmax + 4.0 * Hmax + 2.0 * Fmax) * n_ops * 2
    if need * data.itemsize > 1e15:
        return _E_MEMORY, 0, none, none1, no_plan, no_mask, no_ids, none1, none1
    hm = 1 if masked else 0
    tmask_r = tmask if Hbi == 0 else _reversed_mask(tmask, masked)
    h_n = np.empty(N * SH, dt)
    c_n = np.zeros(N * SH if anyc else 0, dt)
    # Layout: [input (T, N, F0) | xp (T, N, GHmax) | time-loop scratch | h0, c0, hT, cT]
    # then, inference: the ping-pong buffers (T*N*Fmax each) and the two directions'
    # sequences of a bidirectional op; training: every op's own cache and output (_plan).
    o_xp = 2 * TN * Fmax if not keep else TN * F0
    o_sc = o_xp + TN * GHmax
    o_st = o_sc + N * SCmax
    o_hs = o_st + 4 * N * Hmax
    plan = no_plan
    if keep:
        plan, end = _plan(spec, first, T, N, o_hs, has_drop != 0)
        buf = np.empty(end, dt)
    else:
        buf = np.empty(o_hs + 2 * TN * Hbi, dt)
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
    so = 0  # this op's offset in the flat states
    do = 0  # this op's offset in the dropout masks
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
            dirs = spec[r + RNN_DIRS]
            W = _width(spec, r)
            GH = N_GATES[code] * H
            NH = N * H
            has_c = HAS_C[code]
            xp = buf[o_xp:o_xp + TN * GH].reshape((TN, GH))
            st = buf[o_st:o_st + 4 * NH]
            sc = buf[o_sc:o_sc + N * _fwd_scratch_nb(code, H, GH, keep)]
            # row blocks and product routines as the layer path chooses them
            nb = _blocks_nb(T, N, H, GH, nthr)
            mode = blas_par if nb > 1 else _gemm_mode(N, GH * H)
            seq = spec[r + RNN_SEQ] != 0
            hs = none
            for d in range(dirs):
                w_ih, w_hh, b_ih, b_hh, peep = _rnn_tensors(data, spec, r, d, F)
                # xp = x W_ih^T + b_ih over all T*N rows (as layers.recurrent.project),
                # time-reversed for the reverse direction
                _mm_nt(x2, w_ih, xp, np.int64(0), TN, _gemm_mode(TN, GH * F))
                _add_rows(xp, b_ih)
                if d == 1:
                    _reverse_time(xp.reshape((T, N * GH)))
                mk = tmask_r if d == 1 else tmask
                s0 = so + d * NH
                for k in range(NH):
                    st[k] = h0[s0 + k] if has_h0 else 0
                    st[NH + k] = c0[s0 + k] if has_c0 and has_c else 0
                h0d = st[:NH].reshape((N, H))
                c0d = st[NH:2 * NH].reshape((N, H))
                hT = h_n[s0:s0 + NH].reshape((N, H))
                cT = (c_n[s0:s0 + NH] if has_c else st[3 * NH:]).reshape((N, H))
                if keep:
                    ch, cc, cg, cax, h_seq = _dir_cache(buf, plan[o], d, code, T, N, H)
                else:
                    # unidirectional: straight into the output buffer
                    o_h = b if dirs == 1 else o_hs + d * TN * H
                    h_seq = buf[o_h:o_h + TN * H].reshape((T, N, H))
                    ch = cc = cg = cax = none
                _fwd_call(nb, code, act, ract, mode, keep, hm, xp.reshape((T, N, GH)), w_hh,
                          b_hh, peep, h0d, c0d, mk, h_seq, hT, cT, ch, cc, cg, cax, sc)
                if d == 0:
                    hs = h_seq
            if seq:
                out3 = buf[b:b + TN * W].reshape((T, N, W))
                if dirs == 2:
                    _merge(spec[r + RNN_MERGE], hs, h_seq, out3)
                if keep and has_drop and spec[r + RNN_DROP] != 0:
                    if dirs == 1:
                        out3[:] = hs
                    dm = buf[plan[o, P_DROP]:plan[o, P_DROP] + TN * W]
                    dm[:] = dropout[do:do + TN * W]
                    o1 = out3.reshape(TN * W)
                    for k in range(TN * W):
                        o1[k] *= dm[k]
            elif not keep or dirs == 2:  # many-to-one: the merged final states
                fin = h_n[so:so + dirs * NH]
                out3 = buf[b:b + N * W].reshape((1, N, W))
                if dirs == 2:
                    _merge(spec[r + RNN_MERGE], fin[:NH].reshape((1, N, H)),
                           fin[NH:].reshape((1, N, H)), out3)
                else:
                    out3[:] = fin.reshape((1, N, H))
            if spec[r + RNN_DROP] != 0:
                do += TN * W
            so += dirs * NH
            F = W
        else:  # dense on (T*N or N, F) rows
            O = spec[r + DENSE_OUT]
            w = data[spec[r + DENSE_W]:spec[r + DENSE_W] + O * F].reshape((O, F))
            y = buf[b:b + rows * O].reshape((rows, O))
            _mm_nt(x2, w, y, np.int64(0), rows, _gemm_mode(rows, O * F))
            _add_rows(y, data[spec[r + DENSE_B]:spec[r + DENSE_B] + O])
            F = O
        if not keep:
            a, b = b, a
        else:
            a = b
    out = np.empty((N, T if seq else 1, F), dt)
    _transpose_tn(buf[a:a + out.size], out)  # time-major -> batch-first
    if not keep:
        buf = none1
    return (0 if seq else -1), hm, out, buf, plan, tmask, idc, h_n, c_n


@njit(**_JIT)
def _infer_kernel(spec, data, x, ids, is_ids, mask, has_mask, h0, has_h0, c0, has_c0,
                  nthr, blas_par):
    """``_fused_run`` without a cache: ``(status, out)`` (no final states to box)."""
    res = _fused_run(spec, data, x, ids, is_ids, mask, has_mask, np.int64(0), h0, has_h0, c0,
                     has_c0, data[:0], np.int64(0), nthr, blas_par)
    return res[0], res[2]


@njit(**_JIT)
def _infer_state_kernel(spec, data, x, ids, is_ids, mask, has_mask, h0, has_h0, c0, has_c0,
                        nthr, blas_par):
    """``_fused_run`` without a cache: ``(status, out, h_n, c_n)``."""
    res = _fused_run(spec, data, x, ids, is_ids, mask, has_mask, np.int64(0), h0, has_h0, c0,
                     has_c0, data[:0], np.int64(0), nthr, blas_par)
    return res[0], res[2], res[7], res[8]


@njit(**_JIT)
def _train_fwd_kernel(spec, data, x, ids, is_ids, mask, has_mask, h0, has_h0, c0, has_c0,
                      nthr, blas_par, dropout, has_drop):
    """``_fused_run`` keeping every op's cache."""
    return _fused_run(spec, data, x, ids, is_ids, mask, has_mask, np.int64(1), h0, has_h0, c0,
                      has_c0, dropout, has_drop, nthr, blas_par)


@njit(**_JIT)
def _train_bwd_kernel(spec, data, grad, buf, plan, idc, tmask, has_mask, d_out, trunc, T,
                      dh_n, has_dhn, dc_n, has_dcn, input_grad, nthr, blas_par):
    """Gradients of a ``_train_fwd_kernel`` run (its spec, cache block ``buf`` at
    ``plan``, ids, mask), added into ``grad``. ``d_out`` (N, T, F), or (N, 1, F)
    after a many-to-one op; ``trunc`` one entry per recurrent op (-1 full BPTT);
    ``dh_n``/``dc_n`` (``has_dhn``/``has_dcn``) the gradients on the final states
    (flat layout). Returns ``(dx, dh0, dc0)``: the gradient on the input (N, T, F0)
    when ``input_grad`` and the first op is recurrent (else empty), on the
    initial states (``dc0`` empty when no op has a cell state)."""
    dt = data.dtype
    none = np.empty((0, 0, 0), dt)
    none2 = np.empty((0, 0), dt)
    n_ops = spec[1]
    first = 1 if spec[SPEC_HEADER] == OP_EMBED else 0
    N = d_out.shape[0]
    F0 = spec[SPEC_HEADER + EMB_DIM] if first else spec[SPEC_HEADER + RNN_IN]
    Fmax = F0
    GHmax = 1
    Hbi = 0
    nrec = 0
    anyc = False
    soffs = np.zeros(n_ops + 1, np.int64)  # each op's offset in the flat states
    for o in range(first, n_ops):
        r = SPEC_HEADER + o * SPEC_WIDTH
        soffs[o + 1] = soffs[o]
        if spec[r] == OP_RNN:
            nrec += 1
            H = spec[r + RNN_HIDDEN]
            code = spec[r + RNN_CELL]
            GHmax = max(GHmax, N_GATES[code] * H)
            Fmax = max(Fmax, _width(spec, r))
            soffs[o + 1] += spec[r + RNN_DIRS] * N * H
            anyc = anyc or HAS_C[code]
            if spec[r + RNN_DIRS] == 2:
                Hbi = max(Hbi, H)
        else:
            Fmax = max(Fmax, spec[r + DENSE_OUT])
    TN = T * N
    # one scratch block (several big arrays freed together made glibc trim and
    # re-fault the heap every call: 800k page faults per 2,000 steps at B=32);
    # bidirectional ops add a direction's dh_seq and a second input gradient
    o_bi = 2 * TN * Fmax + 2 * TN * GHmax
    ws = np.empty(o_bi + (TN * Hbi + TN * Fmax if Hbi else 0), dt)
    dcur = ws[:TN * Fmax]
    dnext = ws[TN * Fmax:2 * TN * Fmax]
    dxp_buf = ws[2 * TN * Fmax:2 * TN * Fmax + TN * GHmax]
    dgh_buf = ws[2 * TN * Fmax + TN * GHmax:o_bi]
    dhs_buf = ws[o_bi:o_bi + TN * Hbi]
    dtmp = ws[o_bi + TN * Hbi:]
    dh0o = np.zeros(soffs[n_ops], dt)
    dc0o = np.zeros(soffs[n_ops] if anyc else 0, dt)
    F = d_out.shape[2]
    for t in range(d_out.shape[1]):  # batch-first -> time-major
        for i in range(N):
            src = d_out[i, t]
            dst = dcur[(t * N + i) * F:(t * N + i + 1) * F]
            for j in range(F):
                dst[j] = src[j]
    frozen = first == 1 and spec[SPEC_HEADER + EMB_FROZEN] != 0
    allv = np.ones(max(TN, 1), np.bool_)
    tmask_f = tmask.copy()  # writable, as its reversed copy (one type for both)
    tmask_r = _reversed_mask(tmask_f, has_mask != 0)
    for o in range(n_ops - 1, first - 1, -1):
        r = SPEC_HEADER + o * SPEC_WIDTH
        p = plan[o]
        rows = TN if p[P_INSEQ] else N
        # the first op's input is data (its gradient only on request); a frozen
        # embedding needs no gradient
        need_din = (o > 0 and not (o == first and frozen)) or (o == 0 and input_grad != 0)
        if spec[r] == OP_DENSE:
            D = spec[r + DENSE_IN]
            O = spec[r + DENSE_OUT]
            inp = buf[p[P_IN]:p[P_IN] + rows * D].reshape((rows, D))
            dc2 = dcur[:rows * O].reshape((rows, O))
            _acc_nt(grad, spec[r + DENSE_W], dc2, inp)
            _acc_colsum(grad, spec[r + DENSE_B], dc2)
            if need_din:
                w = data[spec[r + DENSE_W]:spec[r + DENSE_W] + O * D].reshape((O, D))
                _mm_nn(dc2, w, dnext[:rows * D].reshape((rows, D)), np.int64(0), rows,
                       _gemm_mode(rows, O * D), allv)
        else:
            nrec -= 1
            code = spec[r + RNN_CELL]
            D = spec[r + RNN_IN]
            H = spec[r + RNN_HIDDEN]
            dirs = spec[r + RNN_DIRS]
            # (a unidirectional op's output is its sequence: concat's gradient, d = 0)
            merge = spec[r + RNN_MERGE] if dirs == 2 else MERGE_CONCAT
            W = _width(spec, r)
            G = N_GATES[code] * H
            NH = N * H
            has_c = HAS_C[code]
            seqop = spec[r + RNN_SEQ] != 0
            if p[P_DROP] >= 0:  # the gradient on the output before dropout
                dm = buf[p[P_DROP]:p[P_DROP] + TN * W]
                for k in range(TN * W):
                    dcur[k] *= dm[k]
            tk = trunc[nrec]
            if tk < 0 or tk >= T:  # full BPTT
                tk = -1
            # the directions' sequences (seq op) or final states, for the merge's gradient
            hsq = buf[p[P_HSEQ]:p[P_HSEQ] + TN * H].reshape((T, N, H))
            hsq_r = hsq
            fin = buf[p[P_H] + TN * H:p[P_H] + TN * H + NH].reshape((1, N, H))
            fin_r = fin
            if dirs == 2:
                hsq_r = buf[p[P_HSEQ + P_DIR]:p[P_HSEQ + P_DIR] + TN * H].reshape((T, N, H))
                fin_r = buf[p[P_H + P_DIR] + TN * H:p[P_H + P_DIR] + TN * H + NH].reshape(
                    (1, N, H))
            for d in range(dirs):
                s0 = soffs[o] + d * NH
                w_ih, w_hh, _, _, peep = _rnn_tensors(data, spec, r, d, D)
                ch, cc, cg, cax, _ = _dir_cache(buf, p, d, code, T, N, H)
                dxp = dxp_buf[:TN * G].reshape((T, N, G))
                dxp[:] = 0
                dgh = dxp
                if not DGH_IS_DXP[code]:
                    dgh = dgh_buf[:TN * G].reshape((T, N, G))
                    dgh[:] = 0
                # the gradients on the final state: the caller's, plus (many-to-one)
                # the output's
                zs = np.zeros(2 * NH, dt)
                for j in range(NH):
                    if has_dhn:
                        zs[j] = dh_n[s0 + j]
                    if has_dcn and has_c:
                        zs[NH + j] = dc_n[s0 + j]
                dh_T = zs[:NH].reshape((N, H))
                dc_T = zs[NH:].reshape((N, H)) if has_c else none2
                dh_seq = none
                if seqop:
                    if dirs == 1:
                        dh_seq = dcur[:TN * H].reshape((T, N, H))
                    else:
                        dh_seq = dhs_buf[:TN * H].reshape((T, N, H))
                        _unmerge(merge, d, dcur[:TN * W].reshape((T, N, W)), hsq, hsq_r,
                                 dh_seq, np.int64(0))
                else:
                    _unmerge(merge, d, dcur[:N * W].reshape((1, N, W)), fin, fin_r,
                             dh_T.reshape((1, N, H)), np.int64(1))
                dh0 = dh0o[s0:s0 + NH].reshape((N, H))
                dc0 = dc0o[s0:s0 + NH].reshape((N, H)) if has_c else none2
                dw = np.empty((G, H), dt)
                db = np.empty(G, dt)
                dpeep = np.empty(peep.shape, dt)
                # row blocks and product routines as the layer path chooses them
                nb = _blocks_nb(T, N, H, G, nthr)
                args = (code, spec[r + RNN_ACT], spec[r + RNN_RACT],
                        blas_par if nb > 1 else _gemm_mode(N, G * H), tk, has_mask,
                        1 if seqop else 0)
                mk = tmask_r if d == 1 else tmask_f
                sc = np.empty(N * _bwd_scratch_nb(code, H, G), dt)
                if nb > 1:
                    _backward_par(nb, *args, ch, cc, cg, cax, w_hh, peep, mk, dh_seq, dh_T,
                                  dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep, sc)
                else:
                    _bwd_rows(*args, np.int64(1), ch, cc, cg, cax, w_hh, peep, mk, dh_seq, dh_T,
                              dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep, sc, np.int64(0), N)
                kr = r + d * _R
                gw = grad[spec[kr + RNN_W_HH]:spec[kr + RNN_W_HH] + G * H]
                dwf = dw.reshape(G * H)
                for j in range(G * H):
                    gw[j] += dwf[j]
                gb = grad[spec[kr + RNN_B_HH]:spec[kr + RNN_B_HH] + G]
                for j in range(G):
                    gb[j] += db[j]
                if PEEPHOLE[code]:
                    gp = grad[spec[kr + RNN_PEEP]:spec[kr + RNN_PEEP] + dpeep.size]
                    dpf = dpeep.reshape(dpeep.size)
                    for j in range(dpeep.size):
                        gp[j] += dpf[j]
                dx2 = dxp.reshape((TN, G))
                if d == 1:  # back to natural time, the input's order
                    _reverse_time(dxp.reshape((T, N * G)))
                inp = buf[p[P_IN]:p[P_IN] + TN * D].reshape((TN, D))
                _acc_nt(grad, spec[kr + RNN_W_IH], dx2, inp)
                _acc_colsum(grad, spec[kr + RNN_B_IH], dx2)
                if need_din:
                    dst = dnext if d == 0 else dtmp
                    _mm_nn(dx2, w_ih, dst[:TN * D].reshape((TN, D)), np.int64(0), TN,
                           _gemm_mode(TN, G * D), allv)
                    if d == 1:
                        for j in range(TN * D):
                            dnext[j] += dtmp[j]
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
    dx = none
    if not first and input_grad:
        dx = np.empty((N, T, F0), dt)
        _transpose_tn(dcur, dx)
    return dx, dh0o, dc0o
