"""Concurrent scoring: throughput of N threads on one scorer against one thread.

score-b1: a fitted ``LSTMClassifier`` (hidden 64) loaded with ``cyrnn.scoring.load``;
every call is ``scorer.predict_proba`` of one (50, 8) sequence; one kernel thread per
call (``cyrnn.set_num_threads(1)``). Each sample runs ``--calls`` calls in one thread,
then the same number of calls in each of ``--threads`` threads at once (interleaved,
median of ``--repeats`` samples); results must equal the sequential ones.

    python benchmarks/bench_concurrent.py [--threads 2] [--calls 400] [--repeats 7]
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
    args = ap.parse_args(argv)
    import cyrnn
    from cyrnn import scoring

    cyrnn.set_num_threads(1)
    est, _ = score_b1_classifier()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        est.save(os.path.join(folder, "m.cyrnn"))
        sc = scoring.load(os.path.join(folder, "m.cyrnn"))
    xs = [rng.standard_normal((1, 50, 8)).astype(np.float32) for _ in range(64)]
    expected = [sc.predict_proba(x) for x in xs]
    mismatches = []

    def run(n_threads):
        """Calls per second of ``n_threads`` threads (the check of the results runs
        after each thread's timed calls, outside the timing)."""
        stamps = []

        def timed(k):
            t0 = time.perf_counter()
            out = [sc.predict_proba(xs[(i + k) % len(xs)]) for i in range(args.calls)]
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
    ratio = tn / t1
    print(f"\n{args.threads} threads / 1: {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'MISSED'}); results equal to sequential: "
          f"{not mismatches}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
