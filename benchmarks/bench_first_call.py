#!/usr/bin/env python
"""First-call latency: what a fresh process pays before cyrnn runs at full speed.

Run from the repository root (after ``python setup.py build_ext --inplace``)::

    PYTHONPATH=. python benchmarks/bench_first_call.py            # ~2 min on 2 cores
    PYTHONPATH=. python benchmarks/bench_first_call.py --backends cython

Every measurement is a new Python process (``subprocess``), timing with
``time.perf_counter`` inside it:

* ``import``: ``import cyrnn`` plus loading the backend module;
* ``infer 1st`` / ``infer 2nd``: the first and second ``model.forward`` of a many-to-one
  ``LSTM(27 -> 50) + Dense(50 -> 1)`` on one sequence of 12 steps (the dino-b1 shape);
* ``train 1st`` / ``train 2nd``: the first and second ``train_step`` (MSE, RMSProp, clip) on a
  batch of 32 such sequences.

Scenarios for the Numba backend (its kernels are compiled on first use and cached on disk,
keyed on the source file):

* ``cold``: an empty ``NUMBA_CACHE_DIR`` (everything compiles);
* ``warm``: the same directory again (everything loads from the cache);
* ``read-only``: a copy of the package in a directory the process cannot write, no
  ``NUMBA_CACHE_DIR``, a fresh ``HOME``: the first run must fall back to the user cache
  directory (``$HOME/.cache/numba``) and the second run must load from it. As root (who writes
  anywhere) the copy is bind-mounted read-only in a private mount namespace (``unshare -m``).

The Cython backend compiles nothing at run time, but the optimizer and clipping kernels are
Numba for every backend: its rows show them cold and warm.
Results go to ``benchmarks/results/first_call.json`` and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import cyrnn
from cyrnn.backends import get_backend
get_backend(sys.argv[1])
t_import = time.perf_counter() - t0
from cyrnn.optim import RMSProp
from cyrnn.training import train_step
backend = sys.argv[1]
def build():
    rnn = cyrnn.LSTM(27, 50, return_sequences=False, backend=backend, random_state=0)
    return cyrnn.Sequential([rnn, cyrnn.Dense(50, 1, random_state=1)])
rng = np.random.default_rng(0)
x1 = rng.standard_normal((1, 12, 27)).astype(np.float32)
xb = rng.standard_normal((32, 12, 27)).astype(np.float32)
yb = rng.standard_normal((32, 1)).astype(np.float32)
model = build()
res = {"import": t_import}
for key in ("infer 1st", "infer 2nd"):
    t = time.perf_counter(); model.forward(x1); res[key] = time.perf_counter() - t
opt = RMSProp(model, lr=1e-3, clip_norm=1.0)
for key in ("train 1st", "train 2nd"):
    t = time.perf_counter(); train_step(model, opt, "mse", xb, yb); res[key] = time.perf_counter() - t
res["cyrnn_file"] = cyrnn.__file__
print("RESULT " + json.dumps(res))
"""

KEYS = ["import", "infer 1st", "infer 2nd", "train 1st", "train 2nd"]


def run_child(backend, env, cwd, ro_dir=None, timeout=900):
    cmd = [sys.executable, "-c", CHILD, backend]
    if ro_dir is not None:  # root writes anywhere: mount the copy read-only for the child
        script = (f"mount --bind {ro_dir} {ro_dir} && mount -o remount,ro,bind {ro_dir} && "
                  'exec "$@"')
        cmd = ["unshare", "-m", "--", "sh", "-c", script, "sh"] + cmd
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["process_wall"] = wall
            return res
    raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")


def base_env(pythonpath):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env["PYTHONPATH"] = pythonpath
    return env


def count_files(path):
    n = 0
    for _, _, files in os.walk(path):
        n += sum(f.endswith((".nbi", ".nbc")) for f in files)
    return n


def readonly_scenario(backend, tmp):
    """Package copy nobody can write; HOME in tmp; returns (cold, warm, cache files)."""
    pkg_root = os.path.join(tmp, "ro")
    os.makedirs(pkg_root)
    shutil.copytree(os.path.join(ROOT, "cyrnn"), os.path.join(pkg_root, "cyrnn"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    ro_dir = None
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            raise RuntimeError("running as root without unshare: cannot test read-only")
        ro_dir = pkg_root
    for dirpath, dirnames, filenames in os.walk(pkg_root):
        os.chmod(dirpath, 0o555)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
    env = base_env(pkg_root)
    env["HOME"] = home
    env.pop("XDG_CACHE_HOME", None)
    cold = run_child(backend, env, tmp, ro_dir)
    warm = run_child(backend, env, tmp, ro_dir)
    in_tree = count_files(pkg_root)
    user_cache = count_files(home)
    for dirpath, dirnames, filenames in os.walk(pkg_root):
        os.chmod(dirpath, 0o755)
    return cold, warm, {"cache_files_in_package": in_tree, "cache_files_in_home": user_cache}


def fmt(v):
    return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="cython,numba")
    ap.add_argument("--no-readonly", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "first_call.json"))
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, extra = [], {}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cyrnn-firstcall-") as tmp:
        for backend in backends:
            if backend == "numba":
                cache = os.path.join(tmp, "numba-cache")
                env = base_env(ROOT)
                env["NUMBA_CACHE_DIR"] = cache
                print("numba: cold cache ...", flush=True)
                rows.append(("numba", "cold cache", run_child("numba", env, ROOT)))
                print("numba: warm cache ...", flush=True)
                rows.append(("numba", "warm cache", run_child("numba", env, ROOT)))
                extra["numba_cache_files"] = count_files(cache)
                if not args.no_readonly:
                    print("numba: read-only package ...", flush=True)
                    try:
                        cold, warm, files = readonly_scenario("numba", os.path.join(tmp, "r"))
                        rows.append(("numba", "read-only pkg, 1st run", cold))
                        rows.append(("numba", "read-only pkg, 2nd run", warm))
                        extra["readonly"] = files
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        extra["readonly_error"] = str(exc)
                        print(f"  read-only scenario skipped: {exc}")
            else:
                # The optimizer and clipping kernels are Numba for every backend: measure
                # with those cold (empty cache) and warm.
                env = base_env(ROOT)
                env["NUMBA_CACHE_DIR"] = os.path.join(tmp, f"{backend}-numba-cache")
                print(f"{backend}: cold Numba cache (optimizer kernels) ...", flush=True)
                rows.append((backend, "cold cache", run_child(backend, env, ROOT)))
                print(f"{backend}: warm Numba cache ...", flush=True)
                rows.append((backend, "warm cache", run_child(backend, env, ROOT)))
    header = "| backend | scenario | " + " | ".join(KEYS) + " | process |"
    lines = [header, "|" + " --- |" * (len(KEYS) + 3)]
    for backend, scen, res in rows:
        lines.append(f"| {backend} | {scen} | " + " | ".join(fmt(res[k]) for k in KEYS)
                     + f" | {fmt(res['process_wall'])} |")
    table = "\n".join(lines)
    print(table)
    for k, v in extra.items():
        print(f"- {k}: {v}")
    out = {"benchmark": "bench_first_call", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "load_avg_at_start": load, "python": sys.version.split()[0],
           "rows": [{"backend": b, "scenario": s, **r} for b, s, r in rows],
           "extra": extra, "markdown_table": table}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"Wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
