#!/usr/bin/env python
"""The packed backward's weight-gradient kernel (``_cython_kernels.wgrad``: ``dg^T x``,
``dg^T x2`` from one pass, and the column sums) of two builds, alternating in one
process, so that both see the same machine load:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/ab_wgrad.py \\
        --before ../old --after . --rows 3200 --threads 2

Each tree must have its extension built in place (``python setup.py build_ext
--inplace``). Defaults: the medium LSTM's shapes (64 rows x 50 steps, 4 x 128 gate
columns, h of 128 and x of 32 features). Prints the median milliseconds per call of
``--rounds`` rounds (each: 3 warm-up calls, then ``--calls`` timed calls per build,
the order alternating) and whether the two builds give the same bits.
"""

import argparse
import importlib.util
import json
import os
import time

import numpy as np

SO = "_cython_kernels"


def _load(tree):
    folder = os.path.join(os.path.abspath(tree), "cyrnn")
    names = [n for n in os.listdir(folder) if n.startswith(SO + ".") and n.endswith(".so")]
    if not names:
        raise SystemExit(f"no built extension in {folder}: run setup.py build_ext --inplace")
    spec = importlib.util.spec_from_file_location("cyrnn." + SO, os.path.join(folder, names[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rows", type=int, default=3200)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--k2", type=int, default=32, help="0: no second operand")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    builds = {"before": _load(args.before), "after": _load(args.after)}
    for mod in builds.values():
        mod.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    dg = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    x = rng.standard_normal((args.rows, args.k)).astype(np.float32)
    x2 = rng.standard_normal((args.rows, args.k2)).astype(np.float32) if args.k2 else None
    load0 = os.getloadavg()[0]
    times = {name: [] for name in builds}
    order = list(builds.items())
    for r in range(args.rounds):
        for name, mod in (order if r % 2 == 0 else order[::-1]):
            for _ in range(3):
                mod.wgrad(dg, x, -1, x2)
            t0 = time.perf_counter()
            for _ in range(args.calls):
                mod.wgrad(dg, x, -1, x2)
            times[name].append((time.perf_counter() - t0) / args.calls)
    res = {name: mod.wgrad(dg, x, -1, x2) for name, mod in builds.items()}
    same = all(np.array_equal(a, b) for a, b in zip(res["before"], res["after"]))
    out = {"rows": args.rows, "cols": args.cols, "k": args.k, "k2": args.k2,
           "threads": args.threads, "load": [load0, os.getloadavg()[0]],
           "median_ms": {n: float(np.median(t) * 1e3) for n, t in times.items()},
           "same_bits": same}
    print(f"{args.rows} x {args.cols} x ({args.k} + {args.k2}), {args.threads} threads, "
          f"load {out['load'][0]:.2f} -> {out['load'][1]:.2f}: before "
          f"{out['median_ms']['before']:.3f} ms, after {out['median_ms']['after']:.3f} ms; "
          f"same bits: {same}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
