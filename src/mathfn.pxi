# Math functions: the activations of the cell table (by code, in place over
# arrays, and their derivatives through the output), with float32 sigmoid/tanh in C.
# Included by _cython_kernels.pyx.
#
# float32 sigmoid/tanh are inlined polynomial approximations (Cephes expf core,
# ~1 ulp; tanh: odd Taylor polynomial below |x| < 0.4, 1 - 2/(exp(2|x|) + 1)
# above, in the portable code; the AVX-512 and AVX2 versions take both sides
# from one e^(-2|x|) - 1, see cyrnn_vtanhf_512; a few ulp overall) written
# without branches, so gcc vectorises the array loops. Saturation is exact (sigmoid -> 0/1, tanh -> +-1 for large |x|)
# and NaN propagates (clamps are compare-selects that keep NaN). The array
# functions are explicit 16-lane versions on AVX-512 (each division taken as a
# reciprocal and a Newton step), 8-lane ones on AVX2 + FMA, and portable loops
# elsewhere (target clones, see config.pxi; gcc keeps them scalar). float64
# keeps libm (the approximations are float32-accurate only).

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
    static void cyrnn_vsigmoidf_c(float* y, const float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) y[j] = cyrnn_sigmoidf(a[j]);
    }

    CYRNN_CLONES
    static void cyrnn_vtanhf_c(float* y, const float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) y[j] = cyrnn_tanhf(a[j]);
    }

    #include "pgemm.h"
    #if CYRNN_PGEMM_X86
    #include <immintrin.h>
    /* AVX-512 versions, 16 lanes at a time (sigmoid: the same formula; tanh: see
       cyrnn_vtanhf_512), with the one division of each taken as VRCP14PS plus one
       Newton step (relative error ~2^-27, so within an ulp of the division):
       VDIVPS has a throughput of one per 10 cycles and was 60% of the sigmoid's
       samples in the medium training step. Chosen at run time with the packed
       GEMM's instruction set (CYRNN_PGEMM_ISA lowers both). */
    /* e^x = s e^r: s = 2^n (returned in *s), n = round(x / ln 2), r = x - n ln 2
       (two-part ln 2); returns e^r - 1 from the Cephes polynomial (r + r^2 P(r)).
       Both exp forms below are built on it. */
    CYRNN_T512 static inline __m512 cyrnn_exp_reduce16(__m512 x, __m512* s) {
        const __m512 big = _mm512_set1_ps(12582912.0f);
        __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), big);
        __m512 n = _mm512_sub_ps(t, big);
        __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
        __m512 z, y;
        *s = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127 - 0x4B400000)), 23));
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
        z = _mm512_mul_ps(r, r);
        y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500E-4f), r, _mm512_set1_ps(1.3981999507E-3f));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
        return _mm512_fmadd_ps(y, z, r);
    }

    /* exp(x) for x already clamped to [-87, 88] (NaN passes through). */
    CYRNN_T512 static inline __m512 cyrnn_expf_core16(__m512 x) {
        __m512 s, p = cyrnn_exp_reduce16(x, &s);
        return _mm512_mul_ps(_mm512_add_ps(p, _mm512_set1_ps(1.0f)), s);
    }

    /* 1 / d: VRCP14PS and one Newton step (NaN stays NaN). */
    CYRNN_T512 static inline __m512 cyrnn_rcp16(__m512 d) {
        __m512 r = _mm512_rcp14_ps(d);
        return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    }

    /* max/min with the bound first: a NaN x is returned (MAXPS/MINPS give the
       second operand when either is NaN), as the scalar compare-selects keep it. */
    CYRNN_T512 static void cyrnn_vsigmoidf_512(float* y, const float* a, Py_ssize_t n) {
        Py_ssize_t j;
        _Pragma("GCC unroll 4")
        for (j = 0; j < n; j += 16) {
            __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);
            __m512 x = _mm512_maskz_loadu_ps(k, a + j);
            __m512 m = _mm512_sub_ps(_mm512_setzero_ps(), x);
            __m512 s;
            m = _mm512_max_ps(_mm512_set1_ps(-87.0f), m);
            m = _mm512_min_ps(_mm512_set1_ps(88.0f), m);
            s = cyrnn_rcp16(_mm512_add_ps(_mm512_set1_ps(1.0f), cyrnn_expf_core16(m)));
            s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0f), _CMP_LT_OQ),
                                     s, _mm512_setzero_ps());
            _mm512_mask_storeu_ps(y + j, k, s);
        }
    }

    /* e^x - 1 for x in [-87, 0] (NaN passes through), and e^x in *v: the same
       reduction as cyrnn_expf_core16, e^x = s e^r with s = 2^n, e^x - 1 taken
       as s (e^r - 1) + (s - 1), so that no cancellation happens
       near 0 (n = 0: s - 1 = 0 and the result is the polynomial's e^r - 1). */
    CYRNN_T512 static inline __m512 cyrnn_expm1f_core16(__m512 x, __m512* v) {
        __m512 s, p = cyrnn_exp_reduce16(x, &s);
        *v = _mm512_fmadd_ps(s, p, s);
        return _mm512_fmadd_ps(s, p, _mm512_sub_ps(s, _mm512_set1_ps(1.0f)));
    }

    /* With v = e^(-2|x|) and u = v - 1 from one evaluation (above) and one
       division by 1 + v: tanh|x| = -u / (1 + v) below |x| = 0.5625 (no
       cancellation near 0), 1 - 2v / (1 + v) above (no error amplified as v
       grows; v -> 0 gives 1 exactly for large |x|); then x's sign. Every float32
       in 2^-10 <= |x| < 12 checked against float64 tanh (a Zen 4, 2026-12-01):
       at most 3.7 ulp, 1.2e-7 absolute, 2.7e-7 relative (the form before: 3.0
       ulp, 1.1e-7); the AVX2 version, with VDIVPS, 2.3 ulp. The earlier form (1 -
       2 / (e^2|x| + 1) and a Taylor polynomial below 0.4, each computed for
       every lane) took 38 vector operations per 16 lanes against 28; tanh was 6-10% of an
       LSTM inference's cycles. */
    CYRNN_T512 static void cyrnn_vtanhf_512(float* y, const float* a, Py_ssize_t n) {
        const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
        Py_ssize_t j;
        _Pragma("GCC unroll 4")
        for (j = 0; j < n; j += 16) {
            __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);
            __m512 x = _mm512_maskz_loadu_ps(k, a + j);
            __m512i sx = _mm512_and_si512(sign, _mm512_castps_si512(x));
            __m512 ax = _mm512_castsi512_ps(_mm512_xor_si512(sx, _mm512_castps_si512(x)));
            __m512 m = _mm512_max_ps(_mm512_set1_ps(-87.0f),
                                     _mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
            __m512 v, u = cyrnn_expm1f_core16(m, &v);
            __m512 d = _mm512_add_ps(v, _mm512_set1_ps(1.0f));
            __m512 rc = _mm512_rcp14_ps(d), r;
            /* 1 / d: one Newton step; -u rc + 0, so that u = 0 gives +0 */
            rc = _mm512_mul_ps(rc, _mm512_fnmadd_ps(d, rc, _mm512_set1_ps(2.0f)));
            r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.5625f), _CMP_LT_OQ),
                                     _mm512_fnmadd_ps(_mm512_add_ps(v, v), rc, _mm512_set1_ps(1.0f)),
                                     _mm512_fnmadd_ps(u, rc, _mm512_setzero_ps()));
            r = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sx));
            _mm512_mask_storeu_ps(y + j, k, r);
        }
    }

    /* AVX2 + FMA versions, 8 lanes at a time. gcc does not vectorise the
       portable loops above (it turns the clamps into branches around the
       division), so without these a CPU without AVX-512 ran both functions one
       element at a time: half of the medium LSTM's inference cycles on a Zen 3.
       The division stays a VDIVPS (the same quotient as the portable code; its
       throughput hides behind the polynomial's FMAs on 8 lanes). Tails use
       masked loads and stores (the lanes beyond n are neither read nor written).

       Each function works on NQ vectors at once, one operation on all NQ before
       the next (CYRNN_Q8), so that NQ independent dependency chains interleave in
       program order: a lane's chain (reduction, polynomial, division) is ~60
       cycles long, and Zen 3's floating-point scheduler holds too few operations
       to overlap whole iterations of one vector each. Four at once (32 lanes per
       iteration, one vector at a time for the rest) ran tanh 28% faster in a
       standalone loop on a Zen 3 (0.60-0.63 against 0.82-0.88 ns per element,
       the best of 40 rounds, a throwaway harness; three at once the same, two
       0.68-0.83; benchmarks/results/compare_avx2_interleave.json for the models), with the
       same bits in every lane: each lane's operations are unchanged. */
    #define CYRNN_Q8(NQ) _Pragma("GCC unroll 4") for (int q = 0; q < (NQ); q++)

    /* as cyrnn_exp_reduce16: e^x = s e^r, returns e^r - 1, on nq vectors */
    CYRNN_T256 static inline __attribute__((always_inline)) void cyrnn_exp_reduce8(
            int nq, const __m256* x, __m256* s, __m256* p) {
        const __m256 big = _mm256_set1_ps(12582912.0f);
        __m256 t[4], n[4], r[4], z[4];
        CYRNN_Q8(nq) t[q] = _mm256_fmadd_ps(x[q], _mm256_set1_ps(1.44269504088896341f), big);
        CYRNN_Q8(nq) n[q] = _mm256_sub_ps(t[q], big);
        CYRNN_Q8(nq) r[q] = _mm256_fnmadd_ps(n[q], _mm256_set1_ps(0.693359375f), x[q]);
        CYRNN_Q8(nq) s[q] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(
            _mm256_castps_si256(t[q]), _mm256_set1_epi32(127 - 0x4B400000)), 23));
        CYRNN_Q8(nq) r[q] = _mm256_fnmadd_ps(n[q], _mm256_set1_ps(-2.12194440e-4f), r[q]);
        CYRNN_Q8(nq) z[q] = _mm256_mul_ps(r[q], r[q]);
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500E-4f), r[q],
                                            _mm256_set1_ps(1.3981999507E-3f));
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(p[q], r[q], _mm256_set1_ps(8.3334519073E-3f));
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(p[q], r[q], _mm256_set1_ps(4.1665795894E-2f));
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(p[q], r[q], _mm256_set1_ps(1.6666665459E-1f));
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(p[q], r[q], _mm256_set1_ps(5.0000001201E-1f));
        CYRNN_Q8(nq) p[q] = _mm256_fmadd_ps(p[q], z[q], r[q]);
    }

    /* sigmoid of nq vectors (cyrnn_sigmoidf's formula) */
    CYRNN_T256 static inline __attribute__((always_inline)) void cyrnn_sigmoid8(
            int nq, const __m256* x, __m256* y) {
        const __m256 one = _mm256_set1_ps(1.0f);
        __m256 m[4], s[4], p[4];
        CYRNN_Q8(nq) m[q] = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(
            _mm256_set1_ps(-87.0f), _mm256_sub_ps(_mm256_setzero_ps(), x[q])));
        cyrnn_exp_reduce8(nq, m, s, p);
        /* e^m = (p + 1) s, as cyrnn_expf_core16 */
        CYRNN_Q8(nq) y[q] = _mm256_div_ps(one, _mm256_add_ps(
            one, _mm256_mul_ps(_mm256_add_ps(p[q], one), s[q])));
        CYRNN_Q8(nq) y[q] = _mm256_blendv_ps(y[q], _mm256_setzero_ps(), _mm256_cmp_ps(
            x[q], _mm256_set1_ps(-88.0f), _CMP_LT_OQ));
    }

    /* tanh of nq vectors, as cyrnn_vtanhf_512 with one VDIVPS: the quotient of
       either branch (2v / (1 + v) above |x| = 0.5625, -u / (1 + v) below) is
       the same division of the numerator the lane takes */
    CYRNN_T256 static inline __attribute__((always_inline)) void cyrnn_tanh8(
            int nq, const __m256* x, __m256* y) {
        const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
        const __m256 one = _mm256_set1_ps(1.0f);
        __m256 sx[4], ax[4], m[4], s[4], p[4], v[4], u[4], lo[4];
        CYRNN_Q8(nq) sx[q] = _mm256_and_ps(sign, x[q]);
        CYRNN_Q8(nq) ax[q] = _mm256_xor_ps(sx[q], x[q]);
        CYRNN_Q8(nq) m[q] = _mm256_max_ps(_mm256_set1_ps(-87.0f),
                                          _mm256_mul_ps(ax[q], _mm256_set1_ps(-2.0f)));
        cyrnn_exp_reduce8(nq, m, s, p);
        /* v = e^m, u = e^m - 1, as cyrnn_expm1f_core16 */
        CYRNN_Q8(nq) v[q] = _mm256_fmadd_ps(s[q], p[q], s[q]);
        CYRNN_Q8(nq) u[q] = _mm256_fmadd_ps(s[q], p[q], _mm256_sub_ps(s[q], one));
        CYRNN_Q8(nq) lo[q] = _mm256_cmp_ps(ax[q], _mm256_set1_ps(0.5625f), _CMP_LT_OQ);
        CYRNN_Q8(nq) y[q] = _mm256_div_ps(
            _mm256_blendv_ps(_mm256_add_ps(v[q], v[q]),
                             _mm256_sub_ps(_mm256_setzero_ps(), u[q]), lo[q]),
            _mm256_add_ps(v[q], one));
        CYRNN_Q8(nq) y[q] = _mm256_or_ps(
            _mm256_blendv_ps(_mm256_sub_ps(one, y[q]), y[q], lo[q]), sx[q]);
    }

    /* lanes j < left set (left may exceed 8) */
    CYRNN_T256 static inline __m256i cyrnn_mask8(Py_ssize_t left) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(left > 8 ? 8 : (int)left), lane);
    }

    /* y[j] = F(a[j]) for j < n (y == a allowed): 32 lanes per iteration, then
       one vector at a time, the last one masked */
    #define CYRNN_VFUN8(NAME, F)                                                      \
    CYRNN_T256 static void NAME(float* y, const float* a, Py_ssize_t n) {             \
        Py_ssize_t j = 0;                                                             \
        for (; j + 32 <= n; j += 32) {                                                \
            __m256 x[4], r[4];                                                        \
            CYRNN_Q8(4) x[q] = _mm256_loadu_ps(a + j + 8 * q);                        \
            F(4, x, r);                                                               \
            CYRNN_Q8(4) _mm256_storeu_ps(y + j + 8 * q, r[q]);                        \
        }                                                                             \
        for (; j < n; j += 8) {                                                       \
            __m256i k = cyrnn_mask8(n - j);                                           \
            __m256 x = n - j >= 8 ? _mm256_loadu_ps(a + j) : _mm256_maskload_ps(a + j, k); \
            __m256 r;                                                                 \
            F(1, &x, &r);                                                             \
            if (n - j >= 8) _mm256_storeu_ps(y + j, r);                               \
            else _mm256_maskstore_ps(y + j, k, r);                                    \
        }                                                                             \
    }
    CYRNN_VFUN8(cyrnn_vsigmoidf_256, cyrnn_sigmoid8)
    CYRNN_VFUN8(cyrnn_vtanhf_256, cyrnn_tanh8)
    #endif

    static void cyrnn_vsigmoidf(float* y, const float* a, Py_ssize_t n) {
    #if CYRNN_PGEMM_X86
        int isa = cyrnn_pgemm_isa();
        if (isa == 2) { cyrnn_vsigmoidf_512(y, a, n); return; }
        if (isa == 1) { cyrnn_vsigmoidf_256(y, a, n); return; }
    #endif
        cyrnn_vsigmoidf_c(y, a, n);
    }

    static void cyrnn_vtanhf(float* y, const float* a, Py_ssize_t n) {
    #if CYRNN_PGEMM_X86
        int isa = cyrnn_pgemm_isa();
        if (isa == 2) { cyrnn_vtanhf_512(y, a, n); return; }
        if (isa == 1) { cyrnn_vtanhf_256(y, a, n); return; }
    #endif
        cyrnn_vtanhf_c(y, a, n);
    }

    """
    void cyrnn_vsigmoidf(float* y, const float* a, Py_ssize_t n) nogil
    void cyrnn_vtanhf(float* y, const float* a, Py_ssize_t n) nogil
    float cyrnn_sigmoidf(float x) nogil
    float cyrnn_tanhf(float x) nogil


# ----------------------------------------------------------------------------
# Scalar and array sigmoid/tanh (float32: the approximations above; float64: libm).
# ----------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


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


# ----------------------------------------------------------------------------
# Activations by code (cyrnn.cells.ACTIVATION_TABLE). The code is tested once per
# array, never per element; NaN propagates through every one (as in NumPy).
# ----------------------------------------------------------------------------

cdef inline void _vact(int act, floating* y, const floating* a, Py_ssize_t n) noexcept nogil:
    """y[j] = act(a[j]) for j < n (y == a allowed)."""
    cdef Py_ssize_t j
    cdef floating v
    if act == ACT_TANH:
        _vtanh(y, a, n)
    elif act == ACT_SIGMOID:
        _vsigmoid(y, a, n)
    elif act == ACT_RELU:
        for j in range(n):
            y[j] = 0 if a[j] <= 0 else a[j]  # keeps NaN, as np.maximum
    elif act == ACT_HARD_SIGMOID:
        for j in range(n):  # Keras 3: clip(a / 6 + 1/2, 0, 1), in the working precision
            v = a[j] / (<floating>6) + (<floating>0.5)
            v = 0 if v < 0 else v
            y[j] = <floating>1 if v > <floating>1 else v
    elif y != a:  # linear
        memcpy(y, a, n * sizeof(floating))


cdef inline floating _dact(int act, floating y) noexcept nogil:
    """The derivative of activation ``act`` expressed through its output ``y``.
    Inlined into loops where ``act`` is fixed, the compiler hoists the branch."""
    # <floating>1: a bare 1 becomes the C double 1.0, which would move float32
    # arithmetic to double precision (conversions in every vector loop)
    if act == ACT_TANH:
        return <floating>1 - y * y
    if act == ACT_SIGMOID:
        return y * (<floating>1 - y)
    if act == ACT_RELU:
        return <floating>1 if y > 0 else 0
    if act == ACT_LINEAR:
        return <floating>1
    return <floating>1 / 6 if (y > 0 and y < <floating>1) else 0  # hard sigmoid
