# Optimizer and clipping kernels: the drop-in replacements of cyrnn.optim's NumPy
# update functions, as in cyrnn/_optim_kernels.py (the Numba versions; same
# signatures, in-place semantics and operation order, torch's single-tensor
# order). One fused pass over the flat arrays per step, without the GIL.
# cyrnn.optim takes these first when the extension is built, so a training loop
# on the Cython backend never imports Numba. Included by _cython_kernels.pyx.
#
# Scalars are derived in double exactly as the NumPy code derives them in Python
# and then cast to the array dtype (NEP 50), so float32 updates are computed in
# float32 like the reference. The default build targets the x86-64 baseline
# (no FMA), so the loops round like NumPy's passes; a -march=native build may
# contract multiply-adds (the tests compare within 1e-6 / 1e-12). ``work`` is
# accepted and ignored; unused state arrays may be empty.

from libc.math cimport sqrt, sqrtf


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


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
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating wd = <floating>weight_decay, al = <floating>alpha
    cdef floating one_m_alpha = <floating>(1.0 - alpha)
    cdef double w = 1.0 - alpha  # lerp weight, branch decided in double as in NumPy
    cdef bint small = abs(w) < 0.5
    cdef floating lw = <floating>w, lw1 = <floating>(w - 1.0), e = <floating>eps
    cdef floating mom = <floating>momentum, neg_lr = <floating>(-lr)
    cdef bint use_wd = weight_decay != 0.0, use_mom = momentum > 0.0
    cdef floating g, v, m, diff, avg, buf
    _need(grad.shape[0], n, "grad")
    _need(square_avg.shape[0], n, "square_avg")
    if centered:
        _need(grad_avg.shape[0], n, "grad_avg")
    if use_mom:
        _need(momentum_buf.shape[0], n, "momentum_buf")
    with nogil:
        for i in range(n):
            g = grad[i] + param[i] * wd if use_wd else grad[i]
            v = square_avg[i] * al + g * one_m_alpha * g
            square_avg[i] = v
            if centered:
                m = grad_avg[i]
                diff = g - m
                m = m + diff * lw if small else g + diff * lw1
                grad_avg[i] = m
                avg = _sqrt(v - m * m)
            else:
                avg = _sqrt(v)
            avg = avg + e
            if use_mom:
                buf = momentum_buf[i] * mom + g / avg
                momentum_buf[i] = buf
                param[i] = param[i] + buf * neg_lr
            else:
                param[i] = param[i] + g * neg_lr / avg


def adam_update(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
                floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq, work, step,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                bint amsgrad):
    """``cyrnn.optim._adam_update``, fused."""
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating wd = <floating>weight_decay
    cdef double w = 1.0 - beta1
    cdef bint small = abs(w) < 0.5
    cdef floating lw = <floating>w, lw1 = <floating>(w - 1.0)
    cdef floating b2 = <floating>beta2, one_m_b2 = <floating>(1.0 - beta2)
    cdef double stepf = float(step)
    cdef double bias_correction1 = 1.0 - beta1 ** stepf
    cdef double bias_correction2 = 1.0 - beta2 ** stepf
    cdef double step_size = lr / bias_correction1
    cdef floating bc2_sqrt = <floating>(bias_correction2 ** 0.5)
    cdef floating neg_step = <floating>(-step_size), e = <floating>eps
    cdef bint use_wd = weight_decay != 0.0
    cdef floating g, m, diff, v, vm, denom
    _need(grad.shape[0], n, "grad")
    _need(exp_avg.shape[0], n, "exp_avg")
    _need(exp_avg_sq.shape[0], n, "exp_avg_sq")
    if amsgrad:
        _need(max_exp_avg_sq.shape[0], n, "max_exp_avg_sq")
    with nogil:
        for i in range(n):
            g = grad[i] + param[i] * wd if use_wd else grad[i]
            m = exp_avg[i]
            diff = g - m
            m = m + diff * lw if small else g + diff * lw1
            exp_avg[i] = m
            v = exp_avg_sq[i] * b2 + g * one_m_b2 * g
            exp_avg_sq[i] = v
            if amsgrad:
                vm = max_exp_avg_sq[i]
                # np.maximum: NaN in either operand propagates
                vm = vm if (vm > v or vm != vm) else v
                max_exp_avg_sq[i] = vm
                denom = _sqrt(vm)
            else:
                denom = _sqrt(v)
            denom = denom / bc2_sqrt + e
            param[i] = param[i] + m * neg_step / denom


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
