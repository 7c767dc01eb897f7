/* Throughput of AVX-512 BF16's VDPBF16PS against float32 FMA on one core: whether
 * bfloat16 arithmetic pays on this CPU (src/pgemm.h: bfloat16 weights are widened to
 * float32 by default; bfloat16 arithmetic is opt-in).
 *
 *     gcc -O3 benchmarks/bf16_dot_rate.c -o /tmp/bf16_dot_rate && /tmp/bf16_dot_rate
 *
 * Each loop runs 12 independent accumulator chains (enough to hide either
 * instruction's latency); a VDPBF16PS does 32 multiply-adds (16 lanes x 2 pairs),
 * an FMA 16. Needs a CPU with AVX-512 BF16 (the Intel Xeon of 2026-11-30 measured
 * 54 vs 107 GMAC/s per core; the AMD Zen 4 of 2026-12-01 110-113 vs 55-56 with
 * the command above, 115-116 vs 58 built with -march=native: README, "Backends and
 * threads"). On the second the scorer's bfloat16 arithmetic pays
 * (cyrnn.scoring.load(path, compute="bfloat16")). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))
static float dp(long n) {
    __m512 a[12];
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f003f00);
    float s = 0;
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        _Pragma("GCC unroll 12")
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        __asm__ volatile("" ::"v"(x));
    }
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

__attribute__((target("avx512f,fma")))
static float fm(long n) {
    __m512 a[12];
    __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.5f);
    float s = 0;
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        _Pragma("GCC unroll 12")
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(x, y, a[i]);
        __asm__ volatile("" ::"v"(x));
    }
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

int main(void) {
    long n = 50000000;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        printf("this CPU has no AVX-512 BF16\n");
        return 0;
    }
    for (int rep = 0; rep < 3; rep++) {
        double t = now();
        float s1 = dp(n);
        double t1 = now() - t;
        t = now();
        float s2 = fm(n);
        double t2 = now() - t;
        printf("VDPBF16PS %.1f GMAC/s, float32 FMA %.1f GMAC/s (checks %g %g)\n",
               n * 12.0 * 32 / t1 / 1e9, n * 12.0 * 16 / t2 / 1e9, s1, s2);
    }
    return 0;
}
