"""Cell math: the only place it lives in the Numba backend.

Two row functions cover every row of :data:`cyrnn.cells.CELL_TABLE`; they
dispatch on ``(code, act, ract)`` (``Cell.codes``, or the fused spec's fields),
run the math for batch rows ``lo:hi`` of one step, and are shared, by signature
and meaning, with the Cython backend (``src/cells.pxi``):

``cell_fwd(code, act, ract, phase, lo, hi, xp_t, gh, b, peep, hp, cp, hn, cn, gates, aux)``
    Given the recurrent product ``gh`` (without bias), writes the post-activation
    ``gates``, ``aux`` (GRU: ``gh_n + b_hn`` with ``reset_after``, else ``r * h``)
    and the new state ``hn`` (``cn``) of every row. ``phase`` -1: the whole step;
    Cho's GRU, whose product is split, runs phase 0 (r, z and ``aux = r * h``,
    ``gh`` the r, z blocks' product) and phase 1 (n and the new state, ``gh`` =
    ``(r * h) W_hn^T``). Masking (masked rows keep their state and output zero)
    is the time loop's job.

``cell_bwd(code, act, ract, phase, lo, hi, valid, dh, dc, hp, cp, cn, gates, aux, peep, drh,
dg, dxp, dhn, dcn)``
    For valid rows, writes ``dg`` (the gradient on the recurrent pre-activation,
    the input of the ``dh_prev`` product ``dg @ W_hh``), adds the gradient on the
    projected input into ``dxp``, writes ``dhn`` (the part of ``dh_prev`` not
    coming from that product) and ``dcn`` (``dc_prev``, peephole terms included).
    Invalid rows: ``dg = 0``, ``dhn = dh``, ``dcn = dc``. ``phase`` 0: before the
    products; Cho's GRU has a phase 1 once ``drh = dn W_hn`` is known (its
    ``dh_prev`` product uses only the r, z blocks of ``dg``).

Every array is a 2-D block of rows (``peep`` (3, H): p_i, p_f, p_o; (3, 0) for
cells without peepholes). Activations and their derivatives run a gate block at
a time (:mod:`.mathfn`), the rest in passes over each row's 1-D views, so LLVM
vectorises every loop.
The table's codes and per-row facts are module globals, which Numba compiles in
as constants.
"""

from __future__ import annotations

import numpy as np

from ..._numba_util import njit

from ...cells import CELL_TABLE, CELLS, FAMILIES
from .config import _JIT_ROWS
from .mathfn import act_mul, act_sum, act_to, activate, dact_to

RNN = CELLS["rnn"].code
LSTM = CELLS["lstm"].code
GRU = CELLS["gru"].code
GRU_CHO = CELLS["gru_cho"].code
LSTM_PEEPHOLE = CELLS["lstm_peephole"].code
F_RNN, F_LSTM, F_GRU = (FAMILIES.index(f) for f in ("rnn", "lstm", "gru"))

# Per row of the table, indexed by code.
FAMILY = tuple(FAMILIES.index(row.family) for row in CELL_TABLE)
N_GATES = tuple(row.n_gates for row in CELL_TABLE)
HAS_C = tuple(row.has_cell_state for row in CELL_TABLE)
HAS_AUX = tuple(row.has_aux for row in CELL_TABLE)
N_PEEP = tuple(row.n_peepholes for row in CELL_TABLE)
PEEPHOLE = tuple(row.n_peepholes > 0 for row in CELL_TABLE)
PEEP_ROWS = max(N_PEEP)  # the peep argument's rows ((PEEP_ROWS, 0) without peepholes)
# Cho's GRU (reset_after=False): the recurrent product is split around the cell,
# (r * h) W_hn^T after r is known.
SPLIT_PRODUCT = tuple(row.options.get("reset_after") is False for row in CELL_TABLE)
# Whether the gradient on the recurrent pre-activation (dW_hh's) equals the one on
# the projected input; not for reset_after GRU, whose recurrent n input is r * dn.
DGH_IS_DXP = tuple(not (row.family == "gru" and row.options.get("reset_after"))
                   for row in CELL_TABLE)
PHASE_ALL = -1
# Column 0 as a runtime value: a literal 0 would make Numba compile the activation
# functions once more (a global NumPy scalar is typed int64, a Python 0 a literal).
_C0 = np.int64(0)

# Performance notes. The row functions run without reference counting
# (config._JIT_ROWS): with it, the views below cost atomic operations each.
# Activations run a gate block at a time (a call per row costs more than the
# work at small sizes), in place through ``activate`` (a loop reading and writing
# one array through two names fails LLVM's overlap check and runs scalar).


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------

@njit(**_JIT_ROWS)
def _rnn_fwd(act, lo, hi, xp_t, gh, b, hn, gates):
    H = hn.shape[1]
    act_sum(act, lo, hi, _C0, H, xp_t, gh, _C0, b, gates)
    for i in range(lo, hi):
        gi = gates[i]
        hni = hn[i]
        for j in range(H):
            hni[j] = gi[j]


@njit(**_JIT_ROWS)
def _lstm_fwd(act, ract, peephole, lo, hi, xp_t, gh, b, peep, cp, hn, cn, gates):
    H = hn.shape[1]
    p_i, p_f, p_o = peep[0], peep[1], peep[2]
    if peephole:  # i, f see c_{t-1}
        b_i, b_f = b[:H], b[H:2 * H]
        for i in range(lo, hi):
            x_i, a_i, g_i = xp_t[i, :H], gh[i, :H], gates[i, :H]
            x_f, a_f, g_f = xp_t[i, H:2 * H], gh[i, H:2 * H], gates[i, H:2 * H]
            cpi = cp[i]
            for j in range(H):
                g_i[j] = x_i[j] + a_i[j] + b_i[j] + p_i[j] * cpi[j]
            for j in range(H):
                g_f[j] = x_f[j] + a_f[j] + b_f[j] + p_f[j] * cpi[j]
        activate(ract, lo, hi, _C0, 2 * H, gates)
    else:
        act_sum(ract, lo, hi, _C0, 2 * H, xp_t, gh, _C0, b, gates)
    act_sum(act, lo, hi, 2 * H, 3 * H, xp_t, gh, 2 * H, b, gates)
    for i in range(lo, hi):
        gi, gf, gg = gates[i, :H], gates[i, H:2 * H], gates[i, 2 * H:3 * H]
        cpi = cp[i]
        cni = cn[i]
        for j in range(H):
            cni[j] = gf[j] * cpi[j] + gi[j] * gg[j]
    if peephole:  # o sees c_t
        b_o = b[3 * H:]
        for i in range(lo, hi):
            x_o, a_o, g_o = xp_t[i, 3 * H:], gh[i, 3 * H:], gates[i, 3 * H:]
            cni = cn[i]
            for j in range(H):
                g_o[j] = x_o[j] + a_o[j] + b_o[j] + p_o[j] * cni[j]
        activate(ract, lo, hi, 3 * H, 4 * H, gates)
    else:
        act_sum(ract, lo, hi, 3 * H, 4 * H, xp_t, gh, 3 * H, b, gates)
    act_mul(act, lo, hi, cn, gates, 3 * H, hn)  # h = o act(c)


@njit(**_JIT_ROWS)
def _gru_fwd(act, ract, split, phase, lo, hi, xp_t, gh, b, hp, hn, gates, aux):
    H = hn.shape[1]
    one = gates.dtype.type(1)
    if phase <= 0:  # r, z (reset_after: the whole step; Cho: before (r h) W_hn)
        act_sum(ract, lo, hi, _C0, 2 * H, xp_t, gh, _C0, b, gates)
        if split:  # aux = r h, the input of the n block's product
            for i in range(lo, hi):
                gr, hpi, axi = gates[i, :H], hp[i], aux[i]
                for j in range(H):
                    axi[j] = gr[j] * hpi[j]
            return
        b_n = b[2 * H:]
        for i in range(lo, hi):  # aux = gh_n + b_hn;  n = act(x_n + r aux)
            a_n, x_n, axi = gh[i, 2 * H:], xp_t[i, 2 * H:], aux[i]
            gr, gn = gates[i, :H], gates[i, 2 * H:]
            for j in range(H):
                axi[j] = a_n[j] + b_n[j]
            for j in range(H):
                gn[j] = x_n[j] + gr[j] * axi[j]
        activate(act, lo, hi, 2 * H, 3 * H, gates)
    else:  # Cho, phase 1: gh = (r h) W_hn^T
        act_sum(act, lo, hi, 2 * H, 3 * H, xp_t, gh, _C0, b, gates)
    for i in range(lo, hi):
        gz, gn, hpi, hni = gates[i, H:2 * H], gates[i, 2 * H:], hp[i], hn[i]
        for j in range(H):
            hni[j] = (one - gz[j]) * gn[j] + gz[j] * hpi[j]


@njit(**_JIT_ROWS)
def cell_fwd(code, act, ract, phase, lo, hi, xp_t, gh, b, peep, hp, cp, hn, cn, gates, aux):
    """One step of cell ``code`` for rows ``lo:hi`` (see the module docstring)."""
    family = FAMILY[code]
    if family == F_LSTM:
        _lstm_fwd(act, ract, PEEPHOLE[code], lo, hi, xp_t, gh, b, peep, cp, hn, cn, gates)
    elif family == F_GRU:
        _gru_fwd(act, ract, SPLIT_PRODUCT[code], phase, lo, hi, xp_t, gh, b, hp, hn, gates,
                 aux)
    else:
        _rnn_fwd(act, lo, hi, xp_t, gh, b, hn, gates)


# ----------------------------------------------------------------------------
# Backward. The activations' derivatives (through the cached outputs) go into
# dg first, for every row of the block; passes over the valid rows then multiply
# them in, each product in the reference's order; invalid rows are set last.
# ----------------------------------------------------------------------------

@njit(**_JIT_ROWS)
def _rnn_bwd(act, lo, hi, valid, dh, gates, dg, dxp, dhn):
    zero = dg.dtype.type(0)
    H = dh.shape[1]
    dact_to(act, lo, hi, _C0, H, gates, dg)
    for i in range(lo, hi):
        if not valid[i]:
            continue
        dgi, dhi, dhni, dxi = dg[i], dh[i], dhn[i], dxp[i]
        for j in range(H):
            d = dhi[j] * dgi[j]
            dgi[j] = d
            dxi[j] += d
            dhni[j] = zero


@njit(**_JIT_ROWS)
def _lstm_bwd(act, ract, peephole, lo, hi, valid, dh, dc, cp, cn, gates, peep, dg, dxp, dhn,
              dcn):
    zero = dg.dtype.type(0)
    H = dh.shape[1]
    p_i, p_f, p_o = peep[0], peep[1], peep[2]
    dact_to(ract, lo, hi, _C0, 4 * H, gates, dg)  # i, f, o (g's block next)
    dact_to(act, lo, hi, 2 * H, 3 * H, gates, dg)
    act_to(act, lo, hi, _C0, H, cn, dhn)  # dhn: act(c_t), dcn: its derivative, until the end
    dact_to(act, lo, hi, _C0, H, dhn, dcn)
    for i in range(lo, hi):
        if not valid[i]:
            continue
        gi, gf, gg, go = gates[i, :H], gates[i, H:2 * H], gates[i, 2 * H:3 * H], gates[i, 3 * H:]
        di, df, dgg, do = dg[i, :H], dg[i, H:2 * H], dg[i, 2 * H:3 * H], dg[i, 3 * H:]
        dhi, dci, dhni, dcni, cpi = dh[i], dc[i], dhn[i], dcn[i], cp[i]
        for j in range(H):
            dcni[j] = dci[j] + dhi[j] * go[j] * dcni[j]  # the gradient on c_t
            do[j] = dhi[j] * dhni[j] * do[j]
        if peephole:
            for j in range(H):
                dcni[j] += do[j] * p_o[j]
        for j in range(H):
            d = dcni[j]
            di[j] = d * gg[j] * di[j]
            df[j] = d * cpi[j] * df[j]
            dgg[j] = d * gi[j] * dgg[j]
            dcni[j] = d * gf[j]
        if peephole:
            for j in range(H):
                dcni[j] = dcni[j] + di[j] * p_i[j] + df[j] * p_f[j]
        dgi, dxi = dg[i], dxp[i]
        for c in range(4 * H):
            dxi[c] += dgi[c]
        for j in range(H):
            dhni[j] = zero


@njit(**_JIT_ROWS)
def _gru_bwd(act, ract, split, phase, lo, hi, valid, dh, hp, gates, aux, drh, dg, dxp, dhn):
    one = dg.dtype.type(1)
    H = dh.shape[1]
    if phase == 0:
        dact_to(ract, lo, hi, _C0, 2 * H, gates, dg)  # r (Cho: used in phase 1), z
        dact_to(act, lo, hi, 2 * H, 3 * H, gates, dg)
        for i in range(lo, hi):  # z, n
            if not valid[i]:
                continue
            gz, gn = gates[i, H:2 * H], gates[i, 2 * H:]
            dz, dn = dg[i, H:2 * H], dg[i, 2 * H:]
            dhi, hpi, dhni = dh[i], hp[i], dhn[i]
            for j in range(H):
                dz[j] = dhi[j] * (hpi[j] - gn[j]) * dz[j]
                dn[j] = dhi[j] * (one - gz[j]) * dn[j]
                dhni[j] = dhi[j] * gz[j]
            dx_zn, dg_zn = dxp[i, H:], dg[i, H:]
            for c in range(2 * H):
                dx_zn[c] += dg_zn[c]
        if split:  # dr once drh = dn W_hn is known
            return
        for i in range(lo, hi):  # r; the recurrent n input is r * gh_n
            if not valid[i]:
                continue
            gr, dr, dn = gates[i, :H], dg[i, :H], dg[i, 2 * H:]
            axi, dxi = aux[i], dxp[i]
            for j in range(H):
                dr[j] = dn[j] * axi[j] * dr[j]
                dxi[j] += dr[j]
                dn[j] *= gr[j]
    else:  # Cho, phase 1
        for i in range(lo, hi):
            if not valid[i]:
                continue
            gr, dr = gates[i, :H], dg[i, :H]
            drhi, hpi, dxi, dhni = drh[i], hp[i], dxp[i], dhn[i]
            for j in range(H):
                dr[j] = drhi[j] * hpi[j] * dr[j]
                dxi[j] += dr[j]
                dhni[j] += drhi[j] * gr[j]


@njit(**_JIT_ROWS)
def _pass_invalid(has_c, lo, hi, valid, dh, dc, dg, dhn, dcn):
    """Invalid rows: ``dg = 0``, ``dhn = dh``, ``dcn = dc``."""
    zero = dg.dtype.type(0)
    for i in range(lo, hi):
        if valid[i]:
            continue
        dgi, dhi, dhni = dg[i], dh[i], dhn[i]
        for c in range(dgi.shape[0]):
            dgi[c] = zero
        for j in range(dhi.shape[0]):
            dhni[j] = dhi[j]
        if has_c:
            dci, dcni = dc[i], dcn[i]
            for j in range(dci.shape[0]):
                dcni[j] = dci[j]


@njit(**_JIT_ROWS)
def cell_bwd(code, act, ract, phase, lo, hi, valid, dh, dc, hp, cp, cn, gates, aux, peep,
             drh, dg, dxp, dhn, dcn):
    """Backward of one step of cell ``code`` for rows ``lo:hi`` (see the module
    docstring)."""
    family = FAMILY[code]
    if family == F_LSTM:
        _lstm_bwd(act, ract, PEEPHOLE[code], lo, hi, valid, dh, dc, cp, cn, gates, peep, dg,
                  dxp, dhn, dcn)
    elif family == F_GRU:
        _gru_bwd(act, ract, SPLIT_PRODUCT[code], phase, lo, hi, valid, dh, hp, gates, aux, drh,
                 dg, dxp, dhn)
    else:
        _rnn_bwd(act, lo, hi, valid, dh, gates, dg, dxp, dhn)
    _pass_invalid(HAS_C[code], lo, hi, valid, dh, dc, dg, dhn, dcn)
