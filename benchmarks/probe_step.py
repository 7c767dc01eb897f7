#!/usr/bin/env python
"""One batch-1 streaming step of a stacked LSTM, timed in a tight loop: the A/B probe
behind the small-GEMM rule's stacked-step figures (src/gemm.pxi) and the packed
one-row kernel's prefetch trial. Run it on two builds in alternating fresh processes:

    for i in 1 2 3; do for d in /path/to/before /path/to/after; do
      env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=$d python benchmarks/probe_step.py 3 480
    done; done

Arguments: layers, hidden size, optionally ``--weights packed|bfloat16`` (a
``cyrnn.scoring`` scorer of the same weights; default: ``layer.step`` on a
``from_torch`` layer) or ``--compute bfloat16`` (a scorer in bfloat16 arithmetic). 32 input features, one kernel thread, a carried state, 7
samples of ``--calls`` steps; prints the median microseconds per step. Needs torch
(the layer is built from ``torch.nn.LSTM`` as in bench_stream.py).
"""

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("layers", type=int)
    ap.add_argument("hidden", type=int)
    ap.add_argument("--weights", choices=["packed", "bfloat16"], default=None)
    ap.add_argument("--compute", choices=["bfloat16"], default=None)
    ap.add_argument("--calls", type=int, default=None,
                    help="steps per sample (default: about 0.3 s worth)")
    args = ap.parse_args(argv)

    import torch
    import cyrnn
    from cyrnn import scoring

    torch.manual_seed(0)
    module = torch.nn.LSTM(32, args.hidden, num_layers=args.layers, batch_first=True).eval()
    cyrnn.set_num_threads(1)
    layer = cyrnn.from_torch(module)
    if args.weights or args.compute:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.cyrnn")
            cyrnn.Sequential([layer]).save(path)
            step = scoring.load(path, weights=args.weights, compute=args.compute).step
    else:
        step = layer.step
    xs = list(np.random.default_rng(1).standard_normal((64, 1, 32)).astype(np.float32))
    state = None
    t0 = time.perf_counter()
    for i in range(20):
        _, state = step(xs[i % 64], state)
    calls = args.calls or max(50, int(0.3 / ((time.perf_counter() - t0) / 20)))
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for i in range(calls):
            _, state = step(xs[i % 64], state)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    what = f"compute={args.compute}" if args.compute else args.weights or "layer.step"
    print(f"{args.layers} x {args.hidden} {what}: "
          f"{np.median(samples):.1f} us per step (median of 7 x {calls})")


if __name__ == "__main__":
    main()
