#!/usr/bin/env python
"""The small-batch team (docs/architecture.md, "Small-batch team") on one streaming
step of a stacked LSTM: the figures behind its threshold, its hold and its warm-up.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/probe_team.py 3 480
    ... probe_team.py 3 480 --busy        # with a pure-Python busy loop in another process
    ... probe_team.py 3 480 --trace 60    # the first 60 steps of a fresh process, one by one
    ... probe_team.py 3 256               # under the 1.5 MiB threshold: the team forced on
    ... probe_team.py 3 480 --weights bfloat16   # a scorer's weights packed once

Arguments: layers, hidden size (32 input features, one row, ``cyrnn.LSTM``, the same
state fed each step). Default mode: blocks of ``--calls`` steps alternating between
the team (``_set_small_team_min_bytes(0)``, the hold as shipped) and one thread
(``-1``), ``--rounds`` of each after a warm-up of 0.5 s; prints the median
microseconds per step of each, the team's last judged work share
(``contention_state()["team_share"]``) and the share of team blocks the hold turned
off. ``--trace N``: the first N steps of the team, each timed, before any warm-up.
``--weights packed|bfloat16``: the steps of a ``cyrnn.scoring`` scorer of the same
layer with its weights packed once (float32 or bfloat16) instead of ``layer.step``.
"""

import argparse
import subprocess
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("layers", type=int)
    ap.add_argument("hidden", type=int)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--busy", action="store_true",
                    help="run a busy-loop process on the side for the whole measurement")
    ap.add_argument("--trace", type=int, default=0)
    ap.add_argument("--weights", choices=["packed", "bfloat16"], default=None)
    args = ap.parse_args(argv)

    import cyrnn
    from cyrnn import _cython_kernels as kernels

    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        layer = cyrnn.LSTM(32, args.hidden, num_layers=args.layers, random_state=1)
        x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
        if args.weights:
            import os
            import tempfile

            from cyrnn import scoring
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "m.cyrnn")
                cyrnn.Sequential([layer]).save(path)
                layer = scoring.load(path, weights=args.weights)  # its step: the same call
        _, state = layer.step(x, None)
        kernels._set_small_team_min_bytes(0)
        if args.trace:
            times = []
            for _ in range(args.trace):
                t0 = time.perf_counter()
                layer.step(x, state)
                times.append((time.perf_counter() - t0) * 1e6)
            print("first steps (us):", " ".join(f"{t:.0f}" for t in times))
            return 0
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            layer.step(x, state)
        res = {"team": [], "one thread": []}
        held = 0
        for _ in range(args.rounds):
            for name, limit in (("team", 0), ("one thread", -1)):
                kernels._set_small_team_min_bytes(limit)
                start = kernels._path_counts()["small_team_forward"]
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    layer.step(x, state)
                res[name].append((time.perf_counter() - t0) / args.calls * 1e6)
                if name == "team" and kernels._path_counts()["small_team_forward"] == start:
                    held += 1
        wbytes = 4 * args.hidden * args.hidden * (2 if args.weights == "bfloat16" else 4)
        print(f"{args.layers} x {args.hidden}"
              f"{' ' + args.weights if args.weights else ''} (W_hh {wbytes / 2**20:.2f} MiB)"
              f"{', busy loop beside' if busy else ''}: team {np.median(res['team']):.0f} us, "
              f"one thread {np.median(res['one thread']):.0f} us per step; last team share "
              f"{kernels.contention_state()['team_share']:.2f}; team blocks held off "
              f"{held} of {args.rounds}")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
