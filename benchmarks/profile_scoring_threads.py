"""Where the CPU time of concurrent scoring goes: one thread, two threads, two processes.

Each mode runs score-b1's scoring loop (``bench_concurrent.py``'s call: the scorer's
``predict_proba`` of one (50, 8) sequence, or ``--bare`` the compiled call, over the
same 64 inputs) in fresh processes: ``t1`` one process with one thread, ``t2`` one
process with two threads, ``p2`` two processes of one thread each. While the loops run,
``perf record -F 4999 -p PIDS`` samples them for ``--seconds``; the calls made in that
window (every 16 calls are stamped on CLOCK_MONOTONIC) divide the samples per symbol:
microseconds of CPU per call for ``cyrnn_dotrows_f512``, the interpreter
(``libpython``), the kernel, and the rest. Modes run in turn, ``--rounds`` times. Needs
``perf`` (Linux). perf in a virtual machine may count only part of a busy thread's wall
time: compare the rows, not the absolute values.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. \\
        python benchmarks/profile_scoring_threads.py --rounds 3
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = {"t1": (1, 1), "t2": (2, 1), "p2": (1, 2)}  # (threads, processes)
HZ = 4999


def clock():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def child(threads, seconds, bare, log):
    """A scoring loop: prints ``ready``, waits 1 s, runs ``threads`` threads for
    ``seconds``, writes each thread's stamps (one per 16 calls) to ``log``."""
    import cyrnn
    from bench_concurrent import inputs, scoring_call
    from _common import score_b1_classifier
    from cyrnn import scoring

    cyrnn.set_num_threads(1)
    est, _ = score_b1_classifier()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.cyrnn")
        est.save(path)
        call = scoring_call(scoring.load(path), bare)
    xs = inputs()
    for x in xs:
        call(x)
    stamps = [[] for _ in range(threads)]

    def loop(k):
        t0, n, own = clock(), 0, stamps[k]
        while True:
            for j in range(16):
                call(xs[(n + j) & 63])
            n += 16
            t = clock()
            own.append(t)
            if t - t0 > seconds:
                break

    print("ready", flush=True)
    time.sleep(1.0)
    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(log, "w") as f:
        json.dump(stamps, f)


def one_mode(mode, seconds, bare, folder):
    threads, procs = MODES[mode]
    logs = [os.path.join(folder, f"{mode}_{i}.json") for i in range(procs)]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(threads),
           "--loop-seconds", str(seconds + 3)] + (["--bare"] if bare else [])
    ps = [subprocess.Popen(cmd + ["--log", log], stdout=subprocess.PIPE, text=True)
          for log in logs]
    for p in ps:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a scoring loop did not start")
    time.sleep(1.5)  # the loops run from 1 s after "ready"
    data = os.path.join(folder, f"{mode}.data")
    t0 = clock()
    subprocess.run(["perf", "record", "-q", "-F", str(HZ), "-p",
                    ",".join(str(p.pid) for p in ps), "-o", data, "--", "sleep",
                    str(seconds)], check=True, stderr=subprocess.DEVNULL)
    t1 = clock()
    for p in ps:
        p.wait()
    calls = 0
    for log in logs:
        with open(log) as f:
            for own in json.load(f):
                calls += 16 * (bisect.bisect_left(own, t1) - bisect.bisect_left(own, t0))
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "-q", "-n",
                             "--sort", "dso,sym"], capture_output=True, text=True,
                            check=True).stdout
    total = dot = py = kern = 0
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.+)", line)
        if not m:
            continue
        n = int(m[1])
        total += n
        dot += n if m[4].strip() == "cyrnn_dotrows_f512" else 0
        py += n if "libpython" in m[2] else 0
        kern += n if m[3] == "k" else 0
    us = 1e6 / HZ / max(calls, 1)
    return [mode, f"{calls / (t1 - t0):.0f}", f"{total * us:.1f}", f"{dot * us:.1f}",
            f"{py * us:.1f}", f"{kern * us:.1f}", f"{(total - dot - py - kern) * us:.1f}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="t1,t2,p2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="perf's window")
    ap.add_argument("--bare", action="store_true", help="time the compiled call alone")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--loop-seconds", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--log", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.loop_seconds, args.bare, args.log)
    modes = args.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: a comma-separated list of {', '.join(MODES)}")
    from _common import load_average, markdown_table

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for mode in modes:
                rows.append(one_mode(mode, args.seconds, args.bare, folder))
    print(f"# profile_scoring_threads {time.strftime('%Y-%m-%d %H:%M')}, load "
          f"{load_average()}; us of CPU per call (perf samples / {HZ} / calls)")
    print(markdown_table(["mode", "calls/s", "all", "cyrnn_dotrows", "python", "kernel",
                          "other"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
