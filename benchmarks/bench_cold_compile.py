#!/usr/bin/env python
"""CPU time of the Numba backend's first LSTM forward and backward with an empty cache.

Run each build in a fresh process with its own empty cache folder, e.g.::

    for tree in ../old .; do
      PYTHONPATH=$tree NUMBA_CACHE_DIR=$(mktemp -d) OMP_NUM_THREADS=1 \
        python benchmarks/bench_cold_compile.py $tree
    done

Process CPU time (not wall clock), so a busy machine moves it less. float64, serial
kernels (T=10, N=4, H=8): the compile a small-batch user pays once per dtype.
"""

import sys
import time

import numpy as np

t0 = time.process_time()
from cyrnn.backends import Cell, get_backend  # noqa: E402

nb = get_backend("numba")
cell, rng = Cell("lstm"), np.random.default_rng(0)
T, N, H = 10, 4, 8
xp = rng.normal(size=(T, N, 4 * H))
w, b = rng.normal(size=(4 * H, H)), rng.normal(size=4 * H)
h0, c0 = rng.normal(size=(N, H)), rng.normal(size=(N, H))
t1 = time.process_time()
out = nb.forward(cell, xp, w, b, h0, c0, None, True)
t2 = time.process_time()
nb.backward(cell, out[3], w, None, out[0], None, None, None)
t3 = time.process_time()
label = sys.argv[1] if len(sys.argv) > 1 else "cyrnn"
print(f"{label}: import {t1 - t0:.1f} s, first forward {t2 - t1:.1f} s, "
      f"first backward {t3 - t2:.1f} s (CPU)")
