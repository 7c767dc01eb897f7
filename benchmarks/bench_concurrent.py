"""Concurrent scoring: throughput of N threads on one scorer against one thread.

score-b1: a fitted ``LSTMClassifier`` (hidden 64) loaded with ``cyrnn.scoring.load``;
every call is ``scorer.predict_proba`` of one (50, 8) sequence; one kernel thread per
call (``cyrnn.set_num_threads(1)``). Each sample runs ``--calls`` calls in one thread,
then the same number of calls in each of ``--threads`` threads at once (interleaved,
median of ``--repeats`` samples); results must equal the sequential ones.

    python benchmarks/bench_concurrent.py [--threads 2] [--calls 400] [--repeats 7]

``--bare`` times the scorer's compiled call (``plan.infer`` on the same input)
instead of ``predict_proba``: what the GIL costs without the Python glue.
``--processes`` also runs the same one-thread loop in ``--threads`` worker processes
(started once, loaded and warmed up before the timing), one alone and all at once, in
every sample between the thread runs: the machine's own ceiling for that many streams of
calls at that moment, with no GIL shared. The report gives both ratios and the threads'
share of that ceiling (what one process's GIL costs on top of the cores and memory).
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
        workers = (Workers(os.path.join(folder, "m.cyrnn"), args.threads)
                   if args.processes else None)
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
    one, many, p_one, p_many = [], [], [], []
    try:
        for _ in range(args.repeats):
            one.append(run(1))
            many.append(run(args.threads))
            if workers is not None:
                p_one.append(workers.rate(1, args.calls))
                p_many.append(workers.rate(args.threads, args.calls))
    finally:
        if workers is not None:
            workers.close()
    t1, tn = float(np.median(one)), float(np.median(many))
    print(f"# bench_concurrent {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}, cpu share (2 threads) {share}")
    print(markdown_table(["threads", "calls/s (median)", "us per call"],
                         [["1", f"{t1:.0f}", f"{1e6 / t1:.1f}"],
                          [str(args.threads), f"{tn:.0f}", f"{1e6 / tn:.1f}"]]))
    if args.bare:
        print("(--bare: the compiled call alone, plan.infer)")
    ratio = tn / t1
    if workers is not None:
        q1, qn = float(np.median(p_one)), float(np.median(p_many))
        print(f"processes (same samples, interleaved): 1 alone {q1:.0f} calls/s, "
              f"{args.threads} at once {qn:.0f} calls/s in all: {qn / q1:.2f}x; the threads "
              f"reach {ratio / (qn / q1):.2f} of that ceiling")
    print(f"\n{args.threads} threads / 1: {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'MISSED'}); results equal to sequential: "
          f"{not mismatches}")
    return 0 if not mismatches else 1


def child_rate(path, calls, repeats):
    """A worker: loads the model at ``path``, warms up, prints ``ready``; then for
    each line ``N`` on stdin runs N one-thread ``predict_proba`` calls and prints
    their calls/s (an empty line or end of input ends it)."""
    import cyrnn
    from cyrnn import scoring
    cyrnn.set_num_threads(1)
    sc = scoring.load(path)
    x = np.random.default_rng(1).standard_normal((1, 50, 8)).astype(np.float32)
    for _ in range(200):
        sc.predict_proba(x)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        n = int(line)
        t0 = time.perf_counter()
        for _ in range(n):
            sc.predict_proba(x)
        print(n / (time.perf_counter() - t0), flush=True)
    return 0


class Workers:
    """``n`` worker processes (``child_rate``) kept for the whole run, so that each
    sample times warm loops only."""

    def __init__(self, path, n):
        import subprocess
        cmd = [sys.executable, os.path.abspath(__file__), "--child", path]
        self.procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True) for _ in range(n)]
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process failed to start")

    def rate(self, n, calls):
        """Calls/s of the first ``n`` workers running ``calls`` calls each at once
        (their rates summed)."""
        busy = self.procs[:n]
        for p in busy:
            p.stdin.write(f"{calls}\n")
            p.stdin.flush()
        return sum(float(p.stdout.readline()) for p in busy)

    def close(self):
        for p in self.procs:
            try:
                p.stdin.close()
            finally:
                p.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
