# Cell math: the only place it lives in this backend. Included by _cython_kernels.pyx.
#
# Two row functions serve every row of the cell table (cyrnn/cells.py), the same
# pair as in the Numba backend:
#
#   cell_fwd(code, act, ract, phase, lo, hi, H, xp, gh, b, peep, hp, cp, hn, cn,
#            gates, aux)
#   cell_bwd(code, act, ract, phase, lo, hi, H, valid, dh, dc, hp, cp, cn, gates,
#            aux, peep, drh, dg, dxp, dhn, dcn)
#
# They compute rows lo .. hi-1 of one step. Pointers are to the step's (N, .)
# blocks: row i of an (N, H) block starts at i*H, of an (N, G*H) block at i*G*H;
# ``H`` comes after ``hi`` because raw pointers carry no shape (the Numba
# functions read it from their arrays). ``code``, ``act``, ``ract`` are
# ``Cell.codes``; ``peep`` is the (3, H) peephole block (p_i, p_f, p_o) or NULL
# (LSTM rows use it whenever it is given, as the reference does).
#
# Forward: given the recurrent product ``gh = h W_hh^T`` (without bias) and the
# bias ``b = b_hh``, writes the post-activation gates, aux, and the new states
# hn (and cn). phase -1: the whole step; Cho's GRU runs phase 0 (r, z, and
# aux = r h, the input of the (r h) W_hn^T product the loop computes into
# gh's n block) and then phase 1 (n and the new state). Masking is the time
# loop's business: these functions compute every row.
#
# Backward: for rows with valid[i] != 0 writes dg (the gradient on the recurrent
# pre-activation, whose product with W_hh the loop adds to dh_prev), ADDS the
# gradient on the projected input into dxp, writes dhn (the part of dh_prev not
# from dg W_hh) and dcn (dc_prev, peephole terms included). Rows with
# valid[i] == 0: dg = 0, dhn = dh, dcn = dc. phase 0 runs first; Cho's GRU
# runs phase 1 after the loop computed drh = dn W_hn (the gradient on r h).
#
# The activation codes never branch inside an element loop: array activations
# take the code once per call, and the element loops of the backward pass call
# ``_dact`` with the code fixed for the loop. The default cells call the same
# bodies with constant codes, which the C compiler specialises (the branches
# vanish and the loops vectorise as before the activations became choices).

cdef inline void cell_fwd(int code, int act, int ract, int phase, Py_ssize_t lo,
                          Py_ssize_t hi, Py_ssize_t H, const floating* xp,
                          const floating* gh, const floating* b, const floating* peep,
                          const floating* hp, const floating* cp, floating* hn,
                          floating* cn, floating* gates, floating* aux) noexcept nogil:
    """Forward cell math of rows lo .. hi-1 of one step (see the file's header)."""
    cdef bint default = act == ACT_TANH and ract == ACT_SIGMOID
    if code == CELL_LSTM or code == CELL_LSTM_PEEPHOLE:
        if default and peep == NULL:
            _lstm_fwd(ACT_TANH, ACT_SIGMOID, <const floating*>NULL, lo, hi, H, xp, gh, b, cp,
                      cn, hn, gates)
        else:
            _lstm_fwd(act, ract, peep, lo, hi, H, xp, gh, b, cp, cn, hn, gates)
    elif code == CELL_GRU:
        if default:
            _gru_fwd(ACT_TANH, ACT_SIGMOID, True, phase, lo, hi, H, xp, gh, b, hp, hn, gates,
                     aux)
        else:
            _gru_fwd(act, ract, True, phase, lo, hi, H, xp, gh, b, hp, hn, gates, aux)
    elif code == CELL_GRU_CHO:
        if default:
            _gru_fwd(ACT_TANH, ACT_SIGMOID, False, phase, lo, hi, H, xp, gh, b, hp, hn, gates,
                     aux)
        else:
            _gru_fwd(act, ract, False, phase, lo, hi, H, xp, gh, b, hp, hn, gates, aux)
    else:
        _rnn_fwd(act, lo, hi, H, xp, gh, b, hn, gates)


cdef inline void cell_bwd(int code, int act, int ract, int phase, Py_ssize_t lo,
                          Py_ssize_t hi, Py_ssize_t H, const uint8_t* valid,
                          const floating* dh, const floating* dc, const floating* hp,
                          const floating* cp, const floating* cn, const floating* gates,
                          const floating* aux, const floating* peep, const floating* drh,
                          floating* dg, floating* dxp, floating* dhn,
                          floating* dcn) noexcept nogil:
    """Backward cell math of rows lo .. hi-1 of one step (see the file's header)."""
    if code == CELL_LSTM or code == CELL_LSTM_PEEPHOLE:
        if act == ACT_TANH and ract == ACT_SIGMOID and peep == NULL:
            _lstm_bwd(ACT_TANH, ACT_SIGMOID, <const floating*>NULL, lo, hi, H, valid,
                      dh, dc, cp, cn, gates, dg, dxp, dhn, dcn)
        else:
            _lstm_bwd(act, ract, peep, lo, hi, H, valid, dh, dc, cp, cn, gates, dg, dxp,
                      dhn, dcn)
    elif code == CELL_GRU:
        if act == ACT_TANH and ract == ACT_SIGMOID:
            _gru_bwd(ACT_TANH, ACT_SIGMOID, True, phase, lo, hi, H, valid, dh, hp, gates,
                     aux, drh, dg, dxp, dhn)
        else:
            _gru_bwd(act, ract, True, phase, lo, hi, H, valid, dh, hp, gates, aux, drh, dg,
                     dxp, dhn)
    elif code == CELL_GRU_CHO:
        if act == ACT_TANH and ract == ACT_SIGMOID:
            _gru_bwd(ACT_TANH, ACT_SIGMOID, False, phase, lo, hi, H, valid, dh, hp, gates,
                     aux, drh, dg, dxp, dhn)
        else:
            _gru_bwd(act, ract, False, phase, lo, hi, H, valid, dh, hp, gates, aux, drh, dg,
                     dxp, dhn)
    elif act == ACT_TANH:
        _rnn_bwd(ACT_TANH, lo, hi, H, valid, dh, gates, dg, dxp, dhn)
    else:
        _rnn_bwd(act, lo, hi, H, valid, dh, gates, dg, dxp, dhn)


cdef inline void _skip_row(Py_ssize_t i, Py_ssize_t H, Py_ssize_t GH, const floating* dh,
                           const floating* dc, floating* dg, floating* dhn,
                           floating* dcn) noexcept nogil:
    """A row that does not take part in the step: dg = 0, dhn = dh, dcn = dc."""
    memset(dg + i * GH, 0, GH * sizeof(floating))
    memcpy(dhn + i * H, dh + i * H, H * sizeof(floating))
    if dcn != NULL:
        memcpy(dcn + i * H, dc + i * H, H * sizeof(floating))


# ----------------------------------------------------------------------------
# SimpleRNN: h' = act(xp + gh + b); its gate value is h' itself.
# ----------------------------------------------------------------------------

cdef inline void _rnn_fwd(int act, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H,
                          const floating* xp, const floating* gh, const floating* b,
                          floating* hn, floating* gates) noexcept nogil:
    cdef Py_ssize_t i, j, o
    for i in range(lo, hi):
        o = i * H
        for j in range(H):
            gates[o + j] = xp[o + j] + gh[o + j] + b[j]
    # the rows are contiguous (one gate block): one array activation for all
    _vact(act, gates + lo * H, gates + lo * H, (hi - lo) * H)
    memcpy(hn + lo * H, gates + lo * H, (hi - lo) * H * sizeof(floating))


cdef inline void _rnn_bwd(int act, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H,
                          const uint8_t* valid, const floating* dh, const floating* gates,
                          floating* dg, floating* dx, floating* dhn) noexcept nogil:
    """da = dh act'(h'); dxp += da; dg = da; dhn = 0 (dh_prev = da W_hh)."""
    cdef Py_ssize_t i, j, o
    cdef floating d
    for i in range(lo, hi):
        o = i * H
        if not valid[i]:
            _skip_row(i, H, H, dh, <const floating*>NULL, dg, dhn, <floating*>NULL)
            continue
        for j in range(H):
            d = dh[o + j] * _dact(act, gates[o + j])
            dg[o + j] = d
            dx[o + j] += d
            dhn[o + j] = 0


# ----------------------------------------------------------------------------
# LSTM (gates i, f, g, o), with or without peepholes:
#   i = ract(a_i + p_i c), f = ract(a_f + p_f c), g = act(a_g), c' = f c + i g,
#   o = ract(a_o + p_o c'), h' = o act(c')      (p = 0 without peepholes)
# ----------------------------------------------------------------------------

# The LSTM forward's element loops as C functions (``restrict`` pointers, target
# clones): the Cython loops ran as SSE code reloading their pointers from the stack
# every iteration (the forward rows were 11% of the medium inference's cycles).
# Used by every forward path (one place), so the cell math of a row is the same
# whatever path or thread computes it (the products feeding it are the paths' own).
cdef extern from *:
    """
    #define CYRNN_LSTM_FWD_ELEMENTS(SUF, T)                                            \
    CYRNN_CLONES static void cyrnn_preact_##SUF(Py_ssize_t n, const T* __restrict xp,  \
                                                const T* __restrict gh,               \
                                                const T* __restrict b,                \
                                                T* __restrict a) {                    \
        Py_ssize_t j;                                                                  \
        for (j = 0; j < n; j++) a[j] = xp[j] + gh[j] + b[j];                           \
    }                                                                                  \
    CYRNN_CLONES static void cyrnn_lstm_cell_##SUF(Py_ssize_t H, const T* __restrict a, \
                                                   const T* __restrict cp,            \
                                                   T* __restrict cn) {                \
        Py_ssize_t j;                                                                  \
        for (j = 0; j < H; j++) cn[j] = a[H + j] * cp[j] + a[j] * a[2 * H + j];        \
    }                                                                                  \
    CYRNN_CLONES static void cyrnn_scale_##SUF(Py_ssize_t n, const T* __restrict s,    \
                                               T* __restrict y) {                     \
        Py_ssize_t j;                                                                  \
        for (j = 0; j < n; j++) y[j] = s[j] * y[j];                                    \
    }                                                                                  \
    CYRNN_CLONES static void cyrnn_add_rows_##SUF(Py_ssize_t rows, Py_ssize_t n,        \
                                                  const T* __restrict b,              \
                                                  T* __restrict y) {                  \
        Py_ssize_t i, j;                                                               \
        for (i = 0; i < rows; i++)                                                     \
            for (j = 0; j < n; j++) y[i * n + j] += b[j];                              \
    }
    CYRNN_LSTM_FWD_ELEMENTS(f, float)
    CYRNN_LSTM_FWD_ELEMENTS(d, double)
    """
    void cyrnn_preact_f(Py_ssize_t n, const float* xp, const float* gh, const float* b,
                        float* a) nogil
    void cyrnn_preact_d(Py_ssize_t n, const double* xp, const double* gh, const double* b,
                        double* a) nogil
    void cyrnn_lstm_cell_f(Py_ssize_t H, const float* a, const float* cp, float* cn) nogil
    void cyrnn_lstm_cell_d(Py_ssize_t H, const double* a, const double* cp, double* cn) nogil
    void cyrnn_scale_f(Py_ssize_t n, const float* s, float* y) nogil
    void cyrnn_scale_d(Py_ssize_t n, const double* s, double* y) nogil
    void cyrnn_add_rows_f(Py_ssize_t rows, Py_ssize_t n, const float* b, float* y) nogil
    void cyrnn_add_rows_d(Py_ssize_t rows, Py_ssize_t n, const double* b, double* y) nogil


cdef inline void _add_rows(Py_ssize_t rows, Py_ssize_t n, const floating* b,
                           floating* y) noexcept nogil:
    """y[i, j] += b[j] for ``rows`` rows of ``n``."""
    if floating is float:
        cyrnn_add_rows_f(rows, n, b, y)
    else:
        cyrnn_add_rows_d(rows, n, b, y)


cdef inline void _preact(Py_ssize_t n, const floating* xp, const floating* gh,
                         const floating* b, floating* a) noexcept nogil:
    if floating is float:
        cyrnn_preact_f(n, xp, gh, b, a)
    else:
        cyrnn_preact_d(n, xp, gh, b, a)


cdef inline void _lstm_fwd(int act, int ract, const floating* peep, Py_ssize_t lo,
                           Py_ssize_t hi, Py_ssize_t H, const floating* xp,
                           const floating* gh, const floating* b, const floating* cp,
                           floating* cn, floating* hn, floating* gates) noexcept nogil:
    """Pre-activations go to ``gates`` and are activated in place (array
    activations); act(c') is computed into hn, then scaled by o."""
    cdef Py_ssize_t i, j, o, og
    cdef floating* a
    for i in range(lo, hi):
        o = i * H
        og = 4 * o
        a = gates + og
        _preact(4 * H, xp + og, gh + og, b, a)
        if peep != NULL:
            for j in range(H):
                a[j] += peep[j] * cp[o + j]
                a[H + j] += peep[H + j] * cp[o + j]
        _vact(ract, a, a, 2 * H)
        _vact(act, a + 2 * H, a + 2 * H, H)
        if floating is float:
            cyrnn_lstm_cell_f(H, a, cp + o, cn + o)
        else:
            cyrnn_lstm_cell_d(H, a, cp + o, cn + o)
        if peep != NULL:
            for j in range(H):
                a[3 * H + j] += peep[2 * H + j] * cn[o + j]
        _vact(ract, a + 3 * H, a + 3 * H, H)
        _vact(act, hn + o, cn + o, H)
        if floating is float:
            cyrnn_scale_f(H, a + 3 * H, hn + o)
        else:
            cyrnn_scale_d(H, a + 3 * H, hn + o)


# The default LSTM's backward element loop (tanh, sigmoid, no peepholes) as a C row
# function: ``restrict`` pointers and target clones, so it vectorises with the
# widest vectors the CPU has (the Cython loop below, with its eight pointers, ran as
# scalar SSE code: 11% of a medium training step). Same expressions as that loop; the
# AVX-512 clone contracts some into FMAs, so the last bits can differ from the
# generic loop and between CPUs (never between rows, threads or calls on one CPU).
cdef extern from *:
    """
    #define CYRNN_LSTM_BWD_ROW(NAME, T, ACC)                                           \
    CYRNN_CLONES static void NAME(Py_ssize_t H, const T* __restrict dh,                \
                                  const T* __restrict dc, const T* __restrict cp,      \
                                  const T* __restrict g, T* __restrict dhn,            \
                                  T* __restrict dg, T* __restrict dx,                  \
                                  T* __restrict dcn) {                                 \
        Py_ssize_t j;                                                                  \
        for (j = 0; j < H; j++) {                                                      \
            T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];          \
            T tc = dhn[j];                                                             \
            T d_o = dh[j] * tc * (og * ((T)1 - og));                                   \
            T dct = dc[j] + dh[j] * og * ((T)1 - tc * tc);                             \
            T di = dct * gg * (ig * ((T)1 - ig));                                      \
            T df = dct * cp[j] * (fg * ((T)1 - fg));                                   \
            T dgg = dct * ig * ((T)1 - gg * gg);                                       \
            dg[j] = di;                                                                \
            dg[H + j] = df;                                                            \
            dg[2 * H + j] = dgg;                                                       \
            dg[3 * H + j] = d_o;                                                       \
            if (ACC) {                                                                 \
                dx[j] += di;                                                           \
                dx[H + j] += df;                                                       \
                dx[2 * H + j] += dgg;                                                  \
                dx[3 * H + j] += d_o;                                                  \
            }                                                                          \
            dhn[j] = 0;                                                                \
            dcn[j] = dct * fg;                                                         \
        }                                                                              \
    }
    CYRNN_LSTM_BWD_ROW(cyrnn_lstm_bwd_row_f, float, 1)
    CYRNN_LSTM_BWD_ROW(cyrnn_lstm_bwd_row_d, double, 1)
    CYRNN_LSTM_BWD_ROW(cyrnn_lstm_bwd_row1_f, float, 0)
    CYRNN_LSTM_BWD_ROW(cyrnn_lstm_bwd_row1_d, double, 0)
    """
    void cyrnn_lstm_bwd_row_f(Py_ssize_t H, const float* dh, const float* dc, const float* cp,
                              const float* g, float* dhn, float* dg, float* dx,
                              float* dcn) nogil
    void cyrnn_lstm_bwd_row_d(Py_ssize_t H, const double* dh, const double* dc,
                              const double* cp, const double* g, double* dhn, double* dg,
                              double* dx, double* dcn) nogil
    void cyrnn_lstm_bwd_row1_f(Py_ssize_t H, const float* dh, const float* dc, const float* cp,
                               const float* g, float* dhn, float* dg, float* dx,
                               float* dcn) nogil
    void cyrnn_lstm_bwd_row1_d(Py_ssize_t H, const double* dh, const double* dc,
                               const double* cp, const double* g, double* dhn, double* dg,
                               double* dx, double* dcn) nogil


cdef inline void _lstm_bwd(int act, int ract, const floating* peep, Py_ssize_t lo,
                           Py_ssize_t hi, Py_ssize_t H, const uint8_t* valid,
                           const floating* dh, const floating* dc, const floating* cp,
                           const floating* cn, const floating* gates, floating* dg,
                           floating* dx, floating* dhn, floating* dcn) noexcept nogil:
    """dc_t = dc + dh o act'(act(c')) (+ do p_o); dg = [di, df, dg, do]; dhn = 0;
    dcn = dc_t f (+ di p_i + df p_f). act(c') is recomputed into dhn (scratch
    until the row's element loop zeroes it). ``dx`` may be ``dg`` itself (a full
    sweep writes the step's gate gradients straight into dxp): then written once."""
    cdef Py_ssize_t i, j, o, og
    cdef bint acc = dx != dg
    cdef floating ig, fg, gg, og_, tc, dct, di, df, dgg, do
    for i in range(lo, hi):
        o = i * H
        og = 4 * o
        if not valid[i]:
            _skip_row(i, H, 4 * H, dh, dc, dg, dhn, dcn)
            continue
        _vact(act, dhn + o, cn + o, H)
        if act == ACT_TANH and ract == ACT_SIGMOID and peep == NULL:
            if floating is float:
                if acc:
                    cyrnn_lstm_bwd_row_f(H, dh + o, dc + o, cp + o, gates + og, dhn + o,
                                         dg + og, dx + og, dcn + o)
                else:
                    cyrnn_lstm_bwd_row1_f(H, dh + o, dc + o, cp + o, gates + og, dhn + o,
                                          dg + og, NULL, dcn + o)
            else:
                if acc:
                    cyrnn_lstm_bwd_row_d(H, dh + o, dc + o, cp + o, gates + og, dhn + o,
                                         dg + og, dx + og, dcn + o)
                else:
                    cyrnn_lstm_bwd_row1_d(H, dh + o, dc + o, cp + o, gates + og, dhn + o,
                                          dg + og, NULL, dcn + o)
            continue
        for j in range(H):
            ig = gates[og + j]
            fg = gates[og + H + j]
            gg = gates[og + 2 * H + j]
            og_ = gates[og + 3 * H + j]
            tc = dhn[o + j]
            do = dh[o + j] * tc * _dact(ract, og_)
            dct = dc[o + j] + dh[o + j] * og_ * _dact(act, tc)
            if peep != NULL:
                dct = dct + do * peep[2 * H + j]
            di = dct * gg * _dact(ract, ig)
            df = dct * cp[o + j] * _dact(ract, fg)
            dgg = dct * ig * _dact(act, gg)
            dg[og + j] = di
            dg[og + H + j] = df
            dg[og + 2 * H + j] = dgg
            dg[og + 3 * H + j] = do
            if acc:
                dx[og + j] += di
                dx[og + H + j] += df
                dx[og + 2 * H + j] += dgg
                dx[og + 3 * H + j] += do
            dhn[o + j] = 0
            if peep != NULL:
                dcn[o + j] = dct * fg + di * peep[j] + df * peep[H + j]
            else:
                dcn[o + j] = dct * fg


# ----------------------------------------------------------------------------
# GRU (gates r, z, n): r, z = ract(xp + gh + b); h' = (1 - z) n + z h, with
#   reset_after (gru):     n = act(xp_n + r (gh_n + b_n)),    aux = gh_n + b_n
#   Cho et al. (gru_cho):  n = act(xp_n + (r h) W_hn^T + b_n), aux = r h
# ----------------------------------------------------------------------------

cdef inline void _gru_fwd(int act, int ract, bint reset_after, int phase, Py_ssize_t lo,
                          Py_ssize_t hi, Py_ssize_t H, const floating* xp,
                          const floating* gh, const floating* b, const floating* hp,
                          floating* hn, floating* gates, floating* aux) noexcept nogil:
    """phase 0: r, z and aux; phase 1: n and h' (for Cho, gh's n block then holds
    (r h) W_hn^T); phase -1: both (reset_after only)."""
    cdef Py_ssize_t i, j, o, og
    cdef floating z
    cdef floating* g
    for i in range(lo, hi):
        o = i * H
        og = 3 * o
        g = gates + og
        if phase <= 0:
            for j in range(2 * H):
                g[j] = xp[og + j] + gh[og + j] + b[j]
            _vact(ract, g, g, 2 * H)
            if reset_after:
                for j in range(H):
                    aux[o + j] = gh[og + 2 * H + j] + b[2 * H + j]
            else:
                for j in range(H):
                    aux[o + j] = g[j] * hp[o + j]
        if phase != 0:
            if reset_after:
                for j in range(H):
                    g[2 * H + j] = xp[og + 2 * H + j] + g[j] * aux[o + j]
            else:
                for j in range(H):
                    g[2 * H + j] = xp[og + 2 * H + j] + gh[og + 2 * H + j] + b[2 * H + j]
            _vact(act, g + 2 * H, g + 2 * H, H)
            for j in range(H):
                z = g[H + j]
                hn[o + j] = (<floating>1 - z) * g[2 * H + j] + z * hp[o + j]


cdef inline void _gru_bwd(int act, int ract, bint reset_after, int phase, Py_ssize_t lo,
                          Py_ssize_t hi, Py_ssize_t H, const uint8_t* valid,
                          const floating* dh, const floating* hp, const floating* gates,
                          const floating* aux, const floating* drh, floating* dg,
                          floating* dx, floating* dhn) noexcept nogil:
    """phase 0: dn = dh (1-z) act'(n), dz = dh (h-n) ract'(z), dhn = dh z; with
    reset_after also dr = dn aux ract'(r) and dg = [dr, dz, dn r]; Cho: dg = [0,
    dz, dn]. phase 1 (Cho, after drh = dn W_hn): dr = drh h ract'(r), dhn += drh r.
    dxp += [dr, dz, dn] in both variants."""
    cdef Py_ssize_t i, j, o, og
    cdef floating r, z, n, dn, dz, dr
    for i in range(lo, hi):
        o = i * H
        og = 3 * o
        if not valid[i]:
            if phase == 0:
                _skip_row(i, H, 3 * H, dh, <const floating*>NULL, dg, dhn, <floating*>NULL)
            continue
        if phase == 0:
            for j in range(H):
                r = gates[og + j]
                z = gates[og + H + j]
                n = gates[og + 2 * H + j]
                dn = dh[o + j] * (<floating>1 - z) * _dact(act, n)
                dz = dh[o + j] * (hp[o + j] - n) * _dact(ract, z)
                dhn[o + j] = dh[o + j] * z
                dg[og + H + j] = dz
                dx[og + H + j] += dz
                dx[og + 2 * H + j] += dn
                if reset_after:
                    dr = dn * aux[o + j] * _dact(ract, r)
                    dg[og + j] = dr
                    dx[og + j] += dr
                    dg[og + 2 * H + j] = dn * r
                else:
                    dg[og + j] = 0
                    dg[og + 2 * H + j] = dn
        else:
            for j in range(H):
                r = gates[og + j]
                dr = drh[o + j] * hp[o + j] * _dact(ract, r)
                dg[og + j] = dr
                dx[og + j] += dr
                dhn[o + j] += drh[o + j] * r
