#!/usr/bin/env python
"""Before/after comparison of two cyrnn builds with ``bench_kernels.py``.

Runs ``bench_kernels.py`` alternately on two source trees (each built in place),
``--pairs`` times back to back (before, after, before, after, ...), each run in a
fresh process with that tree first on ``PYTHONPATH``. For every configuration, cyrnn
backend and measurement (inference, training step) it takes the run's same-run ratio
against each competitor (ONNX Runtime, PyTorch: competitor time / cyrnn time, so
larger is faster), the median over the pairs, and reports the change::

    PYTHONPATH=. python benchmarks/compare_builds.py --before ../old --after . \\
        --pairs 3 -- --quick --backends cython,numba,torch,ort --no-breakdown

Everything after ``--`` goes to ``bench_kernels.py``. Results go to
``--out`` (JSON with every run's ratios and the summary). A change is flagged when the
median ratio after is more than ``--tolerance`` (default 5%) below the median before.

Caveat: the competitors' times are the ones ``bench_kernels.py`` takes inside its own
process and are not checked here against the same competitor alone in a fresh process
(PyTorch has been seen 7-9x slower inside that process). Each build's own median time
(rows marked ``ms``) is therefore printed too: on a shared machine it is the steadier
signal of a regression, and a ratio that falls while the build's own time does not
points at the competitor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COMPETITORS = ("ort", "torch")


def run_once(tree, extra, out_dir):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # benchmark: unset (see README)
        env.pop(var, None)
    cmd = [sys.executable, os.path.join(HERE, "bench_kernels.py"), "--out-dir", out_dir, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_kernels.py failed in {tree}:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out_dir, "kernels.json")) as f:
        data = json.load(f)
    return data, time.perf_counter() - t0


def ratios(data):
    """{(config, backend, kind, competitor): competitor time / backend time}, and
    {(config, backend, kind, "time"): backend time}."""
    out = {}
    for name, cfg in data["configs"].items():
        timings = cfg.get("timings", {})
        for backend, kinds in timings.items():
            if backend in COMPETITORS or backend.startswith("torch"):
                continue
            for kind, t in kinds.items():
                if t and t.get("median"):
                    out[name, backend, kind, "time"] = t["median"]  # seconds, for the record
                for comp in COMPETITORS:
                    ref = timings.get(comp, {}).get(kind)
                    if ref and t and t.get("median"):
                        out[name, backend, kind, comp] = ref["median"] / t["median"]
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="source tree of the old build")
    ap.add_argument("--after", required=True, help="source tree of the new build")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "compare_builds.json"))
    args = ap.parse_args(argv)
    runs = {"before": [], "after": []}
    loads = []
    for pair in range(args.pairs):
        for label in ("before", "after"):
            with tempfile.TemporaryDirectory() as tmp:
                data, secs = run_once(getattr(args, label), extra, tmp)
            loads.append(os.getloadavg()[0])
            runs[label].append(ratios(data))
            print(f"pair {pair + 1} {label}: {secs:.0f} s, load {loads[-1]:.2f}", flush=True)
    keys = sorted(set(runs["before"][0]) & set(runs["after"][0]))
    rows, worse = [], []
    for key in keys:
        b = statistics.median(r[key] for r in runs["before"] if key in r)
        a = statistics.median(r[key] for r in runs["after"] if key in r)
        if key[3] == "time":  # own time: after / before (smaller is faster), not a ratio
            rows.append({"config": key[0], "backend": key[1], "kind": key[2], "vs": "time",
                         "before": b, "after": a, "change": b / a - 1})
            continue
        change = a / b - 1
        rows.append({"config": key[0], "backend": key[1], "kind": key[2], "vs": key[3],
                     "before": b, "after": a, "change": change})
        if change < -args.tolerance:
            worse.append(rows[-1])
    print(f"\n{'config':10} {'backend':7} {'kind':6} {'vs':5} {'before':>8} {'after':>8} change")
    for r in rows:
        if r["vs"] == "time":
            print(f"{r['config']:10} {r['backend']:7} {r['kind']:6} ms    "
                  f"{r['before'] * 1e3:8.3f} {r['after'] * 1e3:8.3f} {r['change']:+6.1%} "
                  f"(speed, medians of the runs' medians)")
            continue
        flag = "  <-- worse" if r in worse else ""
        print(f"{r['config']:10} {r['backend']:7} {r['kind']:6} {r['vs']:5} "
              f"{r['before']:8.3f} {r['after']:8.3f} {r['change']:+6.1%}{flag}")
    print(f"\nload average during the runs: {min(loads):.2f} - {max(loads):.2f}; "
          f"{len(worse)} ratio(s) more than {args.tolerance:.0%} worse")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "bench_args": extra, "loads": loads, "summary": rows,
                   "runs": {k: [{"|".join(kk): v for kk, v in r.items()} for r in rs]
                            for k, rs in runs.items()}}, f, indent=1)
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
