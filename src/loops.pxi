# Row loops and time loops (included by _cython_kernels.pyx).

# ----------------------------------------------------------------------------
# Row dispatch (one row of one step) and the row loops (serial or prange).
# ----------------------------------------------------------------------------

cdef inline void _fwd_row(int kind, int act, bint reset_after, int phase, bint last,
                          Py_ssize_t i, Py_ssize_t H, Py_ssize_t GH,
                          const floating* xp, const floating* gh, const floating* b,
                          const floating* hp, floating* hn,
                          const floating* cp, floating* cn,
                          floating* gates, floating* aux,
                          const uint8_t* mask, floating* hseq) noexcept nogil:
    cdef Py_ssize_t o = i * H, og = i * GH
    if kind == RNN:
        rnn_fwd(act, xp + og, gh + og, b, hn + o, gates + og, H)
    elif kind == LSTM:
        lstm_fwd(xp + og, gh + og, b, cp + o, cn + o, hn + o, gates + og, H)
    else:
        gru_fwd(reset_after, phase, xp + og, gh + og, b, hp + o, hn + o,
                gates + og, aux + o, H)
    if not last:
        return
    # Masking: a masked sequence keeps its state and outputs zero.
    if mask[i]:
        memcpy(hseq + o, hn + o, H * sizeof(floating))
    else:
        memcpy(hn + o, hp + o, H * sizeof(floating))
        if kind == LSTM:
            memcpy(cn + o, cp + o, H * sizeof(floating))
        memset(hseq + o, 0, H * sizeof(floating))


cdef void _fwd_rows(bint par, Py_ssize_t N, int kind, int act, bint reset_after,
                    int phase, bint last, Py_ssize_t H, Py_ssize_t GH,
                    const floating* xp, const floating* gh, const floating* b,
                    const floating* hp, floating* hn, const floating* cp, floating* cn,
                    floating* gates, floating* aux, const uint8_t* mask,
                    floating* hseq) noexcept nogil:
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            _fwd_row(kind, act, reset_after, phase, last, i, H, GH, xp, gh, b,
                     hp, hn, cp, cn, gates, aux, mask, hseq)
    else:
        for i in range(N):
            _fwd_row(kind, act, reset_after, phase, last, i, H, GH, xp, gh, b,
                     hp, hn, cp, cn, gates, aux, mask, hseq)


cdef inline bint _valid(const uint8_t* mask, const int64_t* budget,
                        Py_ssize_t i) noexcept nogil:
    return mask[i] != 0 and (budget == NULL or budget[i] > 0)


cdef inline void _bwd_row(int kind, int act, bint reset_after, int phase,
                          Py_ssize_t i, Py_ssize_t H, Py_ssize_t GH,
                          const uint8_t* mask, const int64_t* budget,
                          const floating* dhseq, floating* dh, const floating* dc,
                          const floating* hp, const floating* cp, const floating* cn,
                          const floating* gates, const floating* aux,
                          floating* drh, floating* dg, floating* dx,
                          floating* dhn, floating* dcn) noexcept nogil:
    """Phase 0 handles validity (output gradient, pass-through of masked rows);
    phase 1 (Cho's GRU only, after the drh GEMM) runs on valid rows."""
    cdef Py_ssize_t o = i * H, og = i * GH, j
    if not _valid(mask, budget, i):
        if phase == 0:
            memset(dg + og, 0, GH * sizeof(floating))
            memcpy(dhn + o, dh + o, H * sizeof(floating))
            if kind == LSTM:
                memcpy(dcn + o, dc + o, H * sizeof(floating))
        return
    if phase == 0 and dhseq != NULL:
        for j in range(H):
            dh[o + j] += dhseq[o + j]
    if kind == RNN:
        rnn_bwd(act, dh + o, gates + og, dg + og, dx + og, dhn + o, H)
    elif kind == LSTM:
        lstm_bwd(dh + o, dc + o, cp + o, cn + o, gates + og, dg + og, dx + og,
                 dhn + o, dcn + o, drh + o, H)
    else:
        gru_bwd(reset_after, phase, dh + o, hp + o, gates + og, aux + o,
                drh + o, dg + og, dx + og, dhn + o, H)


cdef void _bwd_rows(bint par, Py_ssize_t N, int kind, int act, bint reset_after,
                    int phase, Py_ssize_t H, Py_ssize_t GH,
                    const uint8_t* mask, const int64_t* budget,
                    const floating* dhseq, floating* dh, const floating* dc,
                    const floating* hp, const floating* cp, const floating* cn,
                    const floating* gates, const floating* aux, floating* drh,
                    floating* dg, floating* dx, floating* dhn,
                    floating* dcn) noexcept nogil:
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            _bwd_row(kind, act, reset_after, phase, i, H, GH, mask, budget, dhseq,
                     dh, dc, hp, cp, cn, gates, aux, drh, dg, dx, dhn, dcn)
    else:
        for i in range(N):
            _bwd_row(kind, act, reset_after, phase, i, H, GH, mask, budget, dhseq,
                     dh, dc, hp, cp, cn, gates, aux, drh, dg, dx, dhn, dcn)


cdef inline void _bwd_finish_row(Py_ssize_t i, Py_ssize_t H, Py_ssize_t GH,
                                 const uint8_t* mask, int64_t* budget,
                                 const floating* dg, floating* dgh,
                                 floating* dhn, floating* dcn) noexcept nogil:
    """dgh[t] += dg (dgh NULL: the cell's dxp already is dgh); spend one unit of
    budget on valid rows, dropping the gradient of rows whose budget is used up."""
    cdef Py_ssize_t o = i * H, og = i * GH, j
    if dgh != NULL:
        for j in range(GH):
            dgh[og + j] += dg[og + j]
    if budget != NULL and _valid(mask, budget, i):
        budget[i] -= 1
        if budget[i] == 0:
            memset(dhn + o, 0, H * sizeof(floating))
            if dcn != NULL:
                memset(dcn + o, 0, H * sizeof(floating))


cdef void _bwd_finish_rows(bint par, Py_ssize_t N, Py_ssize_t H, Py_ssize_t GH,
                           const uint8_t* mask, int64_t* budget,
                           const floating* dg, floating* dgh,
                           floating* dhn, floating* dcn) noexcept nogil:
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            _bwd_finish_row(i, H, GH, mask, budget, dg, dgh, dhn, dcn)
    else:
        for i in range(N):
            _bwd_finish_row(i, H, GH, mask, budget, dg, dgh, dhn, dcn)


# ----------------------------------------------------------------------------
# The time loops (shared by all cells).
# ----------------------------------------------------------------------------

cdef inline int _n_gates(int kind) noexcept nogil:
    if kind == RNN:
        return 1
    if kind == LSTM:
        return 4
    return 3


cdef void _forward_loop(int kind, int act, bint reset_after, Py_ssize_t T,
                        Py_ssize_t N, Py_ssize_t H, const floating* xp,
                        const floating* w, const floating* b, const uint8_t* mask,
                        floating* hbuf, floating* cbuf, Py_ssize_t S,
                        floating* gates, floating* aux, bint keep_cache,
                        floating* hseq, floating* gh, Py_ssize_t small) noexcept nogil:
    """``hbuf``/``cbuf`` hold S states: S = T+1 (cache) or 2 (ping-pong);
    state t lives in slot t % S, slot 0 preset to h0/c0 by the caller.
    ``gates``/``aux`` hold T steps (cache) or one (scratch). Batches of at most
    ``small`` rows use the own GEMM kernel for the recurrent products."""
    cdef Py_ssize_t GH = _n_gates(kind) * H, NH = N * H, t
    cdef bint cho = kind == GRU and not reset_after
    cdef bint par = N >= 2 and NH >= PARALLEL_MIN_WORK
    cdef bint own = N <= small
    cdef const floating* hp
    cdef floating* hn
    cdef const floating* cp = NULL
    cdef floating* cn = NULL
    cdef floating* gt
    cdef floating* ax = NULL
    for t in range(T):
        hp = hbuf + (t % S) * NH
        hn = hbuf + ((t + 1) % S) * NH
        if kind == LSTM:
            cp = cbuf + (t % S) * NH
            cn = cbuf + ((t + 1) % S) * NH
        gt = gates + (t * N * GH if keep_cache else 0)
        if kind == GRU:
            ax = aux + (t * NH if keep_cache else 0)
        if cho:
            # r, z from h; n from (r h) W_hn^T: two GEMMs around phase 0.
            _gemm_hh(own, hp, w, 0, 2 * H, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, 0, False, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)
            _gemm_hh(own, ax, w, 2 * H, H, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, 1, True, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)
        else:
            _gemm_hh(own, hp, w, 0, GH, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, -1, True, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)


cdef void _backward_sweep(int kind, int act, bint reset_after, Py_ssize_t t0,
                          Py_ssize_t N, Py_ssize_t H, const floating* w,
                          const uint8_t* mask, const floating* hc, const floating* cc,
                          const floating* gates, const floating* aux,
                          const floating* dhseq, floating* dh, floating* dh_tmp,
                          floating* dc, floating* dc_tmp, floating* dg, floating* drh,
                          int64_t* budget, floating* dxp, floating* dgh,
                          Py_ssize_t small) noexcept nogil:
    """Backpropagate from step ``t0`` down to 0, adding into dxp/dgh.

    ``dh``/``dc`` (N, H) carry the incoming gradient and receive the gradient on
    the state before step 0 (``dh_tmp``/``dc_tmp`` are ping-pong scratch).
    ``dhseq`` (T, N, H) or NULL: output gradients added at valid steps.
    ``budget`` (N,) or NULL: valid cells each row may still pass through; a row
    whose budget runs out drops its gradient. Stops early once all are spent.
    """
    cdef Py_ssize_t GH = _n_gates(kind) * H, NH = N * H, t, i
    cdef bint cho = kind == GRU and not reset_after
    cdef bint par = N >= 2 and NH >= PARALLEL_MIN_WORK
    cdef bint own = N <= small
    cdef floating* dh_in = dh
    cdef floating* dc_in = dc
    cdef floating* swap
    cdef const floating* ax = NULL
    cdef const floating* cp = NULL
    cdef const floating* cn = NULL
    cdef const floating* seq = NULL
    cdef bint alive
    for t in range(t0, -1, -1):
        if kind == LSTM:
            cp = cc + t * NH
            cn = cc + (t + 1) * NH
        if kind == GRU:
            ax = aux + t * NH
        if dhseq != NULL:
            seq = dhseq + t * NH
        _bwd_rows(par, N, kind, act, reset_after, 0, H, GH, mask + t * N, budget,
                  seq, dh, dc, hc + t * NH, cp, cn, gates + t * N * GH, ax, drh,
                  dg, dxp + t * N * GH, dh_tmp, dc_tmp)
        if cho:
            # drh = dn W_hn (the gradient on r h), then the r-gate phase.
            _gemm_dh(own, dg, w, 2 * H, H, N, H, GH, 0, drh)
            _bwd_rows(par, N, kind, act, reset_after, 1, H, GH, mask + t * N, budget,
                      seq, dh, dc, hc + t * NH, cp, cn, gates + t * N * GH, ax, drh,
                      dg, dxp + t * N * GH, dh_tmp, dc_tmp)
            _gemm_dh(own, dg, w, 0, 2 * H, N, H, GH, 1, dh_tmp)
        else:
            _gemm_dh(own, dg, w, 0, GH, N, H, GH, 1, dh_tmp)
        _bwd_finish_rows(par, N, H, GH, mask + t * N, budget, dg,
                         dgh + t * N * GH if dgh != NULL else NULL, dh_tmp, dc_tmp)
        swap = dh
        dh = dh_tmp
        dh_tmp = swap
        if kind == LSTM:
            swap = dc
            dc = dc_tmp
            dc_tmp = swap
        if budget != NULL:
            alive = False
            for i in range(N):
                if budget[i] > 0:
                    alive = True
                    break
            if not alive:
                break
    if dh != dh_in:
        memcpy(dh_in, dh, NH * sizeof(floating))
    if kind == LSTM and dc != dc_in:
        memcpy(dc_in, dc, NH * sizeof(floating))


cdef void _backward_all(int kind, int act, bint reset_after, Py_ssize_t truncate,
                        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, const floating* w,
                        const uint8_t* mask, const floating* hc, const floating* cc,
                        const floating* gates, const floating* aux,
                        const floating* dhseq, const floating* dh_T,
                        const floating* dc_T, floating* dh0, floating* dc0,
                        floating* work, floating* dg, int64_t* budget,
                        floating* dxp, floating* dgh, floating* dw,
                        floating* db, Py_ssize_t small) noexcept nogil:
    """Full BPTT (truncate < 0) or one budgeted sweep per gradient source, then
    dW_hh (GEMM over all T*N rows) and db_hh. ``work`` holds 5 (N, H) buffers."""
    cdef Py_ssize_t GH = _n_gates(kind) * H, NH = N * H, ts, i, j, k
    cdef bint lstm = kind == LSTM
    cdef floating* dh_a = work
    cdef floating* dh_b = work + NH
    cdef floating* dc_a = work + 2 * NH
    cdef floating* dc_b = work + 3 * NH
    cdef floating* drh = work + 4 * NH
    cdef bint nonzero
    cdef floating s

    if truncate < 0:
        # One sweep from the last step, starting from dh_T/dc_T (zero if None).
        if dh_T != NULL:
            memcpy(dh0, dh_T, NH * sizeof(floating))
        else:
            memset(dh0, 0, NH * sizeof(floating))
        if lstm:
            if dc_T != NULL:
                memcpy(dc0, dc_T, NH * sizeof(floating))
            else:
                memset(dc0, 0, NH * sizeof(floating))
        _backward_sweep(kind, act, reset_after, T - 1, N, H, w, mask, hc, cc, gates,
                        aux, dhseq, dh0, dh_b, dc0, dc_b, dg, drh, NULL, dxp, dgh,
                        small)
    else:
        # One budgeted sweep per gradient source, in time order: the (masked)
        # output gradient at each step, plus dh_T/dc_T at the last step.
        memset(dh0, 0, NH * sizeof(floating))
        if lstm:
            memset(dc0, 0, NH * sizeof(floating))
        for ts in range(T):
            nonzero = False
            for i in range(N):
                for j in range(H):
                    k = i * H + j
                    s = 0
                    if dhseq != NULL and mask[ts * N + i]:
                        s = dhseq[ts * NH + k]
                    if ts == T - 1 and dh_T != NULL:
                        s = s + dh_T[k]
                    dh_a[k] = s
                    if s != 0:
                        nonzero = True
            if lstm:
                if ts == T - 1 and dc_T != NULL:
                    memcpy(dc_a, dc_T, NH * sizeof(floating))
                    for k in range(NH):
                        if dc_a[k] != 0:
                            nonzero = True
                            break
                else:
                    memset(dc_a, 0, NH * sizeof(floating))
            if not nonzero:
                continue  # a zero source contributes nothing
            for i in range(N):
                budget[i] = truncate + 1
            _backward_sweep(kind, act, reset_after, ts, N, H, w, mask, hc, cc, gates,
                            aux, NULL, dh_a, dh_b, dc_a, dc_b, dg, drh, budget,
                            dxp, dgh, small)
            for k in range(NH):
                dh0[k] += dh_a[k]
            if lstm:
                for k in range(NH):
                    dc0[k] += dc_a[k]

    # dW_hh = sum_t dgh_t^T hin_t, one GEMM over all T*N rows (Cho's GRU: the n
    # block against r*h); db_hh = sum of dgh. RNN and LSTM: the gradients on the
    # input and the recurrent pre-activations are the same array (dgh NULL).
    if dgh == NULL:
        dgh = dxp
    if kind == GRU and not reset_after:
        _gemm_dw(dgh, hc, 0, 2 * H, T * N, H, GH, dw)
        _gemm_dw(dgh, aux, 2 * H, H, T * N, H, GH, dw)
    else:
        _gemm_dw(dgh, hc, 0, GH, T * N, H, GH, dw)
    memset(db, 0, GH * sizeof(floating))
    for k in range(T * N):
        for j in range(GH):
            db[j] += dgh[k * GH + j]
