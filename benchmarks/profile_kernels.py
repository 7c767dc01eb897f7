#!/usr/bin/env python
"""Run one configuration of ``bench_kernels.py`` in a loop, for a profiler.

    perf record -o /tmp/perf.data env PYTHONPATH=. python benchmarks/profile_kernels.py medium train --threads 2
    perf report -i /tmp/perf.data --stdio | head -40

``infer`` loops the Cython backend's fused inference (``backend.infer``), ``train`` the
whole ``train_step`` (forward, backward, clipping, RMSProp), for ``--seconds`` (default 8)
after one untimed call; the model and data are ``bench_kernels.py``'s
(``--train-compute bfloat16``: the training step in bfloat16 arithmetic).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _kernel_cases import CONFIGS, build_cyrnn, make_data  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", choices=list(CONFIGS))
    ap.add_argument("kind", choices=["infer", "train"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--train-compute", default="float32", choices=["float32", "bfloat16"],
                    help="the model's train_compute (train only)")
    args = ap.parse_args(argv)

    import numpy as np
    import cyrnn
    from cyrnn.backends import get_backend
    from cyrnn.training import train_step

    if args.threads:
        cyrnn.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    model, opt = build_cyrnn(cfg, args.backend, np.float32)
    model.train_compute = args.train_compute
    x, y = make_data(cfg, np.float32)
    if args.kind == "infer":
        be, spec = get_backend(args.backend), model.inference_spec()

        def call():
            be.infer(spec, model.params.data, x)
    else:
        def call():
            train_step(model, opt, "mse", x, y)
    call()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        call()
        n += 1
    print(f"{args.config} {args.kind}: {n} calls, {(time.perf_counter() - t0) / n * 1e3:.3f} ms each",
          file=sys.stderr)


if __name__ == "__main__":
    main()
