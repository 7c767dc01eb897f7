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
#include <stdint.h>
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

/* M(NAME_<type><bits>, T, vector bytes, target) for each element type and
   instruction set: the per-ISA copies of a kernel body. */
#define CYRNN_EACH_ISA(M, NAME)                                                       \
M(NAME##_f512, float, 64, CYRNN_T512)                                                 \
M(NAME##_d512, double, 64, CYRNN_T512)                                                \
M(NAME##_f256, float, 32, CYRNN_T256)                                                 \
M(NAME##_d256, double, 32, CYRNN_T256)                                                \
M(NAME##_f128, float, 16, )                                                           \
M(NAME##_d128, double, 16, )

/* Write (beta 0) or add (beta 1) the m values of a finished tile row t to o. */
#define CYRNN_PUT(o, t, m, beta)                                                      \
    do {                                                                              \
        ptrdiff_t j_;                                                                 \
        if (beta)                                                                     \
            for (j_ = 0; j_ < (m); j_++) (o)[j_] += (t)[j_];                          \
        else                                                                          \
            for (j_ = 0; j_ < (m); j_++) (o)[j_] = (t)[j_];                           \
    } while (0)

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

/* Rows of the kernels' register tile per isa (the MR of CYRNN_PGEMM_KERNELS; the
   strips of the weight-gradient sums have this height). The float32 AVX-512 kernel
   on row-major operands (XT 0) takes 12 rows instead (below). */
static inline ptrdiff_t cyrnn_pgemm_mr(int isa) { return isa == 2 ? 8 : isa == 1 ? 6 : 4; }

/* Element stride between the MR-row strips of a K-step operand
   (``cyrnn_strips_*``): one cache line more than the strip, so that the strips'
   first lines do not all fall into one L1 set. */
static inline ptrdiff_t cyrnn_strip_stride(int isa, size_t esize, ptrdiff_t K) {
    return cyrnn_pgemm_mr(isa) * K + 64 / (ptrdiff_t)esize;
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
            if (sc == 1 && nc == nr)  /* whole panel rows: 16-byte moves, inlined */  \
                for (j = 0; j < nr; j += 16 / (ptrdiff_t)sizeof(T))                   \
                    memcpy(dst + j, src + j, 16);                                     \
            else if (sc == 1)                                                         \
                memcpy(dst, src, nc * sizeof(T));                                     \
            else                                                                      \
                for (j = 0; j < nc; j++) dst[j] = src[j * sc];                        \
            for (c = nc; c < nr; c++) dst[c] = (T)0;                                  \
        }                                                                             \
    }                                                                                 \
}
CYRNN_PACK(cyrnn_pack_f, float)
CYRNN_PACK(cyrnn_pack_d, double)

/* The operand of the weight-gradient sums, R rows of C gate gradients g (row
 * stride ldg), copied into MR-column strips for the XT 2 kernels:
 * S[(c/MR)*lds + k*MR + c%MR] = g[k*ldg + c] (zero beyond C). Rows are read
 * whole, in order; ``sum`` (NULL: none) gets each column's sum added, the rows
 * taken in order (a bias gradient, while the rows are in cache anyway). S NULL:
 * the sums only. One copy per instruction set (the MR of its kernels; wider
 * moves and adds, the same sums). */
#define CYRNN_STRIPS_BODY(NAME, T, MRV, TARGET)                                       \
TARGET static void NAME(const T* g, ptrdiff_t ldg, ptrdiff_t R, ptrdiff_t C,           \
                        T* S, ptrdiff_t lds, T* __restrict sum) {                     \
    enum { mr = MRV };                                                                \
    ptrdiff_t k, c, j;                                                                \
    for (k = 0; k < R; k++) {                                                         \
        const T* __restrict src = g + k * ldg;                                        \
        T* dst = S + k * mr;                                                          \
        c = 0;                                                                        \
        if (S != NULL)                                                                \
            for (; c + mr <= C; c += mr) memcpy(dst + (c / mr) * lds, src + c, mr * sizeof(T)); \
        if (S != NULL && c < C) {                                                     \
            T* d = dst + (c / mr) * lds;                                              \
            for (j = 0; j < mr; j++) d[j] = c + j < C ? src[c + j] : (T)0;            \
        }                                                                             \
        if (sum != NULL)                                                              \
            for (c = 0; c < C; c++) sum[c] += src[c];                                 \
    }                                                                                 \
}
#define CYRNN_STRIPS(NAME, T)                                                         \
CYRNN_STRIPS_BODY(NAME##512, T, 8, CYRNN_T512)                                        \
CYRNN_STRIPS_BODY(NAME##256, T, 6, CYRNN_T256)                                        \
CYRNN_STRIPS_BODY(NAME##128, T, 4, )                                                  \
static void NAME(int isa, const T* g, ptrdiff_t ldg, ptrdiff_t R, ptrdiff_t C,         \
                 T* S, ptrdiff_t lds, T* sum) {                                       \
    if (isa == 2) NAME##512(g, ldg, R, C, S, lds, sum);                               \
    else if (isa == 1) NAME##256(g, ldg, R, C, S, lds, sum);                          \
    else NAME##128(g, ldg, R, C, S, lds, sum);                                        \
}
CYRNN_STRIPS(cyrnn_strips_f, float)
CYRNN_STRIPS(cyrnn_strips_d, double)

/* The k loops of the kernels below, per weight format: KLOOP runs the MR-row
   tile (accumulators a0, a1 over rows xr), GLOOP the PG-panel single row
   (accumulators a[2q], a[2q+1] over the row x). The native panels hold K
   steps of NR weights; the bfloat16 ones (see below) K/2 rounded up. Every
   accumulator is one k-ascending multiply-add chain in both, so a result does
   not depend on the kernel that computed it. */
#define CYRNN_KSTEPS_NATIVE(K) (K)
/* The native tile kernels' k loop (3+ rows; not the one-row kernels, the bfloat16
   formats or the kernels on weights as stored) asks for its panel CYRNN_PF_AHEAD bytes
   ahead (16 k steps of the AVX-512 float kernel): one cache line per k step, two where
   a k step reads 128 bytes (the 16-byte kernels ask for each line twice).
   Inside a time loop the steps' other work (the input projections, the cell math)
   evicts the weights between products, and the hardware prefetchers alone left the
   panel's loads waiting on L2 and L3 (ONNX Runtime's kernel prefetches its panels
   too). A prefetch never faults, also past the end, and changes no result. ABBA
   pairs of fresh processes (profile_kernels.py, 2 threads), 2026-12-03 on the Xeon:
   large inference 157.3 -> 148.7 ms (faster in 11 of 12), dino-b32 inference 0.367
   -> 0.323 ms (6 of 6). On a Zen 4 (the same day, with the 12-row tiles below, against
   the build before both) no effect stood out of that host's noise
   (benchmarks/results/ab_zen4_1203_log.md). */
#define CYRNN_PF_AHEAD 2048
#define CYRNN_PREFETCH_PANEL(VT, q)                                                   \
    do {                                                                              \
        /* integer arithmetic: the address may lie past the panel's allocation */     \
        __builtin_prefetch((const void*)((uintptr_t)(q) + CYRNN_PF_AHEAD), 0, 3);      \
        if (2 * sizeof(VT) >= 128)                                                    \
            __builtin_prefetch((const void*)((uintptr_t)(q) + CYRNN_PF_AHEAD + 64), 0, 3); \
    } while (0)
#define CYRNN_KLOOP_NATIVE(VT, UT, T)                                                 \
    for (k = 0; k < K; k++) {                                                         \
        CYRNN_PREFETCH_PANEL(VT, pp + k * NR);                                        \
        VT w0 = *(const VT*)(pp + k * NR);                                            \
        VT w1 = *(const VT*)(pp + k * NR + V);                                        \
        _Pragma("GCC unroll 16")                                                      \
        for (r = 0; r < MRS; r++) {                                                    \
            T s = xr[r][k * sk];                                                      \
            a0[r] += s * w0;                                                          \
            a1[r] += s * w1;                                                          \
        }                                                                             \
    }
#define CYRNN_GLOOP_NATIVE(VT, UT, T)                                                 \
    for (k = 0; k < K; k++) {                                                         \
        T s = x[k];                                                                   \
        _Pragma("GCC unroll 8")                                                       \
        for (q = 0; q < PGS; q++) {                                                    \
            a[2 * q] += s * *(const VT*)(pp + q * pstride + k * NR);                  \
            a[2 * q + 1] += s * *(const VT*)(pp + q * pstride + k * NR + V);          \
        }                                                                             \
    }

/* One MR-row tile of one panel: the k loop over the rows xr (element k of row r
   at xr[r][k*sk]), then the m <= MR rows' NR values stored (beta: added) to
   out, row stride ldo, nc <= NR columns. Full panels store the accumulators
   directly (unaligned vector stores; the earlier copy through a stack buffer
   cost about a tenth of a short k loop). */
#define CYRNN_PGEMM_TILE(NAME, T, WT, FMT, VB, MR, TARGET)                           \
TARGET static inline __attribute__((always_inline)) void NAME(                        \
        const T* const* xr, ptrdiff_t sk, ptrdiff_t K, const WT* pp, T* out,          \
        ptrdiff_t ldo, ptrdiff_t m, ptrdiff_t nc, int beta) {                         \
    typedef T v_t __attribute__((vector_size(VB)));                                   \
    typedef T vu_t __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));   \
    typedef unsigned int u_t __attribute__((vector_size(VB), unused));                \
    enum { V = VB / sizeof(T), NR = 2 * V, MRS = MR };                                \
    v_t a0[MR], a1[MR];                                                               \
    ptrdiff_t k, r;                                                                   \
    (void)sk;                                                                         \
    _Pragma("GCC unroll 16")                                                          \
    for (r = 0; r < MR; r++) {                                                        \
        a0[r] = (v_t){0};                                                             \
        a1[r] = (v_t){0};                                                             \
    }                                                                                 \
    CYRNN_KLOOP_##FMT(v_t, u_t, T)                                                    \
    _Pragma("GCC unroll 16")                                                          \
    for (r = 0; r < MR; r++) {                                                        \
        T* o = out + r * ldo;                                                         \
        if (r >= m) break;                                                            \
        if (nc == NR) {                                                               \
            vu_t* o0 = (vu_t*)o;                                                      \
            vu_t* o1 = (vu_t*)(o + V);                                                \
            if (beta) {                                                               \
                *o0 = *o0 + a0[r];                                                    \
                *o1 = *o1 + a1[r];                                                    \
            } else {                                                                  \
                *o0 = a0[r];                                                          \
                *o1 = a1[r];                                                          \
            }                                                                         \
        } else {                                                                      \
            T t[NR];                                                                  \
            memcpy(t, &a0[r], sizeof a0[r]);                                          \
            memcpy(t + V, &a1[r], sizeof a1[r]);                                      \
            CYRNN_PUT(o, t, nc, beta);                                                \
        }                                                                             \
    }                                                                                 \
}

/* One kernel body per (type, weight format, vector bytes, MR, target, x layout).
   XT 0: element (i, k) of x at x[i*ldx + k]; XT 1: at x[k*ldx + i] (x stored
   transposed: the weight-gradient sums over rows read the activations as they
   lie); XT 2: at x[(i/MR)*ldx + k*MR + i%MR] (MR-row strips, ``cyrnn_strips_*``:
   read in order, where XT 1 reads a short piece of a long row per k, at strides
   that put a whole tile's k loop into a few L1 sets). WT: the packed weights'
   element type. A last tile of at most 4 rows (MR 6, 8 or 12) runs as a 4-row tile
   instead of computing copies of its last row (16-row chunks on AVX2: 6 + 6 +
   4), and with MR 12 one of 5-8 rows as an 8-row tile (32-row chunks: 12 + 12 +
   8); every element is the same k-ascending chain in any of them. */
#define CYRNN_PGEMM_BODY(NAME, T, WT, FMT, VB, MR, TARGET, XT)                        \
CYRNN_PGEMM_TILE(NAME##_tm, T, WT, FMT, VB, MR, TARGET)                               \
CYRNN_PGEMM_TILE(NAME##_t4, T, WT, FMT, VB, 4, TARGET)                                \
CYRNN_PGEMM_TILE(NAME##_t8, T, WT, FMT, VB, 8, TARGET)                                \
TARGET static void NAME(const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                        const WT* P, ptrdiff_t C, T* out, ptrdiff_t ldo, int beta) {  \
    enum { V = VB / sizeof(T), NR = 2 * V };                                          \
    const ptrdiff_t si = XT ? 1 : ldx, sk = XT == 2 ? MR : XT ? ldx : 1;              \
    ptrdiff_t p, i0, r;                                                               \
    for (p = 0; p * NR < C; p++) {                                                    \
        const WT* pp = P + p * NR * CYRNN_KSTEPS_##FMT(K);                            \
        ptrdiff_t c0 = p * NR, nc = C - c0 < NR ? C - c0 : NR;                        \
        for (i0 = 0; i0 < n; i0 += MR) {                                              \
            const T* xr[MR];                                                          \
            ptrdiff_t m = n - i0 < MR ? n - i0 : MR;                                  \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < MR; r++)                                                  \
                xr[r] = XT == 2 ? x + (i0 / MR) * ldx + (r < m ? r : m - 1)           \
                                : x + (i0 + (r < m ? r : m - 1)) * si;                \
            if (MR > 4 && m <= 4)                                                     \
                NAME##_t4(xr, sk, K, pp, out + i0 * ldo + c0, ldo, m, nc, beta);      \
            else if (MR > 8 && m <= 8)                                                \
                NAME##_t8(xr, sk, K, pp, out + i0 * ldo + c0, ldo, m, nc, beta);      \
            else                                                                      \
                NAME##_tm(xr, sk, K, pp, out + i0 * ldo + c0, ldo, m, nc, beta);      \
        }                                                                             \
    }                                                                                 \
}
#define CYRNN_PGEMM_KERNEL(NAME, T, VB, MR, TARGET, XT)                               \
    CYRNN_PGEMM_BODY(NAME, T, T, NATIVE, VB, MR, TARGET, XT)

/* The float32 AVX-512 kernel on row-major x (XT 0: the time loops' products) keeps a
   12 x 32 tile (24 of the 32 zmm registers, as ONNX Runtime's kernel): each panel
   load serves 12 rows. Alone on one core 8 and 12 rows ran alike (benchmarks/
   pgemm_rows.c); with the panel prefetched, inside the time loops (ABBA pairs of
   fresh processes, 2026-12-03, the Xeon) large inference 148.1 -> 139.9 ms (faster in
   7 of 10), medium 4.35 -> 4.09 ms (6 of 8), dino-b32 and the training steps within
   their noise; both changes together against the build before them: large 0.968 of its
   time (faster in 23 of 34), medium 0.94 (8 of 10); on a Zen 4 within its noise (see
   the prefetch above). The other AVX-512 kernels keep 8 rows: float64, the transposed
   (XT 1) and strip (XT 2, whose height the weight-gradient layout uses) operands, and
   the bfloat16 formats. */
#define CYRNN_PGEMM_KERNELS(SUF, XT)                                                  \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f512##SUF, float, 64, (XT == 0 ? 12 : 8), CYRNN_T512, XT) \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d512##SUF, double, 64, 8, CYRNN_T512, XT)               \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f256##SUF, float, 32, 6, CYRNN_T256, XT)                \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d256##SUF, double, 32, 6, CYRNN_T256, XT)               \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_f128##SUF, float, 16, 4, , XT)                          \
CYRNN_PGEMM_KERNEL(cyrnn_pgemm_d128##SUF, double, 16, 4, , XT)
CYRNN_PGEMM_KERNELS(, 0)
CYRNN_PGEMM_KERNELS(t, 1)
CYRNN_PGEMM_KERNELS(s, 2)

/* Single rows (n <= CYRNN_GEMV_ROWS): the MR-row kernels above would compute MR
   copies of the row, so rows go one at a time through kernels that run PG panels
   at once instead (2 * PG independent accumulators). Each element is the same
   k-ascending multiply-add chain as in the MR-row kernels: a row's result does
   not depend on the path that computed it. */
#define CYRNN_GEMV_ROWS 2
#define CYRNN_GEMV_PANELS(NAME, T, WT, FMT, VB, PG, TARGET)                           \
TARGET static inline void NAME(const T* x, ptrdiff_t K, const WT* pp, ptrdiff_t pstride, \
                               T* o, ptrdiff_t nc, int beta) {                        \
    typedef T v_t __attribute__((vector_size(VB)));                                   \
    typedef unsigned int u_t __attribute__((vector_size(VB), unused));                \
    enum { V = VB / sizeof(T), NR = 2 * V, PGS = PG };                                \
    v_t a[2 * PG];                                                                    \
    ptrdiff_t k, q;                                                                   \
    _Pragma("GCC unroll 16")                                                          \
    for (q = 0; q < 2 * PG; q++) a[q] = (v_t){0};                                     \
    CYRNN_GLOOP_##FMT(v_t, u_t, T)                                                    \
    for (q = 0; q < PG; q++) {                                                        \
        T t[NR];                                                                      \
        ptrdiff_t m = nc - q * NR < NR ? nc - q * NR : NR;                            \
        memcpy(t, &a[2 * q], sizeof a[0]);                                            \
        memcpy(t + V, &a[2 * q + 1], sizeof a[0]);                                    \
        CYRNN_PUT(o + q * NR, t, m, beta);                                            \
    }                                                                                 \
}
#define CYRNN_GEMV_BODY(NAME, T, WT, FMT, VB, TARGET)                                 \
CYRNN_GEMV_PANELS(NAME##_4, T, WT, FMT, VB, 4, TARGET)                                \
CYRNN_GEMV_PANELS(NAME##_1, T, WT, FMT, VB, 1, TARGET)                                \
TARGET static void NAME(const T* x, ptrdiff_t K, const WT* P, ptrdiff_t C, T* out,     \
                        int beta) {                                                   \
    enum { NR = 2 * VB / sizeof(T) };                                                 \
    const ptrdiff_t ps = NR * CYRNN_KSTEPS_##FMT(K);                                  \
    ptrdiff_t p = 0, np = (C + NR - 1) / NR;                                          \
    for (; p + 4 <= np; p += 4)                                                       \
        NAME##_4(x, K, P + p * ps, ps, out + p * NR, C - p * NR, beta);               \
    for (; p < np; p++)                                                               \
        NAME##_1(x, K, P + p * ps, ps, out + p * NR, C - p * NR, beta);               \
}
#define CYRNN_GEMV_KERNEL(NAME, T, VB, TARGET) CYRNN_GEMV_BODY(NAME, T, T, NATIVE, VB, TARGET)
CYRNN_EACH_ISA(CYRNN_GEMV_KERNEL, cyrnn_gemv)

/* Rows in the vector lanes, the weight as stored, nothing packed:
 *   out[i*ldo + c] = sum_k x[i*ldx + k] * W[c*K + k]   (i < n, c < C; W (C, K) row-major)
 * each element the same k-ascending multiply-add chain from 0 as in the packed
 * kernels above, under the same target (so the same contraction): a short call of
 * a few rows gets the packed path's results without packing its weights (a step
 * of 4+ streams on weights that may change between calls). x's rows are first
 * gathered V at a time into a transposed block ``xt`` (G groups of K vectors;
 * NULL: gathered per k instead); then each block of CB weight rows serves every
 * group while it is in cache. */
#define CYRNN_RGEMM_BODY(NAME, T, VB, TARGET)                                         \
TARGET static void NAME(const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                        const T* W, ptrdiff_t C, T* out, ptrdiff_t ldo, T* xt) {      \
    typedef T v_t __attribute__((vector_size(VB)));                                   \
    enum { V = VB / sizeof(T), CB = 8 };                                              \
    ptrdiff_t g, i0, c, k, l, j, m, cb;                                               \
    if (xt != NULL)                                                                   \
        for (i0 = 0; i0 < n; i0 += V) {                                               \
            T* xg = xt + (i0 / V) * K * V;                                            \
            m = n - i0 < V ? n - i0 : V;                                              \
            for (k = 0; k < K; k++)                                                   \
                for (l = 0; l < V; l++) xg[k * V + l] = l < m ? x[(i0 + l) * ldx + k] : 0; \
        }                                                                             \
    for (c = 0; c < C; c += CB) {                                                     \
        const T* wr[CB];                                                              \
        cb = C - c < CB ? C - c : CB;                                                 \
        for (j = 0; j < CB; j++) wr[j] = W + (c + (j < cb ? j : 0)) * K;              \
        for (g = 0, i0 = 0; i0 < n; g++, i0 += V) {                                   \
            const T* xg = xt != NULL ? xt + g * K * V : NULL;                         \
            v_t a[CB], xv;                                                            \
            m = n - i0 < V ? n - i0 : V;                                              \
            _Pragma("GCC unroll 8")                                                   \
            for (j = 0; j < CB; j++) a[j] = (v_t){0};                                 \
            for (k = 0; k < K; k++) {                                                 \
                if (xg != NULL) xv = *(const v_t*)(xg + k * V);                       \
                else for (l = 0; l < V; l++) xv[l] = l < m ? x[(i0 + l) * ldx + k] : 0; \
                _Pragma("GCC unroll 8")                                               \
                for (j = 0; j < CB; j++) a[j] += xv * wr[j][k];                       \
            }                                                                         \
            for (j = 0; j < cb; j++) {                                                \
                T t[V];                                                               \
                memcpy(t, &a[j], sizeof t);                                           \
                for (l = 0; l < m; l++) out[(i0 + l) * ldo + c + j] = t[l];           \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
}
CYRNN_EACH_ISA(CYRNN_RGEMM_BODY, cyrnn_rgemm)
#define CYRNN_RGEMM_DISPATCH(NAME, T, K512, K256, K128)                               \
static void NAME(int isa, const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                 const T* W, ptrdiff_t C, T* out, ptrdiff_t ldo) {                     \
    T* xt;                                                                            \
    if (n <= 0 || C <= 0) return;                                                     \
    /* ceil(n / V) groups of K vectors, sized for the widest kind (64 bytes) */      \
    xt = (T*)aligned_alloc(64, (size_t)((n + 64 / sizeof(T) - 1) / (64 / sizeof(T))) \
                               * (size_t)K * 64);                                     \
    if (isa == 2) K512(x, ldx, n, K, W, C, out, ldo, xt);                             \
    else if (isa == 1) K256(x, ldx, n, K, W, C, out, ldo, xt);                        \
    else K128(x, ldx, n, K, W, C, out, ldo, xt);                                      \
    free(xt);                                                                         \
}
CYRNN_RGEMM_DISPATCH(cyrnn_rgemm_f, float, cyrnn_rgemm_f512, cyrnn_rgemm_f256, cyrnn_rgemm_f128)
CYRNN_RGEMM_DISPATCH(cyrnn_rgemm_d, double, cyrnn_rgemm_d512, cyrnn_rgemm_d256, cyrnn_rgemm_d128)

/* Few-row products on the weight as stored, k in the vector lanes: the unpacked
 * path's per-step recurrent products at small batch (src/gemm.pxi, _gemm_hh):
 *   out[i*ldo + c] = sum_k x[i*K + k] * W[c*K + k]   (i < n, c < C; W (C, K) row-major)
 * AVX-512 (isa 2; AVX2 + FMA, isa 1: 8 lanes, below), float32. Every element is
 * summed in one order that depends on K (and the isa) only: lane q (q < 16) is a
 * fused multiply-add chain over k = q, q + 16, ... ascending from +0 (the last, partial vector's missing k adding 0 * 0), then
 * s_q = l_q + l_{q+8} (q < 8) and ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)),
 * whatever the element's row, its block of weight rows or the call: a step equals
 * its whole sequence, and threads may split the columns anywhere. The weight rows
 * are taken 16 at a time (the last block moved back to end at C, recomputing a few
 * elements to the same bits), their 16 accumulators reduced together by a
 * transposed tree whose every lane does exactly the additions above; each x row
 * runs over the block while it is in L1. Against OpenBLAS's small-matrix kernel
 * (which the unpacked path took on AVX-512 before) and the 8-lane kernel
 * cyrnn_proj_ld (isa 1 and 0 before): benchmarks/bench_small_gemm.py,
 * benchmarks/dotrows_rate.c. Returns -1 (nothing done) where
 * the kernel is not available: isa 0 or a build without it. */
#if CYRNN_PGEMM_X86
#include <immintrin.h>
#define CYRNN_DOT_LEVEL(a, b, lo, hi) \
    _mm512_add_ps(_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
/* The accumulators a_[0..L-1] (L lanes, L rows) of one x row xi: lane q of a_[j] is
   the fused multiply-add chain of row j over k = q, q + L, ... from +0, the last,
   partial vector masked (km) to zeros. Rows wb + j K (wr NULL), else wr[j], reached by
   walking one pointer p_ (L row pointers do not fit in the general registers:
   spilled, they cost 1.8x the time at H = 64). V: the intrinsics' prefix (_mm512 or
   _mm256), MLD(p, km): the masked load. */
#define CYRNN_MLD512(p, km) _mm512_maskz_loadu_ps((km), (p))
#define CYRNN_MLD256(p, km) _mm256_maskload_ps((p), (km))
#define CYRNN_DOTROWS_SUMS(L, V, MLD, a_, xv_, p_, wb, wr, xi, K, KV, km)             \
    do {                                                                              \
        ptrdiff_t j_, k_;                                                             \
        for (j_ = 0; j_ < (L); j_++) a_[j_] = V##_setzero_ps();                       \
        for (k_ = 0; k_ < (KV); k_ += (L)) {                                          \
            xv_ = V##_loadu_ps((xi) + k_);                                            \
            p_ = ((wr) != NULL ? (wr)[0] : (wb)) + k_;                                \
            for (j_ = 0; j_ < (L); j_++) {                                            \
                a_[j_] = V##_fmadd_ps(xv_, V##_loadu_ps(p_), a_[j_]);                 \
                p_ = (wr) != NULL ? (wr)[(j_ + 1) % (L)] + k_ : p_ + (K);             \
                __asm__("" : "+r"(p_));                                               \
            }                                                                         \
        }                                                                             \
        if ((KV) < (K)) {                                                             \
            xv_ = MLD((xi) + (KV), (km));                                             \
            p_ = ((wr) != NULL ? (wr)[0] : (wb)) + (KV);                              \
            for (j_ = 0; j_ < (L); j_++) {                                            \
                a_[j_] = V##_fmadd_ps(xv_, MLD(p_, (km)), a_[j_]);                    \
                p_ = (wr) != NULL ? (wr)[(j_ + 1) % (L)] + (KV) : p_ + (K);           \
            }                                                                         \
        }                                                                             \
    } while (0)
/* the 16 rows' sums of one x row xi, stored under mask m (rows as in
   CYRNN_DOTROWS_SUMS) */
#define CYRNN_DOTROWS_BLOCK(wb, wr, xi, K, KV, km, o, m)                              \
    do {                                                                              \
        __m512 a_[16], b_[8], c_[4], d_[2], xv_;                                      \
        const float* p_;                                                              \
        ptrdiff_t j_;                                                                 \
        CYRNN_DOTROWS_SUMS(16, _mm512, CYRNN_MLD512, a_, xv_, p_, wb, wr, xi, K, KV, km); \
        /* b_[j]: rows j, j+8 (8 lanes each); c_: rows j, j+4, j+8, j+12 (4 each); */ \
        /* d_: rows j, j+2, ..., j+14 (2 each); then rows 0..15 in order */           \
        for (j_ = 0; j_ < 8; j_++) b_[j_] = CYRNN_DOT_LEVEL(a_[j_], a_[j_ + 8], t1l, t1h); \
        for (j_ = 0; j_ < 4; j_++) c_[j_] = CYRNN_DOT_LEVEL(b_[j_], b_[j_ + 4], t2l, t2h); \
        for (j_ = 0; j_ < 2; j_++) d_[j_] = CYRNN_DOT_LEVEL(c_[j_], c_[j_ + 2], t3l, t3h); \
        _mm512_mask_storeu_ps((o), (m), CYRNN_DOT_LEVEL(d_[0], d_[1], t4l, t4h));     \
    } while (0)
CYRNN_T512 static void cyrnn_dotrows_f512(const float* x, ptrdiff_t n, ptrdiff_t K,
                                          const float* W, ptrdiff_t C, float* out,
                                          ptrdiff_t ldo) {
    const __m512i t1l = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i t1h = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i t2l = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i t2h = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    const __m512i t3l = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    const __m512i t3h = _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    const __m512i t4l = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    const __m512i t4h = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    const float* const* none = NULL;
    ptrdiff_t KV = K - K % 16, c, i, j;
    __mmask16 km = (__mmask16)((1u << (K % 16)) - 1);
    if (C >= 16) {
        for (c = 0; c < C; c += 16) {
            if (c > C - 16) c = C - 16;  /* the last block ends at C */
            for (i = 0; i < n; i++)
                CYRNN_DOTROWS_BLOCK(W + c * K, none, x + i * K, K, KV, km, out + i * ldo + c,
                                    (__mmask16)0xFFFF);
        }
    } else if (C > 0) {
        /* fewer than 16 rows: the missing ones repeat row 0, and are not stored */
        const float* wr[16];
        for (j = 0; j < 16; j++) wr[j] = W + (j < C ? j : 0) * K;
        for (i = 0; i < n; i++)
            CYRNN_DOTROWS_BLOCK(W, wr, x + i * K, K, KV, km, out + i * ldo,
                                (__mmask16)((1u << C) - 1));
    }
}
#undef CYRNN_DOTROWS_BLOCK
#undef CYRNN_DOT_LEVEL
/* AVX2 + FMA (isa 1): the same with 8 lanes and 8 rows a block; each element is
   lane q's chain over k = q, q + 8, ... (q < 8), then s_q = l_q + l_{q+4} (q < 4) and
   (s0 + s2) + (s1 + s3). The transposed tree: b_j = rows j | j+4 (4 lanes each),
   c_0 = rows 0, 1 | 4, 5 and c_1 = rows 2, 3 | 6, 7 (2 each), then rows 0..7. */
#define CYRNN_DOTROWS8_BLOCK(wb, wr, xi, K, KV, km, o, m)                             \
    do {                                                                              \
        __m256 a_[8], b_[4], c0_, c1_, xv_, l_, h_;                                   \
        const float* p_;                                                              \
        ptrdiff_t j_;                                                                 \
        CYRNN_DOTROWS_SUMS(8, _mm256, CYRNN_MLD256, a_, xv_, p_, wb, wr, xi, K, KV, km); \
        for (j_ = 0; j_ < 4; j_++)                                                    \
            b_[j_] = _mm256_add_ps(_mm256_permute2f128_ps(a_[j_], a_[j_ + 4], 0x20),  \
                                   _mm256_permute2f128_ps(a_[j_], a_[j_ + 4], 0x31)); \
        c0_ = _mm256_add_ps(_mm256_shuffle_ps(b_[0], b_[1], 0x44),                    \
                            _mm256_shuffle_ps(b_[0], b_[1], 0xEE));                   \
        c1_ = _mm256_add_ps(_mm256_shuffle_ps(b_[2], b_[3], 0x44),                    \
                            _mm256_shuffle_ps(b_[2], b_[3], 0xEE));                   \
        l_ = _mm256_shuffle_ps(c0_, c1_, 0x88);                                       \
        h_ = _mm256_shuffle_ps(c0_, c1_, 0xDD);                                       \
        _mm256_maskstore_ps((o), (m), _mm256_add_ps(l_, h_));                         \
    } while (0)
CYRNN_T256 static void cyrnn_dotrows_f256(const float* x, ptrdiff_t n, ptrdiff_t K,
                                          const float* W, ptrdiff_t C, float* out,
                                          ptrdiff_t ldo) {
    const float* const* none = NULL;
    ptrdiff_t KV = K - K % 8, c, i, j;
    const __m256i all = _mm256_set1_epi32(-1);
    __m256i km = _mm256_setr_epi32(0 < K % 8 ? -1 : 0, 1 < K % 8 ? -1 : 0, 2 < K % 8 ? -1 : 0,
                                   3 < K % 8 ? -1 : 0, 4 < K % 8 ? -1 : 0, 5 < K % 8 ? -1 : 0,
                                   6 < K % 8 ? -1 : 0, 0);
    if (C >= 8) {
        for (c = 0; c < C; c += 8) {
            if (c > C - 8) c = C - 8;  /* the last block ends at C */
            for (i = 0; i < n; i++)
                CYRNN_DOTROWS8_BLOCK(W + c * K, none, x + i * K, K, KV, km, out + i * ldo + c,
                                     all);
        }
    } else if (C > 0) {
        /* fewer than 8 rows: the missing ones repeat row 0, and are not stored */
        const float* wr[8];
        __m256i cm = _mm256_setr_epi32(0 < C ? -1 : 0, 1 < C ? -1 : 0, 2 < C ? -1 : 0,
                                       3 < C ? -1 : 0, 4 < C ? -1 : 0, 5 < C ? -1 : 0,
                                       6 < C ? -1 : 0, 0);
        for (j = 0; j < 8; j++) wr[j] = W + (j < C ? j : 0) * K;
        for (i = 0; i < n; i++)
            CYRNN_DOTROWS8_BLOCK(W, wr, x + i * K, K, KV, km, out + i * ldo, cm);
    }
}
#undef CYRNN_DOTROWS8_BLOCK
#undef CYRNN_DOTROWS_SUMS
#undef CYRNN_MLD512
#undef CYRNN_MLD256
#endif
static int cyrnn_dotrows_f(int isa, const float* x, ptrdiff_t n, ptrdiff_t K,
                           const float* W, ptrdiff_t C, float* out, ptrdiff_t ldo) {
#if CYRNN_PGEMM_X86
    if (isa == 2) {
        cyrnn_dotrows_f512(x, n, K, W, C, out, ldo);
        return 0;
    }
    if (isa == 1) {
        cyrnn_dotrows_f256(x, n, K, W, C, out, ldo);
        return 0;
    }
#endif
    (void)isa; (void)x; (void)n; (void)K; (void)W; (void)C; (void)out; (void)ldo;
    return -1;
}

/* cyrnn_pgemm_f/d: x row-major; cyrnn_pgemm_tf/td: x stored transposed (XT 1);
   cyrnn_pgemm_sf/sd: x in strips (XT 2). */
#define CYRNN_PGEMM_DISPATCH(NAME, T, K512, K256, K128, V512, V256, V128)             \
static void NAME(int isa, const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                 const T* P, ptrdiff_t C, T* out, ptrdiff_t ldo, int beta) {           \
    ptrdiff_t i;                                                                      \
    if (n <= 0 || C <= 0) return;                                                     \
    if (n <= CYRNN_GEMV_ROWS) {                                       \
        for (i = 0; i < n; i++) {                                                     \
            if (isa == 2) V512(x + i * ldx, K, P, C, out + i * ldo, beta);            \
            else if (isa == 1) V256(x + i * ldx, K, P, C, out + i * ldo, beta);       \
            else V128(x + i * ldx, K, P, C, out + i * ldo, beta);                     \
        }                                                                             \
        return;                                                                       \
    }                                                                                 \
    if (isa == 2) K512(x, ldx, n, K, P, C, out, ldo, beta);                           \
    else if (isa == 1) K256(x, ldx, n, K, P, C, out, ldo, beta);                      \
    else K128(x, ldx, n, K, P, C, out, ldo, beta);                                    \
}
#define CYRNN_PGEMM_DISPATCH_T(NAME, T, K512, K256, K128)                             \
static void NAME(int isa, const T* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,          \
                 const T* P, ptrdiff_t C, T* out, ptrdiff_t ldo, int beta) {           \
    if (n <= 0 || C <= 0) return;                                                     \
    if (isa == 2) K512(x, ldx, n, K, P, C, out, ldo, beta);                           \
    else if (isa == 1) K256(x, ldx, n, K, P, C, out, ldo, beta);                      \
    else K128(x, ldx, n, K, P, C, out, ldo, beta);                                    \
}
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_f, float, cyrnn_pgemm_f512, cyrnn_pgemm_f256,
                     cyrnn_pgemm_f128, cyrnn_gemv_f512, cyrnn_gemv_f256, cyrnn_gemv_f128)
CYRNN_PGEMM_DISPATCH(cyrnn_pgemm_d, double, cyrnn_pgemm_d512, cyrnn_pgemm_d256,
                     cyrnn_pgemm_d128, cyrnn_gemv_d512, cyrnn_gemv_d256, cyrnn_gemv_d128)
CYRNN_PGEMM_DISPATCH_T(cyrnn_pgemm_tf, float, cyrnn_pgemm_f512t, cyrnn_pgemm_f256t,
                       cyrnn_pgemm_f128t)
CYRNN_PGEMM_DISPATCH_T(cyrnn_pgemm_sf, float, cyrnn_pgemm_f512s, cyrnn_pgemm_f256s,
                       cyrnn_pgemm_f128s)
CYRNN_PGEMM_DISPATCH_T(cyrnn_pgemm_sd, double, cyrnn_pgemm_d512s, cyrnn_pgemm_d256s,
                       cyrnn_pgemm_d128s)
CYRNN_PGEMM_DISPATCH_T(cyrnn_pgemm_td, double, cyrnn_pgemm_d512t, cyrnn_pgemm_d256t,
                       cyrnn_pgemm_d128t)

/* ---- bfloat16 weights, float32 arithmetic ----
   A weight packed as bfloat16 halves the bytes every product streams (a step
   of a stacked LSTM at batch 1 reads its whole weight set from L2/L3 for a
   few flops per byte). The kernels widen each weight to float32 with an
   integer shift or mask, which is exact, and multiply-add in float32 as the
   kernels above, in the same order: the result equals the float32 kernels'
   on the bfloat16-rounded weights. No bfloat16 instruction is needed, so
   every instruction-set path serves them (AVX-512 BF16's VDPBF16PS, which
   would also round the activations, measured at half the float32 FMA rate
   on the Xeon these kernels were tuned on: benchmarks/bf16_dot_rate.c).

   Layout: the float32 panel layout with k taken in pairs; a 32-bit word
   holds the bfloat16 weights (c, 2kk) (low half) and (c, 2kk + 1) (high
   half, 0 past an odd K): P[p][kk][j] for panels of NR columns. */
static inline unsigned int cyrnn_bf16(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)            /* NaN: stays a (quiet) NaN */
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  /* round to nearest even */
}

/* Words of the packed bfloat16 copy of a (C, K) weight. */
static inline ptrdiff_t cyrnn_pgemm_bsize(int isa, ptrdiff_t C, ptrdiff_t K) {
    ptrdiff_t nr = cyrnn_pgemm_nr(isa, 4);
    return (C + nr - 1) / nr * nr * ((K + 1) / 2);
}

static void cyrnn_pack_bf(int isa, const float* W, ptrdiff_t C, ptrdiff_t K, ptrdiff_t sc,
                          ptrdiff_t sk, unsigned int* P) {
    ptrdiff_t nr = cyrnn_pgemm_nr(isa, 4), K2 = (K + 1) / 2, p, kk, j, c;
    for (p = 0; p * nr < C; p++)
        for (kk = 0; kk < K2; kk++) {
            unsigned int* dst = P + (p * K2 + kk) * nr;
            for (j = 0; j < nr; j++) {
                c = p * nr + j;
                if (c >= C) {
                    dst[j] = 0;
                    continue;
                }
                dst[j] = cyrnn_bf16(W[c * sc + 2 * kk * sk]);
                if (2 * kk + 1 < K)
                    dst[j] |= cyrnn_bf16(W[c * sc + (2 * kk + 1) * sk]) << 16;
            }
        }
}

/* the k-pair's two weight vectors, widened: (c, 2kk) and (c, 2kk + 1) */
#define CYRNN_BF_LO(VT, u) ((VT)((u) << 16))
#define CYRNN_BF_HI(VT, u) ((VT)((u) & 0xffff0000u))
#define CYRNN_KSTEPS_BF16(K) (((K) + 1) / 2)
#define CYRNN_KLOOP_BF16(VT, UT, T)                                                   \
    for (k = 0; k < K; k += 2) {                                                      \
        UT u0 = *(const UT*)(pp + k / 2 * NR);                                        \
        UT u1 = *(const UT*)(pp + k / 2 * NR + V);                                    \
        VT w0 = CYRNN_BF_LO(VT, u0), w1 = CYRNN_BF_LO(VT, u1);                        \
        VT v0 = CYRNN_BF_HI(VT, u0), v1 = CYRNN_BF_HI(VT, u1);                        \
        if (k + 1 < K) {                                                              \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < MRS; r++) {                                                \
                T s = xr[r][k], t = xr[r][k + 1];                                     \
                a0[r] += s * w0;                                                      \
                a1[r] += s * w1;                                                      \
                a0[r] += t * v0;                                                      \
                a1[r] += t * v1;                                                      \
            }                                                                         \
        } else {                                                                      \
            _Pragma("GCC unroll 16")                                                  \
            for (r = 0; r < MRS; r++) {                                                \
                a0[r] += xr[r][k] * w0;                                               \
                a1[r] += xr[r][k] * w1;                                               \
            }                                                                         \
        }                                                                             \
    }
#define CYRNN_GLOOP_BF16(VT, UT, T)                                                   \
    for (k = 0; k < K; k += 2) {                                                      \
        T s = x[k], t = k + 1 < K ? x[k + 1] : 0;                                     \
        _Pragma("GCC unroll 8")                                                       \
        for (q = 0; q < PGS; q++) {                                                    \
            UT u0 = *(const UT*)(pp + q * pstride + k / 2 * NR);                      \
            UT u1 = *(const UT*)(pp + q * pstride + k / 2 * NR + V);                  \
            a[2 * q] += s * CYRNN_BF_LO(VT, u0);                                      \
            a[2 * q + 1] += s * CYRNN_BF_LO(VT, u1);                                  \
            if (k + 1 < K) {                                                          \
                a[2 * q] += t * CYRNN_BF_HI(VT, u0);                                  \
                a[2 * q + 1] += t * CYRNN_BF_HI(VT, u1);                              \
            }                                                                         \
        }                                                                             \
    }
CYRNN_PGEMM_BODY(cyrnn_pgemm_bf512, float, unsigned int, BF16, 64, 8, CYRNN_T512, 0)
CYRNN_PGEMM_BODY(cyrnn_pgemm_bf256, float, unsigned int, BF16, 32, 4, CYRNN_T256, 0)
CYRNN_PGEMM_BODY(cyrnn_pgemm_bf128, float, unsigned int, BF16, 16, 4, , 0)
CYRNN_GEMV_BODY(cyrnn_gemv_bf512, float, unsigned int, BF16, 64, CYRNN_T512)
CYRNN_GEMV_BODY(cyrnn_gemv_bf256, float, unsigned int, BF16, 32, CYRNN_T256)
CYRNN_GEMV_BODY(cyrnn_gemv_bf128, float, unsigned int, BF16, 16, )

static void cyrnn_pgemm_bf(int isa, const float* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,
                           const unsigned int* P, ptrdiff_t C, float* out, ptrdiff_t ldo,
                           int beta) {
    ptrdiff_t i;
    if (n <= 0 || C <= 0) return;
    if (n <= CYRNN_GEMV_ROWS) {
        for (i = 0; i < n; i++) {
            if (isa == 2) cyrnn_gemv_bf512(x + i * ldx, K, P, C, out + i * ldo, beta);
            else if (isa == 1) cyrnn_gemv_bf256(x + i * ldx, K, P, C, out + i * ldo, beta);
            else cyrnn_gemv_bf128(x + i * ldx, K, P, C, out + i * ldo, beta);
        }
        return;
    }
    if (isa == 2) cyrnn_pgemm_bf512(x, ldx, n, K, P, C, out, ldo, beta);
    else if (isa == 1) cyrnn_pgemm_bf256(x, ldx, n, K, P, C, out, ldo, beta);
    else cyrnn_pgemm_bf128(x, ldx, n, K, P, C, out, ldo, beta);
}

/* ---- bfloat16 weights, bfloat16 arithmetic (opt-in; AVX-512 BF16) ----
   VDPBF16PS multiplies k-pairs of bfloat16 values and adds both products to a
   float32 accumulator: twice the multiply-adds of a float32 FMA per instruction.
   Its rate depends on the CPU (benchmarks/bf16_dot_rate.c, one core: 116
   against 58 GMAC/s for float32 FMAs on a Zen 4, 54 against 107 on the Xeon of
   2026-11-30), so it is never taken by default. The activations have to be
   bfloat16 too: each product first rounds its rows of x (nearest even, as
   VCVTNE2PS2BF16 does) into 32-bit words of k-pairs, the layout of the packed
   bfloat16 weights' words; then every output element is one chain of
   VDPBF16PS over the k-pairs in ascending order, in the tile kernel and the
   one-row kernel alike, so a row's result does not depend on the rows or the
   kernel it was computed with (a stream's steps equal its whole sequence).
   Only with AVX-512F and AVX-512 BF16 at run time (cyrnn_bf16dot_ok). The
   weights are ``cyrnn_pack_bf``'s (isa 2: panels of 32 columns). */
#if CYRNN_PGEMM_X86 && __GNUC__ >= 11
#include <immintrin.h>
#define CYRNN_BF16DOT 1
#define CYRNN_TBF __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,fma")))
#else
#define CYRNN_BF16DOT 0
#endif

/* Whether this process may take the bfloat16-arithmetic kernels: the CPU has
   AVX-512 BF16 and the packed kernels' pick is AVX-512 (CYRNN_PGEMM_ISA may
   lower it). */
static int cyrnn_bf16dot_ok(void) {
#if CYRNN_BF16DOT
    static volatile int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = cyrnn_pgemm_isa() == 2 && __builtin_cpu_supports("avx512bf16")
             && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") ? 1 : 0;
    }
    return ok;
#else
    return 0;
#endif
}

#if CYRNN_BF16DOT
typedef int cyrnn_word_t __attribute__((may_alias));
/* A word of k-pair bfloat16 values broadcast to every lane; ``p`` points at it
   (the kernels' x pointers are float-typed: the words' bits are read as they are). */
#define CYRNN_BD_BCAST(p) ((__m512bh)_mm512_set1_epi32(*(const cyrnn_word_t*)(p)))
#define CYRNN_KSTEPS_BF16D(K) (((K) + 1) / 2)
#define CYRNN_KLOOP_BF16D(VT, UT, T)                                                  \
    for (k = 0; k < (K + 1) / 2; k++) {                                               \
        __m512bh w0 = (__m512bh)*(const UT*)(pp + k * NR);                            \
        __m512bh w1 = (__m512bh)*(const UT*)(pp + k * NR + V);                        \
        _Pragma("GCC unroll 16")                                                      \
        for (r = 0; r < MRS; r++) {                                                    \
            __m512bh s = CYRNN_BD_BCAST(xr[r] + k * sk);                              \
            a0[r] = (VT)_mm512_dpbf16_ps((__m512)a0[r], s, w0);                       \
            a1[r] = (VT)_mm512_dpbf16_ps((__m512)a1[r], s, w1);                       \
        }                                                                             \
    }
#define CYRNN_GLOOP_BF16D(VT, UT, T)                                                  \
    for (k = 0; k < (K + 1) / 2; k++) {                                               \
        __m512bh s = CYRNN_BD_BCAST(x + k);                                           \
        _Pragma("GCC unroll 8")                                                       \
        for (q = 0; q < PGS; q++) {                                                    \
            a[2 * q] = (VT)_mm512_dpbf16_ps((__m512)a[2 * q], s,                       \
                (__m512bh)*(const UT*)(pp + q * pstride + k * NR));                   \
            a[2 * q + 1] = (VT)_mm512_dpbf16_ps((__m512)a[2 * q + 1], s,               \
                (__m512bh)*(const UT*)(pp + q * pstride + k * NR + V));               \
        }                                                                             \
    }
/* x here: rows of (K+1)/2 words (stride ldx words), read through float pointers;
   the s(trips) body: MR-row strips of words (cyrnn_bf16_strips) */
CYRNN_PGEMM_BODY(cyrnn_pgemm_bd512, float, unsigned int, BF16D, 64, 8, CYRNN_TBF, 0)
CYRNN_PGEMM_BODY(cyrnn_pgemm_bds512, float, unsigned int, BF16D, 64, 8, CYRNN_TBF, 2)
CYRNN_GEMV_BODY(cyrnn_gemv_bd512, float, unsigned int, BF16D, 64, CYRNN_TBF)

/* Round n rows of K floats (row stride ldx) to bfloat16 k-pair words, (K+1)/2 a
   row (0 in the high half past an odd K), row i at w + i*ldw, zero words from
   (K+1)/2 to ldw. A value beyond bfloat16's range (|x| > 3.39e38) rounds to inf,
   so a zero weight then gives NaN where float32 arithmetic gives 0. */
CYRNN_TBF static void cyrnn_bf16_pairs(const float* x, ptrdiff_t ldx, ptrdiff_t n,
                                       ptrdiff_t K, unsigned int* w, ptrdiff_t ldw) {
    ptrdiff_t KK = (K + 1) / 2, i, k, r;
    for (i = 0; i < n; i++) {
        const float* xi = x + i * ldx;
        unsigned int* wi = w + i * ldw;
        for (k = KK; k < ldw; k++) wi[k] = 0;
        for (k = 0; k + 32 <= K; k += 32) {
            __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xi + k + 16),
                                             _mm512_loadu_ps(xi + k));
            _mm512_storeu_si512((void*)(wi + k / 2), (__m512i)b);
        }
        if (k < K) {
            r = K - k;  /* 1 .. 31 */
            __mmask16 m0 = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1);
            __mmask16 m1 = r > 16 ? (__mmask16)((1u << (r - 16)) - 1) : (__mmask16)0;
            __m512bh b = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, xi + k + 16),
                                             _mm512_maskz_loadu_ps(m0, xi + k));
            _mm512_mask_storeu_epi32((void*)(wi + k / 2),
                                     (__mmask16)((1u << ((r + 1) / 2)) - 1), (__m512i)b);
        }
    }
}

/* Sixteen columns (mask m) of two rows e, o (o NULL: zeros) rounded to bfloat16 and
   interleaved into 16 k-pair words, word j = bf16(e[j]) | bf16(o[j]) << 16:
   VCVTNE2PS2BF16 (nearest even; denormal inputs as zero, which the calls' DAZ mode
   makes them anyway), then VPERMW. */
CYRNN_TBF static inline __m512i cyrnn_bf16_pair16(const float* e, const float* o,
                                                  __mmask16 m) {
    static const short order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                     8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                     15, 31};
    __m512 ve = _mm512_maskz_loadu_ps(m, e);
    __m512 vo = o != NULL ? _mm512_maskz_loadu_ps(m, o) : _mm512_setzero_ps();
    return _mm512_permutexvar_epi16(_mm512_loadu_si512((const void*)order),
                                    (__m512i)_mm512_cvtne2ps_pbh(vo, ve));
}

/* The weight-gradient sums in bfloat16 arithmetic (training with bfloat16
   products): R rows of C gate gradients g (row stride ldg) rounded into
   8-column strips of k-pair words for cyrnn_pgemm_bds:
   S[(c/8)*lds + kk*8 + c%8] = bf16(g[2kk][c]) | bf16(g[2kk+1][c]) << 16
   (0 past R or C; lds >= 8 * ((R+1)/2) words). Sixteen columns of two rows
   at a time (cyrnn_bf16_pair16). ``sum`` (NULL: none) gets each column's float32 sum added, the
   rows taken in order (the bias gradient, unrounded). */
CYRNN_TBF static void cyrnn_bf16_strips(const float* g, ptrdiff_t ldg, ptrdiff_t R,
                                        ptrdiff_t C, unsigned int* S, ptrdiff_t lds,
                                        float* __restrict sum) {
    ptrdiff_t kk, c, k, KK = (R + 1) / 2;
    for (kk = 0; kk < KK; kk++) {
        const float* e = g + 2 * kk * ldg;
        const float* o = 2 * kk + 1 < R ? e + ldg : NULL;
        unsigned int* dst = S + kk * 8;
        for (c = 0; c < C; c += 16) {
            ptrdiff_t r = C - c;
            __mmask16 m = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1);
            __m512i w = cyrnn_bf16_pair16(e + c, o != NULL ? o + c : NULL, m);
            _mm256_storeu_si256((__m256i*)(dst + (c / 8) * lds), _mm512_castsi512_si256(w));
            if (r > 8)
                _mm256_storeu_si256((__m256i*)(dst + (c / 8 + 1) * lds),
                                    _mm512_extracti64x4_epi64(w, 1));
        }
    }
    if (sum != NULL)
        for (k = 0; k < R; k++)
            for (c = 0; c < C; c++) sum[c] += g[k * ldg + c];
}

/* cyrnn_pack_bf (isa 2: panels of 32 columns) of the operand whose element (c, k)
   is W[c + k*sk] (columns contiguous: a block of activations, k running over its
   rows), sixteen columns of two rows at a time (cyrnn_bf16_pair16). */
CYRNN_TBF static void cyrnn_pack_bf_c1(const float* W, ptrdiff_t C, ptrdiff_t K, ptrdiff_t sk,
                                       unsigned int* P) {
    ptrdiff_t K2 = (K + 1) / 2, p, kk, h, c, r;
    for (p = 0; p * 32 < C; p++)
        for (kk = 0; kk < K2; kk++) {
            const float* e = W + 2 * kk * sk;
            const float* o = 2 * kk + 1 < K ? e + sk : NULL;
            unsigned int* dst = P + (p * K2 + kk) * 32;
            for (h = 0; h < 2; h++) {
                c = p * 32 + h * 16;
                r = C - c;
                __mmask16 m = r >= 16 ? (__mmask16)0xffff
                              : r > 0 ? (__mmask16)((1u << r) - 1) : (__mmask16)0;
                _mm512_storeu_si512((void*)(dst + h * 16),
                                    cyrnn_bf16_pair16(e + c, o != NULL ? o + c : NULL, m));
            }
        }
}

/* ---- bfloat16 arithmetic on AMX tiles (Intel AMX-BF16) ----
   Where the CPU has AMX-TILE and AMX-BF16 and Linux grants the process the tile
   state (arch_prctl ARCH_REQ_XCOMP_PERM; inherited by fork, so a forked child
   may use it too), the bfloat16-arithmetic products (cyrnn_pgemm_bd) run on the
   tile unit: TDPBF16PS multiplies a 16 x 32 tile of bfloat16 activations by a
   32 x 16 tile of weights into 16 x 16 float32 sums, 16 times the multiply-adds
   of a VDPBF16PS. The operands are the same words: the activations' rows of
   k-pairs (cyrnn_bf16_pairs, rows padded with zero words to a multiple of 16
   k-pairs) and the packed weights' panels, whose rows of 32 words are two B
   tiles side by side (stride 128 bytes). TDPBF16PS sums a tile's 16 k-pairs in
   its own order, so its results differ in the last bits from a VDPBF16PS chain:
   a process uses one or the other for every product of that kind and every
   number of rows (one row included), so a row's result still does not depend
   on the rows or the call it came with. CYRNN_AMX=0 in the environment (read
   once) keeps the VDPBF16PS kernels. */
#if defined(__x86_64__) && defined(__linux__) && !defined(CYRNN_NO_AMX)
#define CYRNN_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define CYRNN_AMX 0
#endif
#if CYRNN_AMX
#define CYRNN_TAMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw,avx512vl,fma")))

static int cyrnn_amx_ok(void) {
    static volatile int ok = -1;
    if (ok < 0) {
        int v = 0;
        const char* e = getenv("CYRNN_AMX");
#if defined(SYS_arch_prctl)
        if (!(e != NULL && e[0] == '0' && e[1] == 0) && cyrnn_bf16dot_ok()
            && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16"))
            /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
            v = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
        (void)e;
#endif
        ok = v;
    }
    return ok;
}

typedef struct {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} cyrnn_tilecfg_t;

/* out[:n, :C] = (beta ? out : 0) + A W^T on the tiles. A: n rows of KP words (KP
   a multiple of 16, zero words past (K+1)/2), readable up to the next multiple of
   16 rows (those rows' results are dropped); W: cyrnn_pack_bf's panels (isa 2:
   32 columns, KK = (K+1)/2 rows of words). Tiles 0-3 hold a 32 x 32 block of
   sums (two row tiles by the panel's two column halves), 4-5 the activations,
   6-7 the weights; a panel's last partial 16 k-pairs are read from a
   zero-padded copy. A block of fewer than 32 rows or columns goes through a
   32 x 32 scratch; with ``beta`` the sums start from ``out``. */
CYRNN_TAMX static void cyrnn_amx_bd(const unsigned int* A, ptrdiff_t KP, ptrdiff_t n,
                                    ptrdiff_t KK, const unsigned int* P, ptrdiff_t C,
                                    float* out, ptrdiff_t ldo, int beta) {
    cyrnn_tilecfg_t cfg;
    unsigned int tail[16 * 32] __attribute__((aligned(64)));
    float tmp[32 * 32] __attribute__((aligned(64)));
    const ptrdiff_t kfull = KK / 16 * 16, lda = KP * 4, ldb = ldo * 4;
    ptrdiff_t p, i0, k, r, c, t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    /* GCC's tile-load intrinsics do not tell the compiler they read memory: a barrier
       after each write of what they read (A, tail, tmp) keeps those writes before them */
    __asm__ volatile("" ::: "memory");
    for (p = 0; p * 32 < C; p++) {
        const unsigned int* pp = P + p * 32 * KK;
        const ptrdiff_t c0 = p * 32, nc = C - c0 < 32 ? C - c0 : 32;
        if (kfull < KK) {
            memset(tail, 0, sizeof tail);
            memcpy(tail, pp + kfull * 32, (size_t)(KK - kfull) * 32 * sizeof(unsigned int));
            __asm__ volatile("" ::: "memory");
        }
        for (i0 = 0; i0 < n; i0 += 32) {
            const ptrdiff_t m = n - i0 < 32 ? n - i0 : 32;
            const int two = m > 16, whole = m == 32 && nc == 32;
            const unsigned int* a = A + i0 * KP;
            float* o = out + i0 * ldo + c0;
            if (!beta) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            } else if (whole) {
                _tile_loadd(0, o, ldb);
                _tile_loadd(1, o + 16, ldb);
                _tile_loadd(2, o + 16 * ldo, ldb);
                _tile_loadd(3, o + 16 * ldo + 16, ldb);
            } else {
                memset(tmp, 0, sizeof tmp);
                for (r = 0; r < m; r++) memcpy(tmp + r * 32, o + r * ldo, (size_t)nc * sizeof(float));
                __asm__ volatile("" ::: "memory");
                _tile_loadd(0, tmp, 128);
                _tile_loadd(1, tmp + 16, 128);
                _tile_loadd(2, tmp + 512, 128);
                _tile_loadd(3, tmp + 528, 128);
            }
            for (k = 0; k < KK; k += 16) {
                const unsigned int* b = k < kfull ? pp + k * 32 : tail;
                if (i0 == 0) {
                    /* the weights' next 2 KiB (the next 16 k-pairs, or the next panel's
                       first), first touched here: tile loads alone keep too few
                       cache-line reads in flight to stream weights from L3 or memory */
                    const char* ahead = (const char*)(pp + k * 32) + 2048;
                    for (t = 0; t < 32; t++) _mm_prefetch(ahead + 64 * t, _MM_HINT_T0);
                }
                _tile_loadd(4, a + k, lda);
                _tile_loadd(6, b, 128);
                _tile_loadd(7, b + 16, 128);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (two) {
                    _tile_loadd(5, a + 16 * KP + k, lda);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            if (whole) {
                _tile_stored(0, o, ldb);
                _tile_stored(1, o + 16, ldb);
                _tile_stored(2, o + 16 * ldo, ldb);
                _tile_stored(3, o + 16 * ldo + 16, ldb);
            } else {
                _tile_stored(0, tmp, 128);
                _tile_stored(1, tmp + 16, 128);
                if (two) {
                    _tile_stored(2, tmp + 512, 128);
                    _tile_stored(3, tmp + 528, 128);
                }
                for (r = 0; r < m; r++) memcpy(o + r * ldo, tmp + r * 32, (size_t)nc * sizeof(float));
            }
        }
    }
    _tile_release();
}
#else
static int cyrnn_amx_ok(void) { return 0; }
#endif /* CYRNN_AMX */
#endif

#if CYRNN_BF16DOT
/* The weight-gradient sums on the tiles: R rows of C gate gradients g (row stride
   ldg) rounded into the tiles' activation rows, one per column,
   A[c*KP + kk] = bf16(g[2kk][c]) | bf16(g[2kk+1][c]) << 16 (0 past R or KP; KP a
   multiple of 16 of at least (R+1)/2; rows C to the next multiple of 16 zero),
   sixteen columns of two rows at a time (cyrnn_bf16_pair16). ``sum`` (NULL: none)
   gets each column's float32 sum added, the rows taken in order (as
   cyrnn_bf16_strips). */
CYRNN_TBF static void cyrnn_bf16_rows_t(const float* g, ptrdiff_t ldg, ptrdiff_t R,
                                        ptrdiff_t C, unsigned int* A, ptrdiff_t KP,
                                        float* __restrict sum) {
    const ptrdiff_t KK = (R + 1) / 2, CP = (C + 15) / 16 * 16;
    unsigned int wv[16] __attribute__((aligned(64)));
    ptrdiff_t kk, c, j, k;
    for (c = 0; c < C; c++) memset(A + c * KP + KK, 0, (size_t)(KP - KK) * sizeof(unsigned int));
    if (CP > C) memset(A + C * KP, 0, (size_t)((CP - C) * KP) * sizeof(unsigned int));
    for (kk = 0; kk < KK; kk++) {
        const float* e = g + 2 * kk * ldg;
        const float* o = 2 * kk + 1 < R ? e + ldg : NULL;
        for (c = 0; c < C; c += 16) {
            ptrdiff_t r = C - c;
            __mmask16 m = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1);
            _mm512_store_si512((void*)wv, cyrnn_bf16_pair16(e + c, o != NULL ? o + c : NULL, m));
            for (j = 0; j < 16 && j < r; j++) A[(c + j) * KP + kk] = wv[j];
        }
    }
    if (sum != NULL)
        for (k = 0; k < R; k++)
            for (c = 0; c < C; c++) sum[c] += g[k * ldg + c];
}
#else
static int cyrnn_amx_ok(void) { return 0; }
#endif

/* cyrnn_bf16_rows_t where the bfloat16 kernels exist (callers check cyrnn_amx_ok();
   elsewhere nothing is written). */
static void cyrnn_bf16_rows_t_any(const float* g, ptrdiff_t ldg, ptrdiff_t R, ptrdiff_t C,
                                  unsigned int* A, ptrdiff_t KP, float* sum) {
#if CYRNN_BF16DOT
    cyrnn_bf16_rows_t(g, ldg, R, C, A, KP, sum);
#else
    (void)g; (void)ldg; (void)R; (void)C; (void)A; (void)KP; (void)sum;
#endif
}
/* The weight-gradient product on the tiles (callers check cyrnn_amx_ok(); elsewhere
   nothing is computed): out[:n, :C] += A W^T, A as cyrnn_bf16_rows_t wrote it (n
   rows of KP words for K = R elements), W packed by cyrnn_pack_bf_cols for isa 2. */
static void cyrnn_pgemm_bdt(const unsigned int* A, ptrdiff_t KP, ptrdiff_t n, ptrdiff_t K,
                            const unsigned int* P, ptrdiff_t C, float* out, ptrdiff_t ldo) {
#if CYRNN_BF16DOT && CYRNN_AMX
    if (n > 0 && C > 0 && cyrnn_amx_ok())
        cyrnn_amx_bd(A, KP, n, (K + 1) / 2, P, C, out, ldo, 1);
#else
    (void)A; (void)KP; (void)n; (void)K; (void)P; (void)C; (void)out; (void)ldo;
#endif
}

/* out[:n, :C] += S^T-strips x W^T in bfloat16 arithmetic: n rows held as
   cyrnn_bf16_strips' strips (stride lds words), K elements each (K+1)/2 words;
   W packed by cyrnn_pack_bf for isa 2. Only where cyrnn_bf16dot_ok() (callers
   check; elsewhere nothing is computed). */
static void cyrnn_pgemm_bds(const unsigned int* S, ptrdiff_t lds, ptrdiff_t n, ptrdiff_t K,
                            const unsigned int* P, ptrdiff_t C, float* out, ptrdiff_t ldo) {
#if CYRNN_BF16DOT
    if (n > 0 && C > 0 && cyrnn_bf16dot_ok())
        cyrnn_pgemm_bds512((const float*)S, lds, n, K, P, C, out, ldo, 1);
#else
    (void)S; (void)lds; (void)n; (void)K; (void)P; (void)C; (void)out; (void)ldo;
#endif
}

/* cyrnn_pack_bf of a column-contiguous operand (element (c, k) at W[c + k*sk]):
   the vector cyrnn_pack_bf_c1 where the bfloat16 kernels run (isa 2 and
   cyrnn_bf16dot_ok()), else cyrnn_pack_bf. */
static void cyrnn_pack_bf_cols(int isa, const float* W, ptrdiff_t C, ptrdiff_t K,
                               ptrdiff_t sk, unsigned int* P) {
#if CYRNN_BF16DOT
    if (isa == 2 && cyrnn_bf16dot_ok()) {
        cyrnn_pack_bf_c1(W, C, K, sk, P);
        return;
    }
#endif
    cyrnn_pack_bf(isa, W, C, K, 1, sk, P);
}

/* cyrnn_bf16_strips where the bfloat16 kernels exist (callers check
   cyrnn_bf16dot_ok(); elsewhere nothing is written). */
static void cyrnn_bf16_strips_any(const float* g, ptrdiff_t ldg, ptrdiff_t R, ptrdiff_t C,
                                  unsigned int* S, ptrdiff_t lds, float* sum) {
#if CYRNN_BF16DOT
    cyrnn_bf16_strips(g, ldg, R, C, S, lds, sum);
#else
    (void)g; (void)ldg; (void)R; (void)C; (void)S; (void)lds; (void)sum;
#endif
}

/* out = (beta ? out : 0) + x W^T in bfloat16 arithmetic, W packed by
   cyrnn_pack_bf for isa 2: x's rows are rounded, in blocks of up to BD_ROWS rows,
   into a scratch of k-pair words (on the stack when a block fits 16 KiB, else on
   the heap; without heap, blocks of what the stack holds), and each block is
   multiplied while its words are in cache. Where the stack holds at least 8 rows
   (K <= 1024) the blocks are whole 8-row tiles of what it holds, which costs
   nothing (the tile kernel reads the weights once per 8 rows anyway) and keeps the
   per-step products of a training step off the heap. Rows never interact, so the
   blocking changes no result. Callers check cyrnn_bf16dot_ok() first; without it (or another
   isa), or in the one case nothing holds a row (more than 8192 features and no
   heap), this is the float32-arithmetic cyrnn_pgemm_bf. */
#define CYRNN_BD_ROWS 256
static void cyrnn_pgemm_bd(int isa, const float* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,
                           const unsigned int* P, ptrdiff_t C, float* out, ptrdiff_t ldo,
                           int beta) {
#if CYRNN_BF16DOT
    enum { SBUF = 4096 };
    unsigned int sbuf[SBUF] __attribute__((aligned(64)));
    unsigned int* w = sbuf;
    ptrdiff_t KK = (K + 1) / 2, rows = n < CYRNN_BD_ROWS ? n : CYRNN_BD_ROWS, i0, i, m;
    if (n <= 0 || C <= 0) return;
#if CYRNN_AMX
    if (isa == 2 && cyrnn_amx_ok()) {
        /* the tiles: blocks of whole 16-row tiles, at least 32 rows where n has them
           (the stack's scratch, else the heap's) */
        const ptrdiff_t KP = (KK + 15) / 16 * 16, want = (rows + 15) / 16 * 16;
        ptrdiff_t cap = want, h;
        if (want * KP > SBUF) {
            cap = SBUF / KP / 16 * 16;
            if (cap < 32) {
                w = (unsigned int*)malloc((size_t)(want * KP) * sizeof(unsigned int));
                if (w != NULL) cap = want;
                else w = sbuf;
            }
        }
        if (cap >= 16) {
            for (i0 = 0; i0 < n; i0 += cap) {
                m = n - i0 < cap ? n - i0 : cap;
                h = (m + 15) / 16 * 16;
                cyrnn_bf16_pairs(x + i0 * ldx, ldx, m, K, w, KP);
                if (h > m) memset(w + m * KP, 0, (size_t)((h - m) * KP) * sizeof(unsigned int));
                cyrnn_amx_bd(w, KP, m, KK, P, C, out + i0 * ldo, ldo, beta);
            }
            if (w != sbuf) free(w);
            return;
        }
        /* more than 512 features and no heap: VDPBF16PS below */
    }
#endif
    if (isa == 2 && cyrnn_bf16dot_ok()) {
        if (rows * KK > SBUF && SBUF / KK >= 8) {
            rows = SBUF / KK / 8 * 8;
        } else if (rows * KK > SBUF) {
            w = (unsigned int*)malloc((size_t)(rows * KK) * sizeof(unsigned int));
            if (w == NULL) {
                w = sbuf;
                rows = SBUF / KK >= 8 ? SBUF / KK / 8 * 8 : SBUF / KK;
            }
        }
        if (rows >= 1) {
            for (i0 = 0; i0 < n; i0 += rows) {
                m = n - i0 < rows ? n - i0 : rows;
                cyrnn_bf16_pairs(x + i0 * ldx, ldx, m, K, w, KK);
                if (m <= CYRNN_GEMV_ROWS)
                    for (i = 0; i < m; i++)
                        cyrnn_gemv_bd512((const float*)(w + i * KK), K, P, C,
                                         out + (i0 + i) * ldo, beta);
                else
                    cyrnn_pgemm_bd512((const float*)w, KK, m, K, P, C, out + i0 * ldo,
                                      ldo, beta);
            }
            if (w != sbuf) free(w);
            return;
        }
        /* a row of more than 2 * SBUF features and no heap: float32 arithmetic */
    }
#endif
    cyrnn_pgemm_bf(isa, x, ldx, n, K, P, C, out, ldo, beta);
}

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
   [0] packed forwards, [1] packed backwards, [2] op regions run on several threads,
   [3] packed-path forwards on the weights as stored (WF_RAW), [4] weight gradients
   from row strips, [5] of those, two operands in one pass, [6] team-mode forward
   ops, [7] of those, small-batch teams (src/gemm.pxi, _path_counts). */
static long cyrnn_path_count[8];
static inline void cyrnn_count_path(int k) { __atomic_fetch_add(&cyrnn_path_count[k], 1, __ATOMIC_RELAXED); }
static inline long cyrnn_path_read(int k) { return __atomic_load_n(&cyrnn_path_count[k], __ATOMIC_RELAXED); }

#endif
