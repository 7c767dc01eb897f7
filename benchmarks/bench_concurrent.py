"""Concurrent scoring: throughput of N threads on one scorer against one thread.

score-b1: a fitted ``LSTMClassifier`` (hidden 64) loaded with ``cyrnn.scoring.load``;
every call is ``scorer.predict_proba`` of one (50, 8) sequence; one kernel thread per
call (``cyrnn.set_num_threads(1)``). Each sample runs ``--calls`` calls in one thread,
then the same number of calls in each of ``--threads`` threads at once (interleaved,
median of ``--repeats`` samples); results must equal the sequential ones.

    python benchmarks/bench_concurrent.py [--threads 2] [--calls 400] [--repeats 7]

``--bare`` times the scorer's compiled call (``plan.infer`` on the same input)
instead of ``predict_proba``: what the GIL costs without the Python glue.
``--processes`` also runs the one-thread loop in ``--threads`` fresh processes at
once against one alone: whether the cores and memory, not the GIL, are a limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (cpu_share, load_average, machine_info, markdown_table,  # noqa: E402
                     score_b1_classifier)

TARGET = 1.8


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--bare", action="store_true", help="time plan.infer, not predict_proba")
    ap.add_argument("--processes", action="store_true",
                    help="also one-thread loops in fresh processes at once")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_rate(args.child, args.calls, args.repeats)
    import cyrnn
    from cyrnn import scoring

    cyrnn.set_num_threads(1)
    est, _ = score_b1_classifier()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        est.save(os.path.join(folder, "m.cyrnn"))
        sc = scoring.load(os.path.join(folder, "m.cyrnn"))
        if args.processes:
            path = os.path.join(folder, "m.cyrnn")
            procs = process_rates(path, 1, args) + process_rates(path, args.threads, args)
    xs = [rng.standard_normal((1, 50, 8)).astype(np.float32) for _ in range(64)]
    if args.bare:
        plan, data = sc._plan, sc.model.params.data
        call = lambda x: plan.infer(plan.spec, data, x, None, None, None, False)  # noqa
    else:
        call = sc.predict_proba
    expected = [call(x) for x in xs]
    mismatches = []

    def run(n_threads):
        """Calls per second of ``n_threads`` threads (the check of the results runs
        after each thread's timed calls, outside the timing)."""
        stamps = []

        def timed(k):
            t0 = time.perf_counter()
            out = [call(xs[(i + k) % len(xs)]) for i in range(args.calls)]
            stamps.append((t0, time.perf_counter()))
            mismatches.extend(i for i, y in enumerate(out)
                              if not np.array_equal(y, expected[(i + k) % len(xs)]))

        threads = [threading.Thread(target=timed, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        span = max(b for _, b in stamps) - min(a for a, _ in stamps)
        return n_threads * args.calls / span

    info = machine_info()
    share = cpu_share(threads=2)
    run(1)
    run(args.threads)  # warm-up
    one, many = [], []
    for _ in range(args.repeats):
        one.append(run(1))
        many.append(run(args.threads))
    t1, tn = float(np.median(one)), float(np.median(many))
    print(f"# bench_concurrent {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}, cpu share (2 threads) {share}")
    print(markdown_table(["threads", "calls/s (median)", "us per call"],
                         [["1", f"{t1:.0f}", f"{1e6 / t1:.1f}"],
                          [str(args.threads), f"{tn:.0f}", f"{1e6 / tn:.1f}"]]))
    if args.bare:
        print("(--bare: the compiled call alone, plan.infer)")
    if args.processes:
        print(f"processes: 1 alone {procs[0]:.0f} calls/s; {args.threads} at once "
              + ", ".join(f"{r:.0f}" for r in procs[1:]) + " calls/s each")
    ratio = tn / t1
    print(f"\n{args.threads} threads / 1: {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'MISSED'}); results equal to sequential: "
          f"{not mismatches}")
    return 0 if not mismatches else 1


def child_rate(path, calls, repeats):
    """One-thread predict_proba loop on the model at ``path``: prints calls/s."""
    import cyrnn
    from cyrnn import scoring
    cyrnn.set_num_threads(1)
    sc = scoring.load(path)
    x = np.random.default_rng(1).standard_normal((1, 50, 8)).astype(np.float32)
    for _ in range(200):
        sc.predict_proba(x)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            sc.predict_proba(x)
        rates.append(calls / (time.perf_counter() - t0))
    print(float(np.median(rates)))
    return 0


def process_rates(path, n, args):
    """Calls/s of each of ``n`` fresh processes running ``child_rate`` at once."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path,
           "--calls", str(max(args.calls, 2000)), "--repeats", str(args.repeats)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


if __name__ == "__main__":
    sys.exit(main())
