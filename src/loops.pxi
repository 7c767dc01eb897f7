# The time loops shared by every cell: the forward loop, the backward sweep and
# the whole backward pass (full or truncated BPTT, then dW_hh, db_hh and the
# peephole gradients). They own masking, truncation budgets and the recurrent
# GEMMs; the cell math is cells.pxi's. Included by _cython_kernels.pyx.
#
# Rows: the loops compute a range of rows r0 .. r1-1. The packed path cuts a
# batch into row chunks that OpenMP threads take (one parallel region per op,
# no barrier per step: rows never interact until the weight gradients); the
# other path runs every row on the calling thread.

cdef inline void _mask_rows(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H,
                            const uint8_t* mask, const floating* hp, floating* hn,
                            const floating* cp, floating* cn,
                            floating* hseq) noexcept nogil:
    """Output h' of valid rows (one copy per run of valid rows); a masked row keeps
    its state and outputs zero. ``hseq`` NULL: no per-step output (many-to-one)."""
    cdef Py_ssize_t i = lo, j, o
    while i < hi:
        o = i * H
        if mask[i]:
            j = i + 1
            while j < hi and mask[j]:
                j += 1
            if hseq != NULL:
                memcpy(hseq + o, hn + o, (j - i) * H * sizeof(floating))
            i = j
        else:
            memcpy(hn + o, hp + o, H * sizeof(floating))
            if cn != NULL:
                memcpy(cn + o, cp + o, H * sizeof(floating))
            if hseq != NULL:
                memset(hseq + o, 0, H * sizeof(floating))
            i += 1


cdef inline void _fwd_rows(Py_ssize_t lo, Py_ssize_t hi, int code, int act, int ract,
                           int phase, bint last, Py_ssize_t H, const floating* xp,
                           const floating* gh, const floating* b, const floating* peep,
                           const floating* hp, floating* hn, const floating* cp, floating* cn,
                           floating* gates, floating* aux, const uint8_t* mask,
                           floating* hseq) noexcept nogil:
    """One phase of one step for rows lo .. hi-1; ``last``: the step's final phase
    (then masking and the output)."""
    cell_fwd(code, act, ract, phase, lo, hi, H, xp, gh, b, peep, hp, cp, hn, cn, gates, aux)
    if last:
        _mask_rows(lo, hi, H, mask, hp, hn, cp, cn, hseq)


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


cdef inline void _bwd_rows(Py_ssize_t lo, Py_ssize_t hi, int code, int act, int ract,
                           int phase, Py_ssize_t H, const uint8_t* valid,
                           const floating* dhseq, floating* dh, const floating* dc,
                           const floating* hp, const floating* cp, const floating* cn,
                           const floating* gates, const floating* aux, const floating* peep,
                           const floating* drh, floating* dg, floating* dx, floating* dhn,
                           floating* dcn) noexcept nogil:
    """One backward phase of one step for rows lo .. hi-1 (phase 0 first adds the
    output gradient ``dhseq``, when given, into ``dh``)."""
    if phase == 0 and dhseq != NULL:
        _add_output_grad(lo, hi, H, valid, dhseq, dh)
    cell_bwd(code, act, ract, phase, lo, hi, H, valid, dh, dc, hp, cp, cn, gates, aux, peep,
             drh, dg, dx, dhn, dcn)


cdef inline void _bwd_finish_rows(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t H, Py_ssize_t GH,
                                  const uint8_t* valid, int64_t* budget,
                                  const floating* dg, floating* dgh,
                                  floating* dhn, floating* dcn) noexcept nogil:
    """dgh[t] += dg (dgh NULL: the cell's dxp already is dgh); spend one unit of
    budget on valid rows, dropping the gradient of rows whose budget is used up."""
    cdef Py_ssize_t i, o, og, j
    for i in range(lo, hi):
        o = i * H
        og = i * GH
        if dgh != NULL:
            for j in range(GH):
                dgh[og + j] += dg[og + j]
        if budget != NULL and valid[i]:
            budget[i] -= 1
            if budget[i] == 0:
                memset(dhn + o, 0, H * sizeof(floating))
                if dcn != NULL:
                    memset(dcn + o, 0, H * sizeof(floating))


# ----------------------------------------------------------------------------
# The time loops.
# ----------------------------------------------------------------------------

cdef enum:
    # Row chunks of the packed path: at least CHUNK_MIN_ROWS rows, about two per
    # thread, handed out dynamically, so that a thread preempted by another
    # process delays only the chunk it holds. Every chunk streams the op's weights
    # once per step: when they exceed CHUNK_BIG_WEIGHTS bytes (more than half of a
    # typical server core's L2), one chunk per thread instead. Ops with fewer than
    # PARALLEL_MIN_MACS multiply-adds (T * N * weights) run on the calling thread:
    # the team's start costs more than they take. dino-b32 (6e6) gains from two
    # threads when calls follow each other (0.145 vs 0.20 ms: the team is still
    # spinning), not when the team has gone to sleep (0.40 ms on the first calls).
    CHUNK_MIN_ROWS = 8
    CHUNK_BIG_WEIGHTS = 1 << 20


cdef double PARALLEL_MIN_MACS = 2e6


def _set_parallel_min_macs(double value):
    """Set the multiply-add count from which an op's rows go to several threads
    (tests set 0, so that small problems take the threaded path); returns the
    previous value."""
    global PARALLEL_MIN_MACS
    previous = PARALLEL_MIN_MACS
    PARALLEL_MIN_MACS = value
    return previous


cdef inline Py_ssize_t _chunking(Py_ssize_t N, Py_ssize_t T, double weight_elems,
                                 Py_ssize_t isz, Py_ssize_t* rows,
                                 Py_ssize_t* nch) noexcept nogil:
    """Cut N rows into chunks (``rows`` each, the last one shorter; ``nch`` of
    them) for an op of T steps whose per-step weights have ``weight_elems``
    elements of ``isz`` bytes; returns the threads to run them on (1: serially)."""
    cdef Py_ssize_t nt = _nthreads()
    cdef Py_ssize_t per = nt if weight_elems * isz > CHUNK_BIG_WEIGHTS else 2 * nt
    rows[0] = (N + per - 1) // per
    if rows[0] < CHUNK_MIN_ROWS:
        rows[0] = CHUNK_MIN_ROWS
    nch[0] = (N + rows[0] - 1) // rows[0]
    if <double>T * N * weight_elems < PARALLEL_MIN_MACS:
        return 1
    return _team(min(nt, nch[0]))


cdef enum:
    # The packed path projects the input of STEP_BLOCK steps at once (one product
    # per block, W_ih streamed once per block instead of once per step).
    STEP_BLOCK = 8
    # A team of a call of at most SMALL_TEAM_ROWS rows (under two row chunks) is a
    # small-batch team (``_small_team_op`` in src/fused.pxi): the input projections
    # too are split by columns (a row-half team would leave them to a thread's rows).
    SMALL_TEAM_ROWS = 15


cdef inline void _col_share(Py_ssize_t n, Py_ssize_t tid, Py_ssize_t team, Py_ssize_t block,
                            Py_ssize_t* c0, Py_ssize_t* c1) noexcept nogil:
    """Thread ``tid``'s columns c0 .. c1-1 of ``n`` shared by a team of ``team``, in
    whole blocks of ``block`` (a packed panel, or 16 outputs of the own kernels)."""
    cdef Py_ssize_t nb = (n + block - 1) // block
    c0[0] = min(n, (tid * nb // team) * block)
    c1[0] = min(n, ((tid + 1) * nb // team) * block)


cdef inline Py_ssize_t _panel_off(int wfmt, Py_ssize_t c0, Py_ssize_t K) noexcept nogil:
    """Offset (elements of the call's dtype; 32-bit words for bfloat16) of the panel
    that starts at column ``c0`` (a multiple of the panel width) of a weight of K
    rows packed in format ``wfmt`` (src/pgemm.h: bfloat16 packs k in pairs)."""
    if _is_bf16(wfmt):
        return c0 * ((K + 1) // 2)
    return c0 * K


cdef struct StepInput:
    # The packed path's input (``_forward_rows``): the op's input (T steps of N
    # rows of D, strides ``xs_t``, ``xs_n``: time-major or the call's batch-first
    # input), read in reverse time order when ``rev``; a gather block
    # (STEP_BLOCK * N * D elements, each row chunk using its own rows; a small-batch
    # team's thread 0 gathers all rows); its packed W_ih and b_ih; the packed W_hh
    # (Cho's GRU: rows [0, 2H) in ``whh``, [2H, 3H) in ``whh_n``). Pointers to the
    # call's dtype, cast where used.
    const void* x
    Py_ssize_t xs_t, xs_n  # element strides of x's steps and rows
    void* xg
    Py_ssize_t D
    bint rev
    const void* wih
    const void* bih
    const void* whh
    const void* whh_n
    int isa
    int wfmt  # the packed weights' format (WF_*)


cdef void _forward_loop(int code, int act, int ract, Py_ssize_t T, Py_ssize_t N,
                        Py_ssize_t H, const floating* xp, const floating* w,
                        const floating* b, const floating* peep, const uint8_t* mask,
                        floating* hbuf, floating* cbuf, Py_ssize_t S,
                        floating* gates, floating* aux, bint keep_cache,
                        floating* hseq, floating* gh, Py_ssize_t small) noexcept nogil:
    """The forward loop over every row from precomputed input projections ``xp``
    (T, N, G*H): ``_forward_rows`` without a ``StepInput``."""
    _forward_rows(code, act, ract, T, N, 0, N, H, <floating*>xp, NULL, w, b, peep, mask,
                  hbuf, cbuf, S, gates, aux, keep_cache, hseq, gh, small)


cdef inline void _team_wait(double* wait) noexcept nogil:
    """A barrier of the calling region's team; its wall time goes to ``wait``."""
    cdef double w0 = cyrnn_wall()
    cyrnn_omp_barrier()
    wait[0] += cyrnn_wall() - w0


cdef void _forward_rows(int code, int act, int ract, Py_ssize_t T, Py_ssize_t N,
                        Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t H, floating* xp,
                        const StepInput* si, const floating* w, const floating* b,
                        const floating* peep, const uint8_t* mask, floating* hbuf,
                        floating* cbuf, Py_ssize_t S, floating* gates, floating* aux,
                        bint keep_cache, floating* hseq, floating* gh,
                        Py_ssize_t small, Py_ssize_t tid=0, Py_ssize_t team=0,
                        double* wait=NULL) noexcept nogil:
    """Rows r0 .. r1-1 of the forward time loop (rows are independent sequences,
    so row chunks run on separate threads with no step barrier).

    ``hbuf``/``cbuf`` hold S states: S = T+1 (cache) or 2 (ping-pong);
    state t lives in slot t % S, slot 0 preset to h0/c0 by the caller (``cbuf``
    NULL without a cell state). ``gates``/``aux`` hold T steps (cache) or one
    (scratch); ``aux`` NULL for cells without one. ``peep`` (3, H) or NULL.
    ``hseq`` (T, N, H) or NULL (no per-step outputs kept).

    ``si`` NULL: ``xp`` (T, N, G*H) holds every step's input projection, and the
    recurrent products use BLAS or the own small-GEMM kernel (``_own_small_gemv``:
    ``small`` >= 0 a row limit, -1 the CPU's rule); rows must be all of them
    (a small-batch team: the cell rows are this thread's, the products all rows').
    ``si`` given: every STEP_BLOCK steps, these
    rows' inputs of the next steps are gathered and projected by one product
    into ``xp`` (STEP_BLOCK * N * G*H elements; this chunk's part, laid out
    (step, row); a small-batch team: thread 0 gathers all rows' inputs and each
    thread projects its columns of them), and every product uses the packed kernels.

    ``team`` > 1 (not Cho's GRU; called by thread ``tid`` of a region of ``team``
    threads, each with its own rows; without ``si`` only with the own small-GEMM
    kernel, ``_small_team_op``): the recurrent product is split by
    columns instead, each thread computing its panels of ``gh`` for all N rows
    (half of W_hh each, read once per step by one thread), with a team barrier
    after the products and after the cell math of every step (``wait``: the
    barriers' wall time). The sums are the same: each element is one k-ascending
    chain whichever thread computes it."""
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, t, i, j, n = r1 - r0, D
    cdef Py_ssize_t c0 = 0, c1 = 0, lr0 = r0, ln = n
    # a small-batch team's packed path: every thread projects its columns of all rows
    cdef bint small_team = team > 1 and N <= SMALL_TEAM_ROWS
    cdef bint cho = code == CELL_GRU_CHO
    cdef bint own = _own_small_gemv(N, GH * H * <Py_ssize_t>sizeof(floating),
                                    sizeof(floating), small)
    cdef const floating* hp
    cdef floating* hn
    cdef const floating* cp = NULL
    cdef floating* cn = NULL
    cdef floating* gt
    cdef floating* ax = NULL
    cdef floating* hs = NULL
    cdef const floating* x
    cdef floating* xb
    cdef floating* xg
    cdef const floating* xsrc
    cdef Py_ssize_t sb, s
    if team > 1:
        # the packed kernels' panels, or blocks of 16 rows of the own kernel
        _col_share(GH, tid, team, cyrnn_pgemm_nr(si.isa, sizeof(floating))
                   if si != NULL else 16, &c0, &c1)
        _team_wait(wait)  # every thread's rows of the initial state are set
    for t in range(T):
        hp = hbuf + (t % S) * NH
        hn = hbuf + ((t + 1) % S) * NH
        if cbuf != NULL:
            cp = cbuf + (t % S) * NH
            cn = cbuf + ((t + 1) % S) * NH
        gt = gates + (t * N * GH if keep_cache else 0)
        if aux != NULL:
            ax = aux + (t * NH if keep_cache else 0)
        if hseq != NULL:
            hs = hseq + t * NH
        if si == NULL:
            x = xp + t * N * GH
            if team > 1:
                # the small-batch team (``_small_team_op``, not Cho's GRU): this
                # thread's columns of the product for all rows, on the own kernel
                if c1 > c0:
                    _gemm_hh(own, hp, w, c0, c1 - c0, N, H, GH, gh)
                _team_wait(wait)
                _fwd_rows(r0, r1, code, act, ract, -1, True, H, x, gh, b, peep, hp, hn, cp,
                          cn, gt, ax, mask + t * N, hs)
                _team_wait(wait)
            elif cho:
                # r, z from h; n from (r h) W_hn^T: two GEMMs around phase 0.
                _gemm_hh(own, hp, w, 0, 2 * H, N, H, GH, gh)
                _fwd_rows(r0, r1, code, act, ract, 0, False, H, x, gh, b, peep, hp, hn, cp,
                          cn, gt, ax, mask + t * N, hs)
                _gemm_hh(own, ax, w, 2 * H, H, N, H, GH, gh)
                _fwd_rows(r0, r1, code, act, ract, 1, True, H, x, gh, b, peep, hp, hn, cp,
                          cn, gt, ax, mask + t * N, hs)
            else:
                _gemm_hh(own, hp, w, 0, GH, N, H, GH, gh)
                _fwd_rows(r0, r1, code, act, ract, -1, True, H, x, gh, b, peep, hp, hn, cp,
                          cn, gt, ax, mask + t * N, hs)
            continue
        # the packed path, rows r0..r1: the input projections of the next block of
        # steps, then this step's products (a small-batch team: the projections of
        # all rows, lr0 = 0 and ln = N, each thread its columns)
        D = si.D
        if small_team:
            lr0 = 0
            ln = N
        xb = xp + lr0 * STEP_BLOCK * GH  # this chunk's (step, row) projections
        if t % STEP_BLOCK == 0:
            sb = min(<Py_ssize_t>STEP_BLOCK, T - t)
            xg = <floating*>si.xg + lr0 * STEP_BLOCK * D
            if not small_team or tid == 0:
                for s in range(sb):
                    xsrc = (<const floating*>si.x + ((T - 1 - t - s) if si.rev else t + s)
                            * si.xs_t + lr0 * si.xs_n)
                    if si.xs_n == D:
                        memcpy(xg + s * ln * D, xsrc, ln * D * sizeof(floating))
                    else:
                        for i in range(ln):
                            memcpy(xg + (s * ln + i) * D, xsrc + i * si.xs_n,
                                   D * sizeof(floating))
            if not small_team:
                _pgw(si.isa, si.wfmt, xg, D, sb * n, D, <const floating*>si.wih, GH, xb, GH)
                _add_rows(sb * n, GH, <const floating*>si.bih, xb)
            else:
                _team_wait(wait)  # the gathered inputs
                if c1 > c0:
                    _pgw(si.isa, si.wfmt, xg, D, sb * N, D,
                         <const floating*>si.wih + _panel_off(si.wfmt, c0, D), c1 - c0,
                         xb + c0, GH)
                    for i in range(sb * N):
                        _add_rows(1, c1 - c0, <const floating*>si.bih + c0, xb + i * GH + c0)
        # step t's rows, indexed like the step's (N, G*H) block from row r0 on
        x = xb + ((t % STEP_BLOCK) * ln - lr0) * GH
        if cho:
            _pgw(si.isa, si.wfmt, hp + r0 * H, H, n, H, <const floating*>si.whh, 2 * H, gh + r0 * GH, GH)
            _fwd_rows(r0, r1, code, act, ract, 0, False, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hs)
            _pgw(si.isa, si.wfmt, ax + r0 * H, H, n, H, <const floating*>si.whh_n, H,
                gh + r0 * GH + 2 * H, GH)
            _fwd_rows(r0, r1, code, act, ract, 1, True, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hs)
        elif team > 1:
            if c1 > c0:
                _pgw(si.isa, si.wfmt, hp, H, N, H,
                     <const floating*>si.whh + _panel_off(si.wfmt, c0, H), c1 - c0, gh + c0, GH)
            _team_wait(wait)
            _fwd_rows(r0, r1, code, act, ract, -1, True, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hs)
            _team_wait(wait)
        else:
            _pgw(si.isa, si.wfmt, hp + r0 * H, H, n, H, <const floating*>si.whh, GH, gh + r0 * GH, GH)
            _fwd_rows(r0, r1, code, act, ract, -1, True, H, x, gh, b, peep, hp, hn, cp, cn,
                      gt, ax, mask + t * N, hs)


cdef struct StepWeights:
    # The packed path's recurrent weights for the backward (``_backward_sweep``):
    # W_hh packed for ``dg W_hh`` (the transposed product; Cho's GRU: rows
    # [0, 2H) in ``wt``, [2H, 3H) in ``wt_n``), in format ``wfmt`` (WF_NATIVE, or
    # WF_BF16D: bfloat16 arithmetic). Pointers to the call's dtype.
    const void* wt
    const void* wt_n
    int isa
    int wfmt


cdef void _backward_sweep(int code, int act, int ract, Py_ssize_t t0, Py_ssize_t N,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t H, const floating* w,
                          const StepWeights* sw, const floating* peep,
                          const uint8_t* mask, const floating* hc, const floating* cc,
                          const floating* gates, const floating* aux,
                          const floating* dhseq, floating* dh, floating* dh_tmp,
                          floating* dc, floating* dc_tmp, floating* dg, floating* drh,
                          int64_t* budget, uint8_t* vbuf, floating* dxp, floating* dgh,
                          Py_ssize_t small) noexcept nogil:
    """Backpropagate rows r0 .. r1-1 from step ``t0`` down to 0, adding into dxp/dgh.

    ``dh``/``dc`` (N, H) carry the incoming gradient and receive the gradient on
    the state before step 0 (``dh_tmp``/``dc_tmp`` are ping-pong scratch; the
    dc buffers NULL without a cell state). ``dhseq`` (T, N, H) or NULL: output
    gradients added at valid steps. ``budget`` (N,) or NULL: valid cells each
    row may still pass through; a row whose budget runs out drops its gradient.
    Stops early once all are spent. ``vbuf`` (N,) scratch: the rows valid at a
    step (mask and budget). ``sw`` NULL: the products ``dg W_hh`` through BLAS
    (rows must be all of them); else the packed kernels on these rows.
    """
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, t, i, n = r1 - r0
    cdef bint cho = code == CELL_GRU_CHO
    cdef bint own = _own_small_gemm(N, GH * H * <Py_ssize_t>sizeof(floating), small)
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
    # A full sweep of an LSTM writes each step's gate gradients once, straight into
    # dxp's step (its rows are in dg's layout and nothing else adds there), instead
    # of into dg and then adding dg into zeroed dxp rows: the products read them there.
    cdef bint direct = (budget == NULL and dgh == NULL
                        and (code == CELL_LSTM or code == CELL_LSTM_PEEPHOLE))
    for t in range(t0, -1, -1):
        if cc != NULL:
            cp = cc + t * NH
            cn = cc + (t + 1) * NH
        if aux != NULL:
            ax = aux + t * NH
        if dhseq != NULL:
            seq = dhseq + t * NH
        if budget != NULL:
            for i in range(r0, r1):
                vbuf[i] = mask[t * N + i] != 0 and budget[i] > 0
            valid = vbuf
        else:
            valid = mask + t * N
        gt = gates + t * N * GH
        hp = hc + t * NH
        dx = dxp + t * N * GH
        if direct:
            dg = dx
        _bwd_rows(r0, r1, code, act, ract, 0, H, valid, seq, dh, dc, hp, cp, cn, gt, ax,
                  peep, drh, dg, dx, dh_tmp, dc_tmp)
        if sw == NULL:
            if cho:
                # drh = dn W_hn (the gradient on r h), then the r-gate phase.
                _gemm_dh(own, dg, w, 2 * H, H, N, H, GH, 0, drh)
                _bwd_rows(r0, r1, code, act, ract, 1, H, valid, seq, dh, dc, hp, cp, cn, gt,
                          ax, peep, drh, dg, dx, dh_tmp, dc_tmp)
                _gemm_dh(own, dg, w, 0, 2 * H, N, H, GH, 1, dh_tmp)
            else:
                _gemm_dh(own, dg, w, 0, GH, N, H, GH, 1, dh_tmp)
        elif cho:
            _pgw_acc(sw.isa, sw.wfmt, dg + r0 * GH + 2 * H, GH, n, H, <const floating*>sw.wt_n, H,
                    drh + r0 * H, H, 0)
            _bwd_rows(r0, r1, code, act, ract, 1, H, valid, seq, dh, dc, hp, cp, cn, gt,
                      ax, peep, drh, dg, dx, dh_tmp, dc_tmp)
            _pgw_acc(sw.isa, sw.wfmt, dg + r0 * GH, GH, n, 2 * H, <const floating*>sw.wt, H,
                    dh_tmp + r0 * H, H, 1)
        else:
            _pgw_acc(sw.isa, sw.wfmt, dg + r0 * GH, GH, n, GH, <const floating*>sw.wt, H,
                    dh_tmp + r0 * H, H, 1)
        _bwd_finish_rows(r0, r1, H, GH, valid, budget, dg,
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
            for i in range(r0, r1):
                if budget[i] > 0:
                    alive = True
                    break
            if not alive:
                break
    if dh != dh_in:
        memcpy(dh_in + r0 * H, dh + r0 * H, n * H * sizeof(floating))
    if dc != NULL and dc != dc_in:
        memcpy(dc_in + r0 * H, dc + r0 * H, n * H * sizeof(floating))


cdef void _backward_rows(int code, int act, int ract, Py_ssize_t truncate, Py_ssize_t T,
                         Py_ssize_t N, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t H,
                         const floating* w, const StepWeights* sw, const floating* peep,
                         const uint8_t* mask, const floating* hc, const floating* cc,
                         const floating* gates, const floating* aux,
                         const floating* dhseq, const floating* dh_T,
                         const floating* dc_T, floating* dh0, floating* dc0,
                         floating* work, floating* dg, int64_t* budget, uint8_t* vbuf,
                         floating* dxp, floating* dgh, const uint8_t* sources,
                         Py_ssize_t small) noexcept nogil:
    """The sweeps of ``_backward_all`` on rows r0 .. r1-1 (their rows of dxp and
    dgh zeroed first). ``sources`` (T,):
    truncated BPTT's gradient sources that are nonzero somewhere in the batch
    (decided for the whole batch, so that every row chunk sweeps the same ones;
    NULL: every source)."""
    cdef Py_ssize_t NH = N * H, ts, i, j, k, o = r0 * H, nH = (r1 - r0) * H
    cdef bint lstm = cc != NULL
    cdef floating* dh_a = work
    cdef floating* dh_b = work + NH
    cdef floating* dc_a = work + 2 * NH if lstm else NULL
    cdef floating* dc_b = work + 3 * NH if lstm else NULL
    cdef floating* drh = work + 4 * NH
    cdef floating s
    cdef Py_ssize_t GH = n_gates_of(code) * H
    # the sweeps add into dxp/dgh: these rows start from zero (here, on the
    # chunk's own thread, rather than the whole arrays on one thread first); a full
    # LSTM sweep writes every step's rows itself (``_backward_sweep``'s ``direct``)
    for ts in range(T if truncate >= 0 or dgh != NULL
                    or not (code == CELL_LSTM or code == CELL_LSTM_PEEPHOLE) else 0):
        memset(dxp + (ts * N + r0) * GH, 0, (r1 - r0) * GH * sizeof(floating))
        if dgh != NULL:
            memset(dgh + (ts * N + r0) * GH, 0, (r1 - r0) * GH * sizeof(floating))
    if truncate < 0:
        # One sweep from the last step, starting from dh_T/dc_T (zero if None).
        if dh_T != NULL:
            memcpy(dh0 + o, dh_T + o, nH * sizeof(floating))
        else:
            memset(dh0 + o, 0, nH * sizeof(floating))
        if lstm:
            if dc_T != NULL:
                memcpy(dc0 + o, dc_T + o, nH * sizeof(floating))
            else:
                memset(dc0 + o, 0, nH * sizeof(floating))
        _backward_sweep(code, act, ract, T - 1, N, r0, r1, H, w, sw, peep, mask, hc, cc,
                        gates, aux, dhseq, dh0, dh_b, dc0 if lstm else NULL, dc_b, dg, drh,
                        NULL, vbuf, dxp, dgh, small)
        return
    # One budgeted sweep per gradient source, in time order: the (masked)
    # output gradient at each step, plus dh_T/dc_T at the last step.
    memset(dh0 + o, 0, nH * sizeof(floating))
    if lstm:
        memset(dc0 + o, 0, nH * sizeof(floating))
    for ts in range(T):
        if sources != NULL and not sources[ts]:
            continue  # a zero source contributes nothing
        for i in range(r0, r1):
            for j in range(H):
                k = i * H + j
                s = 0
                if dhseq != NULL and mask[ts * N + i]:
                    s = dhseq[ts * NH + k]
                if ts == T - 1 and dh_T != NULL:
                    s = s + dh_T[k]
                dh_a[k] = s
        if lstm:
            if ts == T - 1 and dc_T != NULL:
                memcpy(dc_a + o, dc_T + o, nH * sizeof(floating))
            else:
                memset(dc_a + o, 0, nH * sizeof(floating))
        for i in range(r0, r1):
            budget[i] = truncate + 1
        _backward_sweep(code, act, ract, ts, N, r0, r1, H, w, sw, peep, mask, hc, cc, gates,
                        aux, NULL, dh_a, dh_b, dc_a, dc_b, dg, drh, budget, vbuf, dxp, dgh,
                        small)
        for k in range(o, o + nH):
            dh0[k] += dh_a[k]
        if lstm:
            for k in range(o, o + nH):
                dc0[k] += dc_a[k]


cdef void _backward_all(int code, int act, int ract, Py_ssize_t truncate, Py_ssize_t T,
                        Py_ssize_t N, Py_ssize_t H, const floating* w, const StepWeights* sw,
                        const floating* peep, const uint8_t* mask, const floating* hc,
                        const floating* cc, const floating* gates, const floating* aux,
                        const floating* dhseq, const floating* dh_T,
                        const floating* dc_T, floating* dh0, floating* dc0,
                        floating* work, floating* dg, int64_t* budget, uint8_t* vbuf,
                        floating* dxp, floating* dgh, floating* dw, floating* db,
                        floating* dpeep, Py_ssize_t small, const floating* xin=NULL,
                        Py_ssize_t D=0, floating* dw_ih=NULL) noexcept nogil:
    """Full BPTT (truncate < 0) or one budgeted sweep per gradient source, then
    dW_hh (GEMM over all T*N rows), db_hh and, when ``dpeep`` (3, H) is given,
    the peephole gradients. ``xin`` (T*N, D, rows in dxp's order): the inputs,
    whose weight gradient is then added into ``dw_ih`` in the same pass over dxp;
    only with ``sw`` and a cell whose dgh is dxp (every cell but the GRUs: the
    caller's ``fuse_ih``), else ignored. ``cc``/``dc0`` NULL without a cell state, ``aux``
    NULL without aux; ``work`` holds 5 (N, H) buffers; ``dgh`` NULL when the
    recurrent pre-activation gradient equals dxp (every cell but ``gru``).

    ``sw`` NULL: one pass over all rows. Else the sweeps run on row chunks that
    threads take dynamically (rows never interact until the weight gradients)."""
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, k, j, rows, nch, nt, ci, r0, ts, i
    cdef unsigned int csr
    cdef double t0, cpu, c0
    cdef const floating* g
    cdef const floating* c_prev
    # truncated BPTT: the sources (output gradients at each step, plus dh_T/dc_T at
    # the last) that are nonzero somewhere in the batch (without memory for the
    # flags: every source, which sweeps zeros for nothing but gives the same sums)
    cdef uint8_t* sources = NULL
    if truncate >= 0:
        sources = <uint8_t*>malloc(<size_t>T)
    if sources != NULL:
        for ts in range(T):
            sources[ts] = 0
            if dhseq != NULL:
                for i in range(N):
                    if mask[ts * N + i]:
                        for j in range(H):
                            if dhseq[ts * NH + i * H + j] != 0:
                                sources[ts] = 1
                                break
                    if sources[ts]:
                        break
        for k in range(NH):
            if (dh_T != NULL and dh_T[k] != 0) or (dc_T != NULL and dc_T[k] != 0):
                sources[T - 1] = 1
                break
    if sw == NULL:
        _backward_rows(code, act, ract, truncate, T, N, 0, N, H, w, NULL, peep, mask, hc, cc,
                       gates, aux, dhseq, dh_T, dc_T, dh0, dc0, work, dg, budget, vbuf, dxp,
                       dgh, sources, small)
    else:
        nt = _chunking(N, T, <double>GH * H, sizeof(floating), &rows, &nch)
        if nt <= 1:
            _backward_rows(code, act, ract, truncate, T, N, 0, N, H, w, sw, peep, mask, hc,
                           cc, gates, aux, dhseq, dh_T, dc_T, dh0, dc0, work, dg, budget,
                           vbuf, dxp, dgh, sources, small)
        else:
            cyrnn_count_path(2)
            t0 = cyrnn_wall()
            cpu = 0
            for ci in prange(nch, schedule='dynamic', chunksize=1, num_threads=nt):
                r0 = ci * rows
                c0 = cyrnn_cpu()
                csr = cyrnn_fp_flush()
                _backward_rows(code, act, ract, truncate, T, N, r0, min(r0 + rows, N), H, w,
                               sw, peep, mask, hc, cc, gates, aux, dhseq, dh_T, dc_T, dh0,
                               dc0, work, dg, budget, vbuf, dxp, dgh, sources, small)
                cyrnn_fp_restore(csr)
                cpu += cyrnn_cpu() - c0
            _judge(t0, cpu, nt)
    free(sources)

    # dW_hh = sum_t dgh_t^T hin_t, one GEMM over all T*N rows (Cho's GRU: the n
    # block against r*h); db_hh = sum of dgh. Every cell but ``gru``: the
    # gradients on the input and the recurrent pre-activations are the same array.
    if dgh == NULL:
        dgh = dxp
    memset(db, 0, GH * sizeof(floating))
    if sw != NULL:  # on cyrnn's threads, db summed from the same blocks
        memset(dw, 0, GH * H * sizeof(floating))
        if code == CELL_GRU_CHO:
            _wgrad(sw.isa, dgh, GH, hc, H, T * N, 2 * H, H, dw, db, sw.wfmt)
            _wgrad(sw.isa, dgh + 2 * H, GH, aux, H, T * N, H, H, dw + 2 * H * H, db + 2 * H,
                   sw.wfmt)
        else:
            _wgrad_by(sw.isa, dgh, GH, hc, H, T * N, GH, H, dw, db, -1,
                      xin if dgh == dxp else NULL, D, D, dw_ih, sw.wfmt)
    else:
        if code == CELL_GRU_CHO:
            _gemm_dw(dgh, hc, 0, 2 * H, T * N, H, GH, dw)
            _gemm_dw(dgh, aux, 2 * H, H, T * N, H, GH, dw)
        else:
            _gemm_dw(dgh, hc, 0, GH, T * N, H, GH, dw)
        _strips(cyrnn_pgemm_isa(), dgh, GH, T * N, GH, NULL, 0, db)  # column sums
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


# ----------------------------------------------------------------------------
# The whole-sequence products of the packed path's backward, on cyrnn's threads
# (no BLAS thread pool alternating with the row-chunk threads).
# ----------------------------------------------------------------------------

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)


cdef enum:
    WG_ROWS = 256        # rows of one reduction block of ``_wgrad``
    WG_MAX_PARTIALS = 64 << 20  # bytes of partials beyond which ``_wgrad`` uses BLAS
    WG_GROUPS = 2        # partial sums of ``_wgrad`` (fixed: results do not depend
                         # on the thread count)
    WG_STRIP_BYTES = 512 << 10  # bytes of one block's strips (stays in a core's L2)


cdef inline void _wgrad(int isa, const floating* dg, Py_ssize_t ldg, const floating* x,
                        Py_ssize_t ldx, Py_ssize_t rows, Py_ssize_t C, Py_ssize_t K,
                        floating* out, floating* bsum, int wfmt=WF_NATIVE) noexcept nogil:
    _wgrad_by(isa, dg, ldg, x, ldx, rows, C, K, out, bsum, -1, NULL, 0, 0, NULL, wfmt)


cdef void _wgrad_by(int isa, const floating* dg, Py_ssize_t ldg, const floating* x,
                    Py_ssize_t ldx, Py_ssize_t rows, Py_ssize_t C, Py_ssize_t K,
                    floating* out, floating* bsum, int mode, const floating* x2,
                    Py_ssize_t ldx2, Py_ssize_t K2, floating* out2,
                    int wfmt=WF_NATIVE) noexcept nogil:
    """``out (C, K) += dg[:rows, :C]^T x[:rows, :K]`` (row strides ``ldg``, ``ldx``):
    a weight gradient summed over every row of every step; ``bsum`` (C,), unless
    NULL, gets the column sums of dg added (the bias gradient). ``x2`` (NULL: none):
    a second operand against the same dg, ``out2 (C, K2) += dg^T x2`` (an LSTM's
    dW_ih next to its dW_hh), from the same strips when both take them.

    The rows are cut into WG_GROUPS groups of equal size (to a row), each into
    blocks of about equal size (at most WG_ROWS rows); each group is summed into its
    own partials by the thread that takes it, then the partials are added in group
    order (a result depends on the row count, never on the thread count). Per block
    x's block is packed into panels (``_pack_strided``) and
    dg's block, MC columns at a time, copied into row strips (``_strips``, which
    also sums the columns) that the kernel reads in order; the strips and x's
    panels stay in L2 while the kernel runs over them. Two cases skip the strips:
    x one panel wide (the copy would cost more than it saves; the kernel reads dg
    as it lies) and x's panels padding K by more than a quarter (dg's block is
    packed instead, partials (K, C), added transposed). Every element is the same
    chain of multiply-adds in all three (the products commute), so the choice
    never changes a result. Falls back to one BLAS GEMM when the partials would
    pass WG_MAX_PARTIALS bytes (a large Dense head) or the scratch cannot be
    allocated. ``mode`` (tests; -1: the choice above) forces the strips (0), x
    packed with dg read as it lies (1) or dg packed (2).

    ``wfmt`` WF_BF16D (float32, where ``cyrnn_bf16dot_ok``): in bfloat16 arithmetic,
    always the strips: x's block packed as bfloat16 k-pair panels
    (``cyrnn_pack_bf_cols``, k running over the block's rows), dg's block rounded into
    8-column strips of k-pair words (``cyrnn_bf16_strips``, which adds the unrounded
    float32 column sums), multiplied with ``VDPBF16PS`` (``cyrnn_pgemm_bds``) into
    float32 partials. Partials beyond WG_MAX_PARTIALS split into one operand at a
    time, then blocks of dg's columns (the same sums), still bfloat16; float32 only
    where even 8 columns would pass it or the scratch cannot be had."""
    cdef Py_ssize_t nblk = (rows + WG_ROWS - 1) // WG_ROWS, ng, per, g, b, r0, R, i, j
    cdef Py_ssize_t g0, gr, blk
    cdef Py_ssize_t nr = cyrnn_pgemm_nr(isa, sizeof(floating)), mr = cyrnn_pgemm_mr(isa)
    cdef bint bd = False
    if floating is float:
        bd = wfmt == WF_BF16D and isa == 2 and cyrnn_bf16dot_ok()
    cdef bint pack_x = bd or (K + nr - 1) // nr * nr * 4 <= 5 * K
    cdef bint strips = bd or (pack_x and K > nr)
    if mode >= 0 and not bd:
        pack_x = mode != 2
        strips = mode == 0
    cdef double partials = <double>min(<Py_ssize_t>WG_GROUPS, nblk) * C * sizeof(floating)
    if x2 != NULL and (partials * (K + K2) > WG_MAX_PARTIALS or not bd and not (
            strips and (K2 + nr - 1) // nr * nr * 4 <= 5 * K2)):
        # no shared strips (or x2's panels would pad it much, or the two operands'
        # partials together would send both to BLAS): one at a time
        _wgrad_by(isa, dg, ldg, x, ldx, rows, C, K, out, bsum, mode, NULL, 0, 0, NULL, wfmt)
        _wgrad_by(isa, dg, ldg, x2, ldx2, rows, C, K2, out2, NULL, mode, NULL, 0, 0, NULL,
                  wfmt)
        return
    if x2 == NULL:
        K2 = 0
    cdef Py_ssize_t mcs
    if bd and partials * K > WG_MAX_PARTIALS:
        # bfloat16: blocks of dg's columns (each element's chain as whole), not BLAS
        mcs = <Py_ssize_t>(WG_MAX_PARTIALS / (partials / C * K)) // 8 * 8
        if mcs >= 8:
            j = 0
            while j < C:
                _wgrad_by(isa, dg + j, ldg, x, ldx, rows, min(mcs, C - j), K, out + j * K,
                          bsum + j if bsum != NULL else NULL, mode, NULL, 0, 0, NULL, wfmt)
                j = j + mcs
            return
    # words of an 8-column bfloat16 strip, padded by 64 bytes off a multiple of 4 KiB
    # (the strips of one row pair would otherwise share an L1 set, as
    # cyrnn_strip_stride avoids)
    cdef Py_ssize_t blds = _al(8 * ((WG_ROWS + 1) // 2)) + 16
    cdef Py_ssize_t MC = (max(8, WG_STRIP_BYTES // (blds * 4) // 8 * 8) if bd else
                          max(mr, WG_STRIP_BYTES // (WG_ROWS * <Py_ssize_t>sizeof(floating))
                              // mr * mr))
    cdef Py_ssize_t nt, c0, mc, lds
    cdef Py_ssize_t psz = (cyrnn_pgemm_bsize(isa, K, WG_ROWS) if bd else
                           cyrnn_pgemm_size(isa, sizeof(floating), K if pack_x else C,
                                            WG_ROWS))
    cdef Py_ssize_t ssz = 0
    cdef unsigned int csr
    cdef double t0, cpu, c0t
    cdef Py_ssize_t slot
    cdef floating* ws
    cdef floating* acc
    cdef floating* P
    cdef floating* S
    cdef floating* cs
    cdef floating* acc2
    cdef floating* P2
    if rows <= 0:
        return
    if bd:
        ssz = (min(MC, C) + 7) // 8 * blds
        if cyrnn_amx_ok():
            # the tiles' rows instead (_wgrad_block_bd): blocks of MC // 16 * 16 columns
            # padded to 16 rows of whole tiles of 16 k-pairs
            ssz = max(ssz, (min(max(16, MC // 16 * 16), C) + 15) // 16 * 16
                      * (((WG_ROWS + 1) // 2 + 15) // 16 * 16))
    elif strips:
        ssz = (min(MC, C) + mr - 1) // mr * cyrnn_strip_stride(isa, sizeof(floating), WG_ROWS)
    slot = _al(C * K) + _al(psz) + _al(ssz) + _al(C) + _al(C * K2) + _al(
        cyrnn_pgemm_bsize(isa, K2, WG_ROWS) if bd else
        cyrnn_pgemm_size(isa, sizeof(floating), K2, WG_ROWS))
    ng = min(<Py_ssize_t>WG_GROUPS, nblk)
    if <double>ng * C * (K + K2) * sizeof(floating) > WG_MAX_PARTIALS:
        ws = NULL  # partials too big (a large Dense head): one BLAS GEMM
    else:
        # 64-byte aligned: the packed kernel loads whole vectors from P
        ws = <floating*>aligned_alloc(64, <size_t>((ng * slot * sizeof(floating) + 63)
                                                   // 64 * 64))
    if ws == NULL:
        _gemm(c'N', c'T', <int>K, <int>C, <int>rows, <floating>1, x, <int>ldx, dg, <int>ldg,
              <floating>1, out, <int>K)
        if bsum != NULL:
            _strips(isa, dg, ldg, rows, C, NULL, 0, bsum)
        if x2 != NULL:
            _gemm(c'N', c'T', <int>K2, <int>C, <int>rows, <floating>1, x2, <int>ldx2, dg,
                  <int>ldg, <floating>1, out2, <int>K2)
        return
    if strips:
        cyrnn_count_path(4)
        if K2:
            cyrnn_count_path(5)
    nt = _team(min(<Py_ssize_t>_nthreads(), ng))
    if <double>rows * C * (K + K2) < PARALLEL_MIN_MACS:
        nt = 1
    t0 = cyrnn_wall()
    cpu = 0
    for g in prange(ng, schedule='dynamic', chunksize=1, num_threads=nt):
        c0t = cyrnn_cpu()
        csr = cyrnn_fp_flush()
        acc = ws + g * slot
        P = acc + _al(C * K)
        S = P + _al(psz)
        cs = S + _al(ssz)
        acc2 = cs + _al(C)
        P2 = acc2 + _al(C * K2)
        memset(acc, 0, C * K * sizeof(floating))
        memset(cs, 0, C * sizeof(floating))
        memset(acc2, 0, C * K2 * sizeof(floating))
        # the group's rows: an equal share of all (two groups of 7 blocks of 256 rows
        # would leave one thread 1,792 of 3,200 rows), cut into blocks of about equal
        # size, a multiple of 8 rows, at most WG_ROWS
        g0 = g * rows // ng
        gr = (g + 1) * rows // ng - g0
        per = (gr + WG_ROWS - 1) // WG_ROWS
        blk = min(<Py_ssize_t>WG_ROWS, ((gr + per - 1) // per + 7) // 8 * 8)
        for b in range(per):
            r0 = g0 + b * blk
            R = min(blk, g0 + gr - r0)
            if bd:
                _wgrad_block_bd(isa, <const float*>dg + r0 * ldg, ldg,
                                <const float*>x + r0 * ldx, ldx, R, C, K, MC, blds,
                                <float*>acc, <float*>cs if bsum != NULL else NULL,
                                <float*>P, <float*>S,
                                <const float*>x2 + r0 * ldx2 if K2 else NULL, ldx2, K2,
                                <float*>acc2, <float*>P2)
            elif strips:
                _pack_strided(isa, x + r0 * ldx, K, R, 1, ldx, P)
                if K2:
                    _pack_strided(isa, x2 + r0 * ldx2, K2, R, 1, ldx2, P2)
                lds = cyrnn_strip_stride(isa, sizeof(floating), R)
                c0 = 0
                while c0 < C:
                    mc = min(MC, C - c0)
                    _strips(isa, dg + r0 * ldg + c0, ldg, R, mc, S, lds,
                            cs + c0 if bsum != NULL else NULL)
                    _pg_s(isa, S, lds, mc, R, P, K, acc + c0 * K, K)
                    if K2:
                        _pg_s(isa, S, lds, mc, R, P2, K2, acc2 + c0 * K2, K2)
                    c0 = c0 + MC
            else:
                if bsum != NULL:
                    _strips(isa, dg + r0 * ldg, ldg, R, C, NULL, 0, cs)
                if pack_x:
                    _pack_strided(isa, x + r0 * ldx, K, R, 1, ldx, P)
                    _pg_xt(isa, dg + r0 * ldg, ldg, C, R, P, K, acc, K)
                else:
                    _pack_strided(isa, dg + r0 * ldg, C, R, 1, ldg, P)
                    _pg_xt(isa, x + r0 * ldx, ldx, K, R, P, C, acc, C)
        cyrnn_fp_restore(csr)
        cpu += cyrnn_cpu() - c0t
    _judge(t0, cpu, nt)
    for g in range(ng):
        acc = ws + g * slot
        if pack_x:
            _add_rows(1, C * K, acc, out)
        else:
            for i in range(C):
                for j in range(K):
                    out[i * K + j] += acc[j * C + i]
        cs = acc + _al(C * K) + _al(psz) + _al(ssz)
        if bsum != NULL:
            _add_rows(1, C, cs, bsum)
        if K2:
            _add_rows(1, C * K2, cs + _al(C), out2)
    free(ws)


cdef inline void _wgrad_block_bd(int isa, const float* dg, Py_ssize_t ldg, const float* x,
                                 Py_ssize_t ldx, Py_ssize_t R, Py_ssize_t C, Py_ssize_t K,
                                 Py_ssize_t MC, Py_ssize_t lds, float* acc, float* cs,
                                 float* P, float* S, const float* x2, Py_ssize_t ldx2,
                                 Py_ssize_t K2, float* acc2, float* P2) noexcept nogil:
    """One block of R rows of ``_wgrad_by``'s bfloat16 strips (``acc += dg^T x``, and
    ``acc2 += dg^T x2`` when K2; ``cs`` NULL: no column sums). On AMX tiles
    (``cyrnn_amx_ok``) dg's block goes into the tiles' rows, one per column
    (``cyrnn_bf16_rows_t``), MC // 16 * 16 columns at a time."""
    cdef Py_ssize_t c0 = 0, mc, KP = ((R + 1) // 2 + 15) // 16 * 16
    cyrnn_pack_bf_cols(isa, x, K, R, ldx, <unsigned int*>P)
    if K2:
        cyrnn_pack_bf_cols(isa, x2, K2, R, ldx2, <unsigned int*>P2)
    if cyrnn_amx_ok():
        MC = max(16, MC // 16 * 16)
        while c0 < C:
            mc = min(MC, C - c0)
            cyrnn_bf16_rows_t_any(dg + c0, ldg, R, mc, <unsigned int*>S, KP,
                                  cs + c0 if cs != NULL else NULL)
            cyrnn_pgemm_bdt(<const unsigned int*>S, KP, mc, R, <const unsigned int*>P, K,
                            acc + c0 * K, K)
            if K2:
                cyrnn_pgemm_bdt(<const unsigned int*>S, KP, mc, R, <const unsigned int*>P2,
                                K2, acc2 + c0 * K2, K2)
            c0 = c0 + MC
        return
    while c0 < C:
        mc = min(MC, C - c0)
        cyrnn_bf16_strips_any(dg + c0, ldg, R, mc, <unsigned int*>S, lds,
                              cs + c0 if cs != NULL else NULL)
        cyrnn_pgemm_bds(<const unsigned int*>S, lds, mc, R, <const unsigned int*>P, K,
                        acc + c0 * K, K)
        if K2:
            cyrnn_pgemm_bds(<const unsigned int*>S, lds, mc, R, <const unsigned int*>P2, K2,
                            acc2 + c0 * K2, K2)
        c0 = c0 + MC


cdef void _rows_product(int isa, int wfmt, const floating* a, Py_ssize_t lda,
                        Py_ssize_t rows, Py_ssize_t K, const floating* P, Py_ssize_t C,
                        floating* out, Py_ssize_t ldo, int beta) noexcept nogil:
    """``out[:rows, :C] (+)= a[:rows, :K] W^T`` with ``W`` packed (``P``, format
    ``wfmt``: ``_pgw_acc``), on row chunks of WG_ROWS that the threads take
    dynamically."""
    cdef Py_ssize_t nch = (rows + WG_ROWS - 1) // WG_ROWS, ci, r0
    cdef Py_ssize_t nt = _team(min(<Py_ssize_t>_nthreads(), nch))
    cdef unsigned int csr
    cdef double t0, cpu = 0, c0
    if nt <= 1 or <double>rows * C * K < PARALLEL_MIN_MACS:
        _pgw_acc(isa, wfmt, a, lda, rows, K, P, C, out, ldo, beta)
        return
    t0 = cyrnn_wall()
    for ci in prange(nch, schedule='dynamic', chunksize=1, num_threads=nt):
        r0 = ci * WG_ROWS
        c0 = cyrnn_cpu()
        csr = cyrnn_fp_flush()
        _pgw_acc(isa, wfmt, a + r0 * lda, lda, min(<Py_ssize_t>WG_ROWS, rows - r0), K, P, C,
                out + r0 * ldo, ldo, beta)
        cyrnn_fp_restore(csr)
        cpu += cyrnn_cpu() - c0
    _judge(t0, cpu, nt)
