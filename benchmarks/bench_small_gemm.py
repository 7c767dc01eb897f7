#!/usr/bin/env python
"""The unpacked path's per-step recurrent products at small batch: BLAS against the
own kernel, through the contract kernel ``forward`` (an LSTM, T = 50, float32).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_small_gemm.py

``small_gemm_rows=0`` sends every product to scipy's BLAS; ``8`` to the own kernel
(``cyrnn_proj_ld``); the default (-1) is the CPU's rule (``_small_gemm_rows()``:
BLAS on AVX-512 CPUs, where OpenBLAS has small-matrix kernels, the own kernel
elsewhere). Both are timed alternately in one process, 15 rounds of 10 calls;
prints the median microseconds per step (product and cell math) and the largest
difference of the outputs (the two sum in different orders).
"""

import time

import numpy as np

from cyrnn import _cython_kernels as K
from cyrnn.backends import Cell


def main():
    code, act, ract = Cell("lstm").codes
    print(f"instruction set: {K.pgemm_isa()}")
    print("| N | H | BLAS us/step | own us/step | max diff |")
    print("| --- | --- | --- | --- | --- |")
    for N, H in [(1, 64), (1, 128), (1, 512), (3, 128), (4, 128), (8, 128)]:
        T, GH, f = 50, 4 * H, np.float32
        rng = np.random.default_rng(0)
        xp = rng.normal(size=(T, N, GH)).astype(f)
        w = (rng.normal(size=(GH, H)) * 0.1).astype(f)
        b = np.zeros(GH, f)
        mask = np.ones((T, N), np.uint8)
        outs, ts = {}, {0: [], 8: []}
        for r in range(15):
            for small in (0, 8):
                h, c = np.zeros((2, N, H), f), np.zeros((2, N, H), f)
                gates, hs, gh = np.zeros((1, N, GH), f), np.zeros((T, N, H), f), np.zeros((N, GH), f)
                t0 = time.perf_counter()
                for _ in range(10):
                    K.forward(code, act, ract, False, xp, w, b, None, mask, h, c, gates, None,
                              hs, gh, small)
                ts[small].append((time.perf_counter() - t0) / 10 / T * 1e6)
                outs[small] = hs
        diff = float(np.abs(outs[0] - outs[8]).max())
        print(f"| {N} | {H} | {np.median(ts[0]):.2f} | {np.median(ts[8]):.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
