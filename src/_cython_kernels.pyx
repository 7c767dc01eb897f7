# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Compiled recurrent kernels for ``cyrnn.backends.cython_backend``.

One implementation of the kernel contract (``docs/architecture.md``) for every
cell, in float32 and float64 (fused type ``floating``):

* the cell math lives in one forward and one backward row function per cell
  (``rnn_fwd``/``rnn_bwd``, ``lstm_fwd``/``lstm_bwd``, ``gru_fwd``/``gru_bwd``);
  a row function updates one sequence (one batch row) of one step;
* one time loop for the forward pass (``_forward_loop``) and one backward sweep
  (``_backward_sweep``) serve all cells; they dispatch on the cell kind per step;
* the recurrent products (``h W_hh^T`` forward, ``dgh W_hh`` backward) and the
  final ``dW_hh`` contraction go through ``scipy.linalg.cython_blas`` GEMM;
* the row loops run in parallel over the batch (OpenMP ``prange``) when the
  step is large enough and the module was built with OpenMP, serially otherwise.

Everything below the ``def`` entry points runs without the GIL and allocates
nothing: the Python wrapper allocates outputs and scratch buffers with NumPy.

Layout reminder: a C-contiguous ``(R, C)`` array is the column-major ``(C, R)``
matrix with leading dimension ``C``; the GEMM calls below are written in those
column-major terms.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

# Cell kind and activation codes: Cell.kind_code / Cell.activation_code.
cdef enum:
    RNN = 0
    LSTM = 1
    GRU = 2
    ACT_TANH = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2

# Row loops go parallel only when a step has at least this many hidden units in
# all (N * H) and at least two rows. Below it, waking the OpenMP team costs more
# than the gate math it shares out (measured on 2 cores with OpenMP's passive
# wait policy, which the Python wrapper makes the default: with spinning OpenMP
# threads competing with a multi-threaded BLAS, every size got slower).
cdef enum:
    PARALLEL_MIN_WORK = 32768
PARALLEL_MIN = PARALLEL_MIN_WORK

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CYRNN_OPENMP 1
    #else
    #define CYRNN_OPENMP 0
    #endif
    """
    int CYRNN_OPENMP


def openmp_enabled():
    """Whether this module was compiled with OpenMP (parallel row loops)."""
    return bool(CYRNN_OPENMP)


# ----------------------------------------------------------------------------
# Scalar helpers (float32 calls the float libm functions).
# ----------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    """Logistic function without overflow for large ``|x|``.

    x >= 0: 1 / (1 + exp(-x)); x < 0: exp(x) / (1 + exp(x)). Both use
    e = exp(-|x|) <= 1, so one exp and one division, and no branch on the sign
    (the select compiles to a conditional move).
    """
    cdef floating e = _exp(-x if x >= 0 else x)
    return (1 if x >= 0 else e) / (1 + e)


cdef inline floating _activate(int act, floating a) noexcept nogil:
    if act == ACT_TANH:
        return _tanh(a)
    if act == ACT_RELU:
        return 0 if a <= 0 else a  # NaN propagates, as with np.maximum
    return _sigmoid(a)


cdef inline floating _activate_grad(int act, floating y) noexcept nogil:
    """Derivative of the activation expressed through its output ``y``."""
    if act == ACT_TANH:
        return 1 - y * y
    if act == ACT_RELU:
        return 1 if y > 0 else 0
    return y * (1 - y)


# ----------------------------------------------------------------------------
# GEMM through scipy's BLAS.
# ----------------------------------------------------------------------------

cdef inline void _gemm(char transa, char transb, int m, int n, int k,
                       floating alpha, const floating* a, int lda,
                       const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major ``C = alpha op(A) op(B) + beta C`` (``C`` is m x n)."""
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*>a, &lda,
              <float*>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*>a, &lda,
              <double*>b, &ldb, &beta, c, &ldc)


cdef inline void _gemm_hh(const floating* x, const floating* w, Py_ssize_t row0,
                          Py_ssize_t rows, Py_ssize_t N, Py_ssize_t H,
                          Py_ssize_t GH, floating* out) noexcept nogil:
    """``out[:, row0:row0+rows] = x @ w[row0:row0+rows].T``.

    ``x`` (N, H) row-major, ``w`` (GH, H) row-major, ``out`` (N, GH) row-major.
    Column-major: ``out^T (rows x N, ld GH) = W_blk (rows x H) . x^T (H x N)``,
    and ``W_blk`` is stored as the column-major (H x rows) matrix: transa='T'.
    """
    _gemm(c'T', c'N', <int>rows, <int>N, <int>H, 1, w + row0 * H, <int>H,
          x, <int>H, 0, out + row0, <int>GH)


cdef inline void _gemm_dh(const floating* dg, const floating* w, Py_ssize_t row0,
                          Py_ssize_t rows, Py_ssize_t N, Py_ssize_t H,
                          Py_ssize_t GH, floating beta, floating* out) noexcept nogil:
    """``out = dg[:, row0:row0+rows] @ w[row0:row0+rows] + beta * out``.

    ``dg`` (N, GH), ``w`` (GH, H), ``out`` (N, H), all row-major. Column-major:
    ``out^T (H x N) = W_blk^T (H x rows, ld H) . dg_blk^T (rows x N, ld GH)``.
    """
    _gemm(c'N', c'N', <int>H, <int>N, <int>rows, 1, w + row0 * H, <int>H,
          dg + row0, <int>GH, beta, out, <int>H)


cdef inline void _gemm_dw(const floating* dgh, const floating* hin, Py_ssize_t row0,
                          Py_ssize_t rows, Py_ssize_t TN, Py_ssize_t H,
                          Py_ssize_t GH, floating* dw) noexcept nogil:
    """``dw[row0:row0+rows] = dgh[:, row0:row0+rows].T @ hin`` over all T*N rows.

    Column-major: ``dw_blk^T (H x rows, ld H) = hin^T (H x TN, ld H) .
    dgh_blk (TN x rows)``, where ``dgh_blk^T`` is stored (rows x TN, ld GH):
    transb='T'.
    """
    _gemm(c'N', c'T', <int>H, <int>rows, <int>TN, 1, hin, <int>H,
          dgh + row0, <int>GH, 0, dw + row0 * H, <int>H)


# ----------------------------------------------------------------------------
# Cell math: one forward and one backward row function per cell.
# Pointers are already offset to the row; gate blocks are H apart.
# ----------------------------------------------------------------------------

cdef inline void rnn_fwd(int act, const floating* xp, const floating* gh,
                         const floating* b, floating* hn, floating* gates,
                         Py_ssize_t H) noexcept nogil:
    """h' = act(xp + gh + b); the gate value is h' itself."""
    cdef Py_ssize_t j
    cdef floating y
    for j in range(H):
        y = _activate(act, xp[j] + gh[j] + b[j])
        hn[j] = y
        gates[j] = y


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
    h' = o tanh(c')."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o, c
    for j in range(H):
        i = _sigmoid(xp[j] + gh[j] + b[j])
        f = _sigmoid(xp[H + j] + gh[H + j] + b[H + j])
        g = _tanh(xp[2 * H + j] + gh[2 * H + j] + b[2 * H + j])
        o = _sigmoid(xp[3 * H + j] + gh[3 * H + j] + b[3 * H + j])
        c = f * cp[j] + i * g
        cn[j] = c
        hn[j] = o * _tanh(c)
        gates[j] = i
        gates[H + j] = f
        gates[2 * H + j] = g
        gates[3 * H + j] = o


cdef inline void lstm_bwd(const floating* dh, const floating* dc, const floating* cp,
                          const floating* cn, const floating* gates,
                          floating* dg, floating* dx, floating* dhn, floating* dcn,
                          Py_ssize_t H) noexcept nogil:
    """Gradients of the four gate pre-activations; dc_prev = dc' f."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dct, di, df, dgg, do
    for j in range(H):
        i = gates[j]
        f = gates[H + j]
        g = gates[2 * H + j]
        o = gates[3 * H + j]
        tc = _tanh(cn[j])
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
    cdef floating r, z, n
    if phase <= 0:
        for j in range(H):
            r = _sigmoid(xp[j] + gh[j] + b[j])
            z = _sigmoid(xp[H + j] + gh[H + j] + b[H + j])
            gates[j] = r
            gates[H + j] = z
            if reset_after:
                aux[j] = gh[2 * H + j] + b[2 * H + j]
            else:
                aux[j] = r * hp[j]
    if phase != 0:
        for j in range(H):
            r = gates[j]
            z = gates[H + j]
            if reset_after:
                n = _tanh(xp[2 * H + j] + r * aux[j])
            else:
                n = _tanh(xp[2 * H + j] + gh[2 * H + j] + b[2 * H + j])
            gates[2 * H + j] = n
            hn[j] = (1 - z) * n + z * hp[j]


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
        for i in prange(N, schedule='static'):
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
                          const floating* drh, floating* dg, floating* dx,
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
                 dhn + o, dcn + o, H)
    else:
        gru_bwd(reset_after, phase, dh + o, hp + o, gates + og, aux + o,
                drh + o, dg + og, dx + og, dhn + o, H)


cdef void _bwd_rows(bint par, Py_ssize_t N, int kind, int act, bint reset_after,
                    int phase, Py_ssize_t H, Py_ssize_t GH,
                    const uint8_t* mask, const int64_t* budget,
                    const floating* dhseq, floating* dh, const floating* dc,
                    const floating* hp, const floating* cp, const floating* cn,
                    const floating* gates, const floating* aux, const floating* drh,
                    floating* dg, floating* dx, floating* dhn,
                    floating* dcn) noexcept nogil:
    cdef Py_ssize_t i
    if par:
        for i in prange(N, schedule='static'):
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
    """dgh[t] += dg; spend one unit of budget on valid rows, dropping the
    gradient of rows whose budget is used up."""
    cdef Py_ssize_t o = i * H, og = i * GH, j
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
        for i in prange(N, schedule='static'):
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
                        floating* hseq, floating* gh) noexcept nogil:
    """``hbuf``/``cbuf`` hold S states: S = T+1 (cache) or 2 (ping-pong);
    state t lives in slot t % S, slot 0 preset to h0/c0 by the caller.
    ``gates``/``aux`` hold T steps (cache) or one (scratch)."""
    cdef Py_ssize_t GH = _n_gates(kind) * H, NH = N * H, t
    cdef bint cho = kind == GRU and not reset_after
    cdef bint par = N >= 2 and NH >= PARALLEL_MIN_WORK
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
            _gemm_hh(hp, w, 0, 2 * H, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, 0, False, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)
            _gemm_hh(ax, w, 2 * H, H, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, 1, True, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)
        else:
            _gemm_hh(hp, w, 0, GH, N, H, GH, gh)
            _fwd_rows(par, N, kind, act, reset_after, -1, True, H, GH, xp + t * N * GH,
                      gh, b, hp, hn, cp, cn, gt, ax, mask + t * N, hseq + t * NH)


cdef void _backward_sweep(int kind, int act, bint reset_after, Py_ssize_t t0,
                          Py_ssize_t N, Py_ssize_t H, const floating* w,
                          const uint8_t* mask, const floating* hc, const floating* cc,
                          const floating* gates, const floating* aux,
                          const floating* dhseq, floating* dh, floating* dh_tmp,
                          floating* dc, floating* dc_tmp, floating* dg, floating* drh,
                          int64_t* budget, floating* dxp, floating* dgh) noexcept nogil:
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
            _gemm_dh(dg, w, 2 * H, H, N, H, GH, 0, drh)
            _bwd_rows(par, N, kind, act, reset_after, 1, H, GH, mask + t * N, budget,
                      seq, dh, dc, hc + t * NH, cp, cn, gates + t * N * GH, ax, drh,
                      dg, dxp + t * N * GH, dh_tmp, dc_tmp)
            _gemm_dh(dg, w, 0, 2 * H, N, H, GH, 1, dh_tmp)
        else:
            _gemm_dh(dg, w, 0, GH, N, H, GH, 1, dh_tmp)
        _bwd_finish_rows(par, N, H, GH, mask + t * N, budget, dg, dgh + t * N * GH,
                         dh_tmp, dc_tmp)
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
                        floating* db) noexcept nogil:
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
                        aux, dhseq, dh0, dh_b, dc0, dc_b, dg, drh, NULL, dxp, dgh)
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
                            dxp, dgh)
            for k in range(NH):
                dh0[k] += dh_a[k]
            if lstm:
                for k in range(NH):
                    dc0[k] += dc_a[k]

    # dW_hh = sum_t dgh_t^T hin_t, one GEMM over all T*N rows (Cho's GRU: the n
    # block against r*h); db_hh = sum of dgh.
    if kind == GRU and not reset_after:
        _gemm_dw(dgh, hc, 0, 2 * H, T * N, H, GH, dw)
        _gemm_dw(dgh, aux, 2 * H, H, T * N, H, GH, dw)
    else:
        _gemm_dw(dgh, hc, 0, GH, T * N, H, GH, dw)
    memset(db, 0, GH * sizeof(floating))
    for k in range(T * N):
        for j in range(GH):
            db[j] += dgh[k * GH + j]


# ----------------------------------------------------------------------------
# Python entry points (called by cyrnn.backends.cython_backend).
# ----------------------------------------------------------------------------

def forward(int kind, int act, bint reset_after, bint keep_cache,
            const floating[:, :, ::1] xp, const floating[:, ::1] w_hh,
            const floating[::1] b_hh, const uint8_t[:, ::1] mask,
            floating[:, :, ::1] h, floating[:, :, ::1] c,
            floating[:, :, ::1] gates, floating[:, :, ::1] aux,
            floating[:, :, ::1] h_seq, floating[:, ::1] gh):
    """Run the forward time loop.

    xp (T, N, G*H); w_hh (G*H, H); b_hh (G*H,); mask (T, N) uint8;
    h, c: state slots (T+1 or 2, N, H) with slot 0 = h0/c0 (c None unless LSTM);
    gates (T or 1, N, G*H); aux (T or 1, N, H) or None (GRU only);
    h_seq (T, N, H) output; gh (N, G*H) scratch. All shapes are the caller's
    responsibility (no checks).
    """
    cdef Py_ssize_t T = xp.shape[0], N = xp.shape[1], H = w_hh.shape[1]
    cdef Py_ssize_t S = h.shape[0]
    cdef floating* cptr = NULL
    cdef floating* auxptr = NULL
    if c is not None:
        cptr = &c[0, 0, 0]
    if aux is not None:
        auxptr = &aux[0, 0, 0]
    with nogil:
        _forward_loop(kind, act, reset_after, T, N, H, &xp[0, 0, 0], &w_hh[0, 0],
                      &b_hh[0], &mask[0, 0], &h[0, 0, 0], cptr, S, &gates[0, 0, 0],
                      auxptr, keep_cache, &h_seq[0, 0, 0], &gh[0, 0])


def backward(int kind, int act, bint reset_after, Py_ssize_t truncate,
             const floating[:, :, ::1] h, const floating[:, :, ::1] c,
             const floating[:, :, ::1] gates, const floating[:, :, ::1] aux,
             const floating[:, ::1] w_hh, const uint8_t[:, ::1] mask,
             const floating[:, :, ::1] dh_seq, const floating[:, ::1] dh_T,
             const floating[:, ::1] dc_T,
             floating[:, :, ::1] dxp, floating[:, :, ::1] dgh,
             floating[:, ::1] dh0, floating[:, ::1] dc0,
             floating[:, :, ::1] work, floating[:, ::1] dg, int64_t[::1] budget,
             floating[:, ::1] dw_hh, floating[::1] db_hh):
    """Gradients through the forward pass.

    truncate: -1 for full BPTT, else k >= 0 (k < T). h (T+1, N, H) cache states;
    c (T+1, N, H) or None; gates (T, N, G*H); aux (T, N, H) or None;
    dh_seq/dh_T/dc_T or None; dxp, dgh (T, N, G*H) zero-filled outputs;
    dh0, dc0 (N, H) outputs (dc0 None unless LSTM); work (5, N, H) and
    dg (N, G*H), budget (N,) scratch; dw_hh (G*H, H), db_hh (G*H,) outputs.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = w_hh.shape[1]
    cdef const floating* cp = NULL
    cdef const floating* ap = NULL
    cdef const floating* seqp = NULL
    cdef const floating* dhTp = NULL
    cdef const floating* dcTp = NULL
    cdef floating* dc0p = NULL
    if c is not None:
        cp = &c[0, 0, 0]
    if aux is not None:
        ap = &aux[0, 0, 0]
    if dh_seq is not None:
        seqp = &dh_seq[0, 0, 0]
    if dh_T is not None:
        dhTp = &dh_T[0, 0]
    if dc_T is not None:
        dcTp = &dc_T[0, 0]
    if dc0 is not None:
        dc0p = &dc0[0, 0]
    with nogil:
        _backward_all(kind, act, reset_after, truncate, T, N, H, &w_hh[0, 0],
                      &mask[0, 0], &h[0, 0, 0], cp, &gates[0, 0, 0], ap, seqp,
                      dhTp, dcTp, &dh0[0, 0], dc0p, &work[0, 0, 0], &dg[0, 0],
                      &budget[0], &dxp[0, 0, 0], &dgh[0, 0, 0], &dw_hh[0, 0],
                      &db_hh[0])


# ----------------------------------------------------------------------------
# Generation: the whole sampling loop (one-to-many), reusing the forward loop.
# ----------------------------------------------------------------------------

cdef double _kth_largest(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th largest (1-based) of ``a[0:n]`` (quickselect; reorders ``a``).

    The value is unique whatever the pivots, so the result is deterministic.
    """
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, target = k - 1
    cdef double pivot, tmp
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i = lo
        j = hi
        while i <= j:  # descending order: larger values to the left
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]


cdef Py_ssize_t _sample_token(const floating* logits, const uint8_t* banned,
                              Py_ssize_t V, double temperature, Py_ssize_t top_k,
                              double u, double* z, double* work) noexcept nogil:
    """Draw one token by inverse CDF; the rule of ``numpy_backend.sample_token``.

    ``z_v = logits_v / temperature`` (float64); candidates are the tokens not
    banned; ``top_k > 0`` keeps the ``top_k`` largest ``z`` among them (ties:
    lower ids first); ``p_v = exp(z_v - max)`` over the kept tokens, summed in
    token order; the token is the first whose running sum exceeds ``u * sum``
    (round-off fallback: the last kept token with ``p > 0``). -1 if every token
    is banned (callers prevent it). ``z`` and ``work`` are (V,) scratch.
    """
    cdef Py_ssize_t v, n = 0, last = -1, ties = 0
    cdef bint use_k
    cdef double thr = 0, m = 0, s = 0, cum = 0, target, p
    for v in range(V):
        if not banned[v]:
            z[v] = <double>logits[v] / temperature
            work[n] = z[v]
            if n == 0 or z[v] > m:
                m = z[v]
            n += 1
    if n == 0:
        return -1
    use_k = top_k > 0 and top_k < n
    if use_k:
        thr = _kth_largest(work, n, top_k)
        ties = top_k
        for v in range(V):  # how many ties at the threshold may stay
            if not banned[v] and z[v] > thr:
                ties -= 1
    for v in range(V):
        if banned[v]:
            z[v] = -1
            continue
        if use_k and not (z[v] > thr):
            if z[v] == thr and ties > 0:
                ties -= 1
            else:
                z[v] = -1
                continue
        p = _exp(z[v] - m)
        z[v] = p
        s += p
    target = u * s
    for v in range(V):
        p = z[v]
        if p < 0:
            continue
        cum += p
        if p > 0:
            last = v
        if cum > target:
            return v
    return last


cdef void _generate_loop(int kind, int act, bint reset_after, Py_ssize_t L,
                         Py_ssize_t N, Py_ssize_t H, Py_ssize_t V, Py_ssize_t T,
                         const floating* xp_table, const floating* w_ih_rest,
                         const floating* b_ih_rest, const floating* w_hh,
                         const floating* b_hh, const floating* w_out,
                         const floating* b_out, floating* hbuf, floating* cbuf,
                         const int64_t* start, const int64_t* forced,
                         const uint8_t* banned, const double* uniforms,
                         double temperature, Py_ssize_t top_k, int64_t end_token,
                         int64_t* tokens, int64_t* lengths, int64_t* tok,
                         uint8_t* active, floating* xp, floating* gh,
                         floating* gates, floating* aux, floating* hseq,
                         floating* logits, double* z, double* work) noexcept nogil:
    """Feed ``tok`` through every layer (``_forward_loop`` with T = 1: the cell
    math of the forward pass), project the top state to logits, choose the next
    token per row, repeat. Finished rows are masked (their state is kept).
    ``hbuf``/``cbuf`` (L, 2, N, H): slot 0 holds the state, slot 1 receives the
    new one and is copied back. Everything else is caller-allocated scratch."""
    cdef Py_ssize_t GH = _n_gates(kind) * H, NH = N * H, t, l, i, j
    cdef Py_ssize_t n_active = N
    cdef int64_t v
    cdef floating* hl
    cdef floating* cl = NULL
    cdef const floating* bias
    for i in range(N):
        tok[i] = start[i]
        active[i] = 1
        lengths[i] = T
    for i in range(N * T):
        tokens[i] = end_token
    for t in range(T):
        if n_active == 0:
            break
        for l in range(L):
            hl = hbuf + l * 2 * NH
            if kind == LSTM:
                cl = cbuf + l * 2 * NH
            if l == 0:
                for i in range(N):
                    memcpy(xp + i * GH, xp_table + tok[i] * GH, GH * sizeof(floating))
            else:
                # xp = h_{l-1} W_ih^T + b_ih (layer l reads the state of l - 1)
                _gemm_hh(hbuf + (l - 1) * 2 * NH, w_ih_rest + (l - 1) * GH * H,
                         0, GH, N, H, GH, xp)
                bias = b_ih_rest + (l - 1) * GH
                for i in range(N):
                    for j in range(GH):
                        xp[i * GH + j] += bias[j]
            _forward_loop(kind, act, reset_after, 1, N, H, xp, w_hh + l * GH * H,
                          b_hh + l * GH, active, hl, cl, 2, gates, aux, False, hseq, gh)
            memcpy(hl, hl + NH, NH * sizeof(floating))
            if kind == LSTM:
                memcpy(cl, cl + NH, NH * sizeof(floating))
        # logits = h_top W_out^T + b_out
        _gemm_hh(hbuf + (L - 1) * 2 * NH, w_out, 0, V, N, H, V, logits)
        for i in range(N):
            if not active[i]:
                continue
            v = forced[i * T + t]
            if v < 0:
                for j in range(V):
                    logits[i * V + j] += b_out[j]
                v = _sample_token(logits + i * V, banned, V, temperature, top_k,
                                  uniforms[i * T + t], z, work)
            if v == end_token or v < 0:
                lengths[i] = t
                active[i] = 0
                n_active -= 1
            else:
                tokens[i * T + t] = v
                tok[i] = v


def generate(int kind, int act, bint reset_after,
             const floating[:, ::1] xp_table, const floating[:, :, ::1] w_ih_rest,
             const floating[:, ::1] b_ih_rest, const floating[:, :, ::1] w_hh,
             const floating[:, ::1] b_hh, const floating[:, ::1] w_out,
             const floating[::1] b_out, floating[:, :, :, ::1] h,
             floating[:, :, :, ::1] c, const int64_t[::1] start,
             const int64_t[:, ::1] forced, const uint8_t[::1] banned,
             const double[:, ::1] uniforms, double temperature, Py_ssize_t top_k,
             int64_t end_token, int64_t[:, ::1] tokens, int64_t[::1] lengths,
             int64_t[::1] tok, uint8_t[::1] active, floating[:, ::1] xp,
             floating[:, ::1] gh, floating[:, :, ::1] gates, floating[:, :, ::1] aux,
             floating[:, :, ::1] hseq, floating[:, ::1] logits, double[::1] z,
             double[::1] work):
    """Run the generation loop (see ``cyrnn.backends.numpy_backend.generate``).

    xp_table (V, G*H); w_ih_rest (L-1, G*H, H) and b_ih_rest (L-1, G*H) or None
    when L == 1; w_hh (L, G*H, H); b_hh (L, G*H); w_out (V, H); b_out (V,);
    h, c: (L, 2, N, H) state slots, slot 0 = initial state (c None unless LSTM),
    overwritten; start (N,); forced (N, T), -1 = free; banned (V,) uint8;
    uniforms (N, T) float64; outputs tokens (N, T), lengths (N,); scratch tok,
    active (N,), xp, gh (N, G*H), gates (1, N, G*H), aux (1, N, H) or None,
    hseq (1, N, H), logits (N, V), z and work (V,) float64. No checks.
    """
    cdef Py_ssize_t L = w_hh.shape[0], N = h.shape[2], H = h.shape[3]
    cdef Py_ssize_t V = w_out.shape[0], T = forced.shape[1]
    cdef const floating* wr = NULL
    cdef const floating* br = NULL
    cdef floating* cptr = NULL
    cdef floating* auxptr = NULL
    if w_ih_rest is not None:
        wr = &w_ih_rest[0, 0, 0]
        br = &b_ih_rest[0, 0]
    if c is not None:
        cptr = &c[0, 0, 0, 0]
    if aux is not None:
        auxptr = &aux[0, 0, 0]
    with nogil:
        _generate_loop(kind, act, reset_after, L, N, H, V, T, &xp_table[0, 0], wr, br,
                       &w_hh[0, 0, 0], &b_hh[0, 0], &w_out[0, 0], &b_out[0],
                       &h[0, 0, 0, 0], cptr, &start[0], &forced[0, 0], &banned[0],
                       &uniforms[0, 0], temperature, top_k, end_token, &tokens[0, 0],
                       &lengths[0], &tok[0], &active[0], &xp[0, 0], &gh[0, 0],
                       &gates[0, 0, 0], auxptr, &hseq[0, 0, 0], &logits[0, 0], &z[0],
                       &work[0])
