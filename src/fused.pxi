# Fused model calls: a whole Sequential ([Embedding] RNN+ (Dense | RNN)*) in one
# call, for inference (``infer``) and for a training step (``train_forward`` /
# ``train_backward``): check the call, plan the scratch, run the forward, run
# the backward. Included by _cython_kernels.pyx (which holds the entry points).
#
# The spec is the int64 array of ``cyrnn.backends.spec`` (built by
# ``Sequential.inference_spec``): a header and one fixed-width record per op;
# its constants, field indices and error messages reach this file through the
# generated _constants.pxi. A planner (``_plan``) lays every op's buffers out
# in one scratch block: per-op (per-direction) caches for training, ping-pong
# buffers for inference; one forward runner and one backward runner walk the ops
# over that plan, calling the same time loops and GEMM rule as the layer path.
# A bidirectional op's reverse direction runs those loops on its time-reversed
# input projections and mask (``_reverse_time``; its caches stay in its own time
# order) and ``_merge_fwd``/``_merge_bwd`` combine the directions. Everything
# runs without the GIL on memory allocated per call, so concurrent calls on one
# model are safe; nothing is kept between calls except what ``train_forward``
# hands back in its ``FusedCache``.

cdef extern from *:
    """
    #define CYRNN_INT_LIMIT 2147483647.0
    """
    const double INT_LIMIT "CYRNN_INT_LIMIT"

cdef enum:
    # per-op plan slots: element offsets into the scratch block (-1: none)
    P_IN = 0
    P_OUT = 1
    P_INSEQ = 2      # 1 when the op's input is a (T, N, F) sequence
    P_DROP = 3       # the op's copy of its dropout multiplier (T, N, width)
    P_ST = 4         # the op's offset in the flat states (h0, h_n, ...; not scratch)
    P_DIR = 5        # per direction (P_DIR + K_DIR * d): the slots below
    K_H = 0
    K_C = 1
    K_GATES = 2
    K_AUX = 3
    K_HSEQ = 4       # the direction's outputs, in its own time order
    K_DIR = 5
    P_WIDTH = 15


cdef struct Dims:
    Py_ssize_t n_ops, first, T, N, F0, F_out, Fmax, GHmax, Hmax
    bint ids, seq_out
    bint step            # x in step form: (N, F) features or (N,) ids, T = 1
    int typenum
    Py_ssize_t isz
    Py_ssize_t SH        # sum over recurrent ops of directions * hidden (states: N * SH)
    Py_ssize_t drop_w    # sum of the widths of the ops with a dropout flag
    bint any_c, any_bi   # some op has a cell state / two directions
    bint drop            # a training forward with dropout masks
    bint packed          # the row-chunked forward (packed weights; set before ``_plan``)
    Py_ssize_t hn, cn    # scratch offsets of h_n, c_n (set by ``_plan``)
    Py_ssize_t xg        # packed path: the scratch offset of the input gather block
    double buf_bytes     # the forward scratch block's size (set by ``_run_forward``)


cdef inline const int64_t* _rec(const int64_t* sp, Py_ssize_t o) noexcept nogil:
    return sp + SPEC_HEADER + o * SPEC_WIDTH


cdef inline Py_ssize_t _gates_of(const int64_t* r) noexcept nogil:
    """G*H of a recurrent record."""
    return n_gates_of(<int>r[RNN_CELL]) * r[RNN_HIDDEN]


cdef inline Py_ssize_t _width_of(const int64_t* r) noexcept nogil:
    """The output width of a recurrent record (2 H for a bidirectional concat op)."""
    if r[RNN_DIRS] == 2 and r[RNN_MERGE] == MERGE_CONCAT:
        return 2 * r[RNN_HIDDEN]
    return r[RNN_HIDDEN]


cdef inline Py_ssize_t _tensors_of(const int64_t* r, Py_ssize_t dd) noexcept nogil:
    """The record field of direction ``dd``'s first tensor offset (w_ih; then w_hh,
    b_ih, b_hh, peep in the next fields, for both directions)."""
    return RNN_W_IH if dd == 0 else RNN_W_IH_R


cdef inline const floating* _peep_of(const floating* data, const int64_t* r,
                                     Py_ssize_t k0) noexcept nogil:
    """The (3, H) peephole block of a recurrent record's direction (``k0`` from
    ``_tensors_of``), NULL for cells without one."""
    if n_peepholes_of(<int>r[RNN_CELL]) > 0:
        return data + r[k0 + 4]
    return NULL


cdef void _reverse_time(floating* a, Py_ssize_t T, Py_ssize_t row) noexcept nogil:
    """Reverse the time order of ``a`` (T, row) in place."""
    cdef Py_ssize_t t, j
    cdef floating* p
    cdef floating* q
    cdef floating v
    for t in range(T // 2):
        p = a + t * row
        q = a + (T - 1 - t) * row
        for j in range(row):
            v = p[j]
            p[j] = q[j]
            q[j] = v


cdef void _merge_fwd(int mode, Py_ssize_t T, Py_ssize_t N, Py_ssize_t r0, Py_ssize_t r1,
                     Py_ssize_t H, const floating* a, const floating* b,
                     floating* out) noexcept nogil:
    """Rows r0 .. r1-1 of ``out[t] = merge(a[t], b[T-1-t])`` (``layers.recurrent._merge``): ``a`` (T, N, H)
    the forward direction's outputs, ``b`` the reverse direction's in its own
    (reversed) time order; ``out`` (T, N, 2H) for concat, else (T, N, H). With
    ``T = 1``: the final states of a many-to-one op."""
    cdef Py_ssize_t t, i, j
    cdef const floating* pa
    cdef const floating* pb
    cdef floating* po
    for t in range(T):
        for i in range(r0, r1):
            pa = a + (t * N + i) * H
            pb = b + ((T - 1 - t) * N + i) * H
            if mode == MERGE_CONCAT:
                po = out + (t * N + i) * 2 * H
                memcpy(po, pa, H * sizeof(floating))
                memcpy(po + H, pb, H * sizeof(floating))
                continue
            po = out + (t * N + i) * H
            if mode == MERGE_SUM:
                for j in range(H):
                    po[j] = pa[j] + pb[j]
            elif mode == MERGE_MUL:
                for j in range(H):
                    po[j] = pa[j] * pb[j]
            else:
                for j in range(H):
                    po[j] = (pa[j] + pb[j]) * <floating>0.5


cdef void _merge_bwd(int mode, Py_ssize_t dd, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
                     const floating* dy, const floating* a, const floating* b,
                     floating* g) noexcept nogil:
    """The gradient ``g`` (T, N, H) on direction ``dd``'s outputs, in that direction's
    own time order, from ``dy``, the gradient on :func:`_merge_fwd`'s ``out`` (same
    ``a``, ``b``; ``layers.recurrent._unmerge``)."""
    cdef Py_ssize_t s, t, i, j
    cdef const floating* py
    cdef const floating* other
    cdef floating* pg
    for s in range(T):
        t = s if dd == 0 else T - 1 - s  # the merged step of own step s
        for i in range(N):
            pg = g + (s * N + i) * H
            if mode == MERGE_CONCAT:
                memcpy(pg, dy + (t * N + i) * 2 * H + dd * H, H * sizeof(floating))
                continue
            py = dy + (t * N + i) * H
            if mode == MERGE_SUM:
                memcpy(pg, py, H * sizeof(floating))
            elif mode == MERGE_MUL:
                other = (b + ((T - 1 - t) * N + i) * H) if dd == 0 else (a + (t * N + i) * H)
                for j in range(H):
                    pg[j] = py[j] * other[j]
            else:
                for j in range(H):
                    pg[j] = py[j] * <floating>0.5


cdef void _affine_fwd(const floating* x, Py_ssize_t rows, Py_ssize_t n_in,
                      Py_ssize_t n_out, const floating* w, const floating* b,
                      floating* y) noexcept nogil:
    """``y = x w^T + b``: ``x`` (rows, n_in), ``w`` (n_out, n_in), ``y`` (rows, n_out),
    row-major. The input projection of a recurrent op and a Dense op on the
    unpacked path (batches under PACK_MIN_ROWS rows), by the own kernel
    ``cyrnn_proj``: a row's result does not depend on how many rows one call
    projects (a BLAS GEMM's does: its kernels and small-matrix paths follow the
    shape), so a step (N rows) projects exactly as its whole sequence (T * N rows)
    and a sequence's first steps as a shorter sequence. From PROJ_T_MIN_ROWS rows
    on, ``cyrnn_projt`` computes the same sums with outputs in the vector lanes
    (src/gemm.pxi)."""
    _affine_fwd_cols(x, rows, n_in, n_out, w, b, y, 0, n_out)


cdef void _affine_fwd_cols(const floating* x, Py_ssize_t rows, Py_ssize_t n_in,
                           Py_ssize_t n_out, const floating* w, const floating* b,
                           floating* y, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Output columns c0 .. c1-1 of :func:`_affine_fwd` (a thread's share in the
    small-batch team, ``_small_team_op``): the same bits, as each output is its own
    sum whichever block of weight rows the kernels compute it in."""
    if c1 <= c0:
        return
    if floating is float:
        if rows < PROJ_T_MIN_ROWS or cyrnn_projt_ld_f(x, w + c0 * n_in, b + c0, y + c0, rows,
                                                      c1 - c0, n_in, n_out) != 0:
            cyrnn_proj_ld_f(x, w + c0 * n_in, b + c0, y + c0, rows, c1 - c0, n_in, n_out)
    else:
        if rows < PROJ_T_MIN_ROWS or cyrnn_projt_ld_d(x, w + c0 * n_in, b + c0, y + c0, rows,
                                                      c1 - c0, n_in, n_out) != 0:
            cyrnn_proj_ld_d(x, w + c0 * n_in, b + c0, y + c0, rows, c1 - c0, n_in, n_out)


cdef void _affine_bwd(const floating* dy, const floating* x, Py_ssize_t rows,
                      Py_ssize_t n_in, Py_ssize_t n_out, const floating* w, floating* gw,
                      floating* gb, floating* dx, bint acc_dx) noexcept nogil:
    """Backward of :func:`_affine_fwd` given ``dy`` (rows, n_out): ``gw += dy^T x``,
    ``gb += colsum(dy)`` and, unless ``dx`` is NULL, ``dx = dy w`` (rows, n_in;
    ``acc_dx``: ``dx += dy w``)."""
    cdef Py_ssize_t i, j
    _gemm(c'N', c'T', <int>n_in, <int>n_out, <int>rows, <floating>1, x, <int>n_in, dy,
          <int>n_out, <floating>1, gw, <int>n_in)
    for i in range(rows):
        for j in range(n_out):
            gb[j] += dy[i * n_out + j]
    if dx != NULL:
        _gemm(c'N', c'N', <int>n_in, <int>rows, <int>n_out, <floating>1, w, <int>n_in,
              dy, <int>n_out, <floating>(1 if acc_dx else 0), dx, <int>n_in)


cdef void _affine_bwd_packed(int isa, int wfmt, const floating* dy, const floating* x,
                             Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out,
                             const floating* wt, floating* gw, floating* gb, floating* dx,
                             bint acc_dx) noexcept nogil:
    """:func:`_affine_bwd` on cyrnn's threads: ``wt`` is ``w`` packed for the
    transposed product in format ``wfmt`` (``_pack_t_fmt``; the weight gradient in
    that arithmetic too); ``gw`` NULL: only ``dx`` (the weight and bias gradients
    come from elsewhere); ``gb`` NULL: no bias gradient."""
    if gw != NULL:
        _wgrad(isa, dy, n_out, x, n_in, rows, n_out, n_in, gw, gb, wfmt)
    if dx != NULL:
        _rows_product(isa, wfmt, dy, n_out, rows, n_out, wt, n_in, dx, n_in, acc_dx)


cdef enum:
    # rows from which the projections transpose each block of weight rows once and
    # keep outputs in the vector lanes (the same sums, faster for many rows)
    PROJ_T_MIN_ROWS = 16


# The finiteness scan of the inputs as C with target clones: a float is NaN or infinite
# exactly when its exponent bits are all ones, and adding one to the exponent field then
# carries into the sign bit, so an OR of ``(bits & exponent) + exponent_one`` over a
# block has its top bit set iff the block holds one (integer operations only, which
# vectorise on every instruction set). The Cython version (``x * 0`` summed in 16
# lanes) compiled to scalar float-double conversions: 3.9 ms of the large inference's
# 90, serial.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define CYRNN_FINITE(SUF, T, U, EXP, ONE, TOP)                                    \
    CYRNN_CLONES static int cyrnn_finite_##SUF(Py_ssize_t n, const T* __restrict x) {  \
        Py_ssize_t i = 0, j, m;                                                        \
        while (i < n) {                                                                \
            U acc = 0;                                                                 \
            m = n - i < 8192 ? n - i : 8192;                                           \
            for (j = 0; j < m; j++) {                                                  \
                U b;                                                                   \
                memcpy(&b, x + i + j, sizeof(U));                                      \
                acc |= (b & EXP) + ONE;                                                \
            }                                                                          \
            if (acc & TOP) return 0;                                                   \
            i += m;                                                                    \
        }                                                                              \
        return 1;                                                                      \
    }
    CYRNN_FINITE(f, float, uint32_t, 0x7f800000u, 0x00800000u, 0x80000000u)
    CYRNN_FINITE(d, double, uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull,
                 0x8000000000000000ull)
    """
    int cyrnn_finite_f(Py_ssize_t n, const float* x) nogil
    int cyrnn_finite_d(Py_ssize_t n, const double* x) nogil


cdef inline bint _all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    """No NaN or infinity in ``x[:n]``."""
    if floating is float:
        return cyrnn_finite_f(n, x) != 0
    else:
        return cyrnn_finite_d(n, x) != 0


cdef int64_t* _copy_spec(const int64_t[::1] spec) except NULL:
    """A private copy of ``spec`` (malloc; the caller frees it) after checking its
    header. The fused code reads only the copy, so a spec changed by another
    thread, or between a training forward and its backward, cannot reach it."""
    cdef Py_ssize_t n = spec.shape[0]
    cdef int64_t* sp
    # no multiplication: a huge op count must not wrap around to a valid length
    if (n < SPEC_HEADER + SPEC_WIDTH or (n - SPEC_HEADER) % SPEC_WIDTH != 0
            or spec[0] != SPEC_VERSION or spec[2] != SPEC_WIDTH
            or spec[1] != (n - SPEC_HEADER) // SPEC_WIDTH):
        raise ValueError(SPEC_ERRORS["header"])
    sp = <int64_t*>_alloc(<double>n * 8)
    memcpy(sp, &spec[0], n * 8)
    return sp


cdef int _check_data(cnp.ndarray a, str name, int typenum, Py_ssize_t size,
                     bint writable) except -1:
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 1
            or cnp.PyArray_SIZE(a) != size or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or not cnp.PyArray_ISALIGNED(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError(f"{name} must be an aligned, native-endian, C-contiguous 1-D "
                         f"array like the parameter buffer" + (" (writable)" if writable else ""))
    return 0


cdef int _check_rnn_tensors(const int64_t* r, Py_ssize_t k0, Py_ssize_t size) except -1:
    """Direction tensors (fields ``k0 ..``: w_ih, w_hh, b_ih, b_hh, peep) inside the
    buffer; sums in double, so huge (corrupt) values cannot overflow the check."""
    cdef double Gd = <double>n_gates_of(<int>r[RNN_CELL]) * r[RNN_HIDDEN]
    cdef int npeep = n_peepholes_of(<int>r[RNN_CELL])
    if (r[k0] < 0 or r[k0 + 1] < 0 or r[k0 + 2] < 0 or r[k0 + 3] < 0
            or r[k0] + Gd * r[RNN_IN] > size or r[k0 + 1] + Gd * r[RNN_HIDDEN] > size
            or r[k0 + 2] + Gd > size or r[k0 + 3] + Gd > size
            or (npeep > 0 and (r[k0 + 4] < 0
                               or r[k0 + 4] + <double>npeep * r[RNN_HIDDEN] > size))):
        raise ValueError(SPEC_ERRORS["rnn"])
    return 0


cdef void _to_float(const double* a, float* y, Py_ssize_t n) noexcept nogil:
    """y = a converted to float32 (round to nearest, beyond the range: inf)."""
    cdef Py_ssize_t k
    for k in range(n):
        y[k] = <float>a[k]


cdef int _check_call(const int64_t* sp, cnp.ndarray data, object x, object mask, Dims* d,
                     int64_t** ids_out, uint8_t** mask_out, float** conv_out=NULL,
                     bint step=False) except -1:
    """Check the (copied, header-checked) spec against ``data`` and ``x`` against
    the spec.

    Returns 0 when the fused call can run, 1 when ``x`` is not in the exact form
    it takes (the caller returns None and the layer path judges ``x``). A spec
    that is malformed or reaches outside ``data`` raises ValueError. Token ids
    are copied to ``*ids_out`` (malloc; the caller frees it) and checked there,
    so the run reads exactly the ids that were checked. ``conv_out`` (inference
    only; NULL: the features must have the parameters' dtype): float64 features of
    a float32 model are converted into ``*conv_out`` (malloc; the caller frees it)
    as NumPy's ``astype`` converts them (beyond float32's range: inf, which declines
    like any non-finite value), so a caller need not convert first. ``step``
    (inference only): ``x`` is one time step in step form, (N, F) features or (N,)
    ids (``d.step``; T = 1, and a sequence output is (N, F)).

    ``mask``: None or an (N, T) bool/uint8 C-contiguous array of valid steps
    (else 1). It is combined with ``ids != 0`` under ``mask_zero`` (a sequence
    with no non-padding id: 1, the layer path gives zeros) into a time-major copy at
    ``*mask_out`` (malloc; NULL when every step is valid).
    """
    cdef const int64_t* r
    cdef cnp.ndarray xa
    cdef Py_ssize_t o, F, G, D, H, size, k
    cdef bint seq = True
    cdef int64_t* idp
    cdef char* xin
    cdef cnp.ndarray ma
    cdef const uint8_t* mp = NULL
    cdef uint8_t* mtm
    cdef Py_ssize_t t, i, nx
    cdef int nd
    cdef bint mzero
    d.n_ops = sp[1]
    d.typenum = cnp.PyArray_TYPE(data)
    if d.typenum != cnp.NPY_FLOAT32 and d.typenum != cnp.NPY_FLOAT64:
        raise TypeError("parameter buffer must be float32 or float64")
    _check_data(data, "parameter buffer", d.typenum, cnp.PyArray_SIZE(data), False)
    d.isz = 4 if d.typenum == cnp.NPY_FLOAT32 else 8
    size = cnp.PyArray_SIZE(data)
    r = _rec(sp, 0)
    d.ids = r[0] == OP_EMBED
    d.first = 1 if d.ids else 0
    if d.ids:
        if (r[EMB_VOCAB] < 1 or r[EMB_DIM] < 1 or r[EMB_W] < 0
                or <double>r[EMB_W] + <double>r[EMB_VOCAB] * r[EMB_DIM] > size):
            raise ValueError(SPEC_ERRORS["embed"])
        F = r[EMB_DIM]
    elif r[0] == OP_RNN:
        F = r[RNN_IN]
    else:
        raise ValueError(SPEC_ERRORS["first"])
    d.F0 = F
    d.Fmax = F
    d.GHmax = 1
    d.Hmax = 1
    d.SH = 0
    d.drop_w = 0
    d.any_c = False
    d.any_bi = False
    d.drop = False
    d.packed = False
    d.step = False
    for o in range(d.first, d.n_ops):
        r = _rec(sp, o)
        if r[0] == OP_RNN:
            if (r[RNN_CELL] < 0 or r[RNN_CELL] >= N_CELLS or r[RNN_ACT] < 0
                    or r[RNN_ACT] >= N_ACTIVATIONS or r[RNN_RACT] < 0
                    or r[RNN_RACT] >= N_ACTIVATIONS):
                raise ValueError(SPEC_ERRORS["cell"])
            if not seq:
                raise ValueError(SPEC_ERRORS["order"])
            if r[RNN_DIRS] < 1 or r[RNN_DIRS] > 2 or r[RNN_MERGE] < 0 or r[RNN_MERGE] > 3:
                raise ValueError(SPEC_ERRORS["dirs"])
            D = r[RNN_IN]
            H = r[RNN_HIDDEN]
            if H < 1 or D < 1:
                raise ValueError(SPEC_ERRORS["rnn"])
            for k in range(r[RNN_DIRS]):
                _check_rnn_tensors(r, _tensors_of(r, k), size)
            G = _gates_of(r)
            if D != F:
                return 1  # widths do not chain: the layer path explains
            d.GHmax = max(d.GHmax, G)
            d.Hmax = max(d.Hmax, H)
            d.SH += r[RNN_DIRS] * H
            d.any_c = d.any_c or has_cell_state_of(<int>r[RNN_CELL])
            d.any_bi = d.any_bi or r[RNN_DIRS] == 2
            F = _width_of(r)
            if r[RNN_DROP]:
                d.drop_w += F
            seq = r[RNN_SEQ] != 0
        elif r[0] == OP_DENSE:
            if (r[DENSE_OUT] < 1 or r[DENSE_IN] < 1 or r[DENSE_W] < 0 or r[DENSE_B] < 0
                    or <double>r[DENSE_W] + <double>r[DENSE_OUT] * r[DENSE_IN] > size
                    or r[DENSE_B] + <double>r[DENSE_OUT] > size):
                raise ValueError(SPEC_ERRORS["dense"])
            if r[DENSE_IN] != F:
                return 1
            F = r[DENSE_OUT]
        else:
            raise ValueError(SPEC_ERRORS["op"])
        d.Fmax = max(d.Fmax, F)
    d.F_out = F
    d.seq_out = seq
    # x: exactly (N, T, F0) of the parameters' dtype, or (N, T) int64 ids; C order
    # (step form: without the T axis)
    if not cnp.PyArray_Check(x):
        return 1
    xa = <cnp.ndarray>x
    if (not cnp.PyArray_IS_C_CONTIGUOUS(xa) or not cnp.PyArray_ISALIGNED(xa)
            or not cnp.PyArray_ISNOTSWAPPED(xa)):
        return 1
    nd = cnp.PyArray_NDIM(xa)
    d.step = step
    if nd != (2 if d.ids else 3) - (1 if step else 0):
        return 1
    if d.ids:
        if cnp.PyArray_TYPE(xa) != cnp.NPY_INT64:
            return 1
    elif cnp.PyArray_DIM(xa, nd - 1) != d.F0:
        return 1
    elif cnp.PyArray_TYPE(xa) != d.typenum and not (
            conv_out != NULL and d.isz == 4 and cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT64):
        return 1
    d.N = cnp.PyArray_DIM(xa, 0)
    d.T = 1 if d.step else cnp.PyArray_DIM(xa, 1)
    if d.N < 1 or d.T < 1:
        return 1
    if (<double>d.T * d.N > INT_LIMIT or d.GHmax > INT_LIMIT or d.Fmax > INT_LIMIT
            or <double>d.GHmax * d.Hmax > INT_LIMIT):
        return 1  # BLAS takes int dimensions: the layer path handles (or refuses) these
    xin = <char*>cnp.PyArray_DATA(xa)
    if d.ids:  # ids the layer path must judge: out of range, padding under mask_zero
        idp = <int64_t*>_alloc(<double>d.N * d.T * 8)
        memcpy(idp, xin, d.N * d.T * 8)
        r = _rec(sp, 0)
        for k in range(d.N * d.T):
            if idp[k] < 0 or idp[k] >= r[EMB_VOCAB]:
                free(idp)
                return 1
        ids_out[0] = idp
    elif cnp.PyArray_TYPE(xa) != d.typenum:  # float64 features of a float32 model
        nx = d.N * d.T * d.F0
        conv_out[0] = <float*>_alloc(<double>nx * 4)
        if nx > 65536:  # large: without the GIL (at batch 1 a release costs more)
            with nogil:
                _to_float(<const double*>xin, conv_out[0], nx)
        else:
            _to_float(<const double*>xin, conv_out[0], nx)
        if not _all_finite(<const float*>conv_out[0], nx):
            return 1
    elif d.isz == 4:
        if not _all_finite(<const float*>xin, d.N * d.T * d.F0):
            return 1
    elif not _all_finite(<const double*>xin, d.N * d.T * d.F0):
        return 1
    # validity mask: the given one, and ids != 0 under mask_zero
    mzero = d.ids and _rec(sp, 0)[EMB_MASK_ZERO] != 0
    if mask is not None:
        if not cnp.PyArray_Check(mask):
            return 1
        ma = <cnp.ndarray>mask
        if ((cnp.PyArray_TYPE(ma) != cnp.NPY_BOOL and cnp.PyArray_TYPE(ma) != cnp.NPY_UINT8)
                or not cnp.PyArray_IS_C_CONTIGUOUS(ma) or cnp.PyArray_NDIM(ma) != 2
                or cnp.PyArray_DIM(ma, 0) != d.N or cnp.PyArray_DIM(ma, 1) != d.T):
            return 1
        mp = <const uint8_t*>cnp.PyArray_DATA(ma)
    if mp == NULL and mzero:
        for k in range(d.N * d.T):
            if ids_out[0][k] == 0:
                break
        else:
            return 0  # no padding id: every step valid
    elif mp == NULL:
        return 0
    mtm = <uint8_t*>_alloc(<double>d.N * d.T)
    # a sequence of padding only gets no valid step: zero outputs, its state carried
    # (the layer path's rule; cython_backend.FUSED_EMPTY_ROWS)
    for i in range(d.N):
        for t in range(d.T):
            k = i * d.T + t
            mtm[t * d.N + i] = (mp == NULL or mp[k] != 0) and not (mzero and ids_out[0][k] == 0)
    mask_out[0] = mtm
    return 0


cdef inline Py_ssize_t _al(Py_ssize_t n) noexcept nogil:
    """``n`` rounded up to 16 elements (64 bytes for float32)."""
    return (n + 15) & ~(<Py_ssize_t>15)


cdef inline Py_ssize_t _gh_off(const Dims* d) noexcept nogil:
    """The scratch offset of gh, after the input (T, N, F0) and xp: every step's
    input projections (T, N, GHmax), or STEP_BLOCK steps' on the packed path."""
    return _al(_al(d.T * d.N * d.F0) + (STEP_BLOCK if d.packed else d.T) * d.N * d.GHmax)


cdef Py_ssize_t _plan(const int64_t* sp, Dims* d, bint keep, int64_t* plan) noexcept nogil:
    """Element offsets of every op's buffers in one scratch block (``plan``:
    n_ops x P_WIDTH; sets ``d.hn``/``d.cn``); returns the block's size in elements.

    Always: [0] the time-major input (T, N, F0); [1] xp scratch (T, N, GHmax),
    STEP_BLOCK steps of it when ``d.packed`` (then also a gather block of
    STEP_BLOCK steps of op inputs, ``d.xg``);
    [2] gh scratch (N, GHmax); the final states h_n, c_n (flat). ``keep``
    (training): every op gets its own output and, for recurrent ops, every
    direction its own cache (h, c: T+1 states; gates; aux; a many-to-many op's
    outputs); a
    many-to-one op's output is its last state (two directions: their merge), and
    ``d.drop`` gives the dropout ops a copy of their multiplier. Inference:
    recurrent ops share one 2-slot state and one-step gate scratch, sequence
    outputs alternate between two buffers (two directions write theirs to two
    more and merge into those).
    """
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, o, H, G, R, F = d.F0, dd, st = 0
    cdef Py_ssize_t pos, cur, pingA, pingB, h_s, c_s, g_s, a_s, bi0 = 0, bi1 = 0
    cdef bint seq = True
    cdef const int64_t* r
    cdef int64_t* p
    cdef int64_t* q
    # every buffer starts on a 64-byte boundary (the block is 64-byte aligned)
    pos = _gh_off(d) + N * d.GHmax
    d.xg = -1
    if d.packed:
        d.xg = _al(pos)
        pos = d.xg + STEP_BLOCK * N * d.Fmax
    d.hn = _al(pos)
    pos = d.hn + N * d.SH
    d.cn = -1
    if d.any_c:
        d.cn = _al(pos)
        pos = d.cn + N * d.SH
    cur = 0  # the input sits at offset 0
    if not keep:
        pingA = _al(pos)
        pingB = _al(pingA + TN * d.Fmax)
        h_s = _al(pingB + TN * d.Fmax)
        c_s = _al(h_s + 2 * N * d.Hmax)
        g_s = _al(c_s + 2 * N * d.Hmax)
        a_s = _al(g_s + N * d.GHmax)
        pos = a_s + N * d.Hmax
        if d.any_bi:
            bi0 = _al(pos)
            bi1 = _al(bi0 + TN * d.Hmax)
            pos = bi1 + TN * d.Hmax
    for o in range(d.n_ops):
        p = plan + o * P_WIDTH
        for R in range(P_WIDTH):
            p[R] = -1
        if o < d.first:
            continue
        r = _rec(sp, o)
        p[P_IN] = cur
        p[P_INSEQ] = seq
        if r[0] == OP_RNN:
            H = r[RNN_HIDDEN]
            G = _gates_of(r)
            F = _width_of(r)
            p[P_ST] = st
            st += r[RNN_DIRS] * N * H
            for dd in range(r[RNN_DIRS]):
                q = p + P_DIR + K_DIR * dd
                if keep:
                    q[K_H] = _al(pos)
                    pos = q[K_H] + (T + 1) * N * H
                    if has_cell_state_of(<int>r[RNN_CELL]):
                        q[K_C] = _al(pos)
                        pos = q[K_C] + (T + 1) * N * H
                    q[K_GATES] = _al(pos)
                    pos = q[K_GATES] + TN * G
                    if has_aux_of(<int>r[RNN_CELL]):
                        q[K_AUX] = _al(pos)
                        pos = q[K_AUX] + TN * H
                    if r[RNN_SEQ]:  # a many-to-one op keeps no per-step outputs
                        q[K_HSEQ] = _al(pos)
                        pos = q[K_HSEQ] + TN * H
                else:
                    q[K_H] = h_s
                    q[K_C] = c_s
                    q[K_GATES] = g_s
                    q[K_AUX] = a_s
                    if not r[RNN_SEQ]:
                        pass  # no per-step outputs (K_HSEQ stays -1)
                    elif r[RNN_DIRS] == 2:
                        q[K_HSEQ] = bi0 if dd == 0 else bi1
                    else:
                        q[K_HSEQ] = pingB if cur == pingA else pingA
            q = p + P_DIR
            if r[RNN_DIRS] == 1 and r[RNN_SEQ]:
                p[P_OUT] = q[K_HSEQ]
            elif r[RNN_DIRS] == 1:
                p[P_OUT] = q[K_H] + (T if keep else T % 2) * N * H
            elif keep:
                p[P_OUT] = _al(pos)
                pos = p[P_OUT] + (TN if r[RNN_SEQ] else N) * F
            else:
                p[P_OUT] = pingB if cur == pingA else pingA
            if keep and d.drop and r[RNN_DROP] and r[RNN_SEQ]:
                p[P_DROP] = _al(pos)
                pos = p[P_DROP] + TN * F
            seq = r[RNN_SEQ] != 0
        else:
            R = TN if seq else N
            if keep:
                p[P_OUT] = _al(pos)
                pos = p[P_OUT] + R * r[DENSE_OUT]
            else:
                p[P_OUT] = pingB if cur == pingA else pingA
        cur = p[P_OUT]
    return pos


cdef enum:
    # packed-weight offsets per op: per direction (PK_DIR * d +) W_ih, W_hh and Cho's
    # second W_hh part; a Dense op's weight
    PK_IH = 0
    PK_HH = 1
    PK_HH_N = 2
    PK_DIR = 3
    PK_DENSE = 6
    PK_WIDTH = 7
    # Row-chunked (packed) forwards: batches of at least PACK_MIN_ROWS rows, whatever
    # their length. The choice depends on the rows only, never on T: the packed and
    # unpacked kernels sum their products in different orders, and a step (T = 1)
    # of a batch must give exactly what the whole sequence gives at that step (and
    # a sequence's first steps what a longer one gives; the unpacked path's input
    # projections are row-count independent too, see _affine_fwd). Packing copies
    # every weight once per call, which a short call of a large model pays for (a
    # scorer keeps weights packed once instead: PackedWeights(auto=True)). Batches
    # under 4 rows stay unpacked even for long sequences, although the one-row
    # kernels would be faster there (score-b1: 75 -> 65 us); weights packed with
    # auto=False take the packed path for every call. Backwards (which no step has
    # to equal) pack from PACK_MIN_STEPS row-steps (T * N) on.
    PACK_MIN_ROWS = 4
    PACK_MIN_STEPS = 32
    # Packed-path forwards of at most RAW_MAX_STEPS steps and RAW_MAX_GROUP_STEPS
    # (steps x groups of 16 rows) read the weights as stored (WF_RAW: the same sums,
    # rows in the vector lanes, each weight broadcast) instead of packing them:
    # packing costs a pass over every weight, which a few steps of a few rows do not
    # repay (lstm_med, 64 rows, one step: 11 ms packed, 3.6 ms as stored), while
    # many rows do (lstm_tiny, 256 rows, one step: 1.3 ms packed, 1.7 ms as stored)
    RAW_MAX_STEPS = 4
    RAW_MAX_GROUP_STEPS = 8


cdef inline Py_ssize_t _pk_size(int isa, int wfmt, Py_ssize_t isz, Py_ssize_t C,
                                Py_ssize_t K) noexcept nogil:
    """Units (elements, or words for bfloat16) of a packed (C, K) weight."""
    if _is_bf16(wfmt):
        return cyrnn_pgemm_bsize(isa, C, K)
    return cyrnn_pgemm_size(isa, isz, C, K)


cdef Py_ssize_t _pack_plan(const int64_t* sp, const Dims* d, int isa, bint bwd, int wfmt,
                           int64_t* pk) noexcept nogil:
    """Offsets (elements) of every packed weight in one block (``pk``: n_ops x
    PK_WIDTH, -1 where none); returns the block's size. Forward (``bwd`` false):
    W_ih and W_hh of every direction (Cho's GRU: W_hh as two parts, gates r, z
    and gate n) and every Dense weight. Backward: the same weights for the
    transposed products (``dg W_hh``, ``dxp W_ih``, ``dy W``). Both in format
    ``wfmt`` (the backward's: WF_NATIVE, or WF_BF16D for bfloat16 arithmetic)."""
    cdef Py_ssize_t o, dd, pos = 0, G, H, R
    cdef int64_t* q
    cdef const int64_t* r
    for o in range(d.n_ops * PK_WIDTH):
        pk[o] = -1
    for o in range(d.first, d.n_ops):
        r = _rec(sp, o)
        if r[0] == OP_RNN:
            H = r[RNN_HIDDEN]
            G = _gates_of(r)
            for dd in range(r[RNN_DIRS]):
                q = pk + o * PK_WIDTH + PK_DIR * dd
                q[PK_IH] = pos  # (C, K): (G, D) forward, (D, G) backward
                pos = _al(pos + (_pk_size(isa, wfmt, d.isz, r[RNN_IN], G) if bwd
                                 else _pk_size(isa, wfmt, d.isz, G, r[RNN_IN])))
                q[PK_HH] = pos
                # the first part's rows: all G (Cho's GRU: 2H); the product's (C, K)
                # is (rows, H) forward, (H, rows) backward
                R = 2 * H if r[RNN_CELL] == CELL_GRU_CHO else G
                pos = _al(pos + (_pk_size(isa, wfmt, d.isz, H, R) if bwd
                                 else _pk_size(isa, wfmt, d.isz, R, H)))
                if r[RNN_CELL] == CELL_GRU_CHO:
                    q[PK_HH_N] = pos
                    pos = _al(pos + _pk_size(isa, wfmt, d.isz, H, H))
        else:
            pk[o * PK_WIDTH + PK_DENSE] = pos
            pos = _al(pos + (_pk_size(isa, wfmt, d.isz, r[DENSE_IN], r[DENSE_OUT]) if bwd
                             else _pk_size(isa, wfmt, d.isz, r[DENSE_OUT], r[DENSE_IN])))
    return pos


cdef void _raw_plan(const int64_t* sp, const Dims* d, int64_t* pk) noexcept nogil:
    """``_pack_plan``'s offsets for weights read as stored (``WF_RAW``): each weight's
    own offset in the parameter buffer (Cho's gate-n part: its rows of W_hh)."""
    cdef Py_ssize_t o, dd, k0, H
    cdef int64_t* q
    cdef const int64_t* r
    for o in range(d.n_ops * PK_WIDTH):
        pk[o] = -1
    for o in range(d.first, d.n_ops):
        r = _rec(sp, o)
        if r[0] == OP_RNN:
            H = r[RNN_HIDDEN]
            for dd in range(r[RNN_DIRS]):
                q = pk + o * PK_WIDTH + PK_DIR * dd
                k0 = _tensors_of(r, dd)
                q[PK_IH] = r[k0]
                q[PK_HH] = r[k0 + 1]
                if r[RNN_CELL] == CELL_GRU_CHO:
                    q[PK_HH_N] = r[k0 + 1] + 2 * H * H
        else:
            pk[o * PK_WIDTH + PK_DENSE] = r[DENSE_W]


cdef void _pack_weights(const int64_t* sp, const Dims* d, int isa, bint bwd, int wfmt,
                        const int64_t* pk, const floating* data,
                        floating* packed) noexcept nogil:
    """Pack every weight ``_pack_plan`` placed (``bwd``: transposed), in format
    ``wfmt``."""
    cdef Py_ssize_t o, dd, k0, G, H
    cdef const int64_t* r
    cdef const int64_t* q
    cdef const floating* whh
    cdef bint cho
    for o in range(d.first, d.n_ops):
        r = _rec(sp, o)
        if r[0] == OP_RNN:
            H = r[RNN_HIDDEN]
            cho = r[RNN_CELL] == CELL_GRU_CHO
            G = 2 * H if cho else _gates_of(r)  # rows of W_hh in the first part
            for dd in range(r[RNN_DIRS]):
                q = pk + o * PK_WIDTH + PK_DIR * dd
                k0 = _tensors_of(r, dd)
                whh = data + r[k0 + 1]
                if bwd:
                    _pack_t_fmt(isa, wfmt, data + r[k0], _gates_of(r), r[RNN_IN],
                                packed + q[PK_IH])
                    _pack_t_fmt(isa, wfmt, whh, G, H, packed + q[PK_HH])
                    if cho:
                        _pack_t_fmt(isa, wfmt, whh + G * H, H, H, packed + q[PK_HH_N])
                    continue
                _pack_fmt(isa, wfmt, data + r[k0], _gates_of(r), r[RNN_IN], packed + q[PK_IH])
                _pack_fmt(isa, wfmt, whh, G, H, packed + q[PK_HH])
                if cho:
                    _pack_fmt(isa, wfmt, whh + G * H, H, H, packed + q[PK_HH_N])
        elif bwd:
            _pack_t_fmt(isa, wfmt, data + r[DENSE_W], r[DENSE_OUT], r[DENSE_IN],
                        packed + pk[o * PK_WIDTH + PK_DENSE])
        else:
            _pack_fmt(isa, wfmt, data + r[DENSE_W], r[DENSE_OUT], r[DENSE_IN],
                      packed + pk[o * PK_WIDTH + PK_DENSE])


cdef inline void _pack_fmt(int isa, int wfmt, const floating* w, Py_ssize_t C, Py_ssize_t K,
                           floating* P) noexcept nogil:
    if _is_bf16(wfmt):
        _pack_bf(isa, w, C, K, P)
    else:
        _pack(isa, w, C, K, P)


cdef inline double _op_weights(const int64_t* r) noexcept nogil:
    """Elements of the weights one step of an op reads (every direction)."""
    if r[0] == OP_RNN:
        return <double>r[RNN_DIRS] * _gates_of(r) * (r[RNN_IN] + r[RNN_HIDDEN])
    return <double>r[DENSE_OUT] * r[DENSE_IN]


# Team mode of the packed forward (``_forward_rows``): an op whose W_hh is at
# least TEAM_MIN_BYTES (a core's L2 holds about 2 MiB) runs on one thread per
# row half with the recurrent products split by columns: each thread streams half
# of W_hh per step and multiplies it with all rows (the large LSTM's W_hh is 4
# MiB: with the rows split, each thread read all of it from L3 every step and its
# products ran at 148-170 GFLOP/s per core against 172-189 with half of it on 64
# rows, benchmarks/pgemm_rows.c). Two barriers per step, so only for
# products of at least TEAM_MIN_MACS multiply-adds per thread and step (forced at
# medium, 1e6 per thread and step, its inference took 2.6 ms against 2.3 in one
# process, 300 calls each way), and not while the
# team mode's own hold is on (``_team_judge`` in src/config.pxi: the barriers make a
# team stall whenever one of its threads is kept off its core).
cdef double TEAM_MIN_BYTES = 2 * 1024 * 1024
cdef double TEAM_MIN_MACS = 4e6


def _set_team_min_bytes(double value):
    """Set the W_hh size (bytes) from which the packed forward shares its products
    by columns (tests set 0 together with ``_set_parallel_min_macs(0)``; the
    per-thread product size limit is then lifted too); returns the previous value."""
    global TEAM_MIN_BYTES
    previous = TEAM_MIN_BYTES
    TEAM_MIN_BYTES = value
    return previous


cdef inline bint _team_op(const int64_t* r, Py_ssize_t N, Py_ssize_t nt, Py_ssize_t isz,
                          int wfmt) noexcept nogil:
    """Whether op ``r`` takes the team mode on ``nt`` threads."""
    cdef double gh_h
    if (r[0] != OP_RNN or r[RNN_CELL] == CELL_GRU_CHO or nt < 2
            or (wfmt != WF_NATIVE and wfmt != WF_BF16D)
            or not _team_allowed()):
        return False
    gh_h = <double>_gates_of(r) * r[RNN_HIDDEN]  # W_hh's elements (_gates_of: G*H)
    if gh_h * isz < TEAM_MIN_BYTES:
        return False
    return TEAM_MIN_BYTES <= 0 or N * gh_h / nt >= TEAM_MIN_MACS


# The small-batch team (batches of up to SMALL_TEAM_ROWS = 15 rows: a scoring call,
# a stream's step, a step of a few streams): an
# inference op whose W_hh has at least SMALL_TEAM_MIN_BYTES (as the kernels read it:
# bfloat16 counts 2 bytes a weight) and whose products take the own one-row kernels
# (``_own_small_gemv``: their sums do not depend on the block of weight rows an
# output is computed in) or the packed kernels (weights packed once: the same holds
# for their panels), runs on a team that splits the input projections and the
# recurrent products by columns: each thread streams its share of W_ih and W_hh;
# at most one thread per SMALL_TEAM_THREAD_BYTES of W_hh. A step of a stacked LSTM with big weights is bound by the memory traffic
# of one core (lstm_med, 3 x 480: 18.7 MB of weights per step; one core reads that
# much in 250-290 us here, two in 100), so two cores take about half the time.
# Two barriers per step (after the products, after the cell math, which the
# threads do on their own rows: for one row, thread 0), one region per op and call;
# the team mode's hold (``_team_judge``) turns it off when the threads do not get
# their cores. Results equal the one-thread path to the bit (tested).
# 1.5 MiB: on the Zen 4 of 2026-12-01 (benchmarks/probe_team.py, team against one
# thread) 3 x 320 float32 (1.56 MiB) 111 against 161 us per step, 3 x 480 bfloat16
# (1.76 MiB) 104-109 against 145-155 us, 3 x 256 packed (1.00 MiB) 81 against 83 us
# with its work share at the hold's 0.75 (held 4 of 7 blocks)
cdef double SMALL_TEAM_MIN_BYTES = 1.5 * 1024 * 1024
cdef double SMALL_TEAM_THREAD_BYTES = 1024 * 1024


def _set_small_team_min_bytes(double value):
    """Set the W_hh size (bytes) from which the forward of a small batch shares its
    products between threads (the small-batch team; -1: never; 0, for tests, also
    lifts the limit of one thread per SMALL_TEAM_THREAD_BYTES); returns the previous
    value."""
    global SMALL_TEAM_MIN_BYTES
    previous = SMALL_TEAM_MIN_BYTES
    SMALL_TEAM_MIN_BYTES = value
    return previous


cdef inline Py_ssize_t _small_team_op(const int64_t* r, Py_ssize_t N, Py_ssize_t isz,
                                      bint packed, int wfmt) noexcept nogil:
    """The threads op ``r`` of an inference of ``N`` (<= SMALL_TEAM_ROWS) rows runs on
    as a small-batch team (1: none; packed calls then take the row chunks); ``packed``:
    on weights in format ``wfmt`` (packed, or as stored for a short call of 4+ rows:
    their kernels sum every element in one order whatever its columns)."""
    cdef double whh
    if r[0] != OP_RNN or r[RNN_CELL] == CELL_GRU_CHO or SMALL_TEAM_MIN_BYTES < 0:
        return 1
    # W_hh's bytes as the kernels read them (_gates_of: G*H; bfloat16: 2 per weight)
    whh = <double>_gates_of(r) * r[RNN_HIDDEN] * (2 if packed and _is_bf16(wfmt) else isz)
    if whh < SMALL_TEAM_MIN_BYTES:
        return 1
    if not packed and not _own_small_gemv(N, <Py_ssize_t>whh, isz, -1):
        return 1
    if _nthreads() < 2 or not _team_allowed():
        return 1
    # at least SMALL_TEAM_THREAD_BYTES of W_hh per thread (many-core hosts: a team
    # as wide as the machine would meet at every barrier for a few columns each);
    # lifted with the size limit (tests: _set_small_team_min_bytes(0))
    if SMALL_TEAM_MIN_BYTES <= 0:
        return _team(min(_nthreads(), 64))
    return _team(min(_nthreads(), 64, max(2, <Py_ssize_t>(whh / SMALL_TEAM_THREAD_BYTES))))


cdef void _fused_forward(const int64_t* sp, const Dims* d, bint keep, const int64_t* plan,
                         const floating* data, const char* xin, floating* base,
                         const uint8_t* mask, const floating* h0, const floating* c0,
                         const floating* drop, floating* out, const int64_t* pk,
                         const floating* packed, int isa, int wfmt) noexcept nogil:
    """Lay the input out time-major, run every op over the plan, write the
    batch-first result to ``out`` and the final states to the scratch's h_n/c_n.
    ``mask`` (T, N), followed by its time reversal when an op has two directions;
    ``h0``/``c0`` the flat initial states or NULL (zeros); ``drop`` the
    concatenated dropout multipliers or NULL (used when ``keep``).

    ``packed`` NULL: one pass over all rows, input projections as one product per
    op (``_affine_fwd``), recurrent products through BLAS or the own small-GEMM
    kernel; an inference op of at most SMALL_TEAM_ROWS rows with a big W_hh runs on
    a small-batch team (``_small_team_op``, also on packed weights). Else (weights packed by ``_pack_weights`` in format
    ``wfmt``, offsets ``pk``): each op's rows are cut into chunks that threads take dynamically,
    each running the op's whole time loop on its rows (rows never interact: no
    step barrier; ops follow one another, as their step scratch is shared)."""
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, F = d.F0, rows = N, nch = 1, ci
    cdef Py_ssize_t nt = 1, r0, o, t, i, tid, tn, trows
    cdef bint small_team
    cdef double t0, cpu, cs, wait
    cdef double tcpu[64]
    cdef double* tc = tcpu
    cdef Py_ssize_t tsize[1]
    cdef Py_ssize_t* ts = tsize
    cdef unsigned int csr
    cdef const int64_t* r
    cdef const int64_t* idp
    cdef const floating* x
    cdef const floating* table
    cdef const floating* inp
    cdef floating* x0 = base
    # the packed inference reads a features input where it lies (the first op's
    # gather), so the time-major copy is skipped; training keeps it (dW_ih reads it)
    cdef bint direct = (packed != NULL and not keep and not d.ids and d.n_ops > d.first
                        and _rec(sp, d.first)[0] == OP_RNN)
    cdef const floating* xdirect = <const floating*>xin if direct else NULL
    if d.any_c:
        memset(base + d.cn, 0, N * d.SH * sizeof(floating))
    if direct:
        pass
    elif d.ids:
        r = _rec(sp, 0)
        table = data + r[EMB_W]
        idp = <const int64_t*>xin
        for t in range(T):
            for i in range(N):
                memcpy(x0 + (t * N + i) * F, table + idp[i * T + t] * F, F * sizeof(floating))
    else:
        x = <const floating*>xin
        for t in range(T):
            for i in range(N):
                memcpy(x0 + (t * N + i) * F, x + (i * T + t) * F, F * sizeof(floating))
    for o in range(d.first, d.n_ops):
        nt = 1
        small_team = False
        if not keep and N <= SMALL_TEAM_ROWS:
            nt = _small_team_op(_rec(sp, o), N, d.isz, packed != NULL, wfmt)
            small_team = nt > 1
        if packed != NULL and not small_team:
            nt = _chunking(N, T, _op_weights(_rec(sp, o)), d.isz, &rows, &nch)
        if nt <= 1:
            _forward_op(sp, d, o, keep, plan, data, base, xdirect, mask, h0, c0, drop, 0, N, pk,
                        packed, isa, wfmt)
        elif small_team or _team_op(_rec(sp, o), N, min(nt, 64), d.isz, wfmt):
            # one row half per thread, products shared by columns; the governor
            # judges the threads' CPU time outside the barriers
            cyrnn_count_path(2)
            cyrnn_count_path(6)
            if small_team:
                cyrnn_count_path(7)
            t0 = cyrnn_wall()
            for tid in range(64):
                tc[tid] = 0
            ts[0] = 1
            with parallel(num_threads=min(nt, 64)):
                tid = cyrnn_omp_thread()
                tn = cyrnn_omp_team()
                if tid == 0:
                    ts[0] = tn  # the team OpenMP gave, which may be smaller
                trows = (N + tn - 1) // tn
                r0 = min(N, tid * trows)
                wait = 0
                cs = cyrnn_cpu()
                csr = cyrnn_fp_flush()
                _forward_op(sp, d, o, keep, plan, data, base, xdirect, mask, h0, c0, drop, r0,
                            min(r0 + trows, N), pk, packed, isa, wfmt, tid, tn, &wait)
                cyrnn_fp_restore(csr)
                tc[tid] = max(0.0, cyrnn_cpu() - cs - wait)
            cpu = 0
            for tid in range(64):
                cpu += tc[tid]
            _team_judge(t0, cpu, ts[0], small_team)
            if not small_team:
                # (the small team's regions are judged by the team mode's hold only:
                # it falls back to one thread, never to row chunks)
                _judge(t0, cpu, ts[0])
        else:
            cyrnn_count_path(2)
            t0 = cyrnn_wall()
            cpu = 0
            for ci in prange(nch, schedule='dynamic', chunksize=1, num_threads=nt):
                r0 = ci * rows
                cs = cyrnn_cpu()
                csr = cyrnn_fp_flush()
                _forward_op(sp, d, o, keep, plan, data, base, xdirect, mask, h0, c0, drop, r0,
                            min(r0 + rows, N), pk, packed, isa, wfmt)
                cyrnn_fp_restore(csr)
                cpu += cyrnn_cpu() - cs
            _judge(t0, cpu, nt)
        r = _rec(sp, o)
        if r[0] == OP_RNN and r[RNN_DROP] and keep and drop != NULL:
            drop += TN * _width_of(r)
    F = d.F_out
    inp = base + plan[(d.n_ops - 1) * P_WIDTH + P_OUT] if d.n_ops > d.first else x0
    if d.seq_out:  # time-major (T, N, F) -> batch-first (N, T, F)
        for t in range(T):
            for i in range(N):
                memcpy(out + (i * T + t) * F, inp + (t * N + i) * F, F * sizeof(floating))
    else:
        memcpy(out, inp, N * F * sizeof(floating))


cdef void _forward_op(const int64_t* sp, const Dims* d, Py_ssize_t o, bint keep,
                      const int64_t* plan, const floating* data, floating* base,
                      const floating* xdirect, const uint8_t* mask, const floating* h0,
                      const floating* c0, const floating* drop, Py_ssize_t r0,
                      Py_ssize_t r1, const int64_t* pk, const floating* packed,
                      int isa, int wfmt, Py_ssize_t tid=0, Py_ssize_t team=0,
                      double* wait=NULL) noexcept nogil:
    """Op ``o`` of ``_fused_forward`` on rows r0 .. r1-1 (``packed`` NULL: all
    rows); ``drop`` points at this op's dropout multiplier; ``xdirect`` (or NULL):
    the call's batch-first input, which the first op then reads instead of the
    time-major copy. ``team`` > 1: thread ``tid`` of a team sharing the recurrent
    products by columns (``_team_op``; see ``_forward_rows``), and for a small batch
    the input projections too (``_small_team_op``)."""
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, NH, t, i, j, H, G, D, O, F
    cdef Py_ssize_t dd, k0, S = d.T + 1 if keep else 2, n = r1 - r0, nF, ca, cb
    cdef int code
    cdef const int64_t* r = _rec(sp, o)
    cdef const int64_t* p = plan + o * P_WIDTH
    cdef const int64_t* q
    cdef const floating* bo
    cdef floating* xp = base + _al(TN * d.F0)
    cdef floating* gh = base + _gh_off(d)
    cdef floating* inp = base + p[P_IN]
    cdef floating* hbuf
    cdef floating* cbuf
    cdef floating* aux
    cdef floating* hseq
    cdef floating* y
    cdef floating* yr
    cdef floating* hn = base + d.hn
    cdef StepInput si
    cdef StepInput* sip = NULL
    if packed != NULL:
        si.isa = isa
        si.wfmt = wfmt
        sip = &si
    if r[0] == OP_RNN:
        code = <int>r[RNN_CELL]
        D = r[RNN_IN]
        H = r[RNN_HIDDEN]
        NH = N * H
        G = _gates_of(r)
        for dd in range(r[RNN_DIRS]):
            q = p + P_DIR + K_DIR * dd
            k0 = _tensors_of(r, dd)
            if packed == NULL and team > 1:
                # this thread's columns of all steps' input projections
                _col_share(G, tid, team, 16, &ca, &cb)
                _affine_fwd_cols(inp, TN, D, G, data + r[k0], data + r[k0 + 2], xp, ca, cb)
                if dd:
                    _team_wait(wait)
                    if tid == 0:
                        _reverse_time(xp, T, N * G)
            elif packed == NULL:
                # all steps' input projections; the reverse direction runs on them reversed
                _affine_fwd(inp, TN, D, G, data + r[k0], data + r[k0 + 2], xp)
                if dd:
                    _reverse_time(xp, T, N * G)
            else:
                si.x = inp
                si.xs_t = N * D  # time-major: step, row strides
                si.xs_n = D
                if o == d.first and xdirect != NULL:
                    si.x = xdirect
                    si.xs_t = D
                    si.xs_n = T * D
                si.xg = base + d.xg
                si.D = D
                si.rev = dd > 0
                si.wih = packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_IH]
                si.bih = data + r[k0 + 2]
                si.whh = packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_HH]
                si.whh_n = NULL
                if code == CELL_GRU_CHO:
                    si.whh_n = packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_HH_N]
            hbuf = base + q[K_H]
            _set_state(hbuf, h0, p[P_ST] + dd * NH, r0 * H, n * H)
            cbuf = NULL
            aux = NULL
            if has_cell_state_of(code):
                cbuf = base + q[K_C]
                _set_state(cbuf, c0, p[P_ST] + dd * NH, r0 * H, n * H)
            if has_aux_of(code):
                aux = base + q[K_AUX]
            # a many-to-one op keeps no per-step outputs (its output is the final state)
            hseq = base + q[K_HSEQ] if r[RNN_SEQ] else NULL
            _forward_rows(code, <int>r[RNN_ACT], <int>r[RNN_RACT], T, N, r0, r1, H, xp, sip,
                          data + r[k0 + 1], data + r[k0 + 3], _peep_of(data, r, k0),
                          mask + dd * TN, hbuf, cbuf, S, base + q[K_GATES], aux, keep, hseq,
                          gh, -1, tid, team, wait)
            memcpy(hn + p[P_ST] + dd * NH + r0 * H, hbuf + (T % S) * NH + r0 * H,
                   n * H * sizeof(floating))
            if cbuf != NULL:
                memcpy(base + d.cn + p[P_ST] + dd * NH + r0 * H,
                       cbuf + (T % S) * NH + r0 * H, n * H * sizeof(floating))
        F = _width_of(r)
        y = base + p[P_OUT]
        if r[RNN_DIRS] == 2 and r[RNN_SEQ]:
            _merge_fwd(<int>r[RNN_MERGE], T, N, r0, r1, H, base + p[P_DIR + K_HSEQ],
                       base + p[P_DIR + K_DIR + K_HSEQ], y)
        elif r[RNN_DIRS] == 2:
            _merge_fwd(<int>r[RNN_MERGE], 1, N, r0, r1, H, hn + p[P_ST], hn + p[P_ST] + NH, y)
        if r[RNN_DROP] and keep and drop != NULL and r[RNN_SEQ]:
            # the op's multiplier, kept for the backward
            nF = n * F
            for t in range(T):
                k0 = (t * N + r0) * F
                memcpy(base + p[P_DROP] + k0, drop + k0, nF * sizeof(floating))
                for j in range(k0, k0 + nF):
                    y[j] *= drop[j]
        return
    O = r[DENSE_OUT]
    F = r[DENSE_IN]
    if packed == NULL:
        _affine_fwd(inp, TN if p[P_INSEQ] else N, F, O, data + r[DENSE_W], data + r[DENSE_B],
                    base + p[P_OUT])
        return
    bo = data + r[DENSE_B]
    for t in range(T if p[P_INSEQ] else 1):
        k0 = t * N + r0
        _pgw(isa, wfmt, inp + k0 * F, F, n, F, packed + pk[o * PK_WIDTH + PK_DENSE], O,
             base + p[P_OUT] + k0 * O, O)
        for i in range(n):
            yr = base + p[P_OUT] + (k0 + i) * O
            for j in range(O):
                yr[j] += bo[j]


cdef inline void _set_state(floating* slot0, const floating* s0, Py_ssize_t off,
                            Py_ssize_t rows_off, Py_ssize_t n) noexcept nogil:
    """Rows of a direction's initial state: ``s0[off + rows_off:][:n]`` into
    ``slot0[rows_off:]``, zeros when ``s0`` is NULL."""
    if s0 != NULL:
        memcpy(slot0 + rows_off, s0 + off + rows_off, n * sizeof(floating))
    else:
        memset(slot0 + rows_off, 0, n * sizeof(floating))


cdef void _fused_backward(const int64_t* sp, const Dims* d, const int64_t* plan,
                          const int64_t* trunc, const floating* data, floating* grad,
                          const floating* base, const int64_t* ids, const uint8_t* mask,
                          const floating* d_out, const floating* dh_n, const floating* dc_n,
                          floating* dh0, floating* dc0, floating* dx,
                          floating* ws, const int64_t* pk, const floating* packed,
                          int isa, int wfmt=WF_NATIVE) noexcept nogil:
    """Gradients of a ``keep`` forward: every parameter gradient is added into
    ``grad`` (same layout as ``data``). ``d_out`` is batch-first like the output
    (NULL: none); ``dh_n``/``dc_n`` the flat final-state gradients or NULL;
    ``dh0``/``dc0`` (flat, ``dc0`` NULL without cell states, else zero-filled)
    receive the initial-state gradients; ``dx`` (N, T, F0) the input gradient, or
    NULL. ``mask`` as in ``_fused_forward``. ``ws`` is backward scratch (see
    ``_backward_scratch``). ``packed`` (NULL: none): every W_hh packed by
    ``_pack_weights`` for the backward in format ``wfmt``, offsets ``pk``: the sweeps
    then run on row chunks on several threads (WF_BF16D: the transposed products in
    bfloat16 arithmetic, the weight gradients too: ``_wgrad_by``)."""
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, NH, o, t, i, j, H, G, D, O, R, F, E
    cdef Py_ssize_t span = TN * d.Fmax, nrec = 0, dd, k0, off
    cdef const int64_t* r
    cdef const int64_t* p
    cdef const int64_t* q
    # every buffer on a 64-byte boundary (``ws`` is 64-byte aligned)
    cdef int64_t* budget = <int64_t*>ws
    cdef floating* dcur = ws + _al(N * (8 // sizeof(floating)))
    cdef floating* dnext = dcur + _al(span)
    cdef floating* dxp = dnext + _al(span)
    cdef floating* dgh = dxp + _al(TN * d.GHmax)
    cdef floating* work = dgh + _al(TN * d.GHmax)
    cdef floating* dg = work + _al(5 * N * d.Hmax)
    cdef floating* dsq = dg + _al(N * d.GHmax)
    cdef floating* dw = dsq + _al(TN * d.Hmax)
    cdef floating* db = dw + _al(d.GHmax * d.Hmax)
    cdef floating* dpeep = db + _al(d.GHmax)
    cdef uint8_t* vbuf = <uint8_t*>(dpeep + _al(3 * d.Hmax))
    cdef const floating* peep
    cdef const floating* hn = base + d.hn
    cdef const floating* dseq
    cdef const floating* dhT
    cdef const floating* dmask
    cdef int code
    cdef floating* swap
    cdef const floating* inp
    cdef bint need_din, gru, cell, fuse_ih
    cdef StepWeights sw
    cdef StepWeights* swp = NULL
    sw.isa = isa
    sw.wfmt = wfmt
    F = d.F_out
    if d_out == NULL:
        memset(dcur, 0, (TN if d.seq_out else N) * F * sizeof(floating))
    elif d.seq_out:  # batch-first -> time-major
        for t in range(T):
            for i in range(N):
                memcpy(dcur + (t * N + i) * F, d_out + (i * T + t) * F, F * sizeof(floating))
    else:
        memcpy(dcur, d_out, N * F * sizeof(floating))
    for o in range(d.first, d.n_ops):
        if _rec(sp, o)[0] == OP_RNN:
            nrec += 1
    for o in range(d.n_ops - 1, d.first - 1, -1):
        r = _rec(sp, o)
        p = plan + o * P_WIDTH
        inp = base + p[P_IN]
        # the first op's input is data (its gradient only when asked for), and a
        # frozen embedding takes no gradient
        need_din = ((o > 0 and not (o == d.first and _rec(sp, 0)[EMB_FROZEN] != 0))
                    or (o == 0 and dx != NULL))
        if r[0] == OP_DENSE:
            R = TN if p[P_INSEQ] else N
            if packed != NULL:
                _affine_bwd_packed(isa, wfmt, dcur, inp, R, r[DENSE_IN], r[DENSE_OUT],
                                   packed + pk[o * PK_WIDTH + PK_DENSE], grad + r[DENSE_W],
                                   grad + r[DENSE_B], dnext if need_din else NULL, False)
            else:
                _affine_bwd(dcur, inp, R, r[DENSE_IN], r[DENSE_OUT], data + r[DENSE_W],
                            grad + r[DENSE_W], grad + r[DENSE_B], dnext if need_din else NULL,
                            False)
        else:
            nrec -= 1
            code = <int>r[RNN_CELL]
            D = r[RNN_IN]
            H = r[RNN_HIDDEN]
            NH = N * H
            G = _gates_of(r)
            cell = has_cell_state_of(code)
            gru = code == CELL_GRU or code == CELL_GRU_CHO  # own dgh array, as the layer path
            if p[P_DROP] >= 0:  # the gradient on the output before dropout
                dmask = base + p[P_DROP]
                for j in range(TN * _width_of(r)):
                    dcur[j] *= dmask[j]
            for dd in range(r[RNN_DIRS]):
                q = p + P_DIR + K_DIR * dd
                k0 = _tensors_of(r, dd)
                off = p[P_ST] + dd * NH
                # dW_ih in the pass that gives dW_hh (same dxp rows, input time order)
                fuse_ih = packed != NULL and not gru and dd == 0
                peep = _peep_of(data, r, k0)
                # this direction's share of the output gradient, in its own time order
                dseq = NULL
                dhT = NULL
                if dh_n != NULL:
                    dhT = dh_n + off
                if r[RNN_SEQ] and r[RNN_DIRS] == 1:
                    dseq = dcur
                elif r[RNN_SEQ]:
                    _merge_bwd(<int>r[RNN_MERGE], dd, T, N, H, dcur, base + p[P_DIR + K_HSEQ],
                               base + p[P_DIR + K_DIR + K_HSEQ], dsq)
                    dseq = dsq
                else:  # many-to-one: the output gradient joins dh_n's
                    if r[RNN_DIRS] == 1:
                        memcpy(dsq, dcur, NH * sizeof(floating))
                    else:
                        _merge_bwd(<int>r[RNN_MERGE], dd, 1, N, H, dcur, hn + p[P_ST],
                                   hn + p[P_ST] + NH, dsq)
                    if dhT != NULL:
                        for j in range(NH):
                            dsq[j] += dhT[j]
                    dhT = dsq
                if packed != NULL:
                    sw.wt = packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_HH]
                    sw.wt_n = NULL
                    if code == CELL_GRU_CHO:
                        sw.wt_n = packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_HH_N]
                    swp = &sw
                _backward_all(code, <int>r[RNN_ACT], <int>r[RNN_RACT], trunc[nrec], T, N, H,
                              data + r[k0 + 1], swp, peep, mask + dd * TN, base + q[K_H],
                              base + q[K_C] if cell else NULL, base + q[K_GATES],
                              base + q[K_AUX] if has_aux_of(code) else NULL, dseq, dhT,
                              dc_n + off if cell and dc_n != NULL else NULL, dh0 + off,
                              dc0 + off if cell else NULL, work, dg, budget, vbuf, dxp,
                              dgh if gru else NULL, dw, db, dpeep if peep != NULL else NULL,
                              -1, inp if fuse_ih else NULL, D,
                              grad + r[k0] if fuse_ih else NULL)
                for j in range(G * H):
                    grad[r[k0 + 1] + j] += dw[j]
                for j in range(G):
                    grad[r[k0 + 3] + j] += db[j]
                if peep != NULL:
                    for j in range(3 * H):
                        grad[r[k0 + 4] + j] += dpeep[j]
                # the input projection's gradients, from dxp (back in input time order)
                if dd:
                    _reverse_time(dxp, T, N * G)
                if packed != NULL:
                    # dW_ih came with dW_hh when fused; db_ih is the sum of dxp that
                    # db_hh already is, but for the GRUs (their recurrent
                    # pre-activation gradients differ)
                    _affine_bwd_packed(isa, wfmt, dxp, inp, TN, D, G,
                                       packed + pk[o * PK_WIDTH + PK_DIR * dd + PK_IH],
                                       NULL if fuse_ih else grad + r[k0],
                                       grad + r[k0 + 2] if gru else NULL,
                                       dnext if need_din else NULL, dd > 0)
                    if not gru:
                        for j in range(G):
                            grad[r[k0 + 2] + j] += db[j]
                else:
                    _affine_bwd(dxp, inp, TN, D, G, data + r[k0], grad + r[k0],
                                grad + r[k0 + 2], dnext if need_din else NULL, dd > 0)
        swap = dcur
        dcur = dnext
        dnext = swap
    if d.ids and not _rec(sp, 0)[EMB_FROZEN]:  # scatter-add into the trainable table
        r = _rec(sp, 0)
        E = r[EMB_DIM]
        for t in range(T):
            for i in range(N):
                o = ids[i * T + t]
                for j in range(E):
                    grad[r[EMB_W] + o * E + j] += dcur[(t * N + i) * E + j]
    elif dx != NULL:  # time-major -> batch-first
        for t in range(T):
            for i in range(N):
                memcpy(dx + (i * T + t) * d.F0, dcur + (t * N + i) * d.F0,
                       d.F0 * sizeof(floating))


cdef inline Py_ssize_t _backward_scratch(const Dims* d) noexcept nogil:
    """Elements of backward scratch (the layout ``_fused_backward`` carves)."""
    cdef Py_ssize_t TN = d.T * d.N
    return (2 * TN * d.Fmax + 2 * TN * d.GHmax + 5 * d.N * d.Hmax + d.N * d.GHmax
            + TN * d.Hmax + d.GHmax * d.Hmax + d.GHmax + 3 * d.Hmax + 3 * d.N + 8
            + 13 * 16)


cdef object _new_output(const Dims* d):
    cdef cnp.npy_intp dims[3]
    dims[0] = d.N
    if d.seq_out and not d.step:
        dims[1] = d.T
        dims[2] = d.F_out
        return cnp.PyArray_EMPTY(3, dims, d.typenum, 0)
    dims[1] = d.F_out
    return cnp.PyArray_EMPTY(2, dims, d.typenum, 0)


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/mman.h>
    static void cyrnn_advise_huge(void* p, size_t n) {
    #ifdef MADV_HUGEPAGE
        (void)madvise(p, n, MADV_HUGEPAGE);
    #endif
    }
    #else
    static void cyrnn_advise_huge(void* p, size_t n) { (void)p; (void)n; }
    #endif
    """
    void cyrnn_advise_huge(void* p, size_t n) nogil


cdef enum:
    HUGE_BLOCK = 4 << 20    # blocks from 4 MiB on: 2 MiB aligned, transparent huge pages
    HUGE_ALIGN = 2 << 20


cdef void* _alloc(double n_bytes) except NULL:
    """``n_bytes`` (+64) aligned to 64 bytes (a cache line, an AVX-512 vector); free().

    Big blocks are fresh mmaps on every call (glibc), so their first touch costs a
    page fault per 4 KiB page, enough to make the large configurations' fused
    training step slower than the layer path. They are therefore aligned to 2 MiB
    and advised for transparent huge pages (one fault per 2 MiB where THP is
    enabled).
    """
    cdef void* p = NULL
    cdef size_t n
    if n_bytes > 1e15:
        raise MemoryError("fused call scratch too large")
    n = <size_t>n_bytes + 64
    if n >= HUGE_BLOCK:
        n = (n + HUGE_ALIGN - 1) // HUGE_ALIGN * HUGE_ALIGN
        if posix_memalign(&p, HUGE_ALIGN, n) != 0 or p == NULL:
            raise MemoryError("fused call scratch")
        cyrnn_advise_huge(p, n)
        return p
    if posix_memalign(&p, 64, n) != 0 or p == NULL:
        raise MemoryError("fused call scratch")
    return p


# Scratch blocks kept between calls: a training step allocates the same blocks
# every time, and fresh memory costs a zero-filled page fault per page (5-8% of a
# medium training step; at large, whose forward cache and backward scratch are
# about 90 and 140 MB, the kernel's page clearing was 8.6% of the step's cycles
# while only 64 MiB were kept). Up to SCRATCH_SLOTS blocks of at least 1 MiB are
# kept: SCRATCH_KEEP bytes in all, or SCRATCH_KEEP_TRAIN when the block being
# given back served a training call (a training loop reuses its blocks every
# step; a scorer that once took a huge batch should not hold its memory). Sizes
# are the blocks' real capacities (a block lent for a smaller request keeps its
# size). A request takes the smallest kept block that fits and is at most twice
# its size. A step's peak memory is unchanged (the same blocks are reused rather
# than freed and mapped again); _release_scratch() gives them back. Every get and
# put runs with the GIL held (the blocks are taken and given back outside the
# nogil sections), which serialises them.
cdef enum:
    SCRATCH_SLOTS = 4
    SCRATCH_LENT = 16
    SCRATCH_MIN = 1 << 20
    SCRATCH_KEEP = 64 << 20
    SCRATCH_KEEP_TRAIN = 512 << 20

cdef void* _scratch_ptr[SCRATCH_SLOTS]
cdef double _scratch_bytes[SCRATCH_SLOTS]
# blocks lent out of the cache, with their capacities (for _scratch_put)
cdef void* _lent_ptr[SCRATCH_LENT]
cdef double _lent_bytes[SCRATCH_LENT]


cdef void* _scratch_get(double n_bytes) except NULL:
    """A block of at least ``n_bytes`` (64-byte aligned): a kept one, else new."""
    cdef int k, best = -1
    cdef void* p
    for k in range(SCRATCH_SLOTS):
        if (_scratch_ptr[k] != NULL and _scratch_bytes[k] >= n_bytes
                and _scratch_bytes[k] <= 2 * n_bytes
                and (best < 0 or _scratch_bytes[k] < _scratch_bytes[best])):
            best = k
    if best < 0:
        return _alloc(n_bytes)
    p = _scratch_ptr[best]
    _scratch_ptr[best] = NULL
    for k in range(SCRATCH_LENT):
        if _lent_ptr[k] == NULL:
            _lent_ptr[k] = p
            _lent_bytes[k] = _scratch_bytes[best]
            return p
    # no record left: the block is given back as if it were the size asked for
    return p


cdef void _scratch_put(void* p, double n_bytes, bint train=False) noexcept:
    """Give back a block from ``_scratch_get`` (``n_bytes``: the size asked for;
    ``train``: it served a training call); kept when it is big enough to matter and
    the cache has room, else freed."""
    cdef int k, free_slot = -1
    cdef double total = 0
    if p == NULL:
        return
    for k in range(SCRATCH_LENT):
        if _lent_ptr[k] == p:
            n_bytes = _lent_bytes[k]
            _lent_ptr[k] = NULL
            break
    for k in range(SCRATCH_SLOTS):
        if _scratch_ptr[k] == NULL:
            free_slot = k
        else:
            total += _scratch_bytes[k]
    if (n_bytes < SCRATCH_MIN or free_slot < 0
            or total + n_bytes > (SCRATCH_KEEP_TRAIN if train else SCRATCH_KEEP)):
        free(p)
        return
    _scratch_ptr[free_slot] = p
    _scratch_bytes[free_slot] = n_bytes


def _release_scratch():
    """Free every kept scratch block (tests; memory-sensitive callers)."""
    cdef int k
    for k in range(SCRATCH_SLOTS):
        free(_scratch_ptr[k])
        _scratch_ptr[k] = NULL


cdef class PackedWeights:
    """A model's forward weights packed once, for repeated ``infer`` calls
    (``weights=``): a scorer's calls then skip the per-call packing, which takes
    the packed kernels even for one row and one step, and ``"bfloat16"`` keeps
    them as bfloat16 (half the bytes per product; float32 arithmetic, see
    src/pgemm.h). Filled by the first call, from that call's checked spec and
    parameter buffer; a later call with another spec or buffer raises
    ValueError. The parameters must not change while it is in use.

    ``auto=True``: used only by the calls that would pack per call anyway
    (PACK_MIN_ROWS rows or more), so every result equals the unpacked plan's
    exactly; smaller calls run unpacked and pack nothing.

    ``arithmetic="bfloat16"`` (bfloat16 weights only): the products also round
    the activations to bfloat16 and multiply-add k-pairs with AVX-512 BF16's
    VDPBF16PS, accumulating in float32 (src/pgemm.h); ValueError where
    ``bf16_arithmetic_available()`` is False."""
    cdef char* block
    cdef double nbytes
    cdef int64_t* pk
    cdef int64_t* sp
    cdef Py_ssize_t sp_len
    cdef int isa
    cdef int wfmt
    cdef object data
    cdef readonly str format
    cdef readonly str arithmetic
    cdef readonly Py_ssize_t min_rows

    def __cinit__(self, str format="native", bint auto=False, str arithmetic="float32"):
        if format not in ("native", "bfloat16"):
            raise ValueError(f"packed weights format must be 'native' or 'bfloat16', "
                             f"got {format!r}")
        if arithmetic not in ("float32", "bfloat16"):
            raise ValueError(f"packed weights arithmetic must be 'float32' or 'bfloat16', "
                             f"got {arithmetic!r}")
        if auto and format != "native":
            raise ValueError("auto packed weights are native (bfloat16 changes results)")
        if arithmetic == "bfloat16":
            if format != "bfloat16":
                raise ValueError("bfloat16 arithmetic needs bfloat16 weights")
            if not cyrnn_bf16dot_ok():
                raise ValueError("bfloat16 arithmetic needs a CPU with AVX-512 BF16 "
                                 "(bf16_arithmetic_available() is False here)")
        self.format = format
        self.arithmetic = arithmetic
        self.wfmt = (WF_BF16D if arithmetic == "bfloat16" else
                     WF_BF16 if format == "bfloat16" else WF_NATIVE)
        self.min_rows = PACK_MIN_ROWS if auto else 0

    def __dealloc__(self):
        free(self.block)
        free(self.pk)
        free(self.sp)

    @property
    def nbytes(self):
        """Bytes of the packed block (0 before the first call)."""
        return int(self.nbytes)

    cdef int bind(self, const int64_t* sp, const Dims* d, cnp.ndarray data) except -1:
        """Pack on the first call (the GIL held throughout, so concurrent first calls
        pack once); check later calls' spec and buffer against the first's."""
        cdef Py_ssize_t n = SPEC_HEADER + sp[1] * SPEC_WIDTH, units
        if self.block != NULL:
            if (data is not self.data or n != self.sp_len
                    or memcmp(sp, self.sp, <size_t>(n * 8)) != 0):
                raise ValueError("packed weights were made for another model or "
                                 "parameter buffer")
            return 0
        if _is_bf16(self.wfmt) and d.isz != 4:
            raise ValueError("bfloat16 weights need a float32 model")
        cdef int isa = cyrnn_pgemm_isa()
        cdef int64_t* pk = <int64_t*>_alloc(<double>d.n_ops * PK_WIDTH * 8)
        cdef int64_t* spc = NULL
        cdef char* block = NULL
        units = _pack_plan(sp, d, isa, False, self.wfmt, pk)
        try:
            spc = <int64_t*>_alloc(<double>n * 8)
            block = <char*>_alloc(<double>units * d.isz)
        except MemoryError:
            free(pk)
            free(spc)
            raise
        memcpy(spc, sp, <size_t>(n * 8))
        if d.isz == 4:
            _pack_weights(sp, d, isa, False, self.wfmt, pk,
                          <const float*>cnp.PyArray_DATA(data), <float*>block)
        else:
            _pack_weights(sp, d, isa, False, self.wfmt, pk,
                          <const double*>cnp.PyArray_DATA(data), <double*>block)
        # bound only now that everything is in place
        self.isa, self.pk, self.sp, self.sp_len = isa, pk, spc, n
        self.nbytes = <double>units * d.isz
        self.data = data
        self.block = block
        return 0


cdef int _run_forward(const int64_t* sp, Dims* d, bint keep, int64_t* plan,
                      cnp.ndarray data, object x, const char* xcopy,
                      const uint8_t* valid, const char* h0, const char* c0, const char* drop,
                      char** buf_out, uint8_t** mask_out, object res,
                      PackedWeights pw=None, int train_wfmt=WF_NATIVE) except -1:
    """Plan, allocate, run (``xcopy``: the checked copy of the input the run reads,
    token ids or converted features, else NULL: ``x``'s own data;
    ``valid``: the time-major validity mask, NULL when every step is valid;
    ``h0``/``c0``/``drop``: the checked state and dropout arrays' data or NULL;
    ``pw``: weights packed once, or None to pack per call from PACK_MIN_ROWS rows
    on). ``train_wfmt`` (no ``pw``): WF_BF16D packs per call in that format whatever
    the rows and steps (a training forward in bfloat16 arithmetic, whose products
    then equal those of a ``PackedWeights(arithmetic="bfloat16")`` inference).
    On success ``*buf_out``/``*mask_out`` own the memory (the mask followed by
    its time reversal when an op has two directions)."""
    cdef Py_ssize_t n_el, TN = d.T * d.N, t
    cdef char* buf
    cdef uint8_t* mask
    cdef const char* xin = (xcopy if xcopy != NULL
                            else <const char*>cnp.PyArray_DATA(<cnp.ndarray>x))
    cdef char* dptr = <char*>cnp.PyArray_DATA(data)
    cdef char* optr = <char*>cnp.PyArray_DATA(<cnp.ndarray>res)
    cdef char* packed = NULL
    cdef double packed_bytes = 0
    cdef int64_t* pk = NULL
    cdef int isa, wfmt = WF_NATIVE
    cdef unsigned int csr
    cdef double need
    # sizes in double first: the planner's Py_ssize_t sums must not overflow
    need = ((<double>d.T + 1) * d.N * (d.F0 + 3.0 * d.GHmax + 4.0 * d.Hmax + 2.0 * d.Fmax)
            * max(1, d.n_ops) * (2 if d.any_bi else 1) + <double>d.N * d.SH * 2)
    if need * d.isz > 1e15:
        raise MemoryError("fused call scratch too large")
    if pw is not None and d.N < pw.min_rows:
        pw = None  # auto: a call the per-call rule leaves unpacked
    d.packed = pw is not None or d.N >= PACK_MIN_ROWS or train_wfmt != WF_NATIVE
    if pw is not None:
        pw.bind(sp, d, data)
    n_el = _plan(sp, d, keep, plan)
    d.buf_bytes = <double>n_el * d.isz
    buf = <char*>_scratch_get(d.buf_bytes)
    mask = <uint8_t*>malloc(<size_t>(TN * (2 if d.any_bi else 1)))
    if mask == NULL:
        _scratch_put(buf, d.buf_bytes, keep)
        raise MemoryError("fused call scratch")
    isa = cyrnn_pgemm_isa()
    if pw is not None:
        pk = pw.pk
        packed = pw.block
        isa = pw.isa
        wfmt = pw.wfmt
    elif d.packed:
        pk = <int64_t*>malloc(<size_t>(d.n_ops * PK_WIDTH * 8))
        if pk == NULL:
            _scratch_put(buf, d.buf_bytes, keep)
            free(mask)
            raise MemoryError("fused call scratch")
        if (train_wfmt == WF_NATIVE and d.T <= RAW_MAX_STEPS
                and d.T * ((d.N + 15) // 16) <= RAW_MAX_GROUP_STEPS):
            # too few steps to repay packing: the packed path's sums on the weights
            # as stored
            _raw_plan(sp, d, pk)
            packed = dptr
            wfmt = WF_RAW
            cyrnn_count_path(3)
        else:
            wfmt = train_wfmt
            packed_bytes = <double>_pack_plan(sp, d, isa, False, wfmt, pk) * d.isz
            try:
                packed = <char*>_scratch_get(packed_bytes)
            except MemoryError:
                free(pk)
                _scratch_put(buf, d.buf_bytes, keep)
                free(mask)
                raise
    with nogil:
        csr = cyrnn_fp_flush()  # denormals to zero in this call (every thread of it)
        if valid != NULL:
            memcpy(mask, valid, <size_t>TN)
        else:
            memset(mask, 1, <size_t>TN)
        if d.any_bi:
            for t in range(d.T):
                memcpy(mask + TN + t * d.N, mask + (d.T - 1 - t) * d.N, <size_t>d.N)
        if d.isz == 4:
            if packed != NULL:
                cyrnn_count_path(0)
                if pw is None and wfmt != WF_RAW:
                    _pack_weights(sp, d, isa, False, wfmt, pk, <const float*>dptr,
                                  <float*>packed)
            _fused_forward(sp, d, keep, plan, <const float*>dptr, xin, <float*>buf, mask,
                           <const float*>h0, <const float*>c0, <const float*>drop,
                           <float*>optr, pk, <const float*>packed, isa, wfmt)
        else:
            if packed != NULL:
                cyrnn_count_path(0)
                if pw is None and wfmt != WF_RAW:
                    _pack_weights(sp, d, isa, False, wfmt, pk, <const double*>dptr,
                                  <double*>packed)
            _fused_forward(sp, d, keep, plan, <const double*>dptr, xin, <double*>buf, mask,
                           <const double*>h0, <const double*>c0, <const double*>drop,
                           <double*>optr, pk, <const double*>packed, isa, wfmt)
        cyrnn_fp_restore(csr)
    if pw is None:
        if wfmt != WF_RAW:
            _scratch_put(packed, packed_bytes, keep)
        free(pk)
    buf_out[0] = buf
    mask_out[0] = mask
    return 0


cdef bint _finite_arg(const Dims* d, const char* a, Py_ssize_t n) noexcept nogil:
    """Whether the checked argument ``a`` (NULL: none) of ``n`` elements is all finite."""
    if a == NULL:
        return True
    if d.isz == 4:
        return _all_finite(<const float*>a, n)
    return _all_finite(<const double*>a, n)


cdef const char* _check_arg(object a, str name, const Dims* d, Py_ssize_t size) except? NULL:
    """The data of a state, dropout or gradient argument: None (NULL) or a C-contiguous,
    aligned, native-endian array of the parameters' dtype and ``size`` elements (any
    shape); anything else raises ValueError."""
    if a is None:
        return NULL
    if (not cnp.PyArray_Check(a) or cnp.PyArray_TYPE(<cnp.ndarray>a) != d.typenum
            or cnp.PyArray_SIZE(<cnp.ndarray>a) != size
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            or not cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)):
        raise ValueError(f"{name} must be a C-contiguous array of the parameters' dtype "
                         f"with {size} elements")
    return <const char*>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _state_dims(object shape, const Dims* d, cnp.npy_intp* dims) except -1:
    """The dimensions (at most 8, in ``dims``) of the flat states reshaped to
    ``shape``, a tuple of non-negative integers whose product is their size (None:
    1-D); returns their number. Anything else raises ValueError."""
    cdef int nd, k
    cdef double size = 1
    dims[0] = d.N * d.SH
    if shape is None:
        return 1
    if type(shape) is not tuple or not 1 <= len(shape) <= 8:
        raise ValueError("state_shape must be a tuple of 1 to 8 sizes")
    nd = len(shape)
    for k in range(nd):
        v = shape[k]
        try:
            if isinstance(v, bool):
                raise TypeError
            v = operator.index(v)
        except TypeError:
            raise ValueError(f"state_shape {shape} must hold integers") from None
        if v < 0 or v > d.N * d.SH:
            raise ValueError(f"state_shape {shape} does not hold the {d.N * d.SH} state "
                             "values")
        dims[k] = v
        size *= dims[k]
    if size != d.N * d.SH:
        raise ValueError(f"state_shape {shape} does not hold the {d.N * d.SH} state values")
    return nd


cdef object _flat_out(const Dims* d, const char* base, Py_ssize_t off, int nd=1,
                      const cnp.npy_intp* dims=NULL):
    """A new array of the flat states' size holding the scratch's ``base[off:]``:
    1-D, or of the ``nd`` dimensions ``dims`` (``_state_dims``)."""
    cdef cnp.npy_intp n = d.N * d.SH
    cdef cnp.ndarray a = cnp.PyArray_EMPTY(nd, <cnp.npy_intp*>dims if dims != NULL else &n,
                                           d.typenum, 0)
    memcpy(cnp.PyArray_DATA(a), base + off * d.isz, d.N * d.SH * d.isz)
    return a
