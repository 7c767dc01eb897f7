/* How fast one core, and two, read a block of memory the size of a model's weights:
 * the bound on a batch-1 streaming step, which reads every weight once per step
 * (docs/architecture.md, "Small-batch team"). Each thread sums its contiguous part
 * of the block with 256-bit loads (four accumulators; AVX2 or AVX-512 not needed).
 *
 *     gcc -O3 -mavx -fopenmp benchmarks/read_bandwidth.c -o /tmp/read_bandwidth
 *     /tmp/read_bandwidth 18.7 40     # MB (lstm_med's weights), passes
 *     /tmp/read_bandwidth 74 20       # lstm_large's
 *
 * Prints the best pass's microseconds and GB/s on 1 and on 2 threads (OpenMP, after
 * a warm-up region that starts the team). On the AMD EPYC (Zen 4) of 2026-12-01
 * 13:20, quiet machine: 18.7 MB 251-290 us on one thread, 101 us on two; 74 MB
 * 2.4-3.4 ms on one, 1.9 ms on two (memory-bound from there on: the second core
 * adds less). A plain loop without prefetching; the absolute figures move between
 * runs by 10-30%.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static double pass(const float* a, size_t n, int threads, float* sink) {
    double t0 = omp_get_wtime();
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t lo = n / nt * t / 32 * 32, hi = t == nt - 1 ? n : n / nt * (t + 1) / 32 * 32;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (size_t i = lo; i + 32 <= hi; i += 32) {
            s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i));
            s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_load_ps(a + i + 16));
            s3 = _mm256_add_ps(s3, _mm256_load_ps(a + i + 24));
        }
        float lane[8];
        _mm256_storeu_ps(lane, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (int j = 0; j < 8; j++) total += lane[j];
    }
    *sink += total;
    return omp_get_wtime() - t0;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MB passes\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)(atof(argv[1]) * 1e6 / sizeof(float)) / 32 * 32;
    int passes = atoi(argv[2]);
    float* a = aligned_alloc(64, n * sizeof(float));
    float sink = 0;
    if (a == NULL || n == 0 || passes < 1) return 2;
    for (size_t i = 0; i < n; i++) a[i] = 1e-3f * (float)(i % 7);
    for (int threads = 1; threads <= 2; threads++) {
        double best = 1e30;
        pass(a, n, threads, &sink);  /* warm-up: starts the team, brings the block in */
        for (int p = 0; p < passes; p++) {
            double t = pass(a, n, threads, &sink);
            if (t < best) best = t;
        }
        printf("%.1f MB, %d thread%s: best %.1f us, %.1f GB/s\n", n * sizeof(float) * 1e-6,
               threads, threads > 1 ? "s" : "", best * 1e6, n * sizeof(float) / best * 1e-9);
    }
    printf("(checksum %g)\n", sink);
    free(a);
    return 0;
}
