#!/usr/bin/env python
"""The Cython backend's team mode against its row chunks, in one process, alternating.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_team_mode.py
    ... --busy        # with one pure-Python busy-loop process running throughout

Ops whose W_hh has 2 MiB or more run their forward in team mode (the recurrent
products split by columns, barriers per step; docs/architecture.md, "Team mode").
This script times the same model's inference and training step with the team mode
allowed and with it turned off (``_set_team_min_bytes``), alternating the order every
round, and reports the medians, the share of the team threads' time spent outside the
barriers, and whether the team mode's hold was on (``contention_state()["team_held"]``).
Both modes give the same bits (tested); only the time differs. Default model:
``bench_kernels.py``'s large configuration.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _kernel_cases import CONFIGS, build_cyrnn, make_data  # noqa: E402

BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="large", choices=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--infer-calls", type=int, default=6)
    ap.add_argument("--train-calls", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", action="store_true", help="one busy-loop process throughout")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    import numpy as np
    import cyrnn
    from cyrnn import _cython_kernels as K
    from cyrnn.backends import get_backend
    from cyrnn.training import train_step

    cyrnn.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    model, opt = build_cyrnn(cfg, "cython", np.float32)
    x, y = make_data(cfg, np.float32)
    be, spec = get_backend("cython"), model.inference_spec()
    default_bytes = K._set_team_min_bytes(1e18)
    K._set_team_min_bytes(default_bytes)
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=3600)])
        time.sleep(0.5)
    times = {m: {"infer": [], "train": []} for m in ("team", "rows")}
    share, held, teams = [], [], 0
    load0 = os.getloadavg()
    try:
        for rnd in range(args.rounds):
            for mode in (("team", "rows") if rnd % 2 == 0 else ("rows", "team")):
                K._set_team_min_bytes(default_bytes if mode == "team" else 1e18)
                be.infer(spec, model.params.data, x)
                for _ in range(args.infer_calls):
                    start = K._path_counts()["team_forward"]
                    t0 = time.perf_counter()
                    be.infer(spec, model.params.data, x)
                    times[mode]["infer"].append(time.perf_counter() - t0)
                    if mode == "team":
                        st = K.contention_state()
                        held.append(st["team_held"] > 0)
                        if K._path_counts()["team_forward"] > start:
                            teams += 1
                            share.append(st["cpu"] / (args.threads * st["wall"]))
                for _ in range(args.train_calls):
                    t0 = time.perf_counter()
                    train_step(model, opt, "mse", x, y)
                    times[mode]["train"].append(time.perf_counter() - t0)
    finally:
        K._set_team_min_bytes(default_bytes)
        if busy is not None:
            busy.kill()
    res = {
        "config": args.config, "threads": args.threads, "busy": args.busy,
        "load_before": load0, "load_after": os.getloadavg(),
        "median_ms": {m: {k: float(np.median(v)) * 1e3 for k, v in d.items()}
                      for m, d in times.items()},
        "team_calls": teams, "team_calls_possible": len(held),
        "team_work_share_median": float(np.median(share)) if share else None,
        "team_held_fraction": float(np.mean(held)) if held else None,
    }
    med = res["median_ms"]
    print(f"{args.config}, {args.threads} threads, busy loop: {args.busy}, load "
          f"{load0[0]:.2f} -> {res['load_after'][0]:.2f}")
    for m in ("team", "rows"):
        print(f"  {m:5s} inference {med[m]['infer']:8.2f} ms   training step {med[m]['train']:8.1f} ms")
    print(f"  team mode taken by {teams} of {len(held)} inference calls in its rounds; "
          f"work share outside barriers (median) {res['team_work_share_median']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
