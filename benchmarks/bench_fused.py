#!/usr/bin/env python
"""Fused whole-model calls against the layer-by-layer path, per backend.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_fused.py                      # dino-b1, dino-b32
    PYTHONPATH=. python benchmarks/bench_fused.py --configs medium --backends cython

Each (configuration, backend, path) runs in its own fresh process, so that one path's
allocations do not shape the other's (glibc's malloc thresholds adapt to a process's
history: in one process that interleaved both paths the fused step at dino-b32 ran 1.5 ms
against 0.76 ms alone). A process times ``train_step`` (MSE on the last step, RMSProp with
clipping) and ``model.forward`` (inference) of ``LSTM(D, H) + Dense(H, 1)``: medians of
repeated samples after warm-up, and the minor page faults per call (``getrusage``). The
layer path is forced by disabling the model's fused calls. Prints a Markdown table and
writes ``benchmarks/results/fused.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = {"dino-b1": (1, 12, 27, 50), "dino-b32": (32, 12, 27, 50),
           "score-b1": (1, 50, 8, 64), "medium": (64, 50, 32, 128)}

CHILD = r"""
import json, resource, sys, time
import numpy as np
import cyrnn
from cyrnn.optim import RMSProp
from cyrnn.training import train_step
B, T, D, H = (int(v) for v in sys.argv[1:5]); backend, path = sys.argv[5], sys.argv[6]
model = cyrnn.Sequential([cyrnn.LSTM(D, H, return_sequences=False, backend=backend,
                                     random_state=0), cyrnn.Dense(H, 1, random_state=1)])
if path == "layer":
    model._fused = lambda: None
opt = RMSProp(model, lr=1e-3, clip_norm=1.0)
rng = np.random.default_rng(0)
x = rng.standard_normal((B, T, D)).astype(np.float32)
y = rng.standard_normal((B, 1)).astype(np.float32)
def measure(f, seconds=1.5, samples=9):
    for _ in range(20):
        f()
    t = time.perf_counter(); f(); one = time.perf_counter() - t
    n = max(1, int(seconds / samples / max(one, 1e-7)))
    times, faults = [], []
    for _ in range(samples):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        for _ in range(n):
            f()
        times.append((time.perf_counter() - t) / n)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / n)
    return {"ms": float(np.median(times)) * 1e3, "faults": float(np.median(faults))}
res = {"train": measure(lambda: train_step(model, opt, "mse", x, y)),
       "infer": measure(lambda: model.forward(x))}
print("RESULT " + json.dumps(res))
"""


def run(cfg, backend, path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, cfg), backend, path],
                         capture_output=True, text=True, env=env, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(out.stderr[-2000:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="dino-b1,dino-b32")
    ap.add_argument("--backends", default="cython,numba")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fused.json"))
    args = ap.parse_args(argv)
    rows = []
    load = os.getloadavg()
    for name in args.configs.split(","):
        for backend in args.backends.split(","):
            r = {p: run(CONFIGS[name], backend, p) for p in ("fused", "layer")}
            rows.append({"config": name, "backend": backend, **r})
            print(f"{name} {backend}: done", flush=True)
    lines = ["| config | backend | train ms fused / layer | faults/step fused / layer "
             "| infer ms fused / layer |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        f, l = r["fused"], r["layer"]
        lines.append(f"| {r['config']} | {r['backend']} | {f['train']['ms']:.3f} / "
                     f"{l['train']['ms']:.3f} | {f['train']['faults']:.0f} / "
                     f"{l['train']['faults']:.0f} | {f['infer']['ms']:.3f} / "
                     f"{l['infer']['ms']:.3f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "bench_fused", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "load_avg_at_start": load, "end_load_avg": os.getloadavg(), "rows": rows,
                   "markdown_table": table}, fh, indent=1)
    print(f"Wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
