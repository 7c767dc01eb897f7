"""Concurrent scoring: throughput of N threads on one scorer against one thread.

score-b1: a fitted ``LSTMClassifier`` (hidden 64) loaded with ``cyrnn.scoring.load``;
every call is ``scorer.predict_proba`` of one (50, 8) sequence; one kernel thread per
call (``cyrnn.set_num_threads(1)``). Each sample runs one thread, then ``--threads``
threads at once (interleaved, median of ``--repeats`` samples), each run for a window
as long as ``--calls`` calls of one thread (timed once at the start): every thread keeps
calling until the window's common deadline, as the threads of a service keep taking
requests from one queue, and the rate is all their calls over the span from the first
start to the last end. (Until 2026-12-03 each thread made ``--calls`` calls: whenever
the GIL favoured one thread, the other then ran alone for the rest of the sample, up to
a quarter of it on the Zen 4 of that day, which measured the GIL's unfairness to a
fixed split of the work rather than the throughput; the report gives that split, the
smallest thread's share of the calls.) Results must equal the sequential ones.

    python benchmarks/bench_concurrent.py [--threads 2] [--calls 400] [--repeats 7]

``--bare`` times the scorer's compiled call (its ``ScoringCall``, the probabilities
included; ``plan.call_infer`` in builds without it) on the same input instead of
``predict_proba``: what the GIL costs without the Python glue.
``--processes`` also runs the same one-thread loop in ``--threads`` worker processes
(started once, loaded and warmed up before the timing), one alone and all at once, in
every sample between the thread runs, over windows of the same length and the same
measure: the machine's own ceiling for that many streams of
calls at that moment, with no GIL shared. The report gives both ratios and the threads'
share of that ceiling (what one process's GIL costs on top of the cores and memory).
``--reference LIB`` also times, in every sample, the same thread runs of a plain C
function called through ctypes (``benchmarks/gil_reference.c``, built with ``gcc -O3
-march=native -mprefer-vector-width=512 -shared -fPIC benchmarks/gil_reference.c -o
LIB``): it streams a 64 KB block (on a cache line) from L2 with multiply-adds for about
as long as one call being timed takes (calibrated at the start: ``--bare`` calibrates it
to the compiled call), with the GIL released and almost no Python work around it, so its
ratio is what CPython's threads give on the machine for a call of that kind, whatever
library is behind it. ``--reference-glue US`` (with ``--reference``): each reference call
first spins US microseconds in Python, holding the GIL (its C part calibrated to the rest
of the call's time), as a stand-in for the Python and argument work a scoring call does
under the GIL: whether that work limits two threads.
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
    ap.add_argument("--bare", action="store_true",
                    help="time the compiled call alone, not predict_proba")
    ap.add_argument("--processes", action="store_true",
                    help="also the same one-thread loop in worker processes, alone and "
                         "all at once, in every sample")
    ap.add_argument("--reference", default=None, metavar="LIB",
                    help="also a C function of the same duration called through ctypes "
                         "(benchmarks/gil_reference.c built as LIB), in every sample")
    ap.add_argument("--reference-glue", type=float, default=0.0, metavar="US",
                    help="with --reference: US microseconds of Python work under the GIL "
                         "before each reference call's C part")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 <= args.reference_glue < 1e6:  # (also NaN and inf)
        ap.error("--reference-glue must be a number of microseconds, 0 <= US < 1e6")
    if args.reference_glue and not args.reference:
        ap.error("--reference-glue needs --reference")
    if args.child:
        return worker(args.child, args.bare)
    import cyrnn
    from cyrnn import scoring

    cyrnn.set_num_threads(1)
    est, _ = score_b1_classifier()
    with tempfile.TemporaryDirectory() as folder:
        est.save(os.path.join(folder, "m.cyrnn"))
        sc = scoring.load(os.path.join(folder, "m.cyrnn"))
        workers = (Workers(os.path.join(folder, "m.cyrnn"), args.threads, args.bare)
                   if args.processes else None)
    try:
        return _measure(args, sc, workers)
    finally:
        if workers is not None:
            workers.close()


def _measure(args, sc, workers):
    xs = inputs()
    call = scoring_call(sc, args.bare)
    expected = [call(x) for x in xs]
    mismatches = []

    def check(k, out):
        mismatches.extend(i for i, y in enumerate(out)
                          if not np.array_equal(y, expected[(i + k) % len(xs)]))

    def indexed(i):
        return call(xs[i % len(xs)])

    def run(n_threads):
        return thread_rate(indexed, n_threads, window, check)

    # the window: as long as --calls calls of one thread, timed once here
    one_call = per_call(indexed)
    window = args.calls * one_call
    ref = (reference_call(args.reference, one_call, args.reference_glue * 1e-6)
           if args.reference else None)
    one, many, p_one, p_many, r_one, r_many, split = [], [], [], [], [], [], []
    info = machine_info()
    share = cpu_share(threads=2)
    run(1)
    run(args.threads)  # warm-up
    for _ in range(args.repeats):
        one.append(run(1)[0])
        rate, counts = run(args.threads)
        many.append(rate)
        split.append(min(counts) / sum(counts))
        if workers is not None:
            p_one.append(workers.rate(1, window))
            p_many.append(workers.rate(args.threads, window))
        if ref is not None:
            r_one.append(thread_rate(ref[0], 1, window)[0])
            r_many.append(thread_rate(ref[0], args.threads, window)[0])
    t1, tn = float(np.median(one)), float(np.median(many))
    print(f"# bench_concurrent {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}, cpu share (2 threads) {share}")
    print(markdown_table(["threads", "calls/s (median)", "us per call"],
                         [["1", f"{t1:.0f}", f"{1e6 / t1:.1f}"],
                          [str(args.threads), f"{tn:.0f}", f"{1e6 / tn:.1f}"]]))
    print(f"windows of {window * 1e3:.0f} ms ({args.calls} one-thread calls); the "
          f"{args.threads} threads' calls split {float(np.median(split)):.2f} "
          f"(min {min(split):.2f}) to the thread with the fewest (even: "
          f"{1 / args.threads:.2f})")
    if args.bare:
        print("(--bare: the compiled call alone, "
              + ("ScoringCall)" if getattr(sc, "_fast_call", None) is not None
                 else "plan.call_infer)"))
    ratio = tn / t1
    if workers is not None:
        q1, qn = float(np.median(p_one)), float(np.median(p_many))
        print(f"processes (same samples, interleaved): 1 alone {q1:.0f} calls/s, "
              f"{args.threads} at once {qn:.0f} calls/s in all: {qn / q1:.2f}x; the threads "
              f"reach {ratio / (qn / q1):.2f} of that ceiling")
    if ref is not None:
        r1, rn = float(np.median(r_one)), float(np.median(r_many))
        glue = (f" after {args.reference_glue:g} us of Python under the GIL"
                if args.reference_glue else "")
        print(f"reference (a C function through ctypes{glue}, {ref[1]:.0f} us a call reading "
              f"{ref[2] / (ref[1] - args.reference_glue) * 1e-3:.0f} GB/s in its C part, "
              f"same samples): 1 thread {r1:.0f} "
              f"calls/s, {args.threads} threads {rn:.0f} calls/s: {rn / r1:.2f}x; the "
              f"scoring calls reach {ratio / (rn / r1):.2f} of it")
    print(f"\n{args.threads} threads / 1: {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'MISSED'}); results equal to sequential: "
          f"{not mismatches}")
    return 0 if not mismatches else 1


def per_call(f, n=300):
    """Seconds per call of ``f(i)``, ``n`` calls after 50 untimed ones."""
    for i in range(50):
        f(i)
    t0 = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - t0) / n


def thread_rate(call, n_threads, seconds, check=None):
    """``(rate, counts)``: calls per second of ``n_threads`` threads, thread k calling
    ``call(i + k)`` for i = 0, 1, ... from a common start (a barrier) until a common
    deadline ``seconds`` later, over the span from the first start to the last end;
    ``counts``: each thread's calls. ``check(k, outputs)``, if given, gets each
    thread's outputs after the timing."""
    stamps, counts, outs, deadline = [None] * n_threads, [0] * n_threads, {}, []
    errors = []
    barrier = threading.Barrier(
        n_threads, action=lambda: deadline.append(time.perf_counter() + seconds))

    def body(k):
        barrier.wait()
        end, clock = deadline[0], time.perf_counter
        out = [] if check is not None else None
        i = 0
        t0 = clock()
        try:
            while clock() < end:
                y = call(i + k)
                if out is not None:
                    out.append(y)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - raised again after the join
            errors.append(exc)
        stamps[k] = (t0, clock())
        counts[k] = i
        outs[k] = out

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if check is not None:
        for k in range(n_threads):
            check(k, outs[k])
    span = max(b for _, b in stamps) - min(a for a, _ in stamps)
    return sum(counts) / span, counts


def reference_call(path, target, glue=0.0):
    """``(ref, us, nbytes)``: ``ref(i)`` calls ``gil_reference`` of the library at
    ``path`` (benchmarks/gil_reference.c) for about ``target`` seconds, the time one
    call being timed takes (``us``: the reference's own time a call, measured here;
    ``nbytes``: the bytes it reads a call). ``glue`` seconds (< ``target``): each call
    first spins that long in Python, holding the GIL, and its C part takes the rest."""
    import ctypes

    from cyrnn.params import aligned_zeros

    fn = ctypes.CDLL(os.path.abspath(path)).gil_reference
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
    fn.restype = ctypes.c_float
    # on a cache line, as a model's weights are
    w = aligned_zeros(16384, np.float32)
    w[...] = 0.5
    x = aligned_zeros(256, np.float32)
    x[...] = 1
    wp, xp = w.ctypes.data, x.ctypes.data

    block = 16384 * 16  # long enough that the ctypes call's own cost does not count
    c_part = max(target - glue, 0.1 * target)
    if glue > 0.9 * target:
        print(f"note: --reference-glue {glue * 1e6:g} us is over 0.9 of the call being "
              f"timed ({target * 1e6:.0f} us): the reference call lasts longer than it")
    n = max(64, int(block * c_part / per_call(lambda i: fn(wp, xp, block), 50)) // 64 * 64)
    clock = time.perf_counter

    def ref(i):
        if glue:
            t0 = clock()
            while clock() - t0 < glue:
                pass
        return fn(wp, xp, n)

    ref.keep = (w, x)  # the arrays live as long as the function
    return ref, per_call(ref) * 1e6, 4 * n


def inputs():
    """The 64 one-sequence inputs every loop cycles through."""
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 50, 8)).astype(np.float32) for _ in range(64)]


def scoring_call(sc, bare):
    """What one call runs: ``predict_proba``, or (``bare``) the compiled call alone."""
    if bare:
        plan, data = sc._plan, sc.model.params.data
        fast = getattr(sc, "_fast_call", None)
        if fast is not None:  # the compiled call the public path makes (since 2026-12-04)
            return lambda x: fast(data, x)
        # (builds before: plan.call_infer, packed weights passed straight to infer)
        return lambda x: plan.call_infer(data, x)
    return sc.predict_proba


def worker(path, bare):
    """A worker process: loads the model at ``path``, warms up, prints ``ready``; then
    for each line ``START END`` on stdin (``time.perf_counter()`` values: CLOCK_MONOTONIC,
    one clock for every process) waits for START, runs one-thread calls (the threads'
    loop: the same call, the same 64 inputs in turn) until END and prints its clock at
    its first call and after its last, and its number of calls. An empty line or the end
    of input ends it."""
    import cyrnn
    from cyrnn import scoring
    cyrnn.set_num_threads(1)
    call = scoring_call(scoring.load(path), bare)
    xs = inputs()
    for i in range(200):
        call(xs[i % len(xs)])
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        start, end = map(float, line.split())
        clock = time.perf_counter
        time.sleep(max(0.0, start - clock()))
        while clock() < start:
            pass
        i = 0
        t0 = clock()
        while clock() < end:
            call(xs[i % len(xs)])
            i += 1
        print(t0, clock(), i, flush=True)
    return 0


class Workers:
    """``n`` worker processes kept for the whole run, so that each sample times warm
    loops only; closed by :meth:`close` (their stdin's end also ends them)."""

    def __init__(self, path, n, bare=False):
        import subprocess
        cmd = [sys.executable, os.path.abspath(__file__), "--child", path]
        if bare:
            cmd.append("--bare")
        self.procs = []
        try:
            for _ in range(n):
                self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True))
            for p in self.procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker process failed to start (its error is "
                                       "above)")
        except BaseException:
            self.close()
            raise

    def rate(self, n, seconds):
        """Calls/s of the first ``n`` workers calling at once from a common start (20 ms
        from now, so that each has read its line) to a common deadline ``seconds``
        later: all their calls over the span from the first start to the last end (as
        the threads' rate is taken)."""
        busy = self.procs[:n]
        start = time.perf_counter() + 0.02
        for p in busy:
            p.stdin.write(f"{start!r} {start + seconds!r}\n")
            p.stdin.flush()
        stamps, calls = [], 0
        for p in busy:
            line = p.stdout.readline().split()
            if len(line) != 3:
                raise RuntimeError("a worker process ended (its error is above)")
            stamps.append((float(line[0]), float(line[1])))
            calls += int(line[2])
        span = max(b for _, b in stamps) - min(a for a, _ in stamps)
        return calls / span

    def close(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:  # (a worker that died: its pipe is broken)
                pass
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except Exception:  # noqa: BLE001 - never leave one behind
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
