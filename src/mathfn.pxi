# Math functions: vector activations in C, activations by code (included by _cython_kernels.pyx).

# ----------------------------------------------------------------------------
# Vector primitives in C (float32 activations, small GEMMs).
#
# float32 sigmoid/tanh are inlined polynomial approximations (Cephes expf core,
# ~1 ulp; tanh: odd Taylor polynomial below |x| < 0.4, 1 - 2/(exp(2|x|) + 1)
# above; a few ulp overall) written without branches, so gcc vectorises the
# array loops. Saturation is exact (sigmoid -> 0/1, tanh -> +-1 for large |x|)
# and NaN propagates (clamps are compare-selects that keep NaN). The array
# functions are compiled for AVX-512, AVX2 and baseline x86-64 and picked at
# load time (gcc ``target_clones``; other compilers get the baseline only).
# float64 keeps libm (the approximations are float32-accurate only).
#
# The small GEMMs serve the per-step recurrent products at small batch, where
# a BLAS call costs more in overhead (and threading) than the arithmetic.
# ----------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>


    /* exp(x) for x already clamped to [-87, 88] (NaN passes through). */
    static inline float cyrnn_expf_core(float x) {
        float t = x * 1.44269504088896341f + 12582912.0f;  /* 1.5 * 2^23: round */
        float n = t - 12582912.0f;
        uint32_t ti, ei;
        float s, r, z, y;
        memcpy(&ti, &t, 4);
        ei = (ti - 0x4B400000u + 127u) << 23;
        memcpy(&s, &ei, 4);
        r = x - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        z = r * r;
        y = ((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r
              + 4.1665795894E-2f) * r + 1.6666665459E-1f) * r + 5.0000001201E-1f;
        y = y * z + r + 1.0f;
        return y * s;
    }

    static inline float cyrnn_sigmoidf(float x) {
        float m = -x, y;
        m = m < -87.0f ? -87.0f : m;
        m = m > 88.0f ? 88.0f : m;
        y = 1.0f / (1.0f + cyrnn_expf_core(m));
        return x < -88.0f ? 0.0f : y;
    }

    /* |x| < 0.4: odd Taylor series to x^15 (error < 1e-9 relative);
       else 1 - 2 / (exp(2|x|) + 1). The sign is x's (tanh(-0) = -0). */
    static inline float cyrnn_tanhf(float x) {
        float ax = fabsf(x), a2, big, z, p;
        a2 = 2.0f * ax;
        a2 = a2 > 88.0f ? 88.0f : a2;
        big = 1.0f - 2.0f / (cyrnn_expf_core(a2) + 1.0f);
        z = ax * ax;
        p = ((((((-1.4558343870e-3f * z + 3.5921280366e-3f) * z - 8.8632355299e-3f) * z
               + 2.1869488536e-2f) * z - 5.3968253968e-2f) * z + 1.3333333333e-1f) * z
             - 3.3333333333e-1f) * z;
        return copysignf(ax < 0.4f ? ax + ax * p : big, x);
    }

    CYRNN_CLONES
    static void cyrnn_vsigmoidf(float* y, const float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) y[j] = cyrnn_sigmoidf(a[j]);
    }

    CYRNN_CLONES
    static void cyrnn_vtanhf(float* y, const float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) y[j] = cyrnn_tanhf(a[j]);
    }

    """
    void cyrnn_vsigmoidf(float* y, const float* a, Py_ssize_t n) nogil
    void cyrnn_vtanhf(float* y, const float* a, Py_ssize_t n) nogil
    float cyrnn_sigmoidf(float x) nogil
    float cyrnn_tanhf(float x) nogil



# ----------------------------------------------------------------------------
# Scalar and array activations (float32: the approximations above; float64:
# libm).
# ----------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return cyrnn_tanhf(x)
    else:
        return tanh(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    """Logistic function without overflow for large ``|x|``.

    float64: x >= 0: 1 / (1 + exp(-x)); x < 0: exp(x) / (1 + exp(x)), both with
    e = exp(-|x|) <= 1 (one exp, one division, a conditional move).
    """
    cdef floating e
    if floating is float:
        return cyrnn_sigmoidf(x)
    else:
        e = _exp(-x if x >= 0 else x)
        return (1 if x >= 0 else e) / (1 + e)


cdef inline void _vsigmoid(floating* y, const floating* a, Py_ssize_t n) noexcept nogil:
    """y[j] = sigmoid(a[j]) (y == a allowed)."""
    cdef Py_ssize_t j
    if floating is float:
        cyrnn_vsigmoidf(y, a, n)
    else:
        for j in range(n):
            y[j] = _sigmoid(a[j])


cdef inline void _vtanh(floating* y, const floating* a, Py_ssize_t n) noexcept nogil:
    """y[j] = tanh(a[j]) (y == a allowed)."""
    cdef Py_ssize_t j
    if floating is float:
        cyrnn_vtanhf(y, a, n)
    else:
        for j in range(n):
            y[j] = tanh(a[j])


cdef inline void _vactivate(int act, floating* y, Py_ssize_t n) noexcept nogil:
    """In place: y = act(y)."""
    cdef Py_ssize_t j
    if act == ACT_TANH:
        _vtanh(y, y, n)
    elif act == ACT_SIGMOID:
        _vsigmoid(y, y, n)
    else:
        for j in range(n):
            y[j] = 0 if y[j] <= 0 else y[j]  # NaN propagates, as with np.maximum


cdef inline floating _activate_grad(int act, floating y) noexcept nogil:
    """Derivative of the activation expressed through its output ``y``."""
    if act == ACT_TANH:
        return 1 - y * y
    if act == ACT_RELU:
        return 1 if y > 0 else 0
    return y * (1 - y)
