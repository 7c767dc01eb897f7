/* A reference for bench_concurrent.py --reference: a plain C function that reads
 * `n` floats (a multiple of 64) of a 64 KB weight block (the size of score-b1's
 * W_hh, L2-resident like it), round and round, with multiply-adds, called through
 * ctypes, which releases the GIL for the call and does little Python work around
 * it. Two Python threads calling it show what CPython's threads give on the machine
 * for a call of that kind, whatever library is behind the call. (gcc prefers 256-bit
 * vectors on AVX-512 CPUs unless told otherwise; cyrnn's kernels there use 512.)
 *
 *     gcc -O3 -march=native -mprefer-vector-width=512 -shared -fPIC \
 *         benchmarks/gil_reference.c -o /tmp/libgil_reference.so
 *     python benchmarks/bench_concurrent.py --reference /tmp/libgil_reference.so
 */
#define GIL_REF_N 16384 /* floats: 64 KB */

float gil_reference(const float* w, const float* x, long n) {
    /* four independent sets of 16 sums, so the multiply-adds are not one chain: with
       vectors (gcc -O3 -march=native) it streams the block from L2 at tens of GB/s,
       as the scoring call's recurrent products do */
    float a[4][16] = {{0}};
    for (long i = 0; i < n; i += 64) {
        const float* wb = w + i % GIL_REF_N;
        const float* xb = x + (i & 255);
        for (int q = 0; q < 4; q++)
            for (int j = 0; j < 16; j++) a[q][j] += wb[16 * q + j] * xb[16 * q + j];
    }
    float s = 0;
    for (int q = 0; q < 4; q++)
        for (int j = 0; j < 16; j++) s += a[q][j];
    return s;
}
