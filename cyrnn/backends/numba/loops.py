"""The forward time loop, the backward sweep and their parallel entry points.

One forward time loop (:func:`_fwd_rows`) and one backward sweep
(:func:`_bwd_rows`) run every cell: per step, the recurrent product
(:mod:`.gemm`), then the cell's row function (:mod:`.cells`); the loops own
masking (a masked row keeps its state and outputs zero), truncation and the
scratch. The sweep serves full BPTT (one sweep from the last step, adding
``dh_seq``) and truncation (one budgeted sweep per gradient source, as the
reference's ``_sweep``).

Rows are independent through time, so a block of rows can run the whole time
loop alone: ``_forward_par``/``_backward_par`` (``parallel=True``) split the
batch into one fixed block per thread (``prange`` over blocks), a single
parallel region per call and no barrier inside the time loop. Small calls use
the serial entry points (``lo, hi = 0, N``), which open no parallel region. A
row's arithmetic does not depend on the blocking.

No allocation in the time loop: the callers pass outputs and one flat scratch
array (``_fwd_scratch``/``_bwd_scratch`` values per row), of which the loops only
take views; the sweep allocates per-row flags and budgets at its start. The step
functions, like the cells, run without reference counting (``config._JIT_ROWS``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..._numba_util import njit

from .cells import DGH_IS_DXP, HAS_C, PHASE_ALL, SPLIT_PRODUCT, cell_bwd, cell_fwd
from .config import _JIT, _JIT_PAR, _JIT_ROWS
from .gemm import _contract, _copy_cols, _mm_nn, _mm_nt


def _fwd_scratch(code, H, GH, keep):
    """Scratch values per batch row needed by ``_fwd_rows``."""
    gw = 2 * H if SPLIT_PRODUCT[code] else GH
    return gw + H + (0 if keep else GH + 3 * H)


def _bwd_scratch(code, H, GH):
    """Scratch values per batch row needed by ``_bwd_rows``."""
    return 6 * H + GH + (3 * H if SPLIT_PRODUCT[code] else 0)


_fwd_scratch_nb = njit(**_JIT)(_fwd_scratch)
_bwd_scratch_nb = njit(**_JIT)(_bwd_scratch)


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------

@njit(**_JIT_ROWS)
def _emit(lo, hi, has_mask, has_c, mt, hp, cp, hn, cn, hs):
    """After the cell wrote the new state of every row into ``hn`` (``cn``): the
    outputs ``hs`` (the new state, or zero where masked) and, where masked, the
    old state carried over."""
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
            if has_c:
                cni = cn[i]
                cpi = cp[i]
                for j in range(cni.shape[0]):
                    cni[j] = cpi[j]


@njit(**_JIT_ROWS)
def _fwd_step(code, act, ract, blas, has_mask, mt, xt, w, b, peep, hp, hn, cp, cn, g, ax, hs,
              gh, ghn, lo, hi):
    """One step on rows ``lo:hi``: products, cell, mask (used by the time loop,
    hence by ``step``)."""
    H = w.shape[1]
    # Phases as runtime values: a literal argument would make Numba compile one
    # version of the cell per phase.
    if SPLIT_PRODUCT[code]:
        ph = np.int64(0)
        _mm_nt(hp, w[:2 * H], gh, lo, hi, blas)
        cell_fwd(code, act, ract, ph, lo, hi, xt, gh, b, peep, hp, cp, hn, cn, g, ax)
        _mm_nt(ax, w[2 * H:], ghn, lo, hi, blas)
        cell_fwd(code, act, ract, ph + 1, lo, hi, xt, ghn, b, peep, hp, cp, hn, cn, g, ax)
    else:
        _mm_nt(hp, w, gh, lo, hi, blas)
        cell_fwd(code, act, ract, np.int64(PHASE_ALL), lo, hi, xt, gh, b, peep, hp, cp, hn, cn,
                 g, ax)
    _emit(lo, hi, has_mask, HAS_C[code], mt, hp, cp, hn, cn, hs)


@njit(**_JIT)
def _fwd_rows(code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask, h_seq,
              hT, cT, ch, cc, cg, cax, scratch, lo, hi):
    """The forward time loop over rows ``lo:hi``, for every cell.

    The serial entry point (``lo, hi = 0, N``), and the body of the parallel
    kernel's blocks. ``scratch`` holds ``N * _fwd_scratch(...)`` values.
    """
    T, N, GH = xp.shape
    H = w.shape[1]
    has_c = HAS_C[code]
    gw = 2 * H if SPLIT_PRODUCT[code] else GH
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
        if has_c:
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
        _fwd_step(code, act, ract, blas, has_mask, mask[t], xp[t], w, b, peep, hp, hn, cp, cn,
                  g, ax, h_seq[t], gh, ghn, lo, hi)
    if keep or T % 2 == 1:
        hsrc = ch[T] if keep else h2
        csrc = cc[T] if keep else c2
        for i in range(lo, hi):
            for j in range(H):
                hT[i, j] = hsrc[i, j]
            if has_c:
                for j in range(H):
                    cT[i, j] = csrc[i, j]


@njit(**_JIT_PAR)
def _forward_par(nb, code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask,
                 h_seq, hT, cT, ch, cc, cg, cax, scratch):
    """``_fwd_rows`` on ``nb`` fixed blocks of rows, one per thread."""
    N = xp.shape[1]
    for k in prange(nb):
        _fwd_rows(code, act, ract, blas, keep, has_mask, xp, w, b, peep, h0, c0, mask, h_seq,
                  hT, cT, ch, cc, cg, cax, scratch, k * N // nb, (k + 1) * N // nb)


# ----------------------------------------------------------------------------
# Backward.
# ----------------------------------------------------------------------------

@njit(**_JIT_ROWS)
def _bwd_step(code, act, ract, blas, valid, w, peep, hp, cp, cn, g, ax, dh, dc, dxp, dgh, dg,
              dhn, dcn, dhp, drh, tmp, lo, hi):
    """Backward through one step for the valid rows of ``lo:hi``: accumulates
    into ``dxp``/``dgh`` and replaces ``dh`` (and ``dc``) by the gradient on the
    previous state; invalid rows pass ``dh``/``dc`` through unchanged."""
    N, GH = dg.shape
    H = w.shape[1]
    ph = np.int64(0)  # a runtime value (see _fwd_step)
    cell_bwd(code, act, ract, ph, lo, hi, valid, dh, dc, hp, cp, cn, g, ax, peep, drh, dg, dxp,
             dhn, dcn)
    if SPLIT_PRODUCT[code]:
        # Cho: drh = dn W_hn, then the r, z blocks' product; the column blocks of
        # dg are copied to contiguous operands (separate regions: row blocks of
        # other threads use the same scratch)
        dn = tmp[:N * H].reshape((N, H))
        drz = tmp[N * H:3 * N * H].reshape((N, 2 * H))
        _copy_cols(dg, 2 * H, GH, dn, lo, hi)
        _mm_nn(dn, w[2 * H:], drh, lo, hi, blas, valid)
        cell_bwd(code, act, ract, ph + 1, lo, hi, valid, dh, dc, hp, cp, cn, g, ax, peep, drh,
                 dg, dxp, dhn, dcn)
        _copy_cols(dg, np.int64(0), 2 * H, drz, lo, hi)
        _mm_nn(drz, w[:2 * H], dhp, lo, hi, blas, valid)
    else:
        _mm_nn(dg, w, dhp, lo, hi, blas, valid)
    separate = not DGH_IS_DXP[code]
    has_c = HAS_C[code]
    for i in range(lo, hi):
        if not valid[i]:
            continue
        if separate:
            dghi = dgh[i]
            dgi = dg[i]
            for c in range(GH):
                dghi[c] += dgi[c]
        dhi = dh[i]
        dhni = dhn[i]
        dhpi = dhp[i]
        for j in range(H):
            dhi[j] = dhni[j] + dhpi[j]
        if has_c:
            dci = dc[i]
            dcni = dcn[i]
            for j in range(H):
                dci[j] = dcni[j]


@njit(**_JIT)
def _bwd_rows(code, act, ract, blas, trunc, has_mask, has_dhseq, contract, ch, cc, cg, cax, w,
              peep, mask, dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep, scratch,
              lo, hi):
    """The backward sweep over rows ``lo:hi``, for every cell.

    The serial entry point (``lo, hi = 0, N``, ``contract=1``: also computes
    ``dw``/``db``/``dpeep``), and the body of the parallel kernel's blocks.

    ``trunc < 0``: full BPTT, a single sweep from the last step that adds
    ``dh_seq[t]`` at every valid step. ``trunc = k``: one sweep per gradient
    source (step ``s``), each row passing through at most ``k + 1`` valid
    cells, exactly as the reference's ``_sweep`` with a budget. Rows whose
    source gradient is zero are skipped.
    """
    T, N, GH = cg.shape
    H = w.shape[1]
    NH = N * H
    has_c = HAS_C[code]
    full = trunc < 0
    zero = w.dtype.type(0)
    dh = scratch[:NH].reshape((N, H))
    dc = scratch[NH:2 * NH].reshape((N, H))
    dhn = scratch[2 * NH:3 * NH].reshape((N, H))
    dcn = scratch[3 * NH:4 * NH].reshape((N, H))
    dhp = scratch[4 * NH:5 * NH].reshape((N, H))
    drh = scratch[5 * NH:6 * NH].reshape((N, H))
    dg = scratch[6 * NH:6 * NH + N * GH].reshape((N, GH))
    tmp = scratch[6 * NH + N * GH:]
    valid = np.empty(N, np.bool_)
    budget = np.empty(N, np.int64)
    for i in range(lo, hi):
        for j in range(H):
            dh0[i, j] = zero
            if has_c:
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
                if has_c:
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
            _bwd_step(code, act, ract, blas, valid, w, peep, ch[t], cc[t], cc[t + 1], cg[t],
                      cax[t], dh, dc, dxp[t], dgh[t], dg, dhn, dcn, dhp, drh, tmp, lo, hi)
            alive = False
            for i in range(lo, hi):
                if valid[i]:
                    budget[i] -= 1
                    if budget[i] == 0:
                        for j in range(H):
                            dh[i, j] = zero
                            if has_c:
                                dc[i, j] = zero
                alive = alive or budget[i] > 0
            t -= 1
        if t < 0:  # reached the start with budget left: the gradient on h0
            for i in range(lo, hi):
                for j in range(H):
                    dh0[i, j] += dh[i, j]
                    if has_c:
                        dc0[i, j] += dc[i, j]
    if contract:
        _contract(code, ch, cc, cax, dxp, dgh, dw, db, dpeep)


@njit(**_JIT_PAR)
def _backward_par(nb, code, act, ract, blas, trunc, has_mask, has_dhseq, ch, cc, cg, cax, w,
                  peep, mask, dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep, scratch):
    """``_bwd_rows`` on ``nb`` fixed blocks of rows, one per thread, then the
    ``dw``/``db``/``dpeep`` contraction (one GEMM, BLAS-threaded)."""
    N = cg.shape[1]
    for k in prange(nb):
        _bwd_rows(code, act, ract, blas, trunc, has_mask, has_dhseq, np.int64(0), ch, cc, cg,
                  cax, w, peep, mask, dh_seq, dh_T, dc_T, dxp, dgh, dh0, dc0, dw, db, dpeep,
                  scratch, k * N // nb, (k + 1) * N // nb)
    _contract(code, ch, cc, cax, dxp, dgh, dw, db, dpeep)
