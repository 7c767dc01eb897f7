/* The packed GEMM kernel (src/pgemm.h, float32, XT 0; AVX-512 or AVX2, as the CPU
 * has them) on one core, at the
 * shapes of the per-step recurrent product, and a k-blocked variant of it (partial
 * tiles kept in a scratch, the same k-ascending chains: checked bit for bit here).
 * The measurement behind the team mode (docs/architecture.md, "Team mode") and
 * behind not keeping k blocking:
 *
 *     gcc -O3 benchmarks/pgemm_rows.c -o /tmp/pgemm_rows
 *     /tmp/pgemm_rows 32 512 2048 20   # rows, K, columns, calls per sample
 *     /tmp/pgemm_rows 64 512 1024 20   # the large LSTM's product per thread, team mode
 *     /tmp/pgemm_rows 32 512 512 80    # W fits L2
 *
 * Prints GFLOP/s (best of 7 samples) of the kernel and of k blocks of 64, 128, 256,
 * and with AVX-512 of register tiles of 8-16 rows.
 * Needs AVX2 + FMA. On the Intel Xeon of 2026-12-01, 03:06-03:10 (the other core idle):
 * 32 x 512 x 2048: 148-170; 64 x 512 x 1024: 172-189; 32 x 512 x 512: 196; k
 * blocking within -7% .. +3% at 32 rows (+10% at 64 rows on all of W). At 04:40
 * (load average 0.0 just after): 121, 138 and 141 (k blocking -2% .. +2%): the
 * absolute rates move between runs, the order of the shapes has not. On an AMD EPYC
 * (Zen 3, AVX2 kernels: 6 x 16 tiles), 2026-12-01 06:40, load about 1: 64 x 512 x
 * 1024: 96.0 (k blocks 80-89); 32 x 512 x 2048: 73.1 (58-61); 16 x 128 x 512: 82.9
 * (57-74); 64 x 256 x 2048: 83.6 (65-75). Those figures are from before the kernel
 * prefetched its panel and took 12-row tiles (2026-12-03; "base" is the shipped kernel,
 * so both now, and so do the MR variants; the k-blocked ones do not prefetch). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../src/pgemm.h"

/* K-blocked variant of the XT0 kernels: same chains, partial tiles kept in tmp.
   One copy per instruction set: AVX-512 (MR 8, NR 32) and AVX2 (MR 6, NR 16); no prefetch. */
#define KBLK(NAME, VB, MR, TARGET)                                                     \
TARGET static void NAME(const float* x, ptrdiff_t ldx, ptrdiff_t n, ptrdiff_t K,        \
                        const float* P, ptrdiff_t C, float* out, ptrdiff_t ldo, int beta, \
                        ptrdiff_t KC, float* tmp) {                                    \
    typedef float vt __attribute__((vector_size(VB)));                                 \
    enum { V = VB / 4, NR = 2 * V };                                                   \
    ptrdiff_t p, i0, k, r, k0;                                                         \
    for (p = 0; p * NR < C; p++) {                                                     \
        const float* pp = P + p * NR * K;                                              \
        ptrdiff_t c0 = p * NR, nc = C - c0 < NR ? C - c0 : NR;                         \
        for (k0 = 0; k0 < K; k0 += KC) {                                               \
            ptrdiff_t k1 = k0 + KC < K ? k0 + KC : K;                                  \
            for (i0 = 0; i0 < n; i0 += MR) {                                           \
                const float* xr[MR];                                                   \
                vt a0[MR], a1[MR];                                                     \
                ptrdiff_t m = n - i0 < MR ? n - i0 : MR;                               \
                float* tt = tmp + i0 * NR;                                             \
                _Pragma("GCC unroll 16")                                               \
                for (r = 0; r < MR; r++) {                                             \
                    xr[r] = x + (i0 + (r < m ? r : m - 1)) * ldx;                      \
                    if (k0 == 0) { a0[r] = (vt){0}; a1[r] = (vt){0}; }                 \
                    else { memcpy(&a0[r], tt + r * NR, VB); memcpy(&a1[r], tt + r * NR + V, VB); } \
                }                                                                      \
                for (k = k0; k < k1; k++) {                                            \
                    vt w0 = *(const vt*)(pp + k * NR);                                 \
                    vt w1 = *(const vt*)(pp + k * NR + V);                             \
                    _Pragma("GCC unroll 16")                                           \
                    for (r = 0; r < MR; r++) {                                         \
                        float s = xr[r][k];                                            \
                        a0[r] += s * w0;                                               \
                        a1[r] += s * w1;                                               \
                    }                                                                  \
                }                                                                      \
                if (k1 < K) {                                                          \
                    _Pragma("GCC unroll 16")                                           \
                    for (r = 0; r < MR; r++) { memcpy(tt + r * NR, &a0[r], VB); memcpy(tt + r * NR + V, &a1[r], VB); } \
                } else {                                                               \
                    for (r = 0; r < m; r++) {                                          \
                        float* o = out + (i0 + r) * ldo + c0;                          \
                        float t[NR];                                                   \
                        memcpy(t, &a0[r], VB); memcpy(t + V, &a1[r], VB);              \
                        CYRNN_PUT(o, t, nc, beta);                                     \
                    }                                                                  \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}
KBLK(kblk512, 64, 8, CYRNN_T512)
KBLK(kblk256, 32, 6, CYRNN_T256)

/* Register tiles of the AVX-512 kernel of other heights (MR rows of 32 columns; the
   shipped one has had 12 since 2026-12-03, 8 before): the same k-ascending chains, so
   the same bits (checked below). Alone on one core, here, the heights run alike
   (2026-12-03, the Xeon, 8 rows then: within the noise, 8 best or equal); 12 rows
   gained only inside the time loops, with the panel prefetched (src/pgemm.h). */
CYRNN_PGEMM_KERNEL(mr8, float, 64, 8, CYRNN_T512, 0)
CYRNN_PGEMM_KERNEL(mr10, float, 64, 10, CYRNN_T512, 0)
CYRNN_PGEMM_KERNEL(mr12, float, 64, 12, CYRNN_T512, 0)
CYRNN_PGEMM_KERNEL(mr14, float, 64, 14, CYRNN_T512, 0)
CYRNN_PGEMM_KERNEL(mr16, float, 64, 16, CYRNN_T512, 0)
typedef void (*mr_kernel)(const float*, ptrdiff_t, ptrdiff_t, ptrdiff_t, const float*,
                          ptrdiff_t, float*, ptrdiff_t, int);

static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}

int main(int argc, char** argv) {
    ptrdiff_t n = atol(argv[1]), K = atol(argv[2]), C = atol(argv[3]);
    int reps = atoi(argv[4]);
    float* W = aligned_alloc(64, C * K * 4); float* P = aligned_alloc(64, (C + 31) / 32 * 32 * K * 4);
    float* x = aligned_alloc(64, n * K * 4); float* o1 = aligned_alloc(64, n * C * 4); float* o2 = aligned_alloc(64, n * C * 4);
    float* tmp = aligned_alloc(64, (n + 8) * 32 * 4);
    /* evict: a buffer larger than L2 touched between calls, like the step's other work */
    size_t EV = 4 << 20; float* ev = malloc(EV * 4);
    for (ptrdiff_t i = 0; i < C * K; i++) W[i] = (float)((i * 7919) % 1000) / 1000.f - 0.5f;
    for (ptrdiff_t i = 0; i < n * K; i++) x[i] = (float)((i * 104729) % 997) / 997.f - 0.5f;
    for (size_t i = 0; i < EV; i++) ev[i] = 1;
    int isa = cyrnn_pgemm_isa();
    if (isa < 1) { printf("needs AVX2 + FMA\n"); return 1; }
    printf("%s kernels\n", isa == 2 ? "AVX-512" : "AVX2");
    cyrnn_pack_f(isa, W, C, K, K, 1, P);
    cyrnn_pgemm_f(isa, x, K, n, K, P, C, o1, C, 0);
    ptrdiff_t kcs[] = {K, 64, 128, 256};
    for (int q = 1; q < 4; q++) {
        if (isa == 2) kblk512(x, K, n, K, P, C, o2, C, 0, kcs[q], tmp);
        else kblk256(x, K, n, K, P, C, o2, C, 0, kcs[q], tmp);
        if (memcmp(o1, o2, n * C * 4)) { printf("MISMATCH KC %ld\n", kcs[q]); } }
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int rr = 0; rr < 7; rr++)
      for (int q = 0; q < 4; q++) {
        double t = 0;
        for (int it = 0; it < reps; it++) {
            double t0 = now();
            if (q == 0) cyrnn_pgemm_f(isa, x, K, n, K, P, C, o1, C, 0);
            else if (isa == 2) kblk512(x, K, n, K, P, C, o2, C, 0, kcs[q], tmp);
            else kblk256(x, K, n, K, P, C, o2, C, 0, kcs[q], tmp);
            t += now() - t0;
        }
        if (t < best[q]) best[q] = t;
      }
    double fl = 2.0 * n * K * C * reps;
    printf("n %ld K %ld C %ld: base %.1f GF/s | KC64 %.1f | KC128 %.1f | KC256 %.1f\n", n, K, C,
           fl / best[0] * 1e-9, fl / best[1] * 1e-9, fl / best[2] * 1e-9, fl / best[3] * 1e-9);
    if (isa == 2) {  /* other tile heights: best of 7 samples each, after the loop above */
        enum { NMR = 5 };
        mr_kernel mk[NMR] = {mr8, mr10, mr12, mr14, mr16};
        const char* mn[NMR] = {"MR8", "MR10", "MR12", "MR14", "MR16"};
        double mb[NMR] = {1e9, 1e9, 1e9, 1e9, 1e9};
        for (int q = 0; q < NMR; q++) {
            mk[q](x, K, n, K, P, C, o2, C, 0);
            if (memcmp(o1, o2, n * C * 4)) printf("MISMATCH %s\n", mn[q]);
        }
        for (int rr = 0; rr < 7; rr++)
            for (int q = 0; q < NMR; q++) {
                double t0 = now();
                for (int it = 0; it < reps; it++) mk[q](x, K, n, K, P, C, o2, C, 0);
                double t = now() - t0;
                if (t < mb[q]) mb[q] = t;
            }
        printf("tile heights (base: 12):");
        for (int q = 0; q < NMR; q++) printf(" %s %.1f", mn[q], fl / mb[q] * 1e-9);
        printf(" GF/s\n");
    }
    return 0;
}
