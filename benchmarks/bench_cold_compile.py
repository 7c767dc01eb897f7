#!/usr/bin/env python
"""CPU time the Numba backend spends compiling, with an empty cache.

Two measurements, each in the process that runs the script (run it once per build,
in a fresh process):

* default: the first serial LSTM forward and backward of the layer contract
  (float64, T=10, N=4, H=8), the compile a small-batch user pays once per dtype::

      for tree in ../old .; do
        PYTHONPATH=$tree NUMBA_CACHE_DIR=$(mktemp -d) OMP_NUM_THREADS=1 \\
          python benchmarks/bench_cold_compile.py $tree
      done

* ``--entry-points``: each of the backend's compiled entry points (the fused
  ``infer``, ``infer_state``, ``train_fwd``, ``train_bwd``, ``generate`` and the layer
  contract's loops) compiled in turn for ``--dtype``, the CPU seconds of each, in an
  empty ``NUMBA_CACHE_DIR`` the script makes (a later entry point reuses what an
  earlier one compiled, so the total is the figure to compare)::

      PYTHONPATH=. python benchmarks/bench_cold_compile.py --entry-points \\
          --json benchmarks/results/cold_compile_entry_points.json

Process CPU time (not wall clock), so a busy machine moves it less.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np  # before the clock starts, as the import figures always were


def _layer_contract():
    from cyrnn.backends import Cell, get_backend

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
    return {"first forward": t2 - t1, "first backward": t3 - t2}


def _entry_points(dtype):
    from cyrnn.backends import numba as nb

    rows = {}
    for name in nb._DISPATCHERS:
        t = time.process_time()
        nb._kernel(name, np.dtype(dtype))
        rows[name] = time.process_time() - t
    rows["total"] = sum(rows.values())
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("label", nargs="?", default="cyrnn", help="name of the build in the output")
    ap.add_argument("--entry-points", action="store_true",
                    help="time each compiled entry point in turn, in one new empty cache")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="the entry points' dtype (--entry-points; the default mode is "
                         "float64)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.entry_points:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="cyrnn-cold-")
    t0 = time.process_time()
    import cyrnn.backends.numba  # noqa: F401  (numba and the backend's modules)
    result = {"label": args.label, "import": time.process_time() - t0}
    if args.entry_points:
        result.update(dtype=args.dtype, entry_points=_entry_points(args.dtype))
        print(f"{args.label}: compiling the Numba entry points ({args.dtype}), CPU seconds:")
        for name, sec in result["entry_points"].items():
            print(f"  {name:12s} {sec:7.1f}")
    else:
        result.update(_layer_contract())
        print(f"{args.label}: import {result['import']:.1f} s, first forward "
              f"{result['first forward']:.1f} s, first backward "
              f"{result['first backward']:.1f} s (CPU)")
    if args.json:
        result.update(date=time.strftime("%Y-%m-%dT%H:%M:%S"), load_avg=os.getloadavg(),
                      python=platform.python_version(), command=" ".join(sys.argv))
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print("Wrote", args.json)


if __name__ == "__main__":
    main()
