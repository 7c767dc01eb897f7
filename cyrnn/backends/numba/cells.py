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

Every array is a 2-D block of rows (``peep`` (3, H): p_i, p_f, p_o; empty for
cells without peepholes). The loops inside run on 1-D row views with the
activation's branch outside them (:mod:`.mathfn`), so LLVM vectorises them.
The table's codes and per-row facts are module globals, which Numba compiles in
as constants.
"""

from __future__ import annotations

from numba import njit

from ...cells import CELL_TABLE, CELLS, FAMILIES
from .config import _JIT
from .mathfn import activate, mul_dact

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
# Cho's GRU (reset_after=False): the recurrent product is split around the cell,
# (r * h) W_hn^T after r is known.
SPLIT_PRODUCT = tuple(row.options.get("reset_after") is False for row in CELL_TABLE)
# Whether the gradient on the recurrent pre-activation (dW_hh's) equals the one on
# the projected input; not for reset_after GRU, whose recurrent n input is r * dn.
DGH_IS_DXP = tuple(not (row.family == "gru" and row.options.get("reset_after"))
                   for row in CELL_TABLE)
PHASE_ALL = -1


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------

@njit(**_JIT)
def _rnn_fwd(act, lo, hi, xp_t, gh, b, hn, gates):
    for i in range(lo, hi):
        g = gates[i]
        x = xp_t[i]
        a = gh[i]
        for j in range(g.shape[0]):
            g[j] = x[j] + a[j] + b[j]
        activate(act, g)
        hni = hn[i]
        for j in range(hni.shape[0]):
            hni[j] = g[j]


@njit(**_JIT)
def _lstm_fwd(act, ract, peephole, lo, hi, xp_t, gh, b, peep, cp, hn, cn, gates):
    H = hn.shape[1]
    for i in range(lo, hi):
        g = gates[i]
        x = xp_t[i]
        a = gh[i]
        for j in range(4 * H):
            g[j] = x[j] + a[j] + b[j]
        gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
        cpi = cp[i]
        cni = cn[i]
        hni = hn[i]
        if peephole:
            p_i, p_f = peep[0], peep[1]
            for j in range(H):
                gi[j] += p_i[j] * cpi[j]
                gf[j] += p_f[j] * cpi[j]
        activate(ract, g[:2 * H])  # i, f
        activate(act, gg)
        for j in range(H):
            cni[j] = gf[j] * cpi[j] + gi[j] * gg[j]
        if peephole:
            p_o = peep[2]
            for j in range(H):
                go[j] += p_o[j] * cni[j]
        activate(ract, go)
        for j in range(H):
            hni[j] = cni[j]
        activate(act, hni)
        for j in range(H):
            hni[j] *= go[j]


@njit(**_JIT)
def _gru_fwd(act, ract, split, phase, lo, hi, xp_t, gh, b, hp, hn, gates, aux):
    H = hn.shape[1]
    one = gates.dtype.type(1)
    b_n = b[2 * H:]
    for i in range(lo, hi):
        x = xp_t[i]
        g = gates[i]
        a = gh[i]
        gr, gz, gn = g[:H], g[H:2 * H], g[2 * H:]
        x_n = x[2 * H:]
        hpi = hp[i]
        axi = aux[i]
        if phase <= 0:  # r, z (reset_after: the whole step; Cho: before (r h) W_hn)
            for j in range(2 * H):
                g[j] = x[j] + a[j] + b[j]
            activate(ract, g[:2 * H])
            if split:
                for j in range(H):
                    axi[j] = gr[j] * hpi[j]
                continue
            a_n = a[2 * H:]
            for j in range(H):
                axi[j] = a_n[j] + b_n[j]
            for j in range(H):
                gn[j] = x_n[j] + gr[j] * axi[j]
        else:  # Cho, phase 1: a = (r h) W_hn^T
            for j in range(H):
                gn[j] = x_n[j] + a[j] + b_n[j]
        activate(act, gn)
        hni = hn[i]
        for j in range(H):
            hni[j] = (one - gz[j]) * gn[j] + gz[j] * hpi[j]


@njit(**_JIT)
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
# Backward.
# ----------------------------------------------------------------------------

@njit(**_JIT)
def _rnn_bwd(act, lo, hi, valid, dh, gates, dg, dxp, dhn):
    zero = dg.dtype.type(0)
    for i in range(lo, hi):
        dgi = dg[i]
        dhi = dh[i]
        dhni = dhn[i]
        H = dhi.shape[0]
        if not valid[i]:
            for j in range(H):
                dgi[j] = zero
            for j in range(H):
                dhni[j] = dhi[j]
            continue
        for j in range(H):
            dgi[j] = dhi[j]
        mul_dact(act, gates[i], dgi)
        dxi = dxp[i]
        for j in range(H):
            dxi[j] += dgi[j]
        for j in range(H):
            dhni[j] = zero


@njit(**_JIT)
def _lstm_bwd(act, ract, peephole, lo, hi, valid, dh, dc, cp, cn, gates, peep, dg, dxp, dhn,
              dcn):
    zero = dg.dtype.type(0)
    H = dh.shape[1]
    for i in range(lo, hi):
        dgi = dg[i]
        dhi = dh[i]
        dci = dc[i]
        dhni = dhn[i]
        dcni = dcn[i]
        if not valid[i]:
            for c in range(4 * H):
                dgi[c] = zero
            for j in range(H):
                dhni[j] = dhi[j]
                dcni[j] = dci[j]
            continue
        g = gates[i]
        gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
        di, df, dgg, do = dgi[:H], dgi[H:2 * H], dgi[2 * H:3 * H], dgi[3 * H:]
        cpi = cp[i]
        cni = cn[i]
        for j in range(H):  # do holds act(c_t) until it gets its own value
            do[j] = cni[j]
        activate(act, do)
        for j in range(H):
            di[j] = dhi[j] * go[j]
        mul_dact(act, do, di)
        for j in range(H):  # dcn holds the whole gradient on c_t until the end
            dcni[j] = dci[j] + di[j]
        for j in range(H):
            do[j] = dhi[j] * do[j]
        mul_dact(ract, go, do)
        if peephole:
            p_o = peep[2]
            for j in range(H):
                dcni[j] += do[j] * p_o[j]
        for j in range(H):
            d = dcni[j]
            di[j] = d * gg[j]
            df[j] = d * cpi[j]
            dgg[j] = d * gi[j]
        mul_dact(ract, gi, di)
        mul_dact(ract, gf, df)
        mul_dact(act, gg, dgg)
        for j in range(H):
            dcni[j] = dcni[j] * gf[j]
        if peephole:
            p_i, p_f = peep[0], peep[1]
            for j in range(H):
                dcni[j] = dcni[j] + di[j] * p_i[j] + df[j] * p_f[j]
        dxi = dxp[i]
        for c in range(4 * H):
            dxi[c] += dgi[c]
        for j in range(H):
            dhni[j] = zero


@njit(**_JIT)
def _gru_bwd(act, ract, split, phase, lo, hi, valid, dh, hp, gates, aux, drh, dg, dxp, dhn):
    one = dg.dtype.type(1)
    zero = dg.dtype.type(0)
    H = dh.shape[1]
    for i in range(lo, hi):
        dgi = dg[i]
        dhi = dh[i]
        dhni = dhn[i]
        if not valid[i]:
            if phase == 0:
                for c in range(3 * H):
                    dgi[c] = zero
            for j in range(H):
                dhni[j] = dhi[j]
            continue
        g = gates[i]
        gr, gz, gn = g[:H], g[H:2 * H], g[2 * H:]
        dr, dz, dn = dgi[:H], dgi[H:2 * H], dgi[2 * H:]
        hpi = hp[i]
        dxi = dxp[i]
        if phase == 0:
            for j in range(H):
                dn[j] = dhi[j] * (one - gz[j])
            mul_dact(act, gn, dn)
            for j in range(H):
                dz[j] = dhi[j] * (hpi[j] - gn[j])
            mul_dact(ract, gz, dz)
            dx_zn = dxi[H:]
            dg_zn = dgi[H:]
            for c in range(2 * H):
                dx_zn[c] += dg_zn[c]
            for j in range(H):
                dhni[j] = dhi[j] * gz[j]
            if split:  # dr once drh = dn W_hn is known
                continue
            axi = aux[i]
            for j in range(H):
                dr[j] = dn[j] * axi[j]
            mul_dact(ract, gr, dr)
            for j in range(H):
                dxi[j] += dr[j]
            for j in range(H):  # the recurrent n input is r * gh_n
                dn[j] *= gr[j]
        else:  # Cho, phase 1
            drhi = drh[i]
            for j in range(H):
                dr[j] = drhi[j] * hpi[j]
            mul_dact(ract, gr, dr)
            for j in range(H):
                dxi[j] += dr[j]
            for j in range(H):
                dhni[j] += drhi[j] * gr[j]


@njit(**_JIT)
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
