/* A model of the large LSTM inference's team mode in C (bench_kernels.py's "large": 64
 * rows, 100 steps, 256 inputs, 512 hidden units), to see the packed product's speed in
 * place against its speed alone. Two threads; per step each thread multiplies all rows'
 * h by its half of W_hh's gate columns (src/pgemm.h, the shipped kernel), waits, runs
 * stand-in cell math on its 32 rows (reading the projection and product rows, writing
 * h and c), waits; every 8 steps it first projects its rows' next 8 inputs (all gate
 * columns), as src/loops.pxi's team mode does. Not the extension's cell math (a cheap
 * rational stand-in for sigmoid and tanh) nor its barrier (a spinning one here).
 *
 *     gcc -O3 -march=native -pthread benchmarks/team_step_model.c -o /tmp/team_step_model -lm
 *     /tmp/team_step_model 15      # calls
 *
 * Prints the median call time, the product's and projection's GFLOP/s per thread in
 * place (thread 0, median over calls), and the same product's GFLOP/s alone on one
 * thread at the same shape (64 rows, K 512, 1024 columns), in the same run. On the Xeon
 * of 2026-12-03, 18:25 (a noisy host): median call 127.9 ms, product 116 in place against
 * 127 alone, projection 114. (A throwaway version of this model, with the kernel from
 * before its panel prefetch and 12-row tiles, gave about 70 in place at 17:00, when the
 * host was slower: absolute rates move between minutes here; compare within a run.)
 * Needs AVX2 + FMA. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../src/pgemm.h"

enum { N = 64, T = 100, D = 256, H = 512, GH = 4 * H, SB = 8, HALF = GH / 2, ROWS = N / 2 };
static float *Pih, *Phh, *X, *xb[2], *gh, *hbuf[2], *cbuf, *bias;
static atomic_int bar_count, bar_gen;
static double t_proj[2], t_prod[2];
static int isa;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void barrier(void) {
    int g = atomic_load(&bar_gen);
    if (atomic_fetch_add(&bar_count, 1) == 1) {
        atomic_store(&bar_count, 0);
        atomic_fetch_add(&bar_gen, 1);
    } else {
        while (atomic_load(&bar_gen) == g) __builtin_ia32_pause();
    }
}

static void* run(void* arg) {
    int tid = (int)(long)arg;
    ptrdiff_t r0 = tid * ROWS, c0 = tid * HALF;
    t_proj[tid] = t_prod[tid] = 0;
    for (int t = 0; t < T; t++) {
        double a = now();
        if (t % SB == 0)
            for (int s = 0; s < SB && t + s < T; s++)
                cyrnn_pgemm_f(isa, X + ((t + s) * N + r0) * D, D, ROWS, D, Pih, GH,
                              xb[tid] + s * ROWS * GH, GH, 0);
        double b = now();
        const float* hp = hbuf[t & 1];
        float* hn = hbuf[(t + 1) & 1];
        cyrnn_pgemm_f(isa, hp, H, N, H, Phh + c0 * H, HALF, gh + c0, GH, 0);
        double c = now();
        t_proj[tid] += b - a;
        t_prod[tid] += c - b;
        barrier();
        for (ptrdiff_t i = r0; i < r0 + ROWS; i++) {
            const float* x = xb[tid] + ((t % SB) * ROWS + (i - r0)) * GH;
            float* g = gh + i * GH;
            for (int j = 0; j < GH; j++) {
                float v = x[j] + g[j] + bias[j];
                g[j] = 0.5f + 0.5f * v / (1.f + fabsf(v));
            }
            for (int j = 0; j < H; j++) {
                float cc = g[H + j] * cbuf[i * H + j] + g[j] * g[2 * H + j];
                cbuf[i * H + j] = cc;
                hn[i * H + j] = g[3 * H + j] * cc / (1.f + fabsf(cc));
            }
        }
        barrier();
    }
    return NULL;
}

static int cmp(const void* x, const void* y) {
    double p = *(const double*)x, q = *(const double*)y;
    return p < q ? -1 : p > q;
}

int main(int argc, char** argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 15;
    if (calls < 1 || calls > 200) calls = 15;
    isa = cyrnn_pgemm_isa();
    if (isa < 1) { printf("needs AVX2 + FMA\n"); return 1; }
    float* Wih = malloc(sizeof(float) * GH * D);
    float* Whh = malloc(sizeof(float) * GH * H);
    Pih = aligned_alloc(64, sizeof(float) * (GH * D + 64));
    Phh = aligned_alloc(64, sizeof(float) * (GH * H + 64));
    X = aligned_alloc(64, sizeof(float) * T * N * D);
    for (int q = 0; q < 2; q++) {
        xb[q] = aligned_alloc(64, sizeof(float) * SB * ROWS * GH);
        hbuf[q] = calloc(N * H, sizeof(float));
    }
    gh = aligned_alloc(64, sizeof(float) * N * GH);
    cbuf = calloc(N * H, sizeof(float));
    bias = calloc(GH, sizeof(float));
    for (size_t i = 0; i < (size_t)GH * D; i++) Wih[i] = 0.05f * sinf((float)i);
    for (size_t i = 0; i < (size_t)GH * H; i++) Whh[i] = 0.05f * cosf((float)i);
    for (size_t i = 0; i < (size_t)T * N * D; i++) X[i] = sinf(0.37f * (float)i);
    cyrnn_pack_f(isa, Wih, GH, D, D, 1, Pih);
    cyrnn_pack_f(isa, Whh, GH, H, H, 1, Phh);
    double tc[200], rp[200], rj[200], ra[200];
    const double prod_flop = 2.0 * N * H * HALF, proj_flop = 2.0 * ROWS * D * GH;
    for (int c = 0; c < calls; c++) {
        pthread_t th;
        double t0 = now();
        pthread_create(&th, NULL, run, (void*)1L);
        run((void*)0L);
        pthread_join(th, NULL);
        tc[c] = now() - t0;
        rp[c] = prod_flop * T / t_prod[0] * 1e-9;
        rj[c] = proj_flop * T / t_proj[0] * 1e-9;
        /* the same product alone on this thread, T times, right after */
        double a = now();
        for (int t = 0; t < T; t++)
            cyrnn_pgemm_f(isa, hbuf[t & 1], H, N, H, Phh, HALF, gh, GH, 0);
        ra[c] = prod_flop * T / (now() - a) * 1e-9;
    }
    qsort(tc, calls, sizeof(double), cmp);
    qsort(rp, calls, sizeof(double), cmp);
    qsort(rj, calls, sizeof(double), cmp);
    qsort(ra, calls, sizeof(double), cmp);
    printf("%s kernels, %d calls: median call %.1f ms; GFLOP/s per thread (median): product "
           "in place %.0f, projection in place %.0f, product alone %.0f\n",
           isa == 2 ? "AVX-512" : "AVX2", calls, tc[calls / 2] * 1e3, rp[calls / 2],
           rj[calls / 2], ra[calls / 2]);
    return 0;
}
