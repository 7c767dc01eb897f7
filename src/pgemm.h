/* Packed GEMM for the time loops: the per-step products of the recurrent
 * loops (x_t W_ih^T, h W_hh^T, the Dense head) computed on the calling thread
 * from weights packed once per call.
 *
 *   out[i*ldo + c] = (beta ? out[i*ldo + c] : 0) + sum_k x[i*ldx + k] * W[c*K + k]
 *
 * for i < n, c < C, where W is a layer's (C, K) row-major weight. OpenBLAS
 * repacks its operand on every call (12% of the cycles of the large LSTM's
 * recurrent products) and wakes its own thread pool for mid-sized calls; these
 * kernels do neither: cyrnn's threads each run them on their own rows.
 *
 * Packing: panels of NR columns, P[p][k][j] = W[(p*NR + j)*K + k] (zero for
 * columns >= C), NR = 2 vectors. The micro-kernel keeps an MR x NR tile of
 * ``out`` in registers over the whole K loop (one broadcast of x per row and
 * two vector loads of the panel per k).
 *
 * Instruction sets are picked at run time (``cyrnn_pgemm_isa``: AVX-512F,
 * AVX2+FMA, else the x86-64 baseline or the compiler's default elsewhere);
 * nothing is assumed at build time. The panel width depends on the pick, so
 * packing and the product ask for the same ``isa``.
 */
#ifndef CYRNN_PGEMM_H
#define CYRNN_PGEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define CYRNN_PGEMM_X86 1
#define CYRNN_T512 __attribute__((target("avx512f,fma")))
#define CYRNN_T256 __attribute__((target("avx2,fma")))
#else
#define CYRNN_PGEMM_X86 0
#define CYRNN_T512
#define CYRNN_T256
#endif

/* 0: baseline, 1: AVX2 + FMA, 2: AVX-512F. The environment variable
   CYRNN_PGEMM_ISA (0, 1 or 2), read once, can lower the pick (tests run every
   path on one machine); it never raises it above what the CPU reports. */
static int cyrnn_pgemm_isa(void) {
    static volatile int isa = -1;
    if (isa < 0) {
        int v = 0;
        const char* env = getenv("CYRNN_PGEMM_ISA");
#if CYRNN_PGEMM_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            v = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            v = 1;
#endif
        if (env != NULL && env[0] >= '0' && env[0] < '0' + v && env[1] == 0)
            v = env[0] - '0';
        isa = v;
    }
    return isa;
}

/* vector lengths (elements) per isa and element size */
static inline ptrdiff_t cyrnn_pgemm_nr(int isa, size_t esize) {
    ptrdiff_t bytes = isa == 2 ? 64 : isa == 1 ? 32 : 16;
    return 2 * bytes / (ptrdiff_t)esize;
}

/* Elements of the packed copy of a (C, K) weight. */
static inline ptrdiff_t cyrnn_pgemm_size(int isa, size_t esize, ptrdiff_t C, ptrdiff_t K) {
    ptrdiff_t nr = cyrnn_pgemm_nr(isa, esize);
    return (C + nr - 1) / nr * nr * K;
}

/* Pack the operand W (C, K) whose element (c, k) is W[c*sc + k*sk]: a layer's
   (C, K) row-major weight has sc = K, sk = 1; its transpose's (the product x A
   with A (K, C) row-major) sc = 1, sk = C. */
#define CYRNN_PACK(NAME, T)                                                           \
static void NAME(int isa, const T* W, ptrdiff_t C, ptrdiff_t K, ptrdiff_t sc,          \
                 ptrdiff_t sk, T* P) {                                                \
    ptrdiff_t nr = cyrnn_pgemm_nr(isa, sizeof(T)), p, k, j, c, nc;                    \
    for (p = 0; p * nr < C; p++) {                                                    \
        T* pp = P + p * nr * K;                                                       \
        nc = C - p * nr < nr ? C - p * nr : nr;                                       \
        for (k = 0; k < K; k++) {                                                     \
            const T* src = W + p * nr * sc + k * sk;                                  \
            T* dst = pp + k * nr;                                                     \
            if (sc == 1)                                                              \
                memcpy(dst, src, nc * sizeof(T));                                     \
            else                                                                      \
                for (j = 0; j < nc; j++) dst[j] = src[j * sc];                        \
            for (c = nc; c < nr; c++) dst[c] = (T)0;                                  \
        }                                                                             \
    }                                                                                 \
}
CYRNN_PACK(cyrnn_pack_f, float)
CYRNN_PACK(cyrnn_pack_d, double)

/* One kernel body per (type, vector bytes, MR, target, x layout). XT 0: element
   (i, k) of x at x[i*ldx + k]; XT 1: at x[k*ldx + i] (x stored transposed: the
   weight-gradient sums over rows read the activations as they lie). */
#define CYRNN_PGEMM_KERNEL(NAME, T, VB, MR, TARGET, XT)                               \
typedef T NAME##_v __attribute__((vector_size(VB)));                                  \
TARGET static void NAME(const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                        const T* P, ptrdiff_t C, T* out, ptrdiff_t ldo, int beta) {   \
    enum { V = VB / sizeof(T), NR = 2 * V };                                          \
    const ptrdiff_t si = XT ? 1 : ldx, sk = XT ? ldx : 1;                             \
    ptrdiff_t p, i0, k, r, j;                                                         \
    for (p = 0; p * NR < C; p++) {                                                    \
        const T* pp = P + p * NR * K;                                                 \
        ptrdiff_t c0 = p * NR, nc = C - c0 < NR ? C - c0 : NR;                        \
        for (i0 = 0; i0 < n; i0 += MR) {                                              \
            const T* xr[MR];                                                          \
            NAME##_v a0[MR], a1[MR];                                                  \
            ptrdiff_t m = n - i0 < MR ? n - i0 : MR;                                  \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < MR; r++) {                                                \
                xr[r] = x + (i0 + (r < m ? r : m - 1)) * si;                          \
                a0[r] = (NAME##_v){0};                                                \
                a1[r] = (NAME##_v){0};                                                \
            }                                                                         \
            for (k = 0; k < K; k++) {                                                 \
                NAME##_v w0 = *(const NAME##_v*)(pp + k * NR);                        \
                NAME##_v w1 = *(const NAME##_v*)(pp + k * NR + V);                    \
                _Pragma("GCC unroll 16")                                              \
                for (r = 0; r < MR; r++) {                                            \
                    T s = xr[r][k * sk];                                              \
                    a0[r] += s * w0;                                                  \
                    a1[r] += s * w1;                                                  \
                }                                                                     \
            }                                                                         \
            for (r = 0; r < m; r++) {                                                 \
                T* o = out + (i0 + r) * ldo + c0;                                     \
                T t[NR];                                                              \
                memcpy(t, &a0[r], sizeof a0[r]);                                      \
                memcpy(t + V, &a1[r], sizeof a1[r]);                                  \
                if (beta)                                                             \
                    for (j = 0; j < nc; j++) o[j] += t[j];                            \
                else                                                                  \
                    for (j = 0; j < nc; j++) o[j] = t[j];                             \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
}

#define CYRNN_PGEMM_KERNELS(SUF, XT)                                                  \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f512##SUF, float, 64, 8, CYRNN_T512, XT)                \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d512##SUF, double, 64, 8, CYRNN_T512, XT)               \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f256##SUF, float, 32, 4, CYRNN_T256, XT)                \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d256##SUF, double, 32, 4, CYRNN_T256, XT)               \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f128##SUF, float, 16, 4, , XT)                          \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d128##SUF, double, 16, 4, , XT)
CYRNN_PGEMM_KERNELS(, 0)
CYRNN_PGEMM_KERNELS(t, 1)

/* cyrnn_pgemm_f/d: x row-major; cyrnn_pgemm_tf/td: x stored transposed (XT 1). */
#define CYRNN_PGEMM_DISPATCH(NAME, T, K512, K256, K128)                               \
static void NAME(int isa, const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                 const T* P, ptrdiff_t C, T* out, ptrdiff_t ldo, int beta) {           \
    if (n <= 0 || C <= 0) return;                                                     \
    if (isa == 2) K512(x, ldx, n, K, P, C, out, ldo, beta);                           \
    else if (isa == 1) K256(x, ldx, n, K, P, C, out, ldo, beta);                      \
    else K128(x, ldx, n, K, P, C, out, ldo, beta);                                    \
}
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_f, float, cyrnn_pgemm_f512, cyrnn_pgemm_f256,
                     cyrnn_pgemm_f128)
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_d, double, cyrnn_pgemm_d512, cyrnn_pgemm_d256,
                     cyrnn_pgemm_d128)
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_tf, float, cyrnn_pgemm_f512t, cyrnn_pgemm_f256t,
                     cyrnn_pgemm_f128t)
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_td, double, cyrnn_pgemm_d512t, cyrnn_pgemm_d256t,
                     cyrnn_pgemm_d128t)

/* Flush denormal numbers to zero (FTZ, DAZ) in the calling thread while cyrnn's
   loops run; returns the previous mode for cyrnn_fp_restore. Gradients that
   decay through hundreds of steps reach the denormal range, where every
   multiply-add takes a microcode assist (the IMDB GRU's training step ran 4x
   slower). Elsewhere than x86 with SSE: no-ops. */
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
static inline unsigned int cyrnn_fp_flush(void) {
    unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
}
static inline void cyrnn_fp_restore(unsigned int old) { _mm_setcsr(old); }
#else
static inline unsigned int cyrnn_fp_flush(void) { return 0; }
static inline void cyrnn_fp_restore(unsigned int old) { (void)old; }
#endif

/* How often each path ran (tests check that the path they mean to exercise did):
   [0] packed forwards, [1] packed backwards, [2] op regions run on several threads. */
static long cyrnn_path_count[3];
static inline void cyrnn_count_path(int k) { __atomic_fetch_add(&cyrnn_path_count[k], 1, __ATOMIC_RELAXED); }
static inline long cyrnn_path_read(int k) { return __atomic_load_n(&cyrnn_path_count[k], __ATOMIC_RELAXED); }

#endif
