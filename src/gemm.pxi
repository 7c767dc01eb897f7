# GEMM policy of the unpacked path and the per-op contract kernels: products go
# through scipy's BLAS (``_gemm``), mid-sized ones cut into blocks OpenBLAS runs on
# the calling thread; the own small-GEMM kernels (C, below) serve batches of at most
# ``small_gemm_rows`` rows when asked; the fused calls' input projections under
# PACK_MIN_ROWS rows use the own ``cyrnn_proj`` kernels (row-count independent
# sums, below); the packed path's products are in pgemm.h.
# Included by _cython_kernels.pyx.
#
# Layout reminder: a C-contiguous ``(R, C)`` array is the column-major ``(C, R)``
# matrix with leading dimension ``C``; the GEMM calls below are written in those
# column-major terms.

# Per-step recurrent products of the unpacked path (forwards of batches under
# PACK_MIN_ROWS rows; backwards also of short sequences, under PACK_MIN_STEPS
# row-steps) of at most SMALL_GEMM_ROWS rows may use the own small-GEMM kernels
# instead of BLAS (``_own_small_gemm``; the contract kernels take a plain row
# limit as an argument, -1: this rule). The rule follows the CPU, because
# OpenBLAS's kernels do (benchmarks/bench_small_gemm.py times both):
# - without AVX-512 (HASWELL/ZEN kernels) every BLAS call packs its whole weight
#   operand and a one-row step took 10x the own kernel's time (11.5 against 1.5
#   us at H = 64, 797 against 79 us at H = 512, a Zen 3): own kernels;
# - with AVX-512 (OpenBLAS's SKYLAKEX kernels, small-matrix paths included) BLAS
#   was faster at every batch against the own kernels of the time (an AMD EPYC,
#   benchmarks/README.md). On a Zen 4 (2026-12-01, bench_small_gemm.py --grid,
#   T = 50, one LSTM weight, H 64..512, N 1..7) the current own kernels took
#   1.1-1.7x BLAS's time at most points, less at some (N = 3..7 at H = 128, N >= 3
#   in the backward at H = 512: BLAS's small-matrix cut-offs); one row on a weight
#   of 1 MB or more took 0.83-1.08x BLAS's time alone (warm in L3) and 0.72-0.82x inside a
#   stacked LSTM's step (3 x 960, 3 x 480; benchmarks/probe_step.py and
#   bench_stream.py, see benchmarks/README.md: the weights stream from memory, and the
#   own kernel prefetches the next block of weight rows): BLAS, except one row on
#   a weight of CYRNN_OWN_GEMV_BYTES (1 MB) or more;
# - forward products (h W^T) in float32 with AVX-512: the own ``cyrnn_dotrows``
#   kernel (src/pgemm.h: 16 weight rows at a time, k in the 16 lanes, fused
#   multiply-adds) for 1-3 rows at any size (``_own_small_gemv``; one row on a weight
#   of 1 MB or more keeps the prefetching ``cyrnn_proj_ld``, measured above); with
#   AVX2 + FMA its 8-lane version replaces ``cyrnn_proj_ld`` (0.81 against 1.33-1.43
#   us at H = 64 on the same Xeon, benchmarks/dotrows_rate.c; not measured on a CPU
#   without AVX-512). On the Xeon of 2026-12-03
#   (AVX-512, one thread, W_hh 256 x 64 in cache, 64-byte aligned) it takes 0.69-0.94
#   us a product against 1.38-1.89 us for an 8-lane kernel summed as cyrnn_proj_ld
#   (benchmarks/dotrows_rate.c); OpenBLAS's small-matrix kernel
#   took 68% of a score-b1 call before (perf), cyrnn_dotrows 58-65% of a call 1.5x
#   shorter (bench_small_gemm.py and perf record on score-b1: the host's noise
#   moves single timings by 30% or more, so the ratios come from profiles).
# CYRNN_PGEMM_ISA lowering the pick lowers this rule with it. The rule assumes
# scipy's OpenBLAS; with another BLAS only the speed changes. Each product's
# path is the same for a step and for a whole sequence (it depends on N and the
# weight only), so stepping equals running whole, bit for bit.
cdef enum:
    SMALL_GEMM_ROWS = 7

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


# The own small GEMMs of the unpacked path: the per-step recurrent products at
# small batch (``cyrnn_proj_ld_*`` without bias; forward), ``dg W`` (backward),
# and the input projections of few rows.
cdef extern from *:
    """
    /* unaligned vector load */
    #define CYRNN_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })

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

    /* The input projections of the unpacked path: y[i*R + r] = sum_k x[i*K + k]
       w[r*K + k] + b[r] (i < N, r < R), x W^T + b, each element summed in one
       fixed order that depends on K only, never on N (so a step's rows project
       exactly as the same rows of a whole sequence):
         lane q (q < L; L = 8 for float, 4 for double) sums x[k] w[k] over
         k = q, q + L, q + 2L, ... below K - K % L, in that order, from +0; float
         with K >= 8 adds the tail k = K - 8 + q to lane q for q >= 8 - K % 8;
         then the lanes as a halving tree (float: ((l0 + l4) + (l2 + l6)) +
         ((l1 + l5) + (l3 + l7)); double: (l0 + l2) + (l1 + l3)); then any k left
         (float K < 8, double's K % 4) one by one; then the bias.
       Two kernels compute that order: cyrnn_proj_* with k in vector lanes and
       the lanes reduced together per block of outputs (few rows: a step reads
       each weight once, as a GEMV), cyrnn_projt_* with outputs in vector lanes
       from a per-call transposed copy of each block of weight rows (many rows:
       the copy is made once for all of them). Both are compiled without
       contracting a * b + c into one rounding (CYRNN_EXACT), so they agree to
       the bit on every target. */
    /* weights of this size or more stream from L3 or memory on every step */
    #define CYRNN_OWN_GEMV_BYTES (1 << 20)
    #if defined(__GNUC__) && !defined(__clang__)
    #define CYRNN_EXACT __attribute__((optimize("fp-contract=off")))
    #else
    #define CYRNN_EXACT  /* clang: contracts both kernels alike (tested where built) */
    #endif
    #define CYRNN_PROJ_FINISH(T, L, s, xi, wr, K, KV, b, r, nr, yi)                  \
        do {                                                                          \
            T o_[L]; Py_ssize_t j_, k_;                                               \
            memcpy(o_, &(s), sizeof o_);                                              \
            for (j_ = 0; j_ < (nr); j_++) {                                           \
                for (k_ = (KV); k_ < (K); k_++) o_[j_] += (xi)[k_] * (wr)[j_][k_];    \
                (yi)[(r) + j_] = (b) != NULL ? o_[j_] + (b)[(r) + j_] : o_[j_];       \
            }                                                                         \
        } while (0)
    typedef float cyrnn_v8f __attribute__((vector_size(32)));
    typedef int cyrnn_v8i __attribute__((vector_size(32)));
    typedef double cyrnn_v4d __attribute__((vector_size(32)));
    typedef long long cyrnn_v4l __attribute__((vector_size(32)));
    /* two-vector lane selection: __builtin_shufflevector from GCC 12 (and clang),
       __builtin_shuffle before */
    #if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    #define CYRNN_SHUF8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    #define CYRNN_SHUF4(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    #else
    #define CYRNN_SHUF8(a, b, ...) __builtin_shuffle(a, b, (cyrnn_v8i){__VA_ARGS__})
    #define CYRNN_SHUF4(a, b, ...) __builtin_shuffle(a, b, (cyrnn_v4l){__VA_ARGS__})
    #endif
    CYRNN_CLONES CYRNN_EXACT
    static void cyrnn_proj_ld_f(const float* x, const float* w, const float* b, float* y,
                                Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) {
        Py_ssize_t i, r, j, k, nr, KV = K - K % 8;
        const float* wr[8];
        const char* nxt;
        int big = R * K * (Py_ssize_t)sizeof(float) >= CYRNN_OWN_GEMV_BYTES;
        /* K >= 8: the tail as one more lane vector, the last 8 k of the row with
           the lanes already counted masked to zero (bitwise, so no inf * 0) */
        cyrnn_v8i tm;
        int tail = K >= 8 && KV < K;
        for (j = 0; j < 8; j++) tm[j] = j >= 8 - (K - KV) ? -1 : 0;
        if (tail) KV = K;
        for (r = 0; r < R; r += 8) {
            nr = R - r < 8 ? R - r : 8;
            /* a last, smaller block repeats its first weight row in the missing
               places and stores only its own outputs */
            for (j = 0; j < 8; j++) wr[j] = w + (r + (j < nr ? j : 0)) * K;
            /* a weight of 1 MB or more (which streams from L3 or memory, a block
               of rows too short for the hardware prefetchers to follow):
               the next block's rows (contiguous: 32 K bytes) are prefetched to L2
               while this block is summed, 256 bytes per k step, on the first row
               of x (smaller weights stay in cache, where prefetching every
               weight made a 2 x 128 stacked LSTM's step slower in a trial:
               16.6-18.0 against 18.4-19.9 us per step, not kept) */
            nxt = big && r + 8 < R ? (const char*)(w + (r + 8) * K) : NULL;
            for (i = 0; i < N; i++) {
                const float* xi = x + i * K;
                cyrnn_v8f a[8], xv, wv, s, p0, p1, p2, p3, q0, q1;
                for (j = 0; j < 8; j++) a[j] = (cyrnn_v8f){0};
                for (k = 0; k + 8 <= K; k += 8) {
                    if (nxt != NULL && i == 0) {
                        const char* pf = nxt + k * 32;
                        __builtin_prefetch(pf, 0, 2);
                        __builtin_prefetch(pf + 64, 0, 2);
                        __builtin_prefetch(pf + 128, 0, 2);
                        __builtin_prefetch(pf + 192, 0, 2);
                    }
                    xv = CYRNN_LD(cyrnn_v8f, xi + k);
                    for (j = 0; j < 8; j++) a[j] += xv * CYRNN_LD(cyrnn_v8f, wr[j] + k);
                }
                if (tail) {
                    xv = (cyrnn_v8f)((cyrnn_v8i)CYRNN_LD(cyrnn_v8f, xi + K - 8) & tm);
                    for (j = 0; j < 8; j++) {
                        wv = (cyrnn_v8f)((cyrnn_v8i)CYRNN_LD(cyrnn_v8f, wr[j] + K - 8) & tm);
                        a[j] += xv * wv;
                    }
                }
                /* the 8 accumulators' halving trees at once (a transposed tree: per
                   element the same additions as one accumulator's) */
                p0 = CYRNN_SHUF8(a[0], a[1], 0, 1, 2, 3, 8, 9, 10, 11)
                   + CYRNN_SHUF8(a[0], a[1], 4, 5, 6, 7, 12, 13, 14, 15);
                p1 = CYRNN_SHUF8(a[2], a[3], 0, 1, 2, 3, 8, 9, 10, 11)
                   + CYRNN_SHUF8(a[2], a[3], 4, 5, 6, 7, 12, 13, 14, 15);
                p2 = CYRNN_SHUF8(a[4], a[5], 0, 1, 2, 3, 8, 9, 10, 11)
                   + CYRNN_SHUF8(a[4], a[5], 4, 5, 6, 7, 12, 13, 14, 15);
                p3 = CYRNN_SHUF8(a[6], a[7], 0, 1, 2, 3, 8, 9, 10, 11)
                   + CYRNN_SHUF8(a[6], a[7], 4, 5, 6, 7, 12, 13, 14, 15);
                q0 = CYRNN_SHUF8(p0, p1, 0, 1, 4, 5, 8, 9, 12, 13)
                   + CYRNN_SHUF8(p0, p1, 2, 3, 6, 7, 10, 11, 14, 15);
                q1 = CYRNN_SHUF8(p2, p3, 0, 1, 4, 5, 8, 9, 12, 13)
                   + CYRNN_SHUF8(p2, p3, 2, 3, 6, 7, 10, 11, 14, 15);
                s = CYRNN_SHUF8(q0, q1, 0, 2, 4, 6, 8, 10, 12, 14)
                  + CYRNN_SHUF8(q0, q1, 1, 3, 5, 7, 9, 11, 13, 15);
                if (nr == 8 && KV == K) {
                    if (b != NULL) s += CYRNN_LD(cyrnn_v8f, b + r);
                    memcpy(y + i * ldy + r, &s, sizeof s);
                } else {
                    CYRNN_PROJ_FINISH(float, 8, s, xi, wr, K, KV, b, r, nr, y + i * ldy);
                }
            }
        }
    }
    CYRNN_CLONES CYRNN_EXACT
    static void cyrnn_proj_ld_d(const double* x, const double* w, const double* b, double* y,
                                Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) {
        Py_ssize_t i, r, j, k, nr, KV = K - K % 4;
        const double* wr[4];
        const char* nxt;
        int big = R * K * (Py_ssize_t)sizeof(double) >= CYRNN_OWN_GEMV_BYTES;
        for (r = 0; r < R; r += 4) {
            nr = R - r < 4 ? R - r : 4;
            for (j = 0; j < 4; j++) wr[j] = w + (r + (j < nr ? j : 0)) * K;
            nxt = big && r + 4 < R ? (const char*)(w + (r + 4) * K) : NULL;  /* as above */
            for (i = 0; i < N; i++) {
                const double* xi = x + i * K;
                cyrnn_v4d a[4], xv, s, p0, p1;
                for (j = 0; j < 4; j++) a[j] = (cyrnn_v4d){0};
                for (k = 0; k < KV; k += 4) {
                    if (nxt != NULL && i == 0) {
                        __builtin_prefetch(nxt + k * 32, 0, 2);
                        __builtin_prefetch(nxt + k * 32 + 64, 0, 2);
                    }
                    xv = CYRNN_LD(cyrnn_v4d, xi + k);
                    for (j = 0; j < 4; j++) a[j] += xv * CYRNN_LD(cyrnn_v4d, wr[j] + k);
                }
                p0 = CYRNN_SHUF4(a[0], a[1], 0, 1, 4, 5)
                   + CYRNN_SHUF4(a[0], a[1], 2, 3, 6, 7);
                p1 = CYRNN_SHUF4(a[2], a[3], 0, 1, 4, 5)
                   + CYRNN_SHUF4(a[2], a[3], 2, 3, 6, 7);
                s = CYRNN_SHUF4(p0, p1, 0, 2, 4, 6)
                  + CYRNN_SHUF4(p0, p1, 1, 3, 5, 7);
                if (nr == 4 && KV == K) {
                    if (b != NULL) s += CYRNN_LD(cyrnn_v4d, b + r);
                    memcpy(y + i * ldy + r, &s, sizeof s);
                } else {
                    CYRNN_PROJ_FINISH(double, 4, s, xi, wr, K, KV, b, r, nr, y + i * ldy);
                }
            }
        }
    }
    /* y (N, R) with row stride R (cyrnn_proj_ld_*: row stride ldy, and b NULL for
       no bias: the unpacked path's recurrent products) */
    static void cyrnn_proj_f(const float* x, const float* w, const float* b, float* y,
                             Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) {
        cyrnn_proj_ld_f(x, w, b, y, N, R, K, R);
    }
    static void cyrnn_proj_d(const double* x, const double* w, const double* b, double* y,
                             Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) {
        cyrnn_proj_ld_d(x, w, b, y, N, R, K, R);
    }
    /* The same order with LW outputs in the vector lanes: `wt` holds one block
       of weight rows transposed (K vectors); returns -1 (nothing written) when
       that copy cannot be allocated. Two widths (the same sums per output, so
       the same bits): 16 float / 8 double outputs (two ymm or one zmm per
       accumulator) for AVX-512, 8 / 4 (one ymm) elsewhere, where the wide
       blocks' eight accumulators took 16 ymm registers and spilled (the
       projection was 30% of a batch-1 inference on a Zen 3). */
    #define CYRNN_PROJT(NAME, T, LW, Q)                                               \
    CYRNN_CLONES CYRNN_EXACT                                                          \
    static int NAME##_ld(const T* x, const T* w, const T* b, T* y,                    \
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) {  \
        typedef T v_t __attribute__((vector_size(LW * sizeof(T))));                   \
        Py_ssize_t i, r, j, k, q, nr, rem = K % Q, KV = K - rem;                      \
        v_t* wt = (v_t*)aligned_alloc(64, ((size_t)K * sizeof(v_t) + 63) / 64 * 64); \
        v_t a[Q], s, bv;                                                              \
        if (wt == NULL) return -1;                                                    \
        for (r = 0; r < R; r += LW) {                                                 \
            nr = R - r < LW ? R - r : LW;                                             \
            for (k = 0; k < K; k++)                                                   \
                for (j = 0; j < LW; j++) wt[k][j] = j < nr ? w[(r + j) * K + k] : (T)0; \
            for (j = 0; j < LW; j++) bv[j] = j < nr ? b[r + j] : (T)0;                \
            for (i = 0; i < N; i++) {                                                 \
                const T* xi = x + i * K;                                              \
                for (q = 0; q < Q; q++) a[q] = (v_t){0};                              \
                CYRNN_PROJT_SUM_##Q(T)                                                \
                s = s + bv;                                                           \
                if (nr == LW) memcpy(y + i * ldy + r, &s, sizeof s);                  \
                else memcpy(y + i * ldy + r, &s, (size_t)nr * sizeof(T));             \
            }                                                                         \
        }                                                                             \
        free(wt);                                                                     \
        return 0;                                                                     \
    }                                                                                 \
    static int NAME(const T* x, const T* w, const T* b, T* y,                         \
                    Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) {                       \
        return NAME##_ld(x, w, b, y, N, R, K, R);                                     \
    }
    /* float: lanes of 8 k, the tail k = K - 8 + q into lanes q >= 8 - K % 8 */
    #define CYRNN_PROJT_SUM_8(T)                                                      \
        if (K >= 8) {                                                                 \
            for (k = 0; k < KV; k += 8)                                               \
                for (q = 0; q < 8; q++) a[q] = a[q] + xi[k + q] * wt[k + q];          \
            /* a constant trip count keeps a[] in registers (a loop from q =          \
               8 - rem kept it on the stack: the projection of a score-b1 call,       \
               50 rows of 8 into 256, took 12.5-15.4 us per call, now 5.9;            \
               perf of a predict_proba loop, Zen 4, 2026-12-03: benchmarks/results/   \
               concurrent_zen4_1203_log.md) */                                        \
            if (rem)                                                                  \
                for (q = 0; q < 8; q++)                                               \
                    if (q >= 8 - rem)                                                 \
                        a[q] = a[q] + xi[K - 8 + q] * wt[K - 8 + q];                  \
        }                                                                             \
        s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));        \
        if (K < 8)                                                                    \
            for (k = 0; k < K; k++) s = s + xi[k] * wt[k];
    /* double: lanes of 4 k, then K % 4 one by one */
    #define CYRNN_PROJT_SUM_4(T)                                                      \
        for (k = 0; k < KV; k += 4)                                                   \
            for (q = 0; q < 4; q++) a[q] = a[q] + xi[k + q] * wt[k + q];              \
        s = (a[0] + a[2]) + (a[1] + a[3]);                                            \
        for (k = KV; k < K; k++) s = s + xi[k] * wt[k];
    CYRNN_PROJT(cyrnn_projt16_f, float, 16, 8)
    CYRNN_PROJT(cyrnn_projt8_f, float, 8, 8)
    CYRNN_PROJT(cyrnn_projt8_d, double, 8, 4)
    CYRNN_PROJT(cyrnn_projt4_d, double, 4, 4)
    /* ldy: the row stride of y (outputs r .. r+R-1 of wider rows: a thread's
       columns of a shared projection) */
    static int cyrnn_projt_ld_f(const float* x, const float* w, const float* b, float* y,
                                Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) {
        return cyrnn_pgemm_isa() == 2 ? cyrnn_projt16_f_ld(x, w, b, y, N, R, K, ldy)
                                      : cyrnn_projt8_f_ld(x, w, b, y, N, R, K, ldy);
    }
    static int cyrnn_projt_ld_d(const double* x, const double* w, const double* b, double* y,
                                Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) {
        return cyrnn_pgemm_isa() == 2 ? cyrnn_projt8_d_ld(x, w, b, y, N, R, K, ldy)
                                      : cyrnn_projt4_d_ld(x, w, b, y, N, R, K, ldy);
    }
    static int cyrnn_projt_f(const float* x, const float* w, const float* b, float* y,
                             Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) {
        return cyrnn_projt_ld_f(x, w, b, y, N, R, K, R);
    }
    static int cyrnn_projt_d(const double* x, const double* w, const double* b, double* y,
                             Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) {
        return cyrnn_projt_ld_d(x, w, b, y, N, R, K, R);
    }
    """
    void cyrnn_proj_f(const float* x, const float* w, const float* b, float* y,
                      Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    void cyrnn_proj_d(const double* x, const double* w, const double* b, double* y,
                      Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt_f(const float* x, const float* w, const float* b, float* y,
                      Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt_d(const double* x, const double* w, const double* b, double* y,
                      Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt_ld_f(const float* x, const float* w, const float* b, float* y,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) nogil
    int cyrnn_projt_ld_d(const double* x, const double* w, const double* b, double* y,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) nogil
    void cyrnn_proj_ld_f(const float* x, const float* w, const float* b, float* y,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) nogil
    const Py_ssize_t OWN_GEMV_BYTES "CYRNN_OWN_GEMV_BYTES"
    void cyrnn_proj_ld_d(const double* x, const double* w, const double* b, double* y,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, Py_ssize_t ldy) nogil
    int cyrnn_projt16_f(const float* x, const float* w, const float* b, float* y,
                        Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt8_f(const float* x, const float* w, const float* b, float* y,
                       Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt8_d(const double* x, const double* w, const double* b, double* y,
                       Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    int cyrnn_projt4_d(const double* x, const double* w, const double* b, double* y,
                       Py_ssize_t N, Py_ssize_t R, Py_ssize_t K) nogil
    void cyrnn_gemm_nn_f(const float* g, Py_ssize_t ldg, const float* w, float* out,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, int beta) nogil
    void cyrnn_gemm_nn_d(const double* g, Py_ssize_t ldg, const double* w, double* out,
                         Py_ssize_t N, Py_ssize_t R, Py_ssize_t K, int beta) nogil


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
    stalls every call by a scheduler slice. The blocks compute the same dot
    products as one call.
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
    ``own`` (small batches): the own kernel (``cyrnn_dotrows`` for float32 with AVX2 or
    AVX-512, except one row on a weight of CYRNN_OWN_GEMV_BYTES or more, whose rows
    stream from L3 or memory: ``cyrnn_proj_ld`` prefetches them, measured on a Zen 4
    (benchmarks/README.md); float64: ``cyrnn_proj_ld_*`` without bias); otherwise BLAS.
    The choice depends on N and the whole weight (GH x H), never on the rows a thread
    computes. Column-major: ``out^T (rows x N, ld GH) = W_blk (rows x H) .
    x^T (H x N)``, and ``W_blk`` is stored as the column-major (H x rows)
    matrix: transa='T'.
    """
    if own:
        if floating is float:
            if ((N == 1 and GH * H * 4 >= OWN_GEMV_BYTES)
                    or cyrnn_dotrows_f(cyrnn_pgemm_isa(), x, N, H, w + row0 * H, rows,
                                       out + row0, GH) != 0):
                cyrnn_proj_ld_f(x, w + row0 * H, NULL, out + row0, N, rows, H, GH)
        else:
            cyrnn_proj_ld_d(x, w + row0 * H, NULL, out + row0, N, rows, H, GH)
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
# Packed GEMM (src/pgemm.h): the per-step products of the row-chunked time loops,
# on the calling thread, from weights packed once per call.
# ----------------------------------------------------------------------------

cdef extern from "pgemm.h" nogil:
    int cyrnn_pgemm_isa()
    unsigned int cyrnn_fp_flush()
    void cyrnn_fp_restore(unsigned int old)
    void cyrnn_count_path(int k)
    long cyrnn_path_read(int k)
    Py_ssize_t cyrnn_pgemm_size(int isa, size_t esize, Py_ssize_t C, Py_ssize_t K)
    Py_ssize_t cyrnn_pgemm_nr(int isa, size_t esize)
    void cyrnn_pack_f(int isa, const float* W, Py_ssize_t C, Py_ssize_t K, Py_ssize_t sc,
                      Py_ssize_t sk, float* P)
    void cyrnn_pack_d(int isa, const double* W, Py_ssize_t C, Py_ssize_t K, Py_ssize_t sc,
                      Py_ssize_t sk, double* P)
    void cyrnn_pgemm_f(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                       const float* P, Py_ssize_t C, float* out, Py_ssize_t ldo, int beta)
    void cyrnn_pgemm_d(int isa, const double* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                       const double* P, Py_ssize_t C, double* out, Py_ssize_t ldo, int beta)
    void cyrnn_pgemm_tf(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const float* P, Py_ssize_t C, float* out, Py_ssize_t ldo, int beta)
    void cyrnn_pgemm_td(int isa, const double* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const double* P, Py_ssize_t C, double* out, Py_ssize_t ldo, int beta)
    void cyrnn_pgemm_sf(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const float* P, Py_ssize_t C, float* out, Py_ssize_t ldo, int beta)
    void cyrnn_pgemm_sd(int isa, const double* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const double* P, Py_ssize_t C, double* out, Py_ssize_t ldo, int beta)
    Py_ssize_t cyrnn_pgemm_mr(int isa)
    Py_ssize_t cyrnn_strip_stride(int isa, size_t esize, Py_ssize_t K)
    void cyrnn_strips_f(int isa, const float* g, Py_ssize_t ldg, Py_ssize_t R, Py_ssize_t C,
                        float* S, Py_ssize_t lds, float* sum)
    void cyrnn_strips_d(int isa, const double* g, Py_ssize_t ldg, Py_ssize_t R, Py_ssize_t C,
                        double* S, Py_ssize_t lds, double* sum)
    Py_ssize_t cyrnn_pgemm_bsize(int isa, Py_ssize_t C, Py_ssize_t K)
    void cyrnn_pack_bf(int isa, const float* W, Py_ssize_t C, Py_ssize_t K, Py_ssize_t sc,
                       Py_ssize_t sk, unsigned int* P)
    void cyrnn_pgemm_bf(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const unsigned int* P, Py_ssize_t C, float* out, Py_ssize_t ldo,
                        int beta)
    unsigned int cyrnn_bf16(float f)
    int cyrnn_bf16dot_ok()
    int cyrnn_amx_ok()
    void cyrnn_bf16_rows_t_any(const float* g, Py_ssize_t ldg, Py_ssize_t R, Py_ssize_t C,
                               unsigned int* A, Py_ssize_t KP, float* sum)
    void cyrnn_pgemm_bdt(const unsigned int* A, Py_ssize_t KP, Py_ssize_t n, Py_ssize_t K,
                         const unsigned int* P, Py_ssize_t C, float* out, Py_ssize_t ldo)
    void cyrnn_pgemm_bd(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                        const unsigned int* P, Py_ssize_t C, float* out, Py_ssize_t ldo,
                        int beta)
    void cyrnn_pgemm_bds(const unsigned int* S, Py_ssize_t lds, Py_ssize_t n, Py_ssize_t K,
                         const unsigned int* P, Py_ssize_t C, float* out, Py_ssize_t ldo)
    void cyrnn_pack_bf_cols(int isa, const float* W, Py_ssize_t C, Py_ssize_t K, Py_ssize_t sk,
                            unsigned int* P)
    void cyrnn_bf16_strips_any(const float* g, Py_ssize_t ldg, Py_ssize_t R, Py_ssize_t C,
                               unsigned int* S, Py_ssize_t lds, float* sum)
    void cyrnn_rgemm_f(int isa, const float* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                       const float* W, Py_ssize_t C, float* out, Py_ssize_t ldo)
    void cyrnn_rgemm_d(int isa, const double* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                       const double* W, Py_ssize_t C, double* out, Py_ssize_t ldo)
    int cyrnn_dotrows_f(int isa, const float* x, Py_ssize_t n, Py_ssize_t K, const float* W,
                        Py_ssize_t C, float* out, Py_ssize_t ldo)


cdef extern from *:
    """
    /* Own kernel or BLAS for a per-step recurrent product of N rows on a weight
       of wbytes bytes (the rule in the comment above SMALL_GEMM_ROWS). The
       environment variable CYRNN_SMALL_GEMM_ROWS (an integer 0..64), read once,
       replaces the rule by a plain row limit (tests and benchmarks run both
       paths on one machine). */
    static int cyrnn_small_gemm_env(void) {
        static volatile int v = -2;
        if (v == -2) {
            const char* e = getenv("CYRNN_SMALL_GEMM_ROWS");
            char* end;
            long r = e != NULL && e[0] ? strtol(e, &end, 10) : -1;
            v = e != NULL && e[0] && *end == 0 && r >= 0 && r <= 64 ? (int)r : -1;
        }
        return v;
    }
    static int cyrnn_own_small_gemm(Py_ssize_t N, Py_ssize_t wbytes, Py_ssize_t limit) {
        int env = cyrnn_small_gemm_env();
        if (env >= 0) return N <= env;
        if (N > limit) return 0;
        if (cyrnn_pgemm_isa() < 2) return 1;
        return N == 1 && wbytes >= CYRNN_OWN_GEMV_BYTES;
    }
    /* The same for a forward product (h W^T) of elements of isz bytes: float32 with
       AVX-512 takes the own kernel (cyrnn_dotrows, src/pgemm.h) for 1-3 rows at any
       size (the unpacked fused calls' rows; 4-7 rows, which only the contract kernels
       run unpacked, keep the rule above). */
    static int cyrnn_own_small_gemv(Py_ssize_t N, Py_ssize_t wbytes, Py_ssize_t isz,
                                    Py_ssize_t limit) {
        int env = cyrnn_small_gemm_env();
        if (env >= 0) return N <= env;
        if (N > limit) return 0;
        if (isz == 4 && cyrnn_pgemm_isa() == 2 && N <= 3) return 1;
        return cyrnn_own_small_gemm(N, wbytes, limit);
    }
    """
    int cyrnn_own_small_gemm(Py_ssize_t N, Py_ssize_t wbytes, Py_ssize_t limit) nogil
    int cyrnn_own_small_gemv(Py_ssize_t N, Py_ssize_t wbytes, Py_ssize_t isz,
                             Py_ssize_t limit) nogil


cdef inline bint _own_small_gemm(Py_ssize_t N, Py_ssize_t wbytes,
                                 Py_ssize_t small) noexcept nogil:
    """Whether a per-step product of ``N`` rows on a ``wbytes``-byte weight takes the
    own small-GEMM kernels: ``small`` >= 0 is a row limit given by the caller (the
    contract kernels' ``small_gemm_rows``), -1 the CPU's rule (SMALL_GEMM_ROWS)."""
    if small >= 0:
        return N <= small
    return cyrnn_own_small_gemm(N, wbytes, SMALL_GEMM_ROWS)


cdef inline bint _own_small_gemv(Py_ssize_t N, Py_ssize_t wbytes, Py_ssize_t isz,
                                 Py_ssize_t small) noexcept nogil:
    """:func:`_own_small_gemm` for a forward product (``_gemm_hh``) of ``isz``-byte
    elements (the own kernel there is ``cyrnn_dotrows`` where available)."""
    if small >= 0:
        return N <= small
    return cyrnn_own_small_gemv(N, wbytes, isz, SMALL_GEMM_ROWS)


# Formats of packed forward weights: the call's dtype, or bfloat16 (float32 calls
# only; see pgemm.h). A bfloat16 block is counted in 32-bit words (a k-pair of
# weights each), so its offsets index a float32 pointer like a native block's.
# WF_BF16D: the same bfloat16 block, multiplied in bfloat16 arithmetic (the
# activations rounded too, AVX-512 BF16's VDPBF16PS; only where
# cyrnn_bf16dot_ok()); WF_BF16 widens the weights and keeps float32 arithmetic.
cdef enum:
    WF_NATIVE = 0
    WF_BF16 = 1
    WF_RAW = 2  # not packed: the weights as stored, read by cyrnn_rgemm (src/pgemm.h)
    WF_BF16D = 3


cdef inline bint _is_bf16(int wfmt) noexcept nogil:
    """Whether weights in format ``wfmt`` are packed as bfloat16 words."""
    return wfmt == WF_BF16 or wfmt == WF_BF16D


cdef inline void _pack(int isa, const floating* w, Py_ssize_t C, Py_ssize_t K,
                       floating* P) noexcept nogil:
    """Pack the (C, K) row-major weight ``w`` for ``_pg`` (``cyrnn_pgemm_size`` elements)."""
    if floating is float:
        cyrnn_pack_f(isa, w, C, K, K, 1, P)
    else:
        cyrnn_pack_d(isa, w, C, K, K, 1, P)


cdef inline void _pack_strided(int isa, const floating* w, Py_ssize_t C, Py_ssize_t K,
                               Py_ssize_t sc, Py_ssize_t sk, floating* P) noexcept nogil:
    """Pack the operand whose element (c, k) is ``w[c*sc + k*sk]``."""
    if floating is float:
        cyrnn_pack_f(isa, w, C, K, sc, sk, P)
    else:
        cyrnn_pack_d(isa, w, C, K, sc, sk, P)


cdef inline void _pack_t(int isa, const floating* a, Py_ssize_t K, Py_ssize_t C,
                         floating* P) noexcept nogil:
    """Pack the (K, C) row-major ``a`` for ``_pg`` as the operand ``W = a^T`` (C, K):
    the product then is ``x a``."""
    if floating is float:
        cyrnn_pack_f(isa, a, C, K, 1, C, P)
    else:
        cyrnn_pack_d(isa, a, C, K, 1, C, P)


cdef inline void _pg(int isa, const floating* x, Py_ssize_t ldx, Py_ssize_t n, Py_ssize_t K,
                     const floating* P, Py_ssize_t C, floating* out,
                     Py_ssize_t ldo) noexcept nogil:
    """``out[i, :C] = x[i, :K] W^T`` for ``n`` rows (strides ``ldx``, ``ldo``), ``W``
    packed by ``_pack``. Each element is one k-ascending sum, whatever ``n``: a row's
    result does not depend on the rows computed with it."""
    if floating is float:
        cyrnn_pgemm_f(isa, x, ldx, n, K, P, C, out, ldo, 0)
    else:
        cyrnn_pgemm_d(isa, x, ldx, n, K, P, C, out, ldo, 0)


cdef inline void _pgw(int isa, int wfmt, const floating* x, Py_ssize_t ldx, Py_ssize_t n,
                      Py_ssize_t K, const floating* P, Py_ssize_t C, floating* out,
                      Py_ssize_t ldo) noexcept nogil:
    """``_pg`` on a weight packed in format ``wfmt`` (``WF_BF16``: by ``_pack_bf``;
    ``WF_BF16D``: the same, in bfloat16 arithmetic; ``WF_RAW``: ``P`` is the (C, K)
    weight as stored, the same sums)."""
    if wfmt == WF_RAW:
        if floating is float:
            cyrnn_rgemm_f(isa, x, ldx, n, K, P, C, out, ldo)
        else:
            cyrnn_rgemm_d(isa, x, ldx, n, K, P, C, out, ldo)
        return
    if floating is float:
        if wfmt == WF_BF16:
            cyrnn_pgemm_bf(isa, x, ldx, n, K, <const unsigned int*>P, C, out, ldo, 0)
            return
        if wfmt == WF_BF16D:
            cyrnn_pgemm_bd(isa, x, ldx, n, K, <const unsigned int*>P, C, out, ldo, 0)
            return
    _pg(isa, x, ldx, n, K, P, C, out, ldo)


cdef inline void _pack_bf(int isa, const floating* w, Py_ssize_t C, Py_ssize_t K,
                          floating* P) noexcept nogil:
    """Pack the (C, K) row-major float32 weight ``w`` as bfloat16 for ``_pgw``
    (``cyrnn_pgemm_bsize`` words; float64 never asks for it)."""
    if floating is float:
        cyrnn_pack_bf(isa, w, C, K, K, 1, <unsigned int*>P)


cdef inline void _pg_acc(int isa, const floating* x, Py_ssize_t ldx, Py_ssize_t n,
                         Py_ssize_t K, const floating* P, Py_ssize_t C, floating* out,
                         Py_ssize_t ldo, int beta) noexcept nogil:
    """``_pg`` that adds into ``out`` when ``beta`` (else overwrites)."""
    if floating is float:
        cyrnn_pgemm_f(isa, x, ldx, n, K, P, C, out, ldo, beta)
    else:
        cyrnn_pgemm_d(isa, x, ldx, n, K, P, C, out, ldo, beta)


cdef inline void _pgw_acc(int isa, int wfmt, const floating* x, Py_ssize_t ldx, Py_ssize_t n,
                          Py_ssize_t K, const floating* P, Py_ssize_t C, floating* out,
                          Py_ssize_t ldo, int beta) noexcept nogil:
    """``_pg_acc`` on a weight packed in format ``wfmt`` (WF_NATIVE or WF_BF16D: the
    backward's transposed weights, ``_pack_t_fmt``)."""
    if floating is float:
        if wfmt == WF_BF16D:
            cyrnn_pgemm_bd(isa, x, ldx, n, K, <const unsigned int*>P, C, out, ldo, beta)
            return
    _pg_acc(isa, x, ldx, n, K, P, C, out, ldo, beta)


cdef inline void _pack_t_fmt(int isa, int wfmt, const floating* a, Py_ssize_t K,
                             Py_ssize_t C, floating* P) noexcept nogil:
    """``_pack_t`` in format ``wfmt`` (WF_BF16D: as bfloat16 k-pairs for
    ``_pgw_acc``; ``cyrnn_pgemm_bsize`` words)."""
    if floating is float:
        if wfmt == WF_BF16D:
            cyrnn_pack_bf_cols(isa, a, C, K, C, <unsigned int*>P)
            return
    _pack_t(isa, a, K, C, P)


cdef inline void _strips(int isa, const floating* g, Py_ssize_t ldg, Py_ssize_t R,
                         Py_ssize_t C, floating* S, Py_ssize_t lds,
                         floating* colsum) noexcept nogil:
    """Copy R rows of C columns of ``g`` into the strips ``_pg_s`` reads; add the
    column sums into ``colsum`` unless NULL."""
    if floating is float:
        cyrnn_strips_f(isa, g, ldg, R, C, S, lds, colsum)
    else:
        cyrnn_strips_d(isa, g, ldg, R, C, S, lds, colsum)


cdef inline void _pg_s(int isa, const floating* S, Py_ssize_t lds, Py_ssize_t n,
                       Py_ssize_t K, const floating* P, Py_ssize_t C, floating* out,
                       Py_ssize_t ldo) noexcept nogil:
    """``_pg_xt`` with the rows in strips (``_strips``, stride ``lds``)."""
    if floating is float:
        cyrnn_pgemm_sf(isa, S, lds, n, K, P, C, out, ldo, 1)
    else:
        cyrnn_pgemm_sd(isa, S, lds, n, K, P, C, out, ldo, 1)


cdef inline void _pg_xt(int isa, const floating* x, Py_ssize_t ldx, Py_ssize_t n,
                        Py_ssize_t K, const floating* P, Py_ssize_t C, floating* out,
                        Py_ssize_t ldo) noexcept nogil:
    """``out[i, :C] += sum_k x[k*ldx + i] W[:, k]`` for ``n`` rows: ``_pg`` (adding)
    with ``x`` stored transposed."""
    if floating is float:
        cyrnn_pgemm_tf(isa, x, ldx, n, K, P, C, out, ldo, 1)
    else:
        cyrnn_pgemm_td(isa, x, ldx, n, K, P, C, out, ldo, 1)


def bf16_arithmetic_available():
    """Whether this process can multiply in bfloat16 arithmetic (``PackedWeights(...,
    arithmetic="bfloat16")``): the CPU reports AVX-512F and AVX-512 BF16 and the
    packed kernels run their AVX-512 path (``CYRNN_PGEMM_ISA`` may lower it)."""
    return bool(cyrnn_bf16dot_ok())


def bf16_tiles_in_use():
    """Whether this process's bfloat16-arithmetic products run on AMX tiles
    (TDPBF16PS): the CPU has AMX-TILE and AMX-BF16, Linux granted the tile state,
    and ``CYRNN_AMX`` is not ``0``. Their sums then differ in the last bits from
    VDPBF16PS's (src/pgemm.h); every such product of the process takes the tiles."""
    return bool(cyrnn_amx_ok())


def _packed_product(const float[:, ::1] x not None, const float[:, ::1] w not None,
                    str format="native", add_to=None):
    """``x @ w.T`` (float32) through the packed kernels, ``w`` packed in ``format``
    (``"native"``, ``"bfloat16"``, ``"bfloat16_dot"``: bfloat16 arithmetic, where
    available): for tests of the kernels themselves. ``add_to`` (``"bfloat16_dot"``
    only): an (n, C) float32 array the product is added to, as the recurrent
    products add into the input projection; the sum is returned, ``add_to`` kept."""
    cdef int isa = cyrnn_pgemm_isa()
    cdef int wfmt = (WF_NATIVE if format == "native" else WF_BF16 if format == "bfloat16"
                     else WF_BF16D if format == "bfloat16_dot" else -1)
    cdef Py_ssize_t n = x.shape[0], K = x.shape[1], C = w.shape[0]
    if wfmt < 0:
        raise ValueError(f"unknown format {format!r}")
    if wfmt == WF_BF16D and not cyrnn_bf16dot_ok():
        raise ValueError("bfloat16 arithmetic is not available on this CPU")
    if w.shape[1] != K or n == 0 or K == 0 or C == 0:
        raise ValueError("x (n, K) and w (C, K), none empty")
    cdef cnp.npy_intp dims[2]
    dims[0] = (cyrnn_pgemm_bsize(isa, C, K) if wfmt != WF_NATIVE
               else cyrnn_pgemm_size(isa, 4, C, K)) + 16
    cdef cnp.ndarray packed = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)
    dims[0] = n
    dims[1] = C
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
    cdef int beta = add_to is not None
    if beta:
        if wfmt != WF_BF16D:
            raise ValueError("add_to is for format 'bfloat16_dot'")
        if tuple(getattr(add_to, "shape", ())) != (n, C):
            raise ValueError(f"add_to must be an ({n}, {C}) array")
        out[...] = add_to
    # 64-byte aligned start (the kernels load whole panels as aligned vectors)
    cdef Py_ssize_t shift = ((64 - (<size_t>cnp.PyArray_DATA(packed)) % 64) % 64) // 4
    cdef float* P = <float*>cnp.PyArray_DATA(packed) + shift
    cdef unsigned int csr
    with nogil:
        csr = cyrnn_fp_flush()
        if wfmt == WF_NATIVE:
            _pack(isa, &w[0, 0], C, K, P)
        else:
            _pack_bf(isa, &w[0, 0], C, K, P)
        if beta:
            _pgw_acc(isa, wfmt, &x[0, 0], K, n, K, P, C, <float*>cnp.PyArray_DATA(out), C, 1)
        else:
            _pgw(isa, wfmt, &x[0, 0], K, n, K, P, C, <float*>cnp.PyArray_DATA(out), C)
        cyrnn_fp_restore(csr)
    return out


def _small_product(const floating[:, ::1] x not None, const floating[:, ::1] w not None,
                   Py_ssize_t row0=0, Py_ssize_t rows=-1):
    """``x @ w[row0:row0 + rows].T`` through the unpacked path's own kernel for the
    forward products of few rows (``_gemm_hh``: ``cyrnn_dotrows`` for float32 with
    AVX2 or AVX-512, except one row on a weight of 1 MB or more; else
    ``cyrnn_proj_ld``), in columns ``row0 ..`` of an (n, C) array of
    zeros: for tests of the kernels themselves (``rows`` -1: to the end)."""
    cdef Py_ssize_t n = x.shape[0], K = x.shape[1], C = w.shape[0]
    if rows < 0:
        rows = C - row0
    if w.shape[1] != K or n == 0 or K == 0 or row0 < 0 or rows < 1 or row0 + rows > C:
        raise ValueError("x (n, K) and w (C, K), n and K not 0, rows within w")
    cdef cnp.npy_intp dims[2]
    dims[0] = n
    dims[1] = C
    out = cnp.PyArray_ZEROS(2, dims, cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64,
                            0)
    cdef floating[:, ::1] o = out
    with nogil:
        _gemm_hh(True, &x[0, 0], &w[0, 0], row0, rows, n, K, C, &o[0, 0])
    return out


def _path_counts():
    """``{"packed_forward": n, "packed_backward": n, "threaded_regions": n,
    "raw_forward": n, "wgrad_strips": n, "wgrad_pair": n, "team_forward": n,
    "small_team_forward": n}``: how often the
    row-chunked paths ran in this process (for tests; ``raw_forward``: packed-path
    forwards on the weights as stored; ``wgrad_strips``: weight gradients from row
    strips; ``wgrad_pair``: of those, two operands (dW_hh, dW_ih) in one pass;
    ``team_forward``: forward ops whose threads shared the products by columns;
    ``small_team_forward``: of those, unpacked small-batch ones, ``_small_team_op``)."""
    return {"packed_forward": cyrnn_path_read(0), "packed_backward": cyrnn_path_read(1),
            "threaded_regions": cyrnn_path_read(2), "raw_forward": cyrnn_path_read(3),
            "wgrad_strips": cyrnn_path_read(4), "wgrad_pair": cyrnn_path_read(5),
            "team_forward": cyrnn_path_read(6), "small_team_forward": cyrnn_path_read(7)}


def own_small_gemm(Py_ssize_t n, Py_ssize_t wbytes, Py_ssize_t itemsize=0):
    """Whether this CPU's rule (src/gemm.pxi, SMALL_GEMM_ROWS) sends a per-step
    recurrent product of ``n`` rows on a ``wbytes``-byte weight to the own kernels
    (True) or to BLAS (False); CYRNN_SMALL_GEMM_ROWS, where set, replaces it.
    ``itemsize`` 0: a backward product (``dg W``); 4 or 8: a forward product
    (``h W^T``) of float32 or float64, whose rule differs where the own forward kernel
    is ``cyrnn_dotrows`` (float32 with AVX-512)."""
    if itemsize:
        return bool(_own_small_gemv(n, wbytes, itemsize, -1))
    return bool(_own_small_gemm(n, wbytes, -1))


def pgemm_isa():
    """The instruction set the packed GEMM picked on this CPU at run time:
    ``"avx512f"``, ``"avx2"`` or ``"baseline"``."""
    return ("baseline", "avx2", "avx512f")[cyrnn_pgemm_isa()]
