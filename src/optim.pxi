# Optimizer and clipping kernels: the drop-in replacements of cyrnn.optim's NumPy
# update functions, as in cyrnn/_optim_kernels.py (the Numba versions; same
# signatures, in-place semantics and operation order, torch's single-tensor
# order). One fused pass over the flat arrays per step, without the GIL.
# cyrnn.optim takes these first when the extension is built, so a training loop
# on the Cython backend never imports Numba. Included by _cython_kernels.pyx.
#
# Scalars are derived in double exactly as the NumPy code derives them in Python
# and then cast to the array dtype (NEP 50), so float32 updates are computed in
# float32 like the reference. RMSProp's and Adam's loops are C with contraction
# off, so they round like NumPy's passes on every instruction set; SGD's Cython
# loop targets the x86-64 baseline (no FMA), and a -march=native build may contract
# its multiply-adds (the tests compare within 1e-6 / 1e-12). ``work`` is accepted
# and ignored; unused state arrays may be empty.

from libc.math cimport pow, sqrt, sqrtf


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


# The RMSProp and Adam element loops as C (target clones, like the cell loops): the
# Cython loops, with their branches and memoryview indexing, ran as scalar code
# (0.15-0.3 ms a step for the medium model's 83k parameters, serial). Contraction
# into multiply-adds is off and sqrt sets no errno (setup.py: -fno-math-errno), so
# the loops vectorise and every clone rounds as NumPy's passes do (IEEE +, *, /
# and sqrt, in the same order).
# Arrays a configuration does not use are NULL and never read.
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    /* one loop per (centered, momentum): GCC does not unswitch all four cases */
    #define CYRNN_RMSPROP_LOOP(T, SQRT, CEN, MOM)                                      \
        for (i = 0; i < n; i++) {                                                      \
            T g = use_wd ? gr[i] + p[i] * wd : gr[i];                                  \
            T v = sa[i] * al + g * oma * g;                                            \
            T avg;                                                                     \
            sa[i] = v;                                                                 \
            if (CEN) {                                                                 \
                T m = ga[i], diff = g - m;                                             \
                m = small ? m + diff * lw : g + diff * lw1;                            \
                ga[i] = m;                                                             \
                avg = SQRT(v - m * m);                                                 \
            } else {                                                                   \
                avg = SQRT(v);                                                         \
            }                                                                          \
            avg = avg + e;                                                             \
            if (MOM) {                                                                 \
                T buf = mb[i] * mom + g / avg;                                         \
                mb[i] = buf;                                                           \
                p[i] = p[i] + buf * neg_lr;                                            \
            } else {                                                                   \
                p[i] = p[i] + g * neg_lr / avg;                                        \
            }                                                                          \
        }
    #define CYRNN_RMSPROP(SUF, T, SQRT)                                                \
    CYRNN_CLONES static void cyrnn_rmsprop_##SUF(                                     \
            Py_ssize_t n, T* __restrict p, const T* __restrict gr, T* __restrict sa,  \
            T* __restrict ga, T* __restrict mb, T wd, T al, T oma, int small, T lw,   \
            T lw1, T e, T mom, T neg_lr, int use_wd, int centered, int use_mom) {     \
        Py_ssize_t i;                                                                  \
        if (centered && use_mom) { CYRNN_RMSPROP_LOOP(T, SQRT, 1, 1) }                 \
        else if (centered) { CYRNN_RMSPROP_LOOP(T, SQRT, 1, 0) }                       \
        else if (use_mom) { CYRNN_RMSPROP_LOOP(T, SQRT, 0, 1) }                        \
        else { CYRNN_RMSPROP_LOOP(T, SQRT, 0, 0) }                                     \
    }
    #define CYRNN_ADAM(SUF, T, SQRT)                                                   \
    CYRNN_CLONES static void cyrnn_adam_##SUF(                                        \
            Py_ssize_t n, T* __restrict p, const T* __restrict gr, T* __restrict ea,  \
            T* __restrict es, T* __restrict em, T wd, int small, T lw, T lw1, T b2,   \
            T one_m_b2, T bc2_sqrt, T neg_step, T e, int use_wd, int amsgrad) {       \
        Py_ssize_t i;                                                                  \
        for (i = 0; i < n; i++) {                                                      \
            T g = use_wd ? gr[i] + p[i] * wd : gr[i];                                  \
            T m = ea[i], diff = g - m, v, vm, denom;                                   \
            m = small ? m + diff * lw : g + diff * lw1;                                \
            ea[i] = m;                                                                 \
            v = es[i] * b2 + g * one_m_b2 * g;                                         \
            es[i] = v;                                                                 \
            if (amsgrad) {                                                             \
                vm = em[i];                                                            \
                vm = (vm > v || vm != vm) ? vm : v; /* np.maximum: NaN propagates */   \
                em[i] = vm;                                                            \
                denom = SQRT(vm);                                                      \
            } else {                                                                   \
                denom = SQRT(v);                                                       \
            }                                                                          \
            denom = denom / bc2_sqrt + e;                                              \
            p[i] = p[i] + m * neg_step / denom;                                        \
        }                                                                              \
    }
    CYRNN_RMSPROP(f, float, __builtin_sqrtf)
    CYRNN_RMSPROP(d, double, __builtin_sqrt)
    CYRNN_ADAM(f, float, __builtin_sqrtf)
    CYRNN_ADAM(d, double, __builtin_sqrt)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void cyrnn_rmsprop_f(Py_ssize_t n, float* p, const float* gr, float* sa, float* ga,
                         float* mb, float wd, float al, float oma, int small, float lw,
                         float lw1, float e, float mom, float neg_lr, int use_wd,
                         int centered, int use_mom) nogil
    void cyrnn_rmsprop_d(Py_ssize_t n, double* p, const double* gr, double* sa, double* ga,
                         double* mb, double wd, double al, double oma, int small, double lw,
                         double lw1, double e, double mom, double neg_lr, int use_wd,
                         int centered, int use_mom) nogil
    void cyrnn_adam_f(Py_ssize_t n, float* p, const float* gr, float* ea, float* es,
                      float* em, float wd, int small, float lw, float lw1, float b2,
                      float one_m_b2, float bc2_sqrt, float neg_step, float e, int use_wd,
                      int amsgrad) nogil
    void cyrnn_adam_d(Py_ssize_t n, double* p, const double* gr, double* ea, double* es,
                      double* em, double wd, int small, double lw, double lw1, double b2,
                      double one_m_b2, double bc2_sqrt, double neg_step, double e,
                      int use_wd, int amsgrad) nogil


cdef inline void _need(Py_ssize_t have, Py_ssize_t n, str name) except *:
    if have < n:
        raise ValueError(f"{name} has {have} elements, the update needs {n}")


def sgd_update(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buf,
               work, double lr, double momentum, double dampening, bint nesterov,
               double weight_decay, bint first_step):
    """``cyrnn.optim._sgd_update``, fused."""
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating wd = <floating>weight_decay, mom = <floating>momentum
    cdef floating damp1 = <floating>(1.0 - dampening), neg_lr = <floating>(-lr)
    cdef bint use_wd = weight_decay != 0.0, use_mom = momentum != 0.0
    cdef bint use_damp = dampening != 0.0
    cdef floating d_p, buf
    _need(grad.shape[0], n, "grad")
    if use_mom:
        _need(momentum_buf.shape[0], n, "momentum_buf")
    with nogil:
        for i in range(n):
            d_p = grad[i] + param[i] * wd if use_wd else grad[i]
            if use_mom:
                if first_step:
                    buf = d_p
                else:
                    buf = momentum_buf[i] * mom
                    buf = buf + (d_p * damp1 if use_damp else d_p)
                momentum_buf[i] = buf
                d_p = d_p + buf * mom if nesterov else buf
            param[i] = param[i] + d_p * neg_lr


def rmsprop_update(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                   floating[::1] grad_avg, floating[::1] momentum_buf, work, double lr,
                   double alpha, double eps, double momentum, bint centered,
                   double weight_decay):
    """``cyrnn.optim._rmsprop_update``, fused."""
    cdef Py_ssize_t n = param.shape[0]
    cdef floating wd = <floating>weight_decay, al = <floating>alpha
    cdef floating one_m_alpha = <floating>(1.0 - alpha)
    cdef double w = 1.0 - alpha  # lerp weight, branch decided in double as in NumPy
    cdef bint small = abs(w) < 0.5
    cdef floating lw = <floating>w, lw1 = <floating>(w - 1.0), e = <floating>eps
    cdef floating mom = <floating>momentum, neg_lr = <floating>(-lr)
    cdef bint use_wd = weight_decay != 0.0, use_mom = momentum > 0.0
    cdef floating* ga = NULL
    cdef floating* mb = NULL
    _need(grad.shape[0], n, "grad")
    _need(square_avg.shape[0], n, "square_avg")
    if centered:
        _need(grad_avg.shape[0], n, "grad_avg")
        if n:
            ga = &grad_avg[0]
    if use_mom:
        _need(momentum_buf.shape[0], n, "momentum_buf")
        if n:
            mb = &momentum_buf[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            cyrnn_rmsprop_f(n, &param[0], &grad[0], &square_avg[0], ga, mb, wd, al,
                            one_m_alpha, small, lw, lw1, e, mom, neg_lr, use_wd, centered,
                            use_mom)
        else:
            cyrnn_rmsprop_d(n, &param[0], &grad[0], &square_avg[0], ga, mb, wd, al,
                            one_m_alpha, small, lw, lw1, e, mom, neg_lr, use_wd, centered,
                            use_mom)


def adam_update(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
                floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq, work, step,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                bint amsgrad):
    """``cyrnn.optim._adam_update``, fused."""
    cdef Py_ssize_t n = param.shape[0]
    cdef floating wd = <floating>weight_decay
    cdef double w = 1.0 - beta1
    cdef bint small = abs(w) < 0.5
    cdef floating lw = <floating>w, lw1 = <floating>(w - 1.0)
    cdef floating b2 = <floating>beta2, one_m_b2 = <floating>(1.0 - beta2)
    cdef double stepf = float(step)
    # libm pow, as Python's float ** (Cython 3 takes double ** double through complex
    # pow, which rounded differently: the float64 updates differed from NumPy's by an ulp)
    cdef double bias_correction1 = 1.0 - pow(beta1, stepf)
    cdef double bias_correction2 = 1.0 - pow(beta2, stepf)
    cdef double step_size = lr / bias_correction1
    cdef floating bc2_sqrt = <floating>pow(bias_correction2, 0.5)
    cdef floating neg_step = <floating>(-step_size), e = <floating>eps
    cdef bint use_wd = weight_decay != 0.0
    cdef floating* em = NULL
    _need(grad.shape[0], n, "grad")
    _need(exp_avg.shape[0], n, "exp_avg")
    _need(exp_avg_sq.shape[0], n, "exp_avg_sq")
    if amsgrad:
        _need(max_exp_avg_sq.shape[0], n, "max_exp_avg_sq")
        if n:
            em = &max_exp_avg_sq[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            cyrnn_adam_f(n, &param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], em, wd, small,
                         lw, lw1, b2, one_m_b2, bc2_sqrt, neg_step, e, use_wd, amsgrad)
        else:
            cyrnn_adam_d(n, &param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], em, wd, small,
                         lw, lw1, b2, one_m_b2, bc2_sqrt, neg_step, e, use_wd, amsgrad)


def clip_by_value_flat(floating[::1] grad, double clip_value):
    """Clip the 1-D ``grad`` to ``[-clip_value, clip_value]`` in place (NaN stays NaN)."""
    cdef Py_ssize_t i
    cdef floating c = <floating>clip_value, lo = -c, x
    with nogil:
        for i in range(grad.shape[0]):
            x = grad[i]
            if x < lo:
                grad[i] = lo
            elif x > c:
                grad[i] = c


cdef enum:
    SUM_BLOCK = 2048


cdef double _sum_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of squares in double (NaN and inf propagate): blocks of SUM_BLOCK values
    summed in 8 lanes, the block sums added in order. The rounding error grows with
    the block length plus the number of blocks, not with n (1e-13 relative at 10**6
    equal values; one sequential sum: 1e-11)."""
    cdef double acc[8]
    cdef double v, total = 0
    cdef Py_ssize_t b, i, l, end, n8
    b = 0
    while b < n:
        end = min(b + <Py_ssize_t>SUM_BLOCK, n)
        n8 = end - (end - b) % 8
        for l in range(8):
            acc[l] = 0
        for i in range(b, n8, 8):
            for l in range(8):
                v = <double>x[i + l]
                acc[l] += v * v
        for i in range(n8, end):
            v = <double>x[i]
            acc[0] += v * v
        total += ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        b = end
    return total


def clip_by_global_norm_flat(floating[::1] flat, double max_norm):
    """Rescale the 1-D ``flat`` in place so its L2 norm is at most ``max_norm`` (the
    rule of :func:`cyrnn.optim.clip_by_global_norm`); returns the norm."""
    cdef Py_ssize_t i, n = flat.shape[0]
    cdef double total_norm, coef
    cdef floating c
    with nogil:
        total_norm = sqrt(_sum_squares(&flat[0], n)) if n else 0.0
        coef = max_norm / (total_norm + 1e-6)
        if not coef >= 1.0:  # also for a NaN coef, as torch
            c = <floating>coef
            for i in range(n):
                flat[i] = flat[i] * c
    return total_norm
