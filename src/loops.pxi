# The time loops shared by every cell: the forward loop, the backward sweep and
# the whole backward pass (full or truncated BPTT, then dW_hh, db_hh and the
# peephole gradients). They own masking, truncation budgets and the recurrent
# GEMMs; the cell math is cells.pxi's. Included by _cython_kernels.pyx.
#
# Row loops: steps with N * H >= PARALLEL_MIN_WORK (and N >= 2) run the row
# functions in an OpenMP prange, one call per row (i, i + 1) under a static
# schedule; smaller steps make one call for all rows (0, N). One block of rows
# per thread instead showed no consistent gain (2 threads, N = 256, H = 272:
# within the run-to-run noise of a shared machine, either way), so the simpler
# per-row form stays.

cdef inline void _mask_rows(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H,
                            const uint8_t* mask, const floating* hp, floating* hn,
                            const floating* cp, floating* cn,
                            floating* hseq) noexcept nogil:
    """Output h' of valid rows (one copy per run of valid rows); a masked row keeps
    its state and outputs zero."""
    cdef Py_ssize_t i = lo, j, o
    while i < hi:
        o = i * H
        if mask[i]:
            j = i + 1
            while j < hi and mask[j]:
                j += 1
            memcpy(hseq + o, hn + o, (j - i) * H * sizeof(floating))
            i = j
        else:
            memcpy(hn + o, hp + o, H * sizeof(floating))
            if cn != NULL:
                memcpy(cn + o, cp + o, H * sizeof(floating))
            memset(hseq + o, 0, H * sizeof(floating))
            i += 1


cdef void _fwd_rows(bint par, Py_ssize_t N, int code, int act, int ract, int phase,
                    bint last, Py_ssize_t H, const floating* xp, const floating* gh,
                    const floating* b, const floating* peep, const floating* hp,
                    floating* hn, const floating* cp, floating* cn, floating* gates,
                    floating* aux, const uint8_t* mask, floating* hseq) noexcept nogil:
    """One phase of one step for every row; ``last``: the step's final phase
    (then masking and the output)."""
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            cell_fwd(code, act, ract, phase, i, i + 1, H, xp, gh, b, peep, hp, cp, hn, cn,
                     gates, aux)
            if last:
                _mask_rows(i, i + 1, H, mask, hp, hn, cp, cn, hseq)
    else:
        cell_fwd(code, act, ract, phase, 0, N, H, xp, gh, b, peep, hp, cp, hn, cn, gates,
                 aux)
        if last:
            _mask_rows(0, N, H, mask, hp, hn, cp, cn, hseq)


cdef inline void _add_output_grad(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H,
                                  const uint8_t* valid, const floating* dhseq,
                                  floating* dh) noexcept nogil:
    """dh += dh_seq[t] on valid rows (full BPTT's output gradients)."""
    cdef Py_ssize_t i, j, o
    for i in range(lo, hi):
        if valid[i]:
            o = i * H
            for j in range(H):
                dh[o + j] += dhseq[o + j]


cdef void _bwd_rows(bint par, Py_ssize_t N, int code, int act, int ract, int phase,
                    Py_ssize_t H, const uint8_t* valid, const floating* dhseq,
                    floating* dh, const floating* dc, const floating* hp,
                    const floating* cp, const floating* cn, const floating* gates,
                    const floating* aux, const floating* peep, const floating* drh,
                    floating* dg, floating* dx, floating* dhn,
                    floating* dcn) noexcept nogil:
    """One backward phase of one step for every row (phase 0 first adds the
    output gradient ``dhseq``, when given, into ``dh``)."""
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            if phase == 0 and dhseq != NULL:
                _add_output_grad(i, i + 1, H, valid, dhseq, dh)
            cell_bwd(code, act, ract, phase, i, i + 1, H, valid, dh, dc, hp, cp, cn, gates,
                     aux, peep, drh, dg, dx, dhn, dcn)
    else:
        if phase == 0 and dhseq != NULL:
            _add_output_grad(0, N, H, valid, dhseq, dh)
        cell_bwd(code, act, ract, phase, 0, N, H, valid, dh, dc, hp, cp, cn, gates, aux,
                 peep, drh, dg, dx, dhn, dcn)


cdef inline void _bwd_finish_row(Py_ssize_t i, Py_ssize_t H, Py_ssize_t GH,
                                 const uint8_t* valid, int64_t* budget,
                                 const floating* dg, floating* dgh,
                                 floating* dhn, floating* dcn) noexcept nogil:
    """dgh[t] += dg (dgh NULL: the cell's dxp already is dgh); spend one unit of
    budget on valid rows, dropping the gradient of rows whose budget is used up."""
    cdef Py_ssize_t o = i * H, og = i * GH, j
    if dgh != NULL:
        for j in range(GH):
            dgh[og + j] += dg[og + j]
    if budget != NULL and valid[i]:
        budget[i] -= 1
        if budget[i] == 0:
            memset(dhn + o, 0, H * sizeof(floating))
            if dcn != NULL:
                memset(dcn + o, 0, H * sizeof(floating))


cdef void _bwd_finish_rows(bint par, Py_ssize_t N, Py_ssize_t H, Py_ssize_t GH,
                           const uint8_t* valid, int64_t* budget,
                           const floating* dg, floating* dgh,
                           floating* dhn, floating* dcn) noexcept nogil:
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static', num_threads=_nthreads()):
            _bwd_finish_row(i, H, GH, valid, budget, dg, dgh, dhn, dcn)
    else:
        for i in range(N):
            _bwd_finish_row(i, H, GH, valid, budget, dg, dgh, dhn, dcn)


# ----------------------------------------------------------------------------
# The time loops.
# ----------------------------------------------------------------------------

cdef void _forward_loop(int code, int act, int ract, Py_ssize_t T, Py_ssize_t N,
                        Py_ssize_t H, const floating* xp, const floating* w,
                        const floating* b, const floating* peep, const uint8_t* mask,
                        floating* hbuf, floating* cbuf, Py_ssize_t S,
                        floating* gates, floating* aux, bint keep_cache,
                        floating* hseq, floating* gh, Py_ssize_t small) noexcept nogil:
    """``hbuf``/``cbuf`` hold S states: S = T+1 (cache) or 2 (ping-pong);
    state t lives in slot t % S, slot 0 preset to h0/c0 by the caller (``cbuf``
    NULL without a cell state). ``gates``/``aux`` hold T steps (cache) or one
    (scratch); ``aux`` NULL for cells without one. ``peep`` (3, H) or NULL.
    Batches of at most ``small`` rows use the own GEMM kernel for the recurrent
    products."""
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, t
    cdef bint cho = code == CELL_GRU_CHO
    cdef bint par = N >= 2 and NH >= PARALLEL_MIN_WORK
    cdef bint own = N <= small
    cdef const floating* hp
    cdef floating* hn
    cdef const floating* cp = NULL
    cdef floating* cn = NULL
    cdef floating* gt
    cdef floating* ax = NULL
    cdef const floating* x
    for t in range(T):
        hp = hbuf + (t % S) * NH
        hn = hbuf + ((t + 1) % S) * NH
        if cbuf != NULL:
            cp = cbuf + (t % S) * NH
            cn = cbuf + ((t + 1) % S) * NH
        gt = gates + (t * N * GH if keep_cache else 0)
        if aux != NULL:
            ax = aux + (t * NH if keep_cache else 0)
        x = xp + t * N * GH
        if cho:
            # r, z from h; n from (r h) W_hn^T: two GEMMs around phase 0.
            _gemm_hh(own, hp, w, 0, 2 * H, N, H, GH, gh)
            _fwd_rows(par, N, code, act, ract, 0, False, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hseq + t * NH)
            _gemm_hh(own, ax, w, 2 * H, H, N, H, GH, gh)
            _fwd_rows(par, N, code, act, ract, 1, True, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hseq + t * NH)
        else:
            _gemm_hh(own, hp, w, 0, GH, N, H, GH, gh)
            _fwd_rows(par, N, code, act, ract, -1, True, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hseq + t * NH)


cdef void _backward_sweep(int code, int act, int ract, Py_ssize_t t0, Py_ssize_t N,
                          Py_ssize_t H, const floating* w, const floating* peep,
                          const uint8_t* mask, const floating* hc, const floating* cc,
                          const floating* gates, const floating* aux,
                          const floating* dhseq, floating* dh, floating* dh_tmp,
                          floating* dc, floating* dc_tmp, floating* dg, floating* drh,
                          int64_t* budget, uint8_t* vbuf, floating* dxp, floating* dgh,
                          Py_ssize_t small) noexcept nogil:
    """Backpropagate from step ``t0`` down to 0, adding into dxp/dgh.

    ``dh``/``dc`` (N, H) carry the incoming gradient and receive the gradient on
    the state before step 0 (``dh_tmp``/``dc_tmp`` are ping-pong scratch; the
    dc buffers NULL without a cell state). ``dhseq`` (T, N, H) or NULL: output
    gradients added at valid steps. ``budget`` (N,) or NULL: valid cells each
    row may still pass through; a row whose budget runs out drops its gradient.
    Stops early once all are spent. ``vbuf`` (N,) scratch: the rows valid at a
    step (mask and budget).
    """
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, t, i
    cdef bint cho = code == CELL_GRU_CHO
    cdef bint par = N >= 2 and NH >= PARALLEL_MIN_WORK
    cdef bint own = N <= small
    cdef floating* dh_in = dh
    cdef floating* dc_in = dc
    cdef floating* swap
    cdef const floating* ax = NULL
    cdef const floating* cp = NULL
    cdef const floating* cn = NULL
    cdef const floating* seq = NULL
    cdef const floating* gt
    cdef const floating* hp
    cdef floating* dx
    cdef const uint8_t* valid
    cdef bint alive
    for t in range(t0, -1, -1):
        if cc != NULL:
            cp = cc + t * NH
            cn = cc + (t + 1) * NH
        if aux != NULL:
            ax = aux + t * NH
        if dhseq != NULL:
            seq = dhseq + t * NH
        if budget != NULL:
            for i in range(N):
                vbuf[i] = mask[t * N + i] != 0 and budget[i] > 0
            valid = vbuf
        else:
            valid = mask + t * N
        gt = gates + t * N * GH
        hp = hc + t * NH
        dx = dxp + t * N * GH
        _bwd_rows(par, N, code, act, ract, 0, H, valid, seq, dh, dc, hp, cp, cn, gt, ax,
                  peep, drh, dg, dx, dh_tmp, dc_tmp)
        if cho:
            # drh = dn W_hn (the gradient on r h), then the r-gate phase.
            _gemm_dh(own, dg, w, 2 * H, H, N, H, GH, 0, drh)
            _bwd_rows(par, N, code, act, ract, 1, H, valid, seq, dh, dc, hp, cp, cn, gt,
                      ax, peep, drh, dg, dx, dh_tmp, dc_tmp)
            _gemm_dh(own, dg, w, 0, 2 * H, N, H, GH, 1, dh_tmp)
        else:
            _gemm_dh(own, dg, w, 0, GH, N, H, GH, 1, dh_tmp)
        _bwd_finish_rows(par, N, H, GH, valid, budget, dg,
                         dgh + t * N * GH if dgh != NULL else NULL, dh_tmp, dc_tmp)
        swap = dh
        dh = dh_tmp
        dh_tmp = swap
        if dc != NULL:
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
    if dc != NULL and dc != dc_in:
        memcpy(dc_in, dc, NH * sizeof(floating))


cdef void _backward_all(int code, int act, int ract, Py_ssize_t truncate, Py_ssize_t T,
                        Py_ssize_t N, Py_ssize_t H, const floating* w,
                        const floating* peep, const uint8_t* mask, const floating* hc,
                        const floating* cc, const floating* gates, const floating* aux,
                        const floating* dhseq, const floating* dh_T,
                        const floating* dc_T, floating* dh0, floating* dc0,
                        floating* work, floating* dg, int64_t* budget, uint8_t* vbuf,
                        floating* dxp, floating* dgh, floating* dw, floating* db,
                        floating* dpeep, Py_ssize_t small) noexcept nogil:
    """Full BPTT (truncate < 0) or one budgeted sweep per gradient source, then
    dW_hh (GEMM over all T*N rows), db_hh and, when ``dpeep`` (3, H) is given,
    the peephole gradients. ``cc``/``dc0`` NULL without a cell state, ``aux``
    NULL without aux; ``work`` holds 5 (N, H) buffers; ``dgh`` NULL when the
    recurrent pre-activation gradient equals dxp (every cell but ``gru``)."""
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, ts, i, j, k
    cdef bint lstm = cc != NULL
    cdef floating* dh_a = work
    cdef floating* dh_b = work + NH
    cdef floating* dc_a = work + 2 * NH if lstm else NULL
    cdef floating* dc_b = work + 3 * NH if lstm else NULL
    cdef floating* drh = work + 4 * NH
    cdef const floating* g
    cdef const floating* c_prev
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
        _backward_sweep(code, act, ract, T - 1, N, H, w, peep, mask, hc, cc, gates, aux,
                        dhseq, dh0, dh_b, dc0 if lstm else NULL, dc_b, dg, drh, NULL, vbuf,
                        dxp, dgh, small)
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
            _backward_sweep(code, act, ract, ts, N, H, w, peep, mask, hc, cc, gates, aux,
                            NULL, dh_a, dh_b, dc_a, dc_b, dg, drh, budget, vbuf, dxp, dgh,
                            small)
            for k in range(NH):
                dh0[k] += dh_a[k]
            if lstm:
                for k in range(NH):
                    dc0[k] += dc_a[k]

    # dW_hh = sum_t dgh_t^T hin_t, one GEMM over all T*N rows (Cho's GRU: the n
    # block against r*h); db_hh = sum of dgh. Every cell but ``gru``: the
    # gradients on the input and the recurrent pre-activations are the same array.
    if dgh == NULL:
        dgh = dxp
    if code == CELL_GRU_CHO:
        _gemm_dw(dgh, hc, 0, 2 * H, T * N, H, GH, dw)
        _gemm_dw(dgh, aux, 2 * H, H, T * N, H, GH, dw)
    else:
        _gemm_dw(dgh, hc, 0, GH, T * N, H, GH, dw)
    memset(db, 0, GH * sizeof(floating))
    for k in range(T * N):
        for j in range(GH):
            db[j] += dgh[k * GH + j]
    if dpeep != NULL:
        # p_i, p_f see c_{t-1}, p_o sees c_t: contractions of the gate gradients
        # (row k = t*N + n: c_{t-1} at cc + k*H, c_t one step later).
        memset(dpeep, 0, 3 * H * sizeof(floating))
        for k in range(T * N):
            g = dgh + k * GH
            c_prev = cc + k * H
            for j in range(H):
                dpeep[j] += g[j] * c_prev[j]
                dpeep[H + j] += g[H + j] * c_prev[j]
                dpeep[2 * H + j] += g[3 * H + j] * c_prev[NH + j]
