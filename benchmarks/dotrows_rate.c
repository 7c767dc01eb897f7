/* The few-row forward product kernel cyrnn_dotrows (src/pgemm.h, float32, AVX-512)
 * alone on one core, at the per-step recurrent product of an LSTM (W_hh 4H x H, one
 * row of h), with the weight 64-byte aligned and 16 and 32 bytes off a cache line
 * (what NumPy's 16-byte aligned allocations gave before ParameterBuffer aligned its
 * storage), its AVX2 version (8 lanes; aligned), and an 8-lane, 8-rows-at-a-time
 * kernel without fused multiply-adds summed as cyrnn_proj_ld sums (src/gemm.pxi; what
 * the unpacked path took without AVX-512 before, and takes on the x86-64 baseline):
 *
 *     gcc -O3 benchmarks/dotrows_rate.c -o /tmp/dotrows_rate
 *     /tmp/dotrows_rate 64      # H; score-b1's LSTM
 *     /tmp/dotrows_rate 128 3   # H, rows of h
 *
 * Prints microseconds per product (best of 9 samples) and GMAC/s. Needs AVX-512F.
 * On the Intel Xeon of 2026-12-03 (11:57-11:58, three runs at H = 64, one at 128, the
 * other core idle, a noisy host): H = 64: 0.69-0.94 us aligned, 1.07-1.38 us 16 or 32
 * bytes off a line, the 8-lane kernel 1.38-1.89 us; H = 128: 3.56 us aligned, 4.2-5.3
 * off, 5.69 us for the 8-lane kernel. The AVX2 version at 12:02 (two runs at H = 64, one
 * at 128): 0.81 us against 1.33-1.43 us for the 8-lane kernel; 3.09 against 4.32 us. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../src/pgemm.h"

typedef float v8f __attribute__((vector_size(32)));

/* 8 rows at a time, k in 8 lanes, multiply then add (cyrnn_proj_ld's order) */
__attribute__((optimize("fp-contract=off"), target("avx2")))
static void lanes8(const float* x, const float* w, float* y, ptrdiff_t R, ptrdiff_t K) {
    ptrdiff_t r, j, k, q;
    for (r = 0; r + 8 <= R; r += 8) {
        v8f a[8], xv, wv;
        for (j = 0; j < 8; j++) a[j] = (v8f){0};
        for (k = 0; k + 8 <= K; k += 8) {
            memcpy(&xv, x + k, sizeof xv);
            for (j = 0; j < 8; j++) {
                memcpy(&wv, w + (r + j) * K + k, sizeof wv);
                a[j] += xv * wv;
            }
        }
        for (j = 0; j < 8; j++) {
            float s = 0;
            for (q = 0; q < 8; q++) s += a[j][q];
            y[r + j] = s;
        }
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    int H = argc > 1 ? atoi(argv[1]) : 64, n = argc > 2 ? atoi(argv[2]) : 1, off, rep, i;
    ptrdiff_t R = 4 * (ptrdiff_t)H, K = H, r, k;
    float* block = aligned_alloc(64, (size_t)(R * K * 4 + 64));
    float* x = aligned_alloc(64, (size_t)(n * K * 4 + 64));
    float* y = malloc((size_t)(n * R * 4));
    if (H < 16 || H % 8 || n < 1 || block == NULL || x == NULL || y == NULL) {
        fprintf(stderr, "H: a multiple of 8 from 16; rows >= 1\n");
        return 1;
    }
    if (cyrnn_pgemm_isa() != 2) {
        fprintf(stderr, "needs AVX-512F\n");
        return 1;
    }
    for (i = 0; i < n * K; i++) x[i] = rand() / (float)RAND_MAX;
    for (off = 0; off <= 8; off += 4) {  /* floats off a cache line: 0, 16, 32 bytes */
        float* w = block + off;
        double best = 1e9, t, err = 0;
        int reps = (int)(2e8 / ((double)R * K * n)) + 1;
        for (i = 0; i < R * K; i++) w[i] = rand() / (float)RAND_MAX - 0.5f;
        for (rep = 0; rep < 9; rep++) {
            t = now();
            for (i = 0; i < reps; i++) {
                cyrnn_dotrows_f(2, x, n, K, w, R, y, R);
                x[0] += y[0] * 1e-30f;  /* a dependence between calls */
            }
            t = (now() - t) / reps;
            if (t < best) best = t;
        }
        for (r = 0; r < R; r++) {
            double s = 0;
            for (k = 0; k < K; k++) s += (double)x[k] * w[r * K + k];
            if (fabs(y[r] - s) > err) err = fabs(y[r] - s);
        }
        printf("cyrnn_dotrows H=%d rows=%d, weight %2d bytes off a line: %.3f us, %.1f GMAC/s "
               "(max error %.1e)\n", H, n, off * 4, best * 1e6, R * K * n / best * 1e-9, err);
    }
    {  /* the AVX2 kernel (isa 1), aligned */
        double best = 1e9, t;
        int reps = (int)(2e8 / ((double)R * K * n)) + 1;
        for (rep = 0; rep < 9; rep++) {
            t = now();
            for (i = 0; i < reps; i++) {
                cyrnn_dotrows_f(1, x, n, K, block, R, y, R);
                x[0] += y[0] * 1e-30f;
            }
            t = (now() - t) / reps;
            if (t < best) best = t;
        }
        printf("cyrnn_dotrows, AVX2 (8 lanes), H=%d rows=%d, aligned: %.3f us, %.1f GMAC/s\n",
               H, n, best * 1e6, R * K * n / best * 1e-9);
    }
    {
        double best = 1e9, t;
        int reps = (int)(2e8 / ((double)R * K)) + 1;
        for (rep = 0; rep < 9; rep++) {
            t = now();
            for (i = 0; i < reps; i++) {
                lanes8(x, block, y, R, K);
                x[0] += y[0] * 1e-30f;
            }
            t = (now() - t) / reps;
            if (t < best) best = t;
        }
        printf("8-lane kernel H=%d rows=1, aligned: %.3f us, %.1f GMAC/s\n", H, best * 1e6,
               R * K / best * 1e-9);
    }
    return 0;
}
