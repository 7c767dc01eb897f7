#!/usr/bin/env python
"""The course material's IMDB model end to end (``examples/imdb_sentiment.py``: Embedding
500 x 32, GRU 32, 10 epochs, batch 128, pre-padded to 500), cyrnn against PyTorch, each
library in its own fresh process, quiet and then with one pure-Python busy-loop process
running (``--contention``; the busy loop is started here, unpinned, and stopped at the end).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_imdb_example.py
    ... --contention            # also the busy run
    ... --libs cyrnn            # one library only

Prints a Markdown table and writes ``benchmarks/results/imdb_example.json`` (train seconds,
test accuracy, load average, CPU share per thread at start).
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
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import _common as C  # noqa: E402  (captures the start environment first)

CHILD = r"""
import json, sys, time
sys.path.insert(0, {examples!r})
import imdb_sentiment as ex
lib = sys.argv[1]
X_train, y_train, X_test, y_test = ex.prepare()
t0 = time.perf_counter()
acc, seconds = (ex.run_cyrnn if lib == "cyrnn" else ex.run_torch)(X_train, y_train, X_test, y_test)
print(json.dumps({{"lib": lib, "accuracy": float(acc), "train_seconds": float(seconds)}}))
"""


def run(lib):
    code = CHILD.format(examples=os.path.join(ROOT, "examples"))
    env = dict(C.START_ENV)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code, lib], env=env, capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{lib} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--libs", default="cyrnn,torch")
    ap.add_argument("--contention", action="store_true")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    libs = args.libs.split(",")
    out = {"machine": C.machine_info(C.START_ENV), "runs": []}
    phases = ["quiet"] + (["busy"] if args.contention else [])
    for phase in phases:
        load, share = C.load_average(), C.cpu_share()
        for lib in libs:
            if phase == "busy":
                with C.busy_loop():
                    r = run(lib)
            else:
                r = run(lib)
            r.update(phase=phase, load_average=load, cpu_share=share)
            out["runs"].append(r)
            print(f"{phase} {lib}: {r['train_seconds']:.1f} s, accuracy {r['accuracy']:.3f}",
                  file=sys.stderr, flush=True)
    rows = []
    for phase in phases:
        t = {r["lib"]: r for r in out["runs"] if r["phase"] == phase}
        ratio = (f"{t['torch']['train_seconds'] / t['cyrnn']['train_seconds']:.1f}x"
                 if "torch" in t and "cyrnn" in t else "–")
        rows.append([phase] + [f"{t[lib]['train_seconds']:.1f} s ({t[lib]['accuracy']:.3f})"
                               if lib in t else "–" for lib in ("cyrnn", "torch")] + [ratio])
    table = C.markdown_table(["phase", "cyrnn train (test acc.)", "PyTorch train (test acc.)",
                              "PyTorch / cyrnn"], rows)
    out["markdown_table"] = table
    print(table)
    os.makedirs(args.out_dir, exist_ok=True)
    C.write_json(os.path.join(args.out_dir, "imdb_example.json"), out)


if __name__ == "__main__":
    main()
