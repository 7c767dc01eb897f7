# Cell math (included by _cython_kernels.pyx).

# ----------------------------------------------------------------------------
# Cell math: one forward and one backward row function per cell.
# Pointers are already offset to the row; gate blocks are H apart.
# ----------------------------------------------------------------------------

cdef inline void rnn_fwd(int act, const floating* xp, const floating* gh,
                         const floating* b, floating* hn, floating* gates,
                         Py_ssize_t H) noexcept nogil:
    """h' = act(xp + gh + b); the gate value is h' itself."""
    cdef Py_ssize_t j
    for j in range(H):
        gates[j] = xp[j] + gh[j] + b[j]
    _vactivate(act, gates, H)
    memcpy(hn, gates, H * sizeof(floating))


cdef inline void rnn_bwd(int act, const floating* dh, const floating* gates,
                         floating* dg, floating* dx, floating* dhn,
                         Py_ssize_t H) noexcept nogil:
    """da = dh * act'(y); dxp += da; dgh = da; dh_prev (before GEMM) = 0."""
    cdef Py_ssize_t j
    cdef floating d
    for j in range(H):
        d = dh[j] * _activate_grad(act, gates[j])
        dg[j] = d
        dx[j] += d
        dhn[j] = 0


cdef inline void lstm_fwd(const floating* xp, const floating* gh, const floating* b,
                          const floating* cp, floating* cn, floating* hn,
                          floating* gates, Py_ssize_t H) noexcept nogil:
    """i, f, g, o = sig, sig, tanh, sig of (xp + gh + b); c' = f c + i g;
    h' = o tanh(c'). Pre-activations go to ``gates`` and are activated in place
    (vectorised array activations)."""
    cdef Py_ssize_t j
    for j in range(4 * H):
        gates[j] = xp[j] + gh[j] + b[j]
    _vsigmoid(gates, gates, 2 * H)
    _vtanh(gates + 2 * H, gates + 2 * H, H)
    _vsigmoid(gates + 3 * H, gates + 3 * H, H)
    for j in range(H):
        cn[j] = gates[H + j] * cp[j] + gates[j] * gates[2 * H + j]
    _vtanh(hn, cn, H)
    for j in range(H):
        hn[j] = gates[3 * H + j] * hn[j]


cdef inline void lstm_bwd(const floating* dh, const floating* dc, const floating* cp,
                          const floating* cn, const floating* gates,
                          floating* dg, floating* dx, floating* dhn, floating* dcn,
                          floating* tmp, Py_ssize_t H) noexcept nogil:
    """Gradients of the four gate pre-activations; dc_prev = dc' f.
    ``tmp`` (H,) scratch receives tanh(c')."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dct, di, df, dgg, do
    _vtanh(tmp, cn, H)
    for j in range(H):
        i = gates[j]
        f = gates[H + j]
        g = gates[2 * H + j]
        o = gates[3 * H + j]
        tc = tmp[j]
        dct = dc[j] + dh[j] * o * (1 - tc * tc)
        di = dct * g * i * (1 - i)
        df = dct * cp[j] * f * (1 - f)
        dgg = dct * i * (1 - g * g)
        do = dh[j] * tc * o * (1 - o)
        dg[j] = di
        dg[H + j] = df
        dg[2 * H + j] = dgg
        dg[3 * H + j] = do
        dx[j] += di
        dx[H + j] += df
        dx[2 * H + j] += dgg
        dx[3 * H + j] += do
        dhn[j] = 0
        dcn[j] = dct * f


cdef inline void gru_fwd(bint reset_after, int phase, const floating* xp,
                         const floating* gh, const floating* b, const floating* hp,
                         floating* hn, floating* gates, floating* aux,
                         Py_ssize_t H) noexcept nogil:
    """GRU step in two phases.

    phase 0: r, z = sig(xp + gh + b) for the r, z blocks; aux = gh_n + b_n
    (reset_after) or r h (Cho). phase 1: n = tanh(xp_n + r aux) (reset_after) or
    tanh(xp_n + gh_n + b_n) where gh_n = (r h) W_hn^T (Cho); h' = (1-z) n + z h.
    reset_after runs both phases in one call (phase -1); Cho needs the GEMM on
    aux between them.
    """
    cdef Py_ssize_t j
    cdef floating z
    if phase <= 0:
        for j in range(2 * H):
            gates[j] = xp[j] + gh[j] + b[j]
        _vsigmoid(gates, gates, 2 * H)
        if reset_after:
            for j in range(H):
                aux[j] = gh[2 * H + j] + b[2 * H + j]
        else:
            for j in range(H):
                aux[j] = gates[j] * hp[j]
    if phase != 0:
        if reset_after:
            for j in range(H):
                gates[2 * H + j] = xp[2 * H + j] + gates[j] * aux[j]
        else:
            for j in range(H):
                gates[2 * H + j] = xp[2 * H + j] + gh[2 * H + j] + b[2 * H + j]
        _vtanh(gates + 2 * H, gates + 2 * H, H)
        for j in range(H):
            z = gates[H + j]
            hn[j] = (1 - z) * gates[2 * H + j] + z * hp[j]


cdef inline void gru_bwd(bint reset_after, int phase, const floating* dh,
                         const floating* hp, const floating* gates, const floating* aux,
                         const floating* drh, floating* dg, floating* dx,
                         floating* dhn, Py_ssize_t H) noexcept nogil:
    """GRU backward in two phases.

    phase 0: dn = dh (1-z)(1-n^2), dz = dh (h-n) z(1-z), dh_prev = dh z; with
    reset_after also dr = dn aux r(1-r) and dgh = [dr, dz, dn r]. Cho: dgh =
    [., dz, dn]; then (after drh = dn W_hn) phase 1: dr = drh h r(1-r),
    dh_prev += drh r. dxp = [dr, dz, dn] in both variants.
    """
    cdef Py_ssize_t j
    cdef floating r, z, n, dn, dz, dr
    if phase == 0:
        for j in range(H):
            r = gates[j]
            z = gates[H + j]
            n = gates[2 * H + j]
            dn = dh[j] * (1 - z) * (1 - n * n)
            dz = dh[j] * (hp[j] - n) * z * (1 - z)
            dhn[j] = dh[j] * z
            dg[H + j] = dz
            dx[H + j] += dz
            dx[2 * H + j] += dn
            if reset_after:
                dr = dn * aux[j] * r * (1 - r)
                dg[j] = dr
                dx[j] += dr
                dg[2 * H + j] = dn * r
            else:
                dg[j] = 0
                dg[2 * H + j] = dn
    else:
        for j in range(H):
            r = gates[j]
            dr = drh[j] * hp[j] * r * (1 - r)
            dg[j] = dr
            dx[j] += dr
            dhn[j] += drh[j] * r
