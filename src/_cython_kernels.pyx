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
  mid-sized GEMMs are cut into blocks OpenBLAS runs on the calling thread
  (``_gemm``), and the own small-GEMM kernels can take batches of at most
  ``small_gemm_rows`` rows (off by default: OpenBLAS's small-matrix kernels were
  faster at every batch size measured, see ``SMALL_GEMM_ROWS``);
* float32 gate activations are vectorised polynomial approximations (a few
  ulp; exact saturation; NaN propagates); float64 uses libm;
* the row loops run in parallel over the batch (OpenMP ``prange``) when the
  step is large enough and the module was built with OpenMP, serially otherwise.

Everything below the ``def`` entry points runs without the GIL. The contract
kernels allocate nothing (the Python wrapper allocates outputs and scratch with
NumPy); the fused whole-model calls at the end allocate their scratch per call.

Layout reminder: a C-contiguous ``(R, C)`` array is the column-major ``(C, R)``
matrix with leading dimension ``C``; the GEMM calls below are written in those
column-major terms.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcmp, memcpy, memset
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
# all (N * H) and at least two rows. With the vectorised activations the gate
# math of a step is small next to its recurrent GEMM (large: B=64, H=512, 32768
# units, ~30 us vs ~1 ms), and an OpenMP region per step that alternates with
# BLAS's threads stalled every step on the loaded 2-core machine (large config:
# 6.4 s per inference with regions from 32768 units). So only wider steps
# (twice the large config's) share out the gate math.
cdef enum:
    PARALLEL_MIN_WORK = 65536
PARALLEL_MIN = PARALLEL_MIN_WORK

# Per-step recurrent products with at most this many rows (batch) use the own
# small-GEMM kernels instead of BLAS (callers may pass another limit). Default 0:
# on the 2-core AMD EPYC test machine (AVX-512, OpenBLAS 0.3.30 SkylakeX small
# kernels; float32, T = 200, single thread) BLAS was faster at every batch:
# N = 1: own/BLAS time 1.2 (forward) and 1.05 (backward) at H = 50 and 128;
# N = 4..32: mostly 1.1 to 2.1 (loaded machine, medians). BLAS calls of these sizes stay on one thread, so the
# own kernel saves no thread wake-ups either; it is kept, tested, for BLAS
# builds without small-matrix kernels.
cdef enum:
    SMALL_GEMM_ROWS = 0
SMALL_GEMM_N = SMALL_GEMM_ROWS

# GEMMs with m*n*k in (SERIAL_GEMM_MNK, THREADED_GEMM_MNK) are split into
# blocks OpenBLAS keeps on one thread (its own cut-off is m*n*k <= 65536 * 4,
# interface/gemm.c); from THREADED_GEMM_MNK on, one (threaded) call.
cdef extern from *:
    """
    #define CYRNN_SERIAL_GEMM_MNK 262144.0
    #define CYRNN_THREADED_GEMM_MNK 16777216.0
    """
    const double SERIAL_GEMM_MNK "CYRNN_SERIAL_GEMM_MNK"
    const double THREADED_GEMM_MNK "CYRNN_THREADED_GEMM_MNK"

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CYRNN_OPENMP 1
    #else
    #define CYRNN_OPENMP 0
    #endif
    """
    int CYRNN_OPENMP


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int cyrnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int cyrnn_omp_max_threads(void) { return 1; }
    #endif
    """
    int cyrnn_omp_max_threads() nogil


def openmp_enabled():
    """Whether this module was compiled with OpenMP (parallel row loops)."""
    return bool(CYRNN_OPENMP)


# Threads of the parallel row loops: 0 = the OpenMP default (OMP_NUM_THREADS, else
# all cores). A process-wide setting (``omp_set_num_threads`` would only affect the
# calling thread), written by ``set_num_threads`` and read at each parallel loop.
cdef int _row_threads = 0


cdef inline int _nthreads() noexcept nogil:
    cdef int n = _row_threads
    return n if n > 0 else cyrnn_omp_max_threads()


def set_num_threads(int n):
    """Use at most ``n`` threads in the parallel row loops (0: OpenMP's default).
    Called by ``cyrnn.set_num_threads``. Returns the previous setting."""
    global _row_threads
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    previous = _row_threads
    _row_threads = n
    return previous


def get_num_threads():
    """The row-loop thread count in effect (the setting, else OpenMP's default)."""
    return _nthreads()


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

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CYRNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CYRNN_CLONES
    #endif

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

    /* unaligned vector load; horizontal sum (in lane order) */
    #define CYRNN_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #define CYRNN_HSUM(W, v) ({ __typeof__((v)[0]) s_ = 0; int q_;                 \
        for (q_ = 0; q_ < (W); q_++) s_ += (v)[q_]; s_; })

    /* out[i*ldo + r] = sum_k x[i*K + k] * w[r*K + k]  (i < N, r < R): x W^T. */
    #define CYRNN_GEMM_NT(NAME, T, W)                                              \
    typedef T NAME##_vec __attribute__((vector_size(32)));                         \
    CYRNN_CLONES                                                                   \
    static void NAME(const T* x, const T* w, T* out, Py_ssize_t N, Py_ssize_t R,   \
                     Py_ssize_t K, Py_ssize_t ldo) {                               \
        Py_ssize_t r = 0, i, k, KV = K - K % W;                                    \
        for (; r + 4 <= R; r += 4) {                                               \
            const T* w0 = w + r * K; const T* w1 = w0 + K;                         \
            const T* w2 = w1 + K; const T* w3 = w2 + K;                            \
            for (i = 0; i < N; i++) {                                              \
                const T* xi = x + i * K;                                           \
                NAME##_vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, xv;             \
                T s0, s1, s2, s3;                                                  \
                for (k = 0; k < KV; k += W) {                                      \
                    xv = CYRNN_LD(NAME##_vec, xi + k);                                        \
                    a0 += xv * CYRNN_LD(NAME##_vec, w0 + k); a1 += xv * CYRNN_LD(NAME##_vec, w1 + k);    \
                    a2 += xv * CYRNN_LD(NAME##_vec, w2 + k); a3 += xv * CYRNN_LD(NAME##_vec, w3 + k);    \
                }                                                                  \
                s0 = CYRNN_HSUM(W, a0); s1 = CYRNN_HSUM(W, a1);                        \
                s2 = CYRNN_HSUM(W, a2); s3 = CYRNN_HSUM(W, a3);                        \
                for (; k < K; k++) {                                               \
                    s0 += xi[k] * w0[k]; s1 += xi[k] * w1[k];                      \
                    s2 += xi[k] * w2[k]; s3 += xi[k] * w3[k];                      \
                }                                                                  \
                out[i * ldo + r] = s0; out[i * ldo + r + 1] = s1;                  \
                out[i * ldo + r + 2] = s2; out[i * ldo + r + 3] = s3;              \
            }                                                                      \
        }                                                                          \
        for (; r < R; r++) {                                                       \
            const T* w0 = w + r * K;                                               \
            for (i = 0; i < N; i++) {                                              \
                const T* xi = x + i * K;                                           \
                NAME##_vec a0 = {0};                                               \
                T s0;                                                              \
                for (k = 0; k < KV; k += W) a0 += CYRNN_LD(NAME##_vec, xi + k) * CYRNN_LD(NAME##_vec, w0 + k); \
                s0 = CYRNN_HSUM(W, a0);                                              \
                for (; k < K; k++) s0 += xi[k] * w0[k];                            \
                out[i * ldo + r] = s0;                                             \
            }                                                                      \
        }                                                                          \
    }
    CYRNN_GEMM_NT(cyrnn_gemm_nt_f, float, 8)
    CYRNN_GEMM_NT(cyrnn_gemm_nt_d, double, 4)

    /* out[i*K + k] = beta*out + sum_r g[i*ldg + r] * w[r*K + k]  (beta 0 or 1). */
    #define CYRNN_GEMM_NN(NAME, T)                                                 \
    static inline void NAME##_axpy4(T* __restrict o, const T* __restrict w0,       \
                                    const T* __restrict w1, const T* __restrict w2,\
                                    const T* __restrict w3, T a0, T a1, T a2, T a3,\
                                    Py_ssize_t K) {                                \
        Py_ssize_t k;                                                              \
        for (k = 0; k < K; k++)                                                    \
            o[k] += (a0 * w0[k] + a1 * w1[k]) + (a2 * w2[k] + a3 * w3[k]);         \
    }                                                                              \
    CYRNN_CLONES                                                                   \
    static void NAME(const T* g, Py_ssize_t ldg, const T* w, T* out, Py_ssize_t N, \
                     Py_ssize_t R, Py_ssize_t K, int beta) {                       \
        Py_ssize_t i, r, k;                                                        \
        for (i = 0; i < N; i++) {                                                  \
            T* o = out + i * K;                                                    \
            const T* gi = g + i * ldg;                                             \
            if (!beta) memset(o, 0, K * sizeof(T));                                \
            for (r = 0; r + 4 <= R; r += 4)                                        \
                NAME##_axpy4(o, w + r * K, w + (r + 1) * K, w + (r + 2) * K,       \
                             w + (r + 3) * K, gi[r], gi[r + 1], gi[r + 2],         \
                             gi[r + 3], K);                                        \
            for (; r < R; r++) {                                                   \
                const T* wr = w + r * K; T a = gi[r];                              \
                for (k = 0; k < K; k++) o[k] += a * wr[k];                         \
            }                                                                      \
        }                                                                          \
    }
    CYRNN_GEMM_NN(cyrnn_gemm_nn_f, float)
    CYRNN_GEMM_NN(cyrnn_gemm_nn_d, double)
    """
    void cyrnn_vsigmoidf(float* y, const float* a, Py_ssize_t n) nogil
    void cyrnn_vtanhf(float* y, const float* a, Py_ssize_t n) nogil
    void cyrnn_gemm_nt_f(const float* x, const float* w, float* out, Py_ssize_t N,
                         Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldo) nogil
    void cyrnn_gemm_nt_d(const double* x, const double* w, double* out, Py_ssize_t N,
                         Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldo) nogil
    void cyrnn_gemm_nn_f(const float* g, Py_ssize_t ldg, const float* w, float* out,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, int beta) nogil
    void cyrnn_gemm_nn_d(const double* g, Py_ssize_t ldg, const double* w, double* out,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, int beta) nogil
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


# ----------------------------------------------------------------------------
# GEMM through scipy's BLAS.
# ----------------------------------------------------------------------------

cdef inline void _blas_gemm(char transa, char transb, int m, int n, int k,
                            floating alpha, const floating* a, int lda,
                            const floating* b, int ldb,
                            floating beta, floating* c, int ldc) noexcept nogil:
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*>a, &lda,
              <float*>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*>a, &lda,
              <double*>b, &ldb, &beta, c, &ldc)


cdef inline void _gemm(char transa, char transb, int m, int n, int k,
                       floating alpha, const floating* a, int lda,
                       const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major ``C = alpha op(A) op(B) + beta C`` (``C`` is m x n).

    Mid-sized products (SERIAL_GEMM_MNK < m n k < THREADED_GEMM_MNK) are cut
    into column (or row) blocks of at most SERIAL_GEMM_MNK multiply-adds, which
    OpenBLAS runs on the calling thread: waking its thread pool for them costs
    more than it saves on 2 cores, and on a loaded machine a preempted worker
    stalls every call by a scheduler slice (measured: 8 ms per call). The blocks
    compute the same dot products as one call.
    """
    cdef double mnk = <double>m * n * k
    cdef int j, step
    if mnk <= SERIAL_GEMM_MNK or mnk >= THREADED_GEMM_MNK or k == 0:
        _blas_gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    if n >= m:
        # column blocks: op(B)[:, j:j+step], C[:, j:j+step]
        step = <int>(SERIAL_GEMM_MNK / (<double>m * k))
        if step < 1:
            step = 1
        j = 0
        while j < n:
            if step > n - j:
                step = n - j
            _blas_gemm(transa, transb, m, step, k, alpha, a, lda,
                       b + (<Py_ssize_t>j * ldb if transb == c'N' else j), ldb,
                       beta, c + <Py_ssize_t>j * ldc, ldc)
            j += step
    else:
        # row blocks: op(A)[j:j+step, :], C[j:j+step, :]
        step = <int>(SERIAL_GEMM_MNK / (<double>n * k))
        if step < 1:
            step = 1
        j = 0
        while j < m:
            if step > m - j:
                step = m - j
            _blas_gemm(transa, transb, step, n, k, alpha,
                       a + (j if transa == c'N' else <Py_ssize_t>j * lda), lda,
                       b, ldb, beta, c + j, ldc)
            j += step


cdef inline void _gemm_hh(bint own, const floating* x, const floating* w, Py_ssize_t row0,
                          Py_ssize_t rows, Py_ssize_t N, Py_ssize_t H,
                          Py_ssize_t GH, floating* out) noexcept nogil:
    """``out[:, row0:row0+rows] = x @ w[row0:row0+rows].T``.

    ``x`` (N, H) row-major, ``w`` (GH, H) row-major, ``out`` (N, GH) row-major.
    ``own`` (small batches): the own register-blocked kernel; otherwise BLAS. Column-major: ``out^T (rows x N, ld GH) = W_blk (rows x H) .
    x^T (H x N)``, and ``W_blk`` is stored as the column-major (H x rows)
    matrix: transa='T'.
    """
    if own:
        if floating is float:
            cyrnn_gemm_nt_f(x, w + row0 * H, out + row0, N, rows, H, GH)
        else:
            cyrnn_gemm_nt_d(x, w + row0 * H, out + row0, N, rows, H, GH)
        return
    _gemm(c'T', c'N', <int>rows, <int>N, <int>H, 1, w + row0 * H, <int>H,
          x, <int>H, 0, out + row0, <int>GH)


cdef inline void _gemm_dh(bint own, const floating* dg, const floating* w, Py_ssize_t row0,
                          Py_ssize_t rows, Py_ssize_t N, Py_ssize_t H,
                          Py_ssize_t GH, floating beta, floating* out) noexcept nogil:
    """``out = dg[:, row0:row0+rows] @ w[row0:row0+rows] + beta * out`` (beta 0/1).

    ``dg`` (N, GH), ``w`` (GH, H), ``out`` (N, H), all row-major. Small batches:
    own kernel; otherwise BLAS, column-major: ``out^T (H x N) = W_blk^T (H x
    rows, ld H) . dg_blk^T (rows x N, ld GH)``.
    """
    if own:
        if floating is float:
            cyrnn_gemm_nn_f(dg + row0, GH, w + row0 * H, out, N, rows, H, beta != 0)
        else:
            cyrnn_gemm_nn_d(dg + row0, GH, w + row0 * H, out, N, rows, H, beta != 0)
        return
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
    for j in range(H):
        gates[j] = xp[j] + gh[j] + b[j]
    _vactivate(act, gates, H)
    memcpy(hn, gates, H * sizeof(floating))


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
    h' = o tanh(c'). Pre-activations go to ``gates`` and are activated in place
    (vectorised array activations)."""
    cdef Py_ssize_t j
    for j in range(4 * H):
        gates[j] = xp[j] + gh[j] + b[j]
    _vsigmoid(gates, gates, 2 * H)
    _vtanh(gates + 2 * H, gates + 2 * H, H)
    _vsigmoid(gates + 3 * H, gates + 3 * H, H)
    for j in range(H):
        cn[j] = gates[H + j] * cp[j] + gates[j] * gates[2 * H + j]
    _vtanh(hn, cn, H)
    for j in range(H):
        hn[j] = gates[3 * H + j] * hn[j]


cdef inline void lstm_bwd(const floating* dh, const floating* dc, const floating* cp,
                          const floating* cn, const floating* gates,
                          floating* dg, floating* dx, floating* dhn, floating* dcn,
                          floating* tmp, Py_ssize_t H) noexcept nogil:
    """Gradients of the four gate pre-activations; dc_prev = dc' f.
    ``tmp`` (H,) scratch receives tanh(c')."""
    cdef Py_ssize_t j
    cdef floating i, f, g, o, tc, dct, di, df, dgg, do
    _vtanh(tmp, cn, H)
    for j in range(H):
        i = gates[j]
        f = gates[H + j]
        g = gates[2 * H + j]
        o = gates[3 * H + j]
        tc = tmp[j]
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
    cdef floating z
    if phase <= 0:
        for j in range(2 * H):
            gates[j] = xp[j] + gh[j] + b[j]
        _vsigmoid(gates, gates, 2 * H)
        if reset_after:
            for j in range(H):
                aux[j] = gh[2 * H + j] + b[2 * H + j]
        else:
            for j in range(H):
                aux[j] = gates[j] * hp[j]
    if phase != 0:
        if reset_after:
            for j in range(H):
                gates[2 * H + j] = xp[2 * H + j] + gates[j] * aux[j]
        else:
            for j in range(H):
                gates[2 * H + j] = xp[2 * H + j] + gh[2 * H + j] + b[2 * H + j]
        _vtanh(gates + 2 * H, gates + 2 * H, H)
        for j in range(H):
            z = gates[H + j]
            hn[j] = (1 - z) * gates[2 * H + j] + z * hp[j]


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


# ----------------------------------------------------------------------------
# Python entry points (called by cyrnn.backends.cython_backend).
# ----------------------------------------------------------------------------

def forward(int kind, int act, bint reset_after, bint keep_cache,
            const floating[:, :, ::1] xp, const floating[:, ::1] w_hh,
            const floating[::1] b_hh, const uint8_t[:, ::1] mask,
            floating[:, :, ::1] h, floating[:, :, ::1] c,
            floating[:, :, ::1] gates, floating[:, :, ::1] aux,
            floating[:, :, ::1] h_seq, floating[:, ::1] gh,
            Py_ssize_t small_gemm_rows=SMALL_GEMM_ROWS):
    """Run the forward time loop.

    xp (T, N, G*H); w_hh (G*H, H); b_hh (G*H,); mask (T, N) uint8;
    h, c: state slots (T+1 or 2, N, H) with slot 0 = h0/c0 (c None unless LSTM);
    gates (T or 1, N, G*H); aux (T or 1, N, H) or None (GRU only);
    h_seq (T, N, H) output; gh (N, G*H) scratch. All shapes are the caller's
    responsibility (no checks). Batches of at most ``small_gemm_rows`` rows
    compute the recurrent products with the own small-GEMM kernel, larger ones
    with BLAS.
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
                      auxptr, keep_cache, &h_seq[0, 0, 0], &gh[0, 0],
                      small_gemm_rows)


def backward(int kind, int act, bint reset_after, Py_ssize_t truncate,
             const floating[:, :, ::1] h, const floating[:, :, ::1] c,
             const floating[:, :, ::1] gates, const floating[:, :, ::1] aux,
             const floating[:, ::1] w_hh, const uint8_t[:, ::1] mask,
             const floating[:, :, ::1] dh_seq, const floating[:, ::1] dh_T,
             const floating[:, ::1] dc_T,
             floating[:, :, ::1] dxp, floating[:, :, ::1] dgh,
             floating[:, ::1] dh0, floating[:, ::1] dc0,
             floating[:, :, ::1] work, floating[:, ::1] dg, int64_t[::1] budget,
             floating[:, ::1] dw_hh, floating[::1] db_hh,
             Py_ssize_t small_gemm_rows=SMALL_GEMM_ROWS):
    """Gradients through the forward pass.

    truncate: -1 for full BPTT, else k >= 0 (k < T). h (T+1, N, H) cache states;
    c (T+1, N, H) or None; gates (T, N, G*H); aux (T, N, H) or None;
    dh_seq/dh_T/dc_T or None; dxp, dgh (T, N, G*H) zero-filled outputs (dgh
    None for RNN and LSTM, whose recurrent pre-activation gradient equals dxp);
    dh0, dc0 (N, H) outputs (dc0 None unless LSTM); work (5, N, H) and
    dg (N, G*H), budget (N,) scratch; dw_hh (G*H, H), db_hh (G*H,) outputs.
    small_gemm_rows: as in ``forward``.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = w_hh.shape[1]
    cdef const floating* cp = NULL
    cdef const floating* ap = NULL
    cdef const floating* seqp = NULL
    cdef const floating* dhTp = NULL
    cdef const floating* dcTp = NULL
    cdef floating* dc0p = NULL
    cdef floating* dghp = NULL
    if dgh is not None:
        dghp = &dgh[0, 0, 0]
    elif kind == GRU:
        raise ValueError("GRU needs its own dgh array")
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
                      &budget[0], &dxp[0, 0, 0], dghp, &dw_hh[0, 0],
                      &db_hh[0], small_gemm_rows)


def matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b,
           bint trans_b, floating[:, ::1] out, double beta=0.0):
    """``out = op(a) @ op(b) + beta * out`` (row-major; op = transpose if asked).

    The layer-side GEMMs (input projection, dW_ih, dx) of the Cython backend,
    through the same BLAS and blocking rule as the recurrent products. Shapes
    are the caller's responsibility (no checks); no size may be 0.
    """
    cdef int m = out.shape[0], n = out.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    # row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T
    with nogil:
        _gemm(c'T' if trans_b else c'N', c'T' if trans_a else c'N', n, m, k,
              <floating>1, &b[0, 0], <int>b.shape[1], &a[0, 0], <int>a.shape[1],
              <floating>beta, &out[0, 0], n)


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
    cdef bint own = N <= SMALL_GEMM_ROWS
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
                _gemm_hh(own, hbuf + (l - 1) * 2 * NH, w_ih_rest + (l - 1) * GH * H,
                         0, GH, N, H, GH, xp)
                bias = b_ih_rest + (l - 1) * GH
                for i in range(N):
                    for j in range(GH):
                        xp[i * GH + j] += bias[j]
            _forward_loop(kind, act, reset_after, 1, N, H, xp, w_hh + l * GH * H,
                          b_hh + l * GH, active, hl, cl, 2, gates, aux, False, hseq, gh,
                          SMALL_GEMM_ROWS)
            memcpy(hl, hl + NH, NH * sizeof(floating))
            if kind == LSTM:
                memcpy(cl, cl + NH, NH * sizeof(floating))
        # logits = h_top W_out^T + b_out
        _gemm_hh(own, hbuf + (L - 1) * 2 * NH, w_out, 0, V, N, H, V, logits)
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


# ----------------------------------------------------------------------------
# Fused model calls: a whole Sequential ([Embedding] RNN+ (Dense | RNN)*) in one
# call, for inference (``infer``) and for a training step (``train_forward`` /
# ``train_backward``).
#
# The spec is the int64 array built by ``cyrnn.model.Sequential.inference_spec``
# (layout in docs/architecture.md, "Fused model calls"): a header (version,
# number of ops, record width) and one fixed-width record per op; parameter
# offsets index the model's flat buffer. A planner (``_plan``) lays every op's
# buffers out in one scratch block: per-op caches for training, ping-pong
# buffers for inference; one forward runner and one backward runner walk the
# ops over that plan, calling the same time loops and GEMM rule as the layer
# path. Everything runs without the GIL on memory allocated per call, so
# concurrent calls on one model are safe; nothing is kept between calls except
# what ``train_forward`` hands back in its ``FusedCache``.
# ----------------------------------------------------------------------------

cimport numpy as cnp
from libc.stdlib cimport malloc, free

cnp.import_array()

cdef extern from *:
    """
    #define CYRNN_INT_LIMIT 2147483647.0
    """
    const double INT_LIMIT "CYRNN_INT_LIMIT"

cdef enum:
    SPEC_VERSION = 1
    SPEC_HEADER = 3
    SPEC_WIDTH = 12
    OP_EMBED = 0
    OP_RNN = 1
    OP_DENSE = 2
    # per-op plan slots: element offsets into the scratch block (-1: none)
    P_IN = 0
    P_OUT = 1
    P_H = 2
    P_C = 3
    P_GATES = 4
    P_AUX = 5
    P_HSEQ = 6
    P_INSEQ = 7      # 1 when the op's input is a (T, N, F) sequence
    P_WIDTH = 8

INFER_SPEC_VERSION = SPEC_VERSION
INFER_SPEC_WIDTH = SPEC_WIDTH
INFER_SPEC_HEADER = SPEC_HEADER


cdef struct Dims:
    Py_ssize_t n_ops, first, T, N, F0, F_out, Fmax, GHmax, Hmax
    bint ids, seq_out
    int typenum
    Py_ssize_t isz


cdef inline const int64_t* _rec(const int64_t* sp, Py_ssize_t o) noexcept nogil:
    return sp + SPEC_HEADER + o * SPEC_WIDTH


cdef inline Py_ssize_t _gates_of(const int64_t* r) noexcept nogil:
    return _n_gates(<int>r[1]) * r[5]


cdef void _affine_fwd(const floating* x, Py_ssize_t rows, Py_ssize_t n_in,
                      Py_ssize_t n_out, const floating* w, const floating* b,
                      floating* y) noexcept nogil:
    """``y = x w^T + b``: ``x`` (rows, n_in), ``w`` (n_out, n_in), ``y`` (rows, n_out),
    row-major. The input projection of a recurrent op and a Dense op (the same
    GEMM as ``layers.recurrent.project``)."""
    cdef Py_ssize_t i, j
    _gemm(c'T', c'N', <int>n_out, <int>rows, <int>n_in, <floating>1, w, <int>n_in,
          x, <int>n_in, <floating>0, y, <int>n_out)
    for i in range(rows):
        for j in range(n_out):
            y[i * n_out + j] += b[j]


cdef void _affine_bwd(const floating* dy, const floating* x, Py_ssize_t rows,
                      Py_ssize_t n_in, Py_ssize_t n_out, const floating* w, floating* gw,
                      floating* gb, floating* dx) noexcept nogil:
    """Backward of :func:`_affine_fwd` given ``dy`` (rows, n_out): ``gw += dy^T x``,
    ``gb += colsum(dy)`` and, unless ``dx`` is NULL, ``dx = dy w`` (rows, n_in)."""
    cdef Py_ssize_t i, j
    _gemm(c'N', c'T', <int>n_in, <int>n_out, <int>rows, <floating>1, x, <int>n_in, dy,
          <int>n_out, <floating>1, gw, <int>n_in)
    for i in range(rows):
        for j in range(n_out):
            gb[j] += dy[i * n_out + j]
    if dx != NULL:
        _gemm(c'N', c'N', <int>n_in, <int>rows, <int>n_out, <floating>1, w, <int>n_in,
              dy, <int>n_out, <floating>0, dx, <int>n_in)


cdef bint _all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    """No NaN or infinity in ``x[:n]`` (x * 0 is NaN exactly for those); 16
    independent lanes so the compiler vectorises the scan."""
    cdef floating acc[16]
    cdef Py_ssize_t i, l, n16 = n - n % 16
    for l in range(16):
        acc[l] = 0
    i = 0
    while i < n16:
        for l in range(16):
            acc[l] += x[i + l] * 0
        i += 16
    for i in range(n16, n):
        acc[0] += x[i] * 0
    for l in range(1, 16):
        acc[0] += acc[l]
    return acc[0] == 0


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
        raise ValueError("unsupported inference spec")
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


cdef int _check_call(const int64_t* sp, cnp.ndarray data, object x, object mask, Dims* d,
                     int64_t** ids_out, uint8_t** mask_out) except -1:
    """Check the (copied, header-checked) spec against ``data`` and ``x`` against
    the spec.

    Returns 0 when the fused call can run, 1 when ``x`` is not in the exact form
    it takes (the caller returns None and the layer path judges ``x``). A spec
    that is malformed or reaches outside ``data`` raises ValueError. Token ids
    are copied to ``*ids_out`` (malloc; the caller frees it) and checked there,
    so the run reads exactly the ids that were checked.

    ``mask``: None or an (N, T) bool/uint8 C-contiguous array of valid steps
    (else 1). It is combined with ``ids != 0`` under ``mask_zero`` (a sequence
    with no non-padding id: 1, the layer path raises) into a time-major copy at
    ``*mask_out`` (malloc; NULL when every step is valid).
    """
    cdef const int64_t* r
    cdef cnp.ndarray xa
    cdef Py_ssize_t o, F, G, size, k
    cdef double Gd
    cdef bint seq = True
    cdef int64_t* idp
    cdef char* xin
    cdef cnp.ndarray ma
    cdef const uint8_t* mp = NULL
    cdef uint8_t* mtm
    cdef Py_ssize_t t, i
    cdef bint any_valid, mzero
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
        if r[1] < 1 or r[2] < 1 or r[3] < 0 or <double>r[3] + <double>r[1] * r[2] > size:
            raise ValueError("inference spec: embedding outside the parameter buffer")
        F = r[2]
    elif r[0] == OP_RNN:
        F = r[4]
    else:
        raise ValueError("inference spec: the first op must be an embedding or recurrent")
    d.F0 = F
    d.Fmax = F
    d.GHmax = 1
    d.Hmax = 1
    for o in range(d.first, d.n_ops):
        r = _rec(sp, o)
        if r[0] == OP_RNN:
            if r[1] < RNN or r[1] > GRU or r[2] < ACT_TANH or r[2] > ACT_SIGMOID:
                raise ValueError("inference spec: unknown cell")
            if not seq:
                raise ValueError("inference spec: recurrent op after a many-to-one op")
            # sizes in double: huge (corrupt) values must not overflow the checks
            Gd = <double>_n_gates(<int>r[1]) * r[5]
            if (r[5] < 1 or r[4] < 1 or r[6] < 0 or r[7] < 0 or r[8] < 0 or r[9] < 0
                    or r[6] + Gd * r[4] > size or r[7] + Gd * r[5] > size
                    or r[8] + Gd > size or r[9] + Gd > size):
                raise ValueError("inference spec: recurrent op outside the parameter buffer")
            G = _gates_of(r)
            if r[4] != F:
                return 1  # widths do not chain: the layer path explains
            d.GHmax = max(d.GHmax, G)
            d.Hmax = max(d.Hmax, r[5])
            F = r[5]
            seq = r[10] != 0
        elif r[0] == OP_DENSE:
            if (r[2] < 1 or r[1] < 1 or r[3] < 0 or r[4] < 0
                    or <double>r[3] + <double>r[2] * r[1] > size or r[4] + <double>r[2] > size):
                raise ValueError("inference spec: dense op outside the parameter buffer")
            if r[1] != F:
                return 1
            F = r[2]
        else:
            raise ValueError("inference spec: unknown op")
        d.Fmax = max(d.Fmax, F)
    d.F_out = F
    d.seq_out = seq
    # x: exactly (N, T, F0) of the parameters' dtype, or (N, T) int64 ids; C order.
    if not cnp.PyArray_Check(x):
        return 1
    xa = <cnp.ndarray>x
    if (not cnp.PyArray_IS_C_CONTIGUOUS(xa) or not cnp.PyArray_ISALIGNED(xa)
            or not cnp.PyArray_ISNOTSWAPPED(xa)):
        return 1
    if d.ids:
        if cnp.PyArray_NDIM(xa) != 2 or cnp.PyArray_TYPE(xa) != cnp.NPY_INT64:
            return 1
    elif (cnp.PyArray_NDIM(xa) != 3 or cnp.PyArray_TYPE(xa) != d.typenum
            or cnp.PyArray_DIM(xa, 2) != d.F0):
        return 1
    d.N = cnp.PyArray_DIM(xa, 0)
    d.T = cnp.PyArray_DIM(xa, 1)
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
            if idp[k] < 0 or idp[k] >= r[1]:
                free(idp)
                return 1
        ids_out[0] = idp
    elif d.isz == 4:
        if not _all_finite(<const float*>xin, d.N * d.T * d.F0):
            return 1
    elif not _all_finite(<const double*>xin, d.N * d.T * d.F0):
        return 1
    # validity mask: the given one, and ids != 0 under mask_zero
    mzero = d.ids and _rec(sp, 0)[4] != 0
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
    for i in range(d.N):
        any_valid = False
        for t in range(d.T):
            k = i * d.T + t
            mtm[t * d.N + i] = (mp == NULL or mp[k] != 0) and not (mzero and ids_out[0][k] == 0)
            if mzero and ids_out[0][k] != 0:
                any_valid = True
        if mzero and not any_valid:
            free(mtm)
            return 1  # a sequence of padding only: the layer path raises
    mask_out[0] = mtm
    return 0


cdef inline Py_ssize_t _al(Py_ssize_t n) noexcept nogil:
    """``n`` rounded up to 16 elements (64 bytes for float32)."""
    return (n + 15) & ~(<Py_ssize_t>15)


cdef Py_ssize_t _plan(const int64_t* sp, const Dims* d, bint keep,
                      int64_t* plan) noexcept nogil:
    """Element offsets of every op's buffers in one scratch block (``plan``:
    n_ops x P_WIDTH); returns the block's size in elements.

    Always: [0] the time-major input (T, N, F0); [1] xp scratch (T, N, GHmax);
    [2] gh scratch (N, GHmax). ``keep`` (training): every op gets its own output
    and, for recurrent ops, its own cache (h, c: T+1 states; gates; aux); a
    many-to-one op's output is its last state. Inference: recurrent ops share
    one 2-slot state and one-step gate scratch, and sequence outputs alternate
    between two buffers.
    """
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, o, H, G, R, F = d.F0
    cdef Py_ssize_t pos, cur, pingA, pingB, h_s, c_s, g_s, a_s, hs_s
    cdef bint seq = True
    cdef const int64_t* r
    cdef int64_t* p
    # every buffer starts on a 64-byte boundary (the block is 64-byte aligned)
    pos = _al(_al(TN * d.F0) + TN * d.GHmax) + N * d.GHmax
    cur = 0  # the input sits at offset 0
    if not keep:
        pingA = _al(pos)
        pingB = _al(pingA + TN * d.Fmax)
        h_s = _al(pingB + TN * d.Fmax)
        c_s = _al(h_s + 2 * N * d.Hmax)
        g_s = _al(c_s + 2 * N * d.Hmax)
        a_s = _al(g_s + N * d.GHmax)
        hs_s = _al(a_s + N * d.Hmax)
        pos = hs_s + TN * d.Hmax
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
            H = r[5]
            G = _gates_of(r)
            if keep:
                p[P_H] = _al(pos)
                pos = p[P_H] + (T + 1) * N * H
                if r[1] == LSTM:
                    p[P_C] = _al(pos)
                    pos = p[P_C] + (T + 1) * N * H
                p[P_GATES] = _al(pos)
                pos = p[P_GATES] + TN * G
                if r[1] == GRU:
                    p[P_AUX] = _al(pos)
                    pos = p[P_AUX] + TN * H
                p[P_HSEQ] = _al(pos)
                pos = p[P_HSEQ] + TN * H
                p[P_OUT] = p[P_HSEQ] if r[10] else p[P_H] + T * N * H
            else:
                p[P_H] = h_s
                p[P_C] = c_s
                p[P_GATES] = g_s
                p[P_AUX] = a_s
                if r[10]:
                    p[P_HSEQ] = pingB if cur == pingA else pingA
                    p[P_OUT] = p[P_HSEQ]
                else:
                    p[P_HSEQ] = hs_s
                    p[P_OUT] = h_s + (T % 2) * N * H
            seq = r[10] != 0
        else:
            R = TN if seq else N
            if keep:
                p[P_OUT] = _al(pos)
                pos = p[P_OUT] + R * r[2]
            else:
                p[P_OUT] = pingB if cur == pingA else pingA
        cur = p[P_OUT]
    return pos


cdef void _fused_forward(const int64_t* sp, const Dims* d, bint keep, const int64_t* plan,
                         const floating* data, const char* xin, floating* base,
                         const uint8_t* mask, floating* out) noexcept nogil:
    """Lay the input out time-major, run every op over the plan, write the
    batch-first result to ``out``."""
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, o, t, i, H, G, D, O, R, F
    cdef const int64_t* r
    cdef const int64_t* p
    cdef const int64_t* idp
    cdef const floating* x
    cdef const floating* table
    cdef floating* x0 = base
    cdef floating* xp = base + _al(TN * d.F0)
    cdef floating* gh = base + _al(_al(TN * d.F0) + TN * d.GHmax)
    cdef floating* inp
    cdef floating* cbuf
    cdef floating* aux
    F = d.F0
    if d.ids:
        r = _rec(sp, 0)
        table = data + r[3]
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
        r = _rec(sp, o)
        p = plan + o * P_WIDTH
        inp = base + p[P_IN]
        if r[0] == OP_RNN:
            D = r[4]
            H = r[5]
            G = _gates_of(r)
            _affine_fwd(inp, TN, D, G, data + r[6], data + r[8], xp)  # xp, all steps
            memset(base + p[P_H], 0, N * H * sizeof(floating))
            cbuf = NULL
            aux = NULL
            if r[1] == LSTM:
                cbuf = base + p[P_C]
                memset(cbuf, 0, N * H * sizeof(floating))
            if r[1] == GRU:
                aux = base + p[P_AUX]
            _forward_loop(<int>r[1], <int>r[2], r[3] != 0, T, N, H, xp, data + r[7],
                          data + r[9], mask, base + p[P_H], cbuf, T + 1 if keep else 2,
                          base + p[P_GATES], aux, keep, base + p[P_HSEQ], gh,
                          SMALL_GEMM_ROWS)
            F = H
        else:
            O = r[2]
            R = TN if p[P_INSEQ] else N
            _affine_fwd(inp, R, F, O, data + r[3], data + r[4], base + p[P_OUT])
            F = O
    inp = base + plan[(d.n_ops - 1) * P_WIDTH + P_OUT] if d.n_ops > d.first else x0
    if d.seq_out:  # time-major (T, N, F) -> batch-first (N, T, F)
        for t in range(T):
            for i in range(N):
                memcpy(out + (i * T + t) * F, inp + (t * N + i) * F, F * sizeof(floating))
    else:
        memcpy(out, inp, N * F * sizeof(floating))


cdef void _fused_backward(const int64_t* sp, const Dims* d, const int64_t* plan,
                          const int64_t* trunc, const floating* data, floating* grad,
                          const floating* base, const int64_t* ids, const uint8_t* mask,
                          const floating* d_out, floating* ws) noexcept nogil:
    """Gradients of a ``keep`` forward: every parameter gradient is added into
    ``grad`` (same layout as ``data``). ``d_out`` is batch-first like the output.
    ``ws`` is backward scratch (see ``_backward_scratch``)."""
    cdef Py_ssize_t T = d.T, N = d.N, TN = d.T * d.N, o, t, i, j, H, G, D, O, R, F, E
    cdef Py_ssize_t span = TN * d.Fmax, nrec = 0
    cdef const int64_t* r
    cdef const int64_t* p
    # every buffer on a 64-byte boundary (``ws`` is 64-byte aligned)
    cdef int64_t* budget = <int64_t*>ws
    cdef floating* dcur = ws + _al(N * (8 // sizeof(floating)))
    cdef floating* dnext = dcur + _al(span)
    cdef floating* dxp = dnext + _al(span)
    cdef floating* dgh = dxp + _al(TN * d.GHmax)
    cdef floating* work = dgh + _al(TN * d.GHmax)
    cdef floating* dg = work + _al(5 * N * d.Hmax)
    cdef floating* dh0 = dg + _al(N * d.GHmax)
    cdef floating* dc0 = dh0 + _al(N * d.Hmax)
    cdef floating* dw = dc0 + _al(N * d.Hmax)
    cdef floating* db = dw + _al(d.GHmax * d.Hmax)
    cdef floating* swap
    cdef const floating* inp
    cdef bint need_din
    F = d.F_out
    if d.seq_out:  # batch-first -> time-major
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
        # the first op's input is data, and a frozen embedding takes no gradient
        need_din = o > 0 and not (o == d.first and _rec(sp, 0)[5] != 0)
        if r[0] == OP_DENSE:
            R = TN if p[P_INSEQ] else N
            _affine_bwd(dcur, inp, R, r[1], r[2], data + r[3], grad + r[3], grad + r[4],
                        dnext if need_din else NULL)
        else:
            nrec -= 1
            D = r[4]
            H = r[5]
            G = _gates_of(r)
            memset(dxp, 0, TN * G * sizeof(floating))
            if r[1] == GRU:
                memset(dgh, 0, TN * G * sizeof(floating))
            _backward_all(<int>r[1], <int>r[2], r[3] != 0, trunc[nrec], T, N, H,
                          data + r[7], mask, base + p[P_H],
                          base + p[P_C] if r[1] == LSTM else NULL,
                          base + p[P_GATES], base + p[P_AUX] if r[1] == GRU else NULL,
                          dcur if r[10] else NULL, NULL if r[10] else dcur, NULL,
                          dh0, dc0 if r[1] == LSTM else NULL, work, dg, budget, dxp,
                          dgh if r[1] == GRU else NULL, dw, db, SMALL_GEMM_ROWS)
            for j in range(G * H):
                grad[r[7] + j] += dw[j]
            for j in range(G):
                grad[r[9] + j] += db[j]
            # the input projection's gradients, from dxp
            _affine_bwd(dxp, inp, TN, D, G, data + r[6], grad + r[6], grad + r[8],
                        dnext if need_din else NULL)
        swap = dcur
        dcur = dnext
        dnext = swap
    if d.ids and not _rec(sp, 0)[5]:  # scatter-add into the (trainable) embedding table
        r = _rec(sp, 0)
        E = r[2]
        for t in range(T):
            for i in range(N):
                o = ids[i * T + t]
                for j in range(E):
                    grad[r[3] + o * E + j] += dcur[(t * N + i) * E + j]


cdef inline Py_ssize_t _backward_scratch(const Dims* d) noexcept nogil:
    """Elements of backward scratch (the layout ``_fused_backward`` carves)."""
    cdef Py_ssize_t TN = d.T * d.N
    return (2 * TN * d.Fmax + 2 * TN * d.GHmax + 5 * d.N * d.Hmax + d.N * d.GHmax
            + 2 * d.N * d.Hmax + d.GHmax * d.Hmax + d.GHmax + 2 * d.N + 8 + 11 * 16)


cdef object _new_output(const Dims* d):
    cdef cnp.npy_intp dims[3]
    dims[0] = d.N
    if d.seq_out:
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
    page fault per 4 KiB page: the large config's training step took ~400k faults
    and 20% longer than the layer path. They are therefore aligned to 2 MiB and
    advised for transparent huge pages (one fault per 2 MiB where THP is enabled).
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


cdef int _run_forward(const int64_t* sp, const Dims* d, bint keep, int64_t* plan,
                      cnp.ndarray data, object x, const int64_t* ids,
                      const uint8_t* valid, char** buf_out, uint8_t** mask_out,
                      object res) except -1:
    """Plan, allocate, run (``ids``: the checked copy of the token ids, else NULL;
    ``valid``: the time-major validity mask, NULL when every step is valid).
    On success ``*buf_out``/``*mask_out`` own the memory."""
    cdef Py_ssize_t n_el
    cdef char* buf
    cdef uint8_t* mask
    cdef char* xin = (<char*>ids if ids != NULL
                      else <char*>cnp.PyArray_DATA(<cnp.ndarray>x))
    cdef char* dptr = <char*>cnp.PyArray_DATA(data)
    cdef char* optr = <char*>cnp.PyArray_DATA(<cnp.ndarray>res)
    cdef double need
    # sizes in double first: the planner's Py_ssize_t sums must not overflow
    need = ((<double>d.T + 1) * d.N * (d.F0 + 3.0 * d.GHmax + 4.0 * d.Hmax + 2.0 * d.Fmax)
            * max(1, d.n_ops))
    if need * d.isz > 1e15:
        raise MemoryError("fused call scratch too large")
    n_el = _plan(sp, d, keep, plan)
    buf = <char*>_alloc(<double>n_el * d.isz)
    mask = <uint8_t*>malloc(<size_t>(d.T * d.N))
    if mask == NULL:
        free(buf)
        raise MemoryError("fused call scratch")
    with nogil:
        if valid != NULL:
            memcpy(mask, valid, <size_t>(d.T * d.N))
        else:
            memset(mask, 1, <size_t>(d.T * d.N))
        if d.isz == 4:
            _fused_forward(sp, d, keep, plan, <const float*>dptr, xin, <float*>buf, mask,
                           <float*>optr)
        else:
            _fused_forward(sp, d, keep, plan, <const double*>dptr, xin, <double*>buf, mask,
                           <double*>optr)
    buf_out[0] = buf
    mask_out[0] = mask
    return 0


def infer(const int64_t[::1] spec not None, cnp.ndarray data not None, object x,
          object mask=None):
    """Fused inference of a ``Sequential``.

    ``data``: the model's flat parameter buffer (float32/float64, C-contiguous).
    ``x``: (N, T, D) floats of ``data``'s dtype, or (N, T) int64 token ids when
    the first op is an embedding; C-contiguous. ``mask``: None or (N, T) bool or
    uint8 valid steps (as ``lengths``/``mask`` of the layers). Returns the output
    array, or None when ``x`` or ``mask`` is not in that exact form or holds
    values the layer path must judge (NaN/inf, ids out of range, a sequence of
    padding ids only under ``mask_zero``).
    """
    cdef Dims d
    cdef char* buf = NULL
    cdef uint8_t* mbuf = NULL
    cdef int64_t* plan = NULL
    cdef int64_t* ids = NULL
    cdef uint8_t* valid = NULL
    cdef int64_t* sp = _copy_spec(spec)
    try:
        if _check_call(sp, data, x, mask, &d, &ids, &valid):
            return None
        res = _new_output(&d)
        plan = <int64_t*>_alloc(<double>d.n_ops * P_WIDTH * 8)
        _run_forward(sp, &d, False, plan, data, x, ids, valid, &buf, &mbuf, res)
    finally:
        free(sp)
        free(ids)
        free(valid)
        free(plan)
        free(buf)
        free(mbuf)
    return res


cdef class FusedCache:
    """What ``train_forward`` keeps for ``train_backward``: the per-op caches in
    one block (freed after the backward or with this object)."""
    cdef char* buf
    cdef uint8_t* mask
    cdef int64_t* plan
    cdef int64_t* ids
    cdef int64_t* sp      # the private copy of the spec the forward ran
    cdef Py_ssize_t sp_len
    cdef Dims d
    cdef object data

    def __dealloc__(self):
        free(self.buf)
        free(self.mask)
        free(self.plan)
        free(self.ids)
        free(self.sp)


def train_forward(const int64_t[::1] spec not None, cnp.ndarray data not None, object x,
                  object mask=None):
    """Training forward of a ``Sequential``: ``(output, cache)``, or None as in
    :func:`infer` (same ``mask``). The cache goes to :func:`train_backward` once."""
    cdef Dims d
    cdef uint8_t* valid = NULL
    cdef FusedCache cache = FusedCache.__new__(FusedCache)
    cache.sp = _copy_spec(spec)  # freed with the cache from here on
    cache.sp_len = spec.shape[0]
    if _check_call(cache.sp, data, x, mask, &d, &cache.ids, &valid):
        return None
    try:
        res = _new_output(&d)
        cache.d = d
        cache.data = data
        cache.plan = <int64_t*>_alloc(<double>d.n_ops * P_WIDTH * 8)
        _run_forward(cache.sp, &cache.d, True, cache.plan, data, x, cache.ids, valid,
                     &cache.buf, &cache.mask, res)
    finally:
        free(valid)
    return res, cache


def train_backward(const int64_t[::1] spec not None, cnp.ndarray data not None,
                   cnp.ndarray grad not None, FusedCache cache not None, object d_out,
                   const int64_t[::1] truncate not None):
    """Add the gradients of the forward that made ``cache`` into ``grad``.

    ``spec`` and ``data`` must be those of the forward (same spec values, same
    buffer object). ``d_out``: the loss gradient, shaped and typed like the
    output (C order). ``truncate``: one entry per recurrent op, in op order: -1
    for full BPTT, else k (the gradient through at most k+1 cells, as the
    layers' ``bptt_truncate``). Arguments are checked first (an error leaves the
    cache usable); the run then spends the cache (a second call raises).
    """
    cdef Dims d = cache.d
    cdef cnp.ndarray g
    cdef char* ws = NULL
    cdef Py_ssize_t nrec = 0, o
    cdef int64_t* tr = NULL
    cdef char* buf
    cdef uint8_t* mask
    cdef int64_t* plan
    cdef int64_t* ids
    if cache.buf == NULL:
        raise RuntimeError("this training forward was already backpropagated")
    if (data is not cache.data or spec.shape[0] != cache.sp_len
            or memcmp(&spec[0], cache.sp, cache.sp_len * 8) != 0):
        raise ValueError("train_backward needs the spec and parameters of its forward")
    _check_data(grad, "grad", d.typenum, cnp.PyArray_SIZE(data), True)
    if not cnp.PyArray_Check(d_out):
        raise TypeError("d_out must be a numpy array")
    g = <cnp.ndarray>d_out
    if (cnp.PyArray_TYPE(g) != d.typenum or not cnp.PyArray_IS_C_CONTIGUOUS(g)
            or not cnp.PyArray_ISALIGNED(g) or not cnp.PyArray_ISNOTSWAPPED(g)
            or cnp.PyArray_NDIM(g) != (3 if d.seq_out else 2)
            or cnp.PyArray_DIM(g, 0) != d.N
            or cnp.PyArray_DIM(g, cnp.PyArray_NDIM(g) - 1) != d.F_out
            or (d.seq_out and cnp.PyArray_DIM(g, 1) != d.T)):
        raise ValueError("d_out must be a C-contiguous array shaped and typed like the output")
    for o in range(d.first, d.n_ops):
        if _rec(cache.sp, o)[0] == OP_RNN:
            nrec += 1
    if truncate.shape[0] != nrec:
        raise ValueError(f"truncate needs {nrec} entries")
    tr = <int64_t*>_alloc(<double>max(1, nrec) * 8)
    for o in range(nrec):
        tr[o] = -1 if truncate[o] < 0 or truncate[o] >= d.T else truncate[o]
    # Take the cache's memory while holding the GIL (no other thread runs between
    # the check above and here): a concurrent second call finds a spent cache.
    buf = cache.buf
    mask = cache.mask
    plan = cache.plan
    ids = cache.ids
    cache.buf = NULL
    cache.mask = NULL
    cache.plan = NULL
    cache.ids = NULL
    try:
        ws = <char*>_alloc(<double>_backward_scratch(&d) * d.isz)
        with nogil:
            if d.isz == 4:
                _fused_backward(cache.sp, &d, plan, tr,
                                <const float*>cnp.PyArray_DATA(data),
                                <float*>cnp.PyArray_DATA(grad), <const float*>buf,
                                ids, mask, <const float*>cnp.PyArray_DATA(g), <float*>ws)
            else:
                _fused_backward(cache.sp, &d, plan, tr,
                                <const double*>cnp.PyArray_DATA(data),
                                <double*>cnp.PyArray_DATA(grad), <const double*>buf,
                                ids, mask, <const double*>cnp.PyArray_DATA(g), <double*>ws)
    finally:
        free(ws)
        free(tr)
        free(buf)
        free(mask)
        free(plan)
        free(ids)
