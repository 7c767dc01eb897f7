#!/usr/bin/env python
"""The unpacked path's per-step recurrent products at small batch: BLAS against the
own kernels, through the contract kernels ``forward`` and ``backward`` (an LSTM,
T = 50, float32, one thread).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_small_gemm.py

``small_gemm_rows=0`` sends every product to scipy's BLAS; ``8`` to the own kernels
(forward: ``cyrnn_dotrows`` in float32 with AVX2 or AVX-512, except one row on a
weight of 1 MB or more, else ``cyrnn_proj_ld``; backward: ``cyrnn_gemm_nn``); the
default (-1) is the CPU's rule (``_own_small_gemv`` and ``_own_small_gemm`` in
src/gemm.pxi). The arrays are NumPy's (16-byte aligned, where a model's parameter
buffer starts on a cache line), so the own forward kernel runs slower here than in a
model (benchmarks/dotrows_rate.c). Both are timed alternately in one
process, ``--rounds`` rounds of a few calls each; prints the median microseconds
per step (product and cell math, forward; backward: the whole backward call's
time per step) and the largest difference of the forward outputs (the two sum in
different orders). ``--grid`` times every N in 1, 2, 3, 5, 7 and H in 64, 128, 256,
512 (default: a few points).
"""

import argparse
import time

import numpy as np

from cyrnn import _cython_kernels as K
from cyrnn.backends import Cell

POINTS = [(1, 64), (1, 128), (1, 480), (1, 960), (3, 128), (4, 128), (8, 128)]
GRID = [(n, h) for h in (64, 128, 256, 512) for n in (1, 2, 3, 5, 7)]


def run(N, H, rounds, T=50):
    code, act, ract = Cell("lstm").codes
    GH, f = 4 * H, np.float32
    rng = np.random.default_rng(0)
    xp = rng.normal(size=(T, N, GH)).astype(f)
    w = (rng.normal(size=(GH, H)) * 0.1).astype(f)
    b = np.zeros(GH, f)
    mask = np.ones((T, N), np.uint8)
    calls = max(1, int(2e6 // (GH * H * T)))
    outs, fw, bw = {}, {0: [], 8: []}, {0: [], 8: []}
    for r in range(rounds):
        for small in (0, 8):
            h, c = np.zeros((T + 1, N, H), f), np.zeros((T + 1, N, H), f)
            gates, hs, gh = np.zeros((T, N, GH), f), np.zeros((T, N, H), f), np.zeros((N, GH), f)
            t0 = time.perf_counter()
            for _ in range(calls):
                K.forward(code, act, ract, True, xp, w, b, None, mask, h, c, gates, None,
                          hs, gh, small)
            fw[small].append((time.perf_counter() - t0) / calls / T * 1e6)
            outs[small] = hs.copy()
            dh_seq = rng.normal(size=(T, N, H)).astype(f)
            dxp, dw, db = np.zeros((T, N, GH), f), np.zeros((GH, H), f), np.zeros(GH, f)
            dh0, dc0 = np.zeros((N, H), f), np.zeros((N, H), f)
            work, dg = np.zeros((5, N, H), f), np.zeros((N, GH), f)
            budget, valid = np.zeros(N, np.int64), np.zeros(N, np.uint8)
            t0 = time.perf_counter()
            for _ in range(calls):
                K.backward(code, act, ract, -1, h, c, gates, None, w, None, mask, dh_seq, None,
                           None, dxp, None, dh0, dc0, work, dg, budget, valid, dw, db, None, small)
            bw[small].append((time.perf_counter() - t0) / calls / T * 1e6)
    diff = float(np.abs(outs[0] - outs[8]).max())
    return np.median(fw[0]), np.median(fw[8]), np.median(bw[0]), np.median(bw[8]), diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    print(f"instruction set: {K.pgemm_isa()}")
    print("| N | H | forward BLAS / own us/step | own/BLAS | backward BLAS / own us/step | "
          "own/BLAS | max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for N, H in GRID if args.grid else POINTS:
        fb, fo, bb, bo, diff = run(N, H, args.rounds)
        print(f"| {N} | {H} | {fb:.2f} / {fo:.2f} | {fo / fb:.2f} | {bb:.2f} / {bo:.2f} | "
              f"{bo / bb:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
