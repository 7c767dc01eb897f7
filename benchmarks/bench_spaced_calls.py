#!/usr/bin/env python
"""Batch-1 scoring latency when requests arrive apart, as in a service, not back to back.

A scoring call made right after another finds its code and data in the caches; one made
after the process has idled (or another process has run) does not. At score-b1 (a fitted
``LSTMClassifier``, hidden 64, one (50, 8) float32 sequence, one kernel thread) this
times ``Scorer.predict_proba``, the estimator's ``predict_proba``, ``Scorer.step`` and
ONNX Runtime's ``run`` of the same model (``cyrnn.to_onnx``, one intra-op thread) with
the process sleeping ``--gaps`` milliseconds before each call (0: back to back; the step
is one time step of a stream, reported beside the others without a ratio), the
cases interleaved; median and 90th percentile of ``--calls`` calls per gap. Every case
is timed again alone in a fresh process (``--alone``, default on): a ratio is printed
only where each side's in-run median is within 15% of its alone one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_spaced_calls.py \\
        --json benchmarks/results/spaced_calls.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import load_average, markdown_table, score_b1_classifier  # noqa: E402

CASES = ("Scorer.predict_proba", "LSTMClassifier.predict_proba", "Scorer.step", "ort.run")


def build(folder):
    """Fit, save and export the score-b1 model into ``folder`` once."""
    import warnings

    import cyrnn

    est, X = score_b1_classifier()
    est.save(os.path.join(folder, "m.cyrnn"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cyrnn.to_onnx(est, os.path.join(folder, "m.onnx"))
    np.save(os.path.join(folder, "x.npy"), X[:1])


def make_calls(folder, names):
    """The zero-argument calls of ``names``, loaded from ``folder``."""
    calls = {}
    x1 = np.load(os.path.join(folder, "x.npy"))
    if any(n != "ort.run" for n in names):
        import cyrnn
        from cyrnn import scoring

        cyrnn.set_num_threads(1)
        sc = scoring.load(os.path.join(folder, "m.cyrnn"))
        est = cyrnn.load(os.path.join(folder, "m.cyrnn"))
        x_t, state = x1[:, 0], sc.initial_state(1)
        calls.update({"Scorer.predict_proba": lambda: sc.predict_proba(x1),
                      "LSTMClassifier.predict_proba": lambda: est.predict_proba(x1),
                      "Scorer.step": lambda: sc.step(x_t, state)})
    if "ort.run" in names:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(os.path.join(folder, "m.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x1}
        calls["ort.run"] = lambda: sess.run(None, feed)
    return {n: calls[n] for n in names}


def measure(calls, gaps, n_calls):
    """``{gap_ms: {name: [seconds, ...]}}``, the cases interleaved per call."""
    out = {}
    for fn in calls.values():  # warm-up: first-call costs are not what this measures
        for _ in range(20):
            fn()
    for gap in gaps:
        times = {n: [] for n in calls}
        for _ in range(n_calls):
            for name, fn in calls.items():
                if gap:
                    time.sleep(gap / 1e3)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        out[gap] = times
    return out


def summary(times):
    return {"median_us": float(np.median(times) * 1e6),
            "p90_us": float(np.percentile(times, 90) * 1e6)}


def child(folder, name, gaps, n_calls):
    res = measure(make_calls(folder, [name]), gaps, n_calls)
    print(json.dumps({str(g): summary(t[name]) for g, t in res.items()}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gaps", default="0,1,10,50", help="milliseconds, comma-separated")
    ap.add_argument("--calls", type=int, default=60, help="calls per case and gap")
    ap.add_argument("--no-alone", dest="alone", action="store_false")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",")]
    if args.child:
        return child(args.child[0], args.child[1], gaps, args.calls)

    load0 = load_average()
    with tempfile.TemporaryDirectory() as folder:
        build(folder)
        inrun = {g: {n: summary(t) for n, t in per.items()}
                 for g, per in measure(make_calls(folder, CASES), gaps, args.calls).items()}
        alone = {}
        if args.alone:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
            for name in CASES:
                res = subprocess.run([sys.executable, os.path.abspath(__file__), "--gaps",
                                      args.gaps, "--calls", str(args.calls), "--child", folder,
                                      name], capture_output=True, text=True, env=env,
                                     check=True)
                alone[name] = {float(g): v for g, v in
                               json.loads(res.stdout.strip().splitlines()[-1]).items()}
    load1 = load_average()

    def agrees(name, gap):
        return not alone or abs(inrun[gap][name]["median_us"] / alone[name][gap]["median_us"]
                                - 1) <= 0.15

    rows = []
    for gap in gaps:
        ort = inrun[gap]["ort.run"]["median_us"]
        for name in CASES:
            r = inrun[gap][name]
            a = alone.get(name, {}).get(gap)
            # Scorer.step is one time step, ORT's run a whole sequence: no ratio
            ratio = ("–" if name in ("ort.run", "Scorer.step") else
                     f"{ort / r['median_us']:.2f}x"
                     if agrees(name, gap) and agrees("ort.run", gap) else "no ratio")
            rows.append([f"{gap:g}", name, f"{r['median_us']:.0f}", f"{r['p90_us']:.0f}",
                         f"{a['median_us']:.0f}" if a else "–", ratio])
    print(f"# bench_spaced_calls: score-b1, one thread, load {load0} -> {load1}")
    print(markdown_table(["gap ms", "call", "median us", "p90 us", "alone median us",
                          "vs ORT (median)"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load": [load0, load1], "gaps_ms": gaps, "calls": args.calls,
                       "in_run": {str(g): v for g, v in inrun.items()},
                       "alone": {n: {str(g): v for g, v in d.items()} for n, d in alone.items()}},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
