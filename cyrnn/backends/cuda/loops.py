"""Time loops: persistent kernels (one cooperative launch per sequence) and the
per-step kernels of the tiled path.

Both paths run the same per-(row, unit) bodies (``_fwd_unit``, ``_bwd_*``), which call
the cell math (:mod:`.cells`); they differ only in where the recurrent products come
from and how steps are separated.

**Persistent** (``forward_kernel``, ``backward_kernel``): all steps of a layer in one
launch. Block ``b`` owns the hidden units ``[b U, (b + 1) U)`` of every batch row and
copies its slice of ``W_hh`` into shared memory once (forward: the units' rows,
``G U H`` values; backward: the units' columns); a thread takes (row, unit) pairs and
computes its unit's products from shared memory. After each phase of a step the grid
meets at a grid-wide barrier (``cuda.cg.this_grid().sync()``): the next phase reads
every unit's results. Forward: one phase per step (Cho's GRU two: its n block
multiplies ``r * h``). Backward: the cell gradients (``dg``), Cho's ``drh = dn W_hn``,
then ``dh_prev = dg W_hh``.

**Per step** (``fwd_step_kernel``, ``bwd_step_kernel``): for layers whose slice does
not fit on chip, the host runs the time loop; per step a tiled GEMM (:mod:`.gemm`)
computes the products of all rows and units, and an ordinary launch of one thread per
(row, unit) runs the same bodies; kernel boundaries order the phases.

Truncated BPTT follows the reference: one sweep per gradient source, each row with a
budget of ``k + 1`` valid cells; the host passes every source's step and the lowest
step any row's budget reaches (``src_lo``), so a sweep stops there.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from . import cells
from .cells import GRU, GRU_CHO

# The phases of bwd_step_kernel.
BWD_START, BWD_CELL, BWD_CHO, BWD_PREV, BWD_END = range(5)


def _make(F, NF):
    """The kernels of one float type (``F`` its NumPy scalar type, for constants;
    ``NF`` its Numba type, for shared memory)."""
    ZERO = F(0)
    cell_fwd, cell_bwd = cells.make(F)

    # ------------------------------------------------------------------ bodies
    @cuda.jit(device=True)
    def _slots(t, keep):
        """State slots read and written at step ``t`` and the cache index: the whole
        cache when ``keep``, else two alternating state slots and one step."""
        if keep:
            return t, t + 1, t
        return t & 1, (t + 1) & 1, 0

    @cuda.jit(device=True)
    def _fwd_unit(code, act, ract, phase, t, n, j, H, has_c, has_mask, mask, xt, gh, peep, hp,
                  cp, hn, cn, gt, at, h_seq):
        """One (row, unit) of step ``t`` given the products ``gh`` (bias included): the
        cell, then the masking rule."""
        cpv = cp[n, j] if has_c else ZERO
        h, c, a = cell_fwd(code, act, ract, phase, j, H, xt[n], gh[n], peep, hp[n, j], cpv,
                           gt[n])
        if code == GRU or phase == 0:
            at[n, j] = a
        if phase == 0:
            return
        valid = has_mask == 0 or mask[t, n] != 0
        hn[n, j] = h if valid else hp[n, j]
        if has_c:
            cn[n, j] = c if valid else cp[n, j]
        h_seq[t, n, j] = h if valid else ZERO

    @cuda.jit(device=True)
    def _live(has_mask, mask, t, n, j, bud):
        """Whether (row, unit) passes through the cell at step ``t`` (valid, budget left)."""
        return (has_mask == 0 or mask[t, n] != 0) and bud[n, j] > 0

    @cuda.jit(device=True)
    def _bwd_start(t0, T, n, j, full, has_c, has_dhseq, has_mask, mask, dh_seq, dh_T, dc_T,
                   dh, dc, bud, budget0):
        """The gradient a sweep from ``t0`` starts with."""
        v = dh_T[n, j] if full or t0 == T - 1 else ZERO
        if not full and has_dhseq and (has_mask == 0 or mask[t0, n] != 0):
            v += dh_seq[t0, n, j]
        dh[n, j] = v
        if has_c:
            dc[n, j] = dc_T[n, j] if full or t0 == T - 1 else ZERO
        bud[n, j] = budget0

    @cuda.jit(device=True)
    def _bwd_cell(code, act, ract, t, n, j, H, G, full, has_c, has_mask, has_dhseq, mask,
                  dh_seq, hs, cs, gates, aux, peep, dg, dxp, dgh, dhn, dh, dc, bud):
        """The cell gradients of (row, unit) at step ``t`` into ``dg`` (zero when it does
        not pass through the cell), ``dhn``, ``dc``."""
        if _live(has_mask, mask, t, n, j, bud):
            if full and has_dhseq:
                dh[n, j] += dh_seq[t, n, j]
            cpv = cs[t, n, j] if has_c else ZERO
            cnv = cs[t + 1, n, j] if has_c else ZERO
            dcv = dc[n, j] if has_c else ZERO
            a = aux[t, n, j] if code == GRU else ZERO
            d1, d2 = cell_bwd(code, act, ract, 0, j, H, dh[n, j], dcv, hs[t, n, j], cpv, cnv,
                              gates[t, n], a, peep, ZERO, dg[n], dxp[t, n], dgh[t, n])
            dhn[n, j] = d1
            if has_c:
                dc[n, j] = d2
        else:
            for g in range(G):
                dg[n, g * H + j] = 0

    @cuda.jit(device=True)
    def _bwd_cho(code, act, ract, t, n, j, H, drh, hs, gates, peep, dg, dxp, dgh, dhn, dh):
        """Cho's GRU, a live (row, unit), given ``drh = (dn W_hn)_j``."""
        d1, _ = cell_bwd(code, act, ract, 1, j, H, dh[n, j], ZERO, hs[t, n, j], ZERO, ZERO,
                         gates[t, n], ZERO, peep, drh, dg[n], dxp[t, n], dgh[t, n])
        dhn[n, j] += d1

    @cuda.jit(device=True)
    def _bwd_prev(n, j, prod, has_c, dhn, dh, dc, bud):
        """``dh_prev`` of a live (row, unit) given ``prod = (dg W_hh)_j``; the budget."""
        dh[n, j] = dhn[n, j] + prod
        bud[n, j] -= 1
        if bud[n, j] == 0:
            dh[n, j] = 0
            if has_c:
                dc[n, j] = 0

    @cuda.jit(device=True)
    def _bwd_end(n, j, has_c, dh, dc, dh0, dc0):
        dh0[n, j] += dh[n, j]
        if has_c:
            dc0[n, j] += dc[n, j]

    # ------------------------------------------------------------------ persistent
    @cuda.jit(device=True)
    def _dot_row(v, sw, nu, g, jj, H, bias):
        """``bias + v . W_hh[g H + u0 + jj, :]`` from the block's rows in ``sw``."""
        acc = bias
        base = (g * nu + jj) * H
        for k in range(H):
            acc += v[k] * sw[base + k]
        return acc

    @cuda.jit(device=True)
    def _dot_col(v, sw, nu, r0, r1, kk):
        """``sum_{r0 <= r < r1} v[r] W_hh[r, u0 + kk]`` from the block's columns in ``sw``."""
        acc = ZERO
        for r in range(r0, r1):
            acc += v[r] * sw[r * nu + kk]
        return acc

    @cuda.jit
    def forward_kernel(code, act, ract, keep, has_c, has_mask, U, xp, w, b, peep, mask, hs,
                       cs, h_seq, gates, aux, gh):
        """``hs``/``cs`` (T + 1, N, H) states (``keep``) or (2, N, H) alternating,
        ``hs[0]`` the initial state; ``gates`` (T, N, G H) and ``aux`` (T, N, H) the
        cache (``keep``), else one step's; ``gh`` (N, G H) scratch."""
        grid = cuda.cg.this_grid()
        T, N = xp.shape[0], xp.shape[1]
        H = w.shape[1]
        G = w.shape[0] // H
        u0 = cuda.blockIdx.x * U
        nu = min(H, u0 + U) - u0  # <= 0 for a trailing block: it only meets the barriers
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sw = cuda.shared.array(0, NF)
        for idx in range(tid, G * max(nu, 0) * H, nt):
            row = idx // H
            sw[idx] = w[(row // nu) * H + u0 + row % nu, idx % H]
        cuda.syncthreads()
        cho = code == GRU_CHO
        Gd = 2 if cho else G
        npairs = N * max(nu, 0)
        for t in range(T):
            s0, s1, tg = _slots(t, keep)
            hp = hs[s0]
            hn = hs[s1]
            cp = cs[s0] if has_c else cs[0]
            cn = cs[s1] if has_c else cs[0]
            gt = gates[tg]
            at = aux[tg]
            xt = xp[t]
            for p in range(tid, npairs, nt):
                n = p // nu
                jj = p - n * nu
                j = u0 + jj
                for g in range(Gd):
                    gh[n, g * H + j] = _dot_row(hp[n], sw, nu, g, jj, H, b[g * H + j])
                _fwd_unit(code, act, ract, 0 if cho else -1, t, n, j, H, has_c, has_mask,
                          mask, xt, gh, peep, hp, cp, hn, cn, gt, at, h_seq)
            if cho:
                grid.sync()
                for p in range(tid, npairs, nt):
                    n = p // nu
                    jj = p - n * nu
                    j = u0 + jj
                    gh[n, 2 * H + j] = _dot_row(at[n], sw, nu, 2, jj, H, b[2 * H + j])
                    _fwd_unit(code, act, ract, 1, t, n, j, H, has_c, has_mask, mask, xt, gh,
                              peep, hp, cp, hn, cn, gt, at, h_seq)
            grid.sync()

    @cuda.jit
    def backward_kernel(code, act, ract, has_c, has_mask, has_dhseq, U, full, budget0, src_t,
                        src_lo, hs, cs, gates, aux, w, peep, mask, dh_seq, dh_T, dc_T, dxp,
                        dgh, dg, dhn, dh, dc, bud, dh0, dc0):
        """Sweeps from each source ``src_t[s]`` down to ``src_lo[s]``; ``full``: one
        source (T - 1) adding ``dh_seq`` at every valid step, else the output
        gradient of the source's step only. ``dxp``, ``dgh`` (T, N, G H) and ``dh0``,
        ``dc0`` (N, H) accumulate; ``dg`` (N, G H), ``dhn``, ``dh``, ``dc``, ``bud``
        (N, H) scratch."""
        grid = cuda.cg.this_grid()
        T, N = gates.shape[0], gates.shape[1]
        GH, H = w.shape[0], w.shape[1]
        G = GH // H
        u0 = cuda.blockIdx.x * U
        nu = min(H, u0 + U) - u0
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sw = cuda.shared.array(0, NF)
        for idx in range(tid, GH * max(nu, 0), nt):
            sw[idx] = w[idx // nu, u0 + idx % nu]
        cuda.syncthreads()
        cho = code == GRU_CHO
        Gp = 2 * H if cho else GH  # rows of the dh_prev product
        npairs = N * max(nu, 0)
        for s in range(src_t.shape[0]):
            t0 = src_t[s]
            for p in range(tid, npairs, nt):
                n = p // nu
                _bwd_start(t0, T, n, u0 + p - n * nu, full, has_c, has_dhseq, has_mask, mask,
                           dh_seq, dh_T, dc_T, dh, dc, bud, budget0)
            for t in range(t0, src_lo[s] - 1, -1):
                for p in range(tid, npairs, nt):
                    n = p // nu
                    _bwd_cell(code, act, ract, t, n, u0 + p - n * nu, H, G, full, has_c,
                              has_mask, has_dhseq, mask, dh_seq, hs, cs, gates, aux, peep, dg,
                              dxp, dgh, dhn, dh, dc, bud)
                grid.sync()
                if cho:
                    for p in range(tid, npairs, nt):
                        n = p // nu
                        jj = p - n * nu
                        if _live(has_mask, mask, t, n, u0 + jj, bud):
                            _bwd_cho(code, act, ract, t, n, u0 + jj, H,
                                     _dot_col(dg[n], sw, nu, 2 * H, GH, jj), hs, gates, peep,
                                     dg, dxp, dgh, dhn, dh)
                    grid.sync()
                for p in range(tid, npairs, nt):
                    n = p // nu
                    jj = p - n * nu
                    if _live(has_mask, mask, t, n, u0 + jj, bud):
                        _bwd_prev(n, u0 + jj, _dot_col(dg[n], sw, nu, 0, Gp, jj), has_c, dhn,
                                  dh, dc, bud)
                grid.sync()
            for p in range(tid, npairs, nt):
                n = p // nu
                _bwd_end(n, u0 + p - n * nu, has_c, dh, dc, dh0, dc0)

    # ------------------------------------------------------------------ per step
    @cuda.jit
    def fwd_step_kernel(code, act, ract, phase, t, keep, has_c, has_mask, xp, peep, mask, hs,
                        cs, h_seq, gates, aux, gh):
        """Step ``t`` (one phase of Cho's GRU) for every (row, unit), given ``gh``."""
        N, H = hs.shape[1], hs.shape[2]
        p = cuda.grid(1)
        if p < N * H:
            n = p // H
            s0, s1, tg = _slots(t, keep)
            _fwd_unit(code, act, ract, phase, t, n, p - n * H, H, has_c, has_mask, mask, xp[t],
                      gh, peep, hs[s0], cs[s0] if has_c else cs[0], hs[s1],
                      cs[s1] if has_c else cs[0], gates[tg], aux[tg], h_seq)

    @cuda.jit
    def bwd_step_kernel(code, act, ract, phase, t, full, has_c, has_mask, has_dhseq, budget0,
                        hs, cs, gates, aux, peep, mask, dh_seq, dh_T, dc_T, dxp, dgh, dg, dhn,
                        dh, dc, bud, prod, dh0, dc0):
        """One phase (``BWD_*``) of the backward sweep at step ``t`` for every (row,
        unit); ``prod`` (N, H) the product the phase needs (``BWD_CHO``: ``dn W_hn``,
        ``BWD_PREV``: ``dg W_hh``)."""
        T, N = gates.shape[0], gates.shape[1]
        H = hs.shape[2]
        p = cuda.grid(1)
        if p < N * H:
            n = p // H
            j = p - n * H
            if phase == BWD_START:
                _bwd_start(t, T, n, j, full, has_c, has_dhseq, has_mask, mask, dh_seq, dh_T,
                           dc_T, dh, dc, bud, budget0)
            elif phase == BWD_CELL:
                _bwd_cell(code, act, ract, t, n, j, H, gates.shape[2] // H, full, has_c,
                          has_mask, has_dhseq, mask, dh_seq, hs, cs, gates, aux, peep, dg, dxp,
                          dgh, dhn, dh, dc, bud)
            elif phase == BWD_CHO:
                if _live(has_mask, mask, t, n, j, bud):
                    _bwd_cho(code, act, ract, t, n, j, H, prod[n, j], hs, gates, peep, dg, dxp,
                             dgh, dhn, dh)
            elif phase == BWD_PREV:
                if _live(has_mask, mask, t, n, j, bud):
                    _bwd_prev(n, j, prod[n, j], has_c, dhn, dh, dc, bud)
            else:
                _bwd_end(n, j, has_c, dh, dc, dh0, dc0)

    return forward_kernel, backward_kernel, fwd_step_kernel, bwd_step_kernel


KERNELS = {"float32": _make(np.float32, numba.float32),
           "float64": _make(np.float64, numba.float64)}
