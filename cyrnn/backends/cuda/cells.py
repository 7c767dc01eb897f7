"""Cell math: the only place it lives in the CUDA backend.

Two device functions cover every row of :data:`cyrnn.cells.CELL_TABLE`. Where the
CPU backends work on a block of batch rows, a CUDA thread works on one hidden unit
``j`` of one batch row: it reads the unit's entries of the row's gate vectors (each
``(G*H,)``, gate ``g`` of unit ``j`` at ``g * H + j``) and returns scalars. The
phases mean what they mean in the other backends (docs/architecture.md):

``cell_fwd(code, act, ract, phase, j, H, xr, gr, peep, hp, cp, gates)``
    ``xr`` the projected input row, ``gr`` the recurrent pre-activation row *with*
    ``b_hh`` (Cho's GRU phase 1: its n block is ``(r * h) W_hn^T + b_hn``), ``hp``,
    ``cp`` the unit's previous state. Writes the unit's post-activation gates into
    the row ``gates``; returns ``(h_new, c_new, aux)`` (``aux``: GRU's ``gh_n + b_hn``,
    or, for Cho's phase 0, ``r * h``). Phase -1 is the whole step; Cho's GRU runs
    phase 0 (r, z) and, once every unit's ``r * h`` is known, phase 1 (n, h).

``cell_bwd(code, act, ract, phase, j, H, dh, dc, hp, cp, cn, gates, aux, peep, drh, dg,
dxp, dgh)``
    For a valid step: writes the unit's entries of ``dg`` (this step's gradient on the
    recurrent pre-activation, the input of the ``dh_prev`` product ``dg W_hh``), adds
    them into the accumulators ``dgh`` and, for the projected input, ``dxp``; returns
    ``(dhn, dcn)``: the part of ``dh_prev`` not from that product, and ``dc_prev``
    (peephole terms included). Cho's GRU: phase 0 writes the z and n entries and
    returns ``dh * z``; phase 1, given ``drh = (dn W_hn)_j``, writes r, adds the
    accumulators and returns ``drh * r`` (its product uses only the r, z blocks).
"""

from __future__ import annotations

from numba import cuda

from ...cells import CELLS
from . import mathfn

RNN = CELLS["rnn"].code
LSTM = CELLS["lstm"].code
LSTM_PEEP = CELLS["lstm_peephole"].code
GRU = CELLS["gru"].code
GRU_CHO = CELLS["gru_cho"].code
N_GATES = tuple(k.n_gates for k in sorted(CELLS.values(), key=lambda k: k.code))
HAS_C = tuple(k.has_cell_state for k in sorted(CELLS.values(), key=lambda k: k.code))


def make(F):
    """``(cell_fwd, cell_bwd)`` for floats of type ``F`` (constants of that type)."""
    ZERO, ONE = F(0), F(1)
    activate, derivative = mathfn.make(F)

    @cuda.jit(device=True)
    def cell_fwd(code, act, ract, phase, j, H, xr, gr, peep, hp, cp, gates):
        if code == RNN:
            y = activate(act, xr[j] + gr[j])
            gates[j] = y
            return y, cp, ZERO
        if code == LSTM or code == LSTM_PEEP:
            a_i = xr[j] + gr[j]
            a_f = xr[H + j] + gr[H + j]
            if code == LSTM_PEEP:
                a_i += peep[0, j] * cp
                a_f += peep[1, j] * cp
            i = activate(ract, a_i)
            f = activate(ract, a_f)
            g = activate(act, xr[2 * H + j] + gr[2 * H + j])
            c = f * cp + i * g
            a_o = xr[3 * H + j] + gr[3 * H + j]
            if code == LSTM_PEEP:
                a_o += peep[2, j] * c
            o = activate(ract, a_o)
            gates[j] = i
            gates[H + j] = f
            gates[2 * H + j] = g
            gates[3 * H + j] = o
            return o * activate(act, c), c, ZERO
        if code == GRU:
            r = activate(ract, xr[j] + gr[j])
            z = activate(ract, xr[H + j] + gr[H + j])
            aux = gr[2 * H + j]
            n = activate(act, xr[2 * H + j] + r * aux)
            gates[j] = r
            gates[H + j] = z
            gates[2 * H + j] = n
            return (ONE - z) * n + z * hp, cp, aux
        # GRU_CHO
        if phase == 0:
            r = activate(ract, xr[j] + gr[j])
            gates[j] = r
            gates[H + j] = activate(ract, xr[H + j] + gr[H + j])
            return hp, cp, r * hp
        z = gates[H + j]
        n = activate(act, xr[2 * H + j] + gr[2 * H + j])
        gates[2 * H + j] = n
        return (ONE - z) * n + z * hp, cp, ZERO


    @cuda.jit(device=True)
    def cell_bwd(code, act, ract, phase, j, H, dh, dc, hp, cp, cn, gates, aux, peep, drh, dg,
                 dxp, dgh):
        if code == RNN:
            da = dh * derivative(act, gates[j])
            dg[j] = da
            dxp[j] += da
            dgh[j] += da
            return ZERO, dc
        if code == LSTM or code == LSTM_PEEP:
            i = gates[j]
            f = gates[H + j]
            g = gates[2 * H + j]
            o = gates[3 * H + j]
            tc = activate(act, cn)
            do = dh * tc * derivative(ract, o)
            dc = dc + dh * o * derivative(act, tc)
            if code == LSTM_PEEP:
                dc += do * peep[2, j]
            di = dc * g * derivative(ract, i)
            df = dc * cp * derivative(ract, f)
            dgg = dc * i * derivative(act, g)
            dcn = dc * f
            if code == LSTM_PEEP:
                dcn += di * peep[0, j] + df * peep[1, j]
            dg[j] = di
            dg[H + j] = df
            dg[2 * H + j] = dgg
            dg[3 * H + j] = do
            for k in range(4):
                dxp[k * H + j] += dg[k * H + j]
                dgh[k * H + j] += dg[k * H + j]
            return ZERO, dcn
        r = gates[j]
        z = gates[H + j]
        n = gates[2 * H + j]
        if phase != 1:
            dn = dh * (ONE - z) * derivative(act, n)
            dz = dh * (hp - n) * derivative(ract, z)
            dg[H + j] = dz
            if code == GRU:
                dr = dn * aux * derivative(ract, r)
                dg[j] = dr
                dg[2 * H + j] = dn * r
                dxp[j] += dr
                dxp[H + j] += dz
                dxp[2 * H + j] += dn
                dgh[j] += dr
                dgh[H + j] += dz
                dgh[2 * H + j] += dn * r
            else:
                dg[2 * H + j] = dn
            return dh * z, dc
        # Cho's phase 1: drh = (dn W_hn)_j is known
        dr = drh * hp * derivative(ract, r)
        dg[j] = dr
        for k in range(3):
            dxp[k * H + j] += dg[k * H + j]
            dgh[k * H + j] += dg[k * H + j]
        return drh * r, dc

    return cell_fwd, cell_bwd
