"""Time loops: one cooperative kernel launch per sequence (persistent recurrence).

``forward_kernel`` runs all ``T`` steps of a layer in one launch. Block ``b`` owns the
hidden units ``[b U, (b + 1) U)`` of every batch row; a thread takes (row, unit)
pairs. Per step a thread computes its unit's recurrent pre-activations (``G`` dot
products of length ``H`` with the unit's rows of ``W_hh``), then the cell
(:func:`.cells.cell_fwd`), then masking; the grid then meets at a grid-wide barrier,
since the next step reads every unit's new state. Cho's GRU has a second phase and
barrier per step (its n block multiplies ``r * h``). ``backward_kernel`` runs the
backward sweep the same way, with a barrier after the cell gradients (the
``dh_prev = dg W_hh`` product reads every unit's ``dg``) and one after the product;
it keeps the block's *columns* of ``W_hh`` on chip.

``use_shared``: the block copies its slice of ``W_hh`` (``G * U * H`` values) into
shared memory once per launch and reads it from there at every step; otherwise every
step reads ``W_hh`` from global memory (L2). ``config.launch_plan`` chooses.

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


def _make(F, NF):
    """The kernels of one float type (``F`` its NumPy scalar type, for constants;
    ``NF`` its Numba type, for shared memory)."""
    ZERO = F(0)
    cell_fwd, cell_bwd = cells.make(F)

    @cuda.jit(device=True)
    def _dot_row(v, sw, w, use_shared, nu, g, jj, j, H, b):
        """``b[g H + j] + v . W_hh[g H + j, :]`` (forward: the block holds rows
        ``g H + u0 + jj`` at ``sw[(g nu + jj) H:]``)."""
        acc = b[g * H + j]
        if use_shared:
            base = (g * nu + jj) * H
            for k in range(H):
                acc += v[k] * sw[base + k]
        else:
            for k in range(H):
                acc += v[k] * w[g * H + j, k]
        return acc

    @cuda.jit(device=True)
    def _dot_col(v, sw, w, use_shared, nu, r0, r1, kk, k):
        """``sum_{r0 <= r < r1} v[r] W_hh[r, k]`` (backward: the block holds columns
        ``u0 + kk`` at ``sw[r nu + kk]``)."""
        acc = ZERO
        if use_shared:
            for r in range(r0, r1):
                acc += v[r] * sw[r * nu + kk]
        else:
            for r in range(r0, r1):
                acc += v[r] * w[r, k]
        return acc

    @cuda.jit(device=True)
    def _fwd_unit(code, act, ract, phase, t, n, j, H, has_c, has_mask, mask, xt, gh, peep, hp,
                  cp, hn, cn, gt, at, h_seq):
        """One (row, unit) of step ``t``: the cell, then the masking rule."""
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

    @cuda.jit
    def forward_kernel(code, act, ract, keep, has_c, has_mask, use_shared, U, xp, w, b, peep,
                       mask, hs, cs, h_seq, gates, aux, gh):
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
        if use_shared:
            for idx in range(tid, G * nu * H, nt):
                row = idx // H
                sw[idx] = w[(row // nu) * H + u0 + row % nu, idx % H]
        cuda.syncthreads()
        cho = code == GRU_CHO
        Gd = 2 if cho else G
        for t in range(T):
            s0 = t if keep else t & 1
            s1 = t + 1 if keep else (t + 1) & 1
            hp = hs[s0]
            hn = hs[s1]
            cp = cs[s0] if has_c else cs[0]
            cn = cs[s1] if has_c else cs[0]
            gt = gates[t if keep else 0]
            at = aux[t if keep else 0]
            xt = xp[t]
            for p in range(tid, N * max(nu, 0), nt):
                n = p // nu
                jj = p - n * nu
                j = u0 + jj
                for g in range(Gd):
                    gh[n, g * H + j] = _dot_row(hp[n], sw, w, use_shared, nu, g, jj, j, H, b)
                _fwd_unit(code, act, ract, 0 if cho else -1, t, n, j, H, has_c, has_mask,
                          mask, xt, gh, peep, hp, cp, hn, cn, gt, at, h_seq)
            if cho:
                grid.sync()
                for p in range(tid, N * max(nu, 0), nt):
                    n = p // nu
                    jj = p - n * nu
                    j = u0 + jj
                    gh[n, 2 * H + j] = _dot_row(at[n], sw, w, use_shared, nu, 2, jj, j, H, b)
                    _fwd_unit(code, act, ract, 1, t, n, j, H, has_c, has_mask, mask, xt, gh,
                              peep, hp, cp, hn, cn, gt, at, h_seq)
            grid.sync()

    @cuda.jit
    def backward_kernel(code, act, ract, has_c, has_mask, has_dhseq, use_shared, U, full,
                        budget0, src_t, src_lo, hs, cs, gates, aux, w, peep, mask, dh_seq,
                        dh_T, dc_T, dxp, dgh, dg, dhn, dh, dc, bud, dh0, dc0):
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
        if use_shared:
            for idx in range(tid, GH * nu, nt):
                sw[idx] = w[idx // nu, u0 + idx % nu]
        cuda.syncthreads()
        cho = code == GRU_CHO
        Gp = 2 * H if cho else GH  # rows of the dh_prev product
        npairs = N * max(nu, 0)
        for s in range(src_t.shape[0]):
            t0 = src_t[s]
            for p in range(tid, npairs, nt):
                n = p // nu
                j = u0 + p - n * nu
                v = dh_T[n, j] if full or t0 == T - 1 else ZERO
                if not full and has_dhseq and (has_mask == 0 or mask[t0, n] != 0):
                    v += dh_seq[t0, n, j]
                dh[n, j] = v
                if has_c:
                    dc[n, j] = dc_T[n, j] if full or t0 == T - 1 else ZERO
                bud[n, j] = budget0
            for t in range(t0, src_lo[s] - 1, -1):
                for p in range(tid, npairs, nt):
                    n = p // nu
                    j = u0 + p - n * nu
                    if (has_mask == 0 or mask[t, n] != 0) and bud[n, j] > 0:
                        if full and has_dhseq:
                            dh[n, j] += dh_seq[t, n, j]
                        cpv = cs[t, n, j] if has_c else ZERO
                        cnv = cs[t + 1, n, j] if has_c else cpv
                        dcv = dc[n, j] if has_c else cpv
                        a = aux[t, n, j] if code == GRU else cpv
                        d1, d2 = cell_bwd(code, act, ract, 0, j, H, dh[n, j], dcv, hs[t, n, j],
                                          cpv, cnv, gates[t, n], a, peep, cpv, dg[n],
                                          dxp[t, n], dgh[t, n])
                        dhn[n, j] = d1
                        if has_c:
                            dc[n, j] = d2
                    else:
                        for g in range(G):
                            dg[n, g * H + j] = 0
                grid.sync()
                if cho:
                    for p in range(tid, npairs, nt):
                        n = p // nu
                        jj = p - n * nu
                        j = u0 + jj
                        if (has_mask == 0 or mask[t, n] != 0) and bud[n, j] > 0:
                            drh = _dot_col(dg[n], sw, w, use_shared, nu, 2 * H, GH, jj, j)
                            d1, _ = cell_bwd(code, act, ract, 1, j, H, dh[n, j], drh,
                                             hs[t, n, j], drh, drh, gates[t, n], drh, peep,
                                             drh, dg[n], dxp[t, n], dgh[t, n])
                            dhn[n, j] += d1
                    grid.sync()
                for p in range(tid, npairs, nt):
                    n = p // nu
                    jj = p - n * nu
                    j = u0 + jj
                    if (has_mask == 0 or mask[t, n] != 0) and bud[n, j] > 0:
                        dh[n, j] = dhn[n, j] + _dot_col(dg[n], sw, w, use_shared, nu, 0, Gp,
                                                        jj, j)
                        bud[n, j] -= 1
                        if bud[n, j] == 0:
                            dh[n, j] = 0
                            if has_c:
                                dc[n, j] = 0
                grid.sync()
            for p in range(tid, npairs, nt):
                n = p // nu
                j = u0 + p - n * nu
                dh0[n, j] += dh[n, j]
                if has_c:
                    dc0[n, j] += dc[n, j]

    return forward_kernel, backward_kernel


KERNELS = {"float32": _make(np.float32, numba.float32),
           "float64": _make(np.float64, numba.float64)}
