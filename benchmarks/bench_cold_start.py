"""Cold start of a scoring process: import + load + first batch-1 prediction.

A fitted ``LSTMClassifier`` at score-b1 (hidden 64, one (50, 8) sequence) is saved with
``save`` and exported with ``cyrnn.to_onnx``. Each trial starts fresh Python processes
(the environment the script started with) that run, interleaved:

* ``scoring``: ``import cyrnn.scoring``, ``cyrnn.scoring.load(path)``, ``predict_proba(x)``;
* ``cyrnn.load``: ``import cyrnn``, ``cyrnn.load(path)`` (the estimator, which imports
  scikit-learn), ``predict_proba(x)``;
* ``ort``: ``import onnxruntime``, ``InferenceSession`` (default options), first ``run``;
* ``python``: ``import numpy`` only (the floor every process pays).

Reported per variant: the median over ``--trials`` (default 10) processes of the whole
process's wall time (started and waited for by this script: interpreter start included)
and of the time inside the process from its first line to the prediction.

    python benchmarks/bench_cold_start.py [--trials 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (load_average, machine_info, markdown_table,  # noqa: E402
                     score_b1_classifier, write_json)

START_ENV = dict(os.environ)  # before cyrnn sets OMP_WAIT_POLICY (see bench_layers.py)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S, TARGET_RATIO = 0.3, 2.0

PROGRAMS = {
    "scoring": """
        import cyrnn.scoring
        m = cyrnn.scoring.load({model!r})
        p = m.predict_proba(x)
    """,
    "cyrnn.load": """
        import cyrnn
        m = cyrnn.load({model!r})
        p = m.predict_proba(x)
    """,
    "ort": """
        import onnxruntime
        s = onnxruntime.InferenceSession({onnx!r}, providers=["CPUExecutionProvider"])
        p = s.run(["probabilities"], {{"x": x}})[0]
    """,
    "python": """
        p = x
    """,
}


def program(which, paths):
    body = textwrap.dedent(PROGRAMS[which]).format(**paths)
    return ("import time; t0 = time.perf_counter()\n"
            "import numpy as np\n"
            f"x = np.load({paths['x']!r})\n" + body +
            "print(time.perf_counter() - t0, float(np.asarray(p).ravel()[-1]))\n")


def prepare(folder):
    """Fit, save and export the score-b1 classifier; the input of one request."""
    sys.path.insert(0, ROOT)
    import cyrnn

    est, X = score_b1_classifier()
    paths = {"model": os.path.join(folder, "clf.cyrnn"), "onnx": os.path.join(folder, "clf.onnx"),
             "x": os.path.join(folder, "x.npy")}
    est.save(paths["model"])
    cyrnn.to_onnx(est, paths["onnx"])
    np.save(paths["x"], X[:1])
    return paths, float(est.predict_proba(X[:1])[0, -1])


def run_once(code):
    env = dict(START_ENV)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr)
    inside, value = out.stdout.split()
    return wall, float(inside), float(value)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"# bench_cold_start {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}")
    with tempfile.TemporaryDirectory() as folder:
        paths, expected = prepare(folder)
        codes = {k: program(k, paths) for k in PROGRAMS}
        walls = {k: [] for k in codes}
        insides = {k: [] for k in codes}
        for k, code in codes.items():  # one untimed run each: the files in the page cache
            run_once(code)
        for _ in range(args.trials):
            for k, code in codes.items():
                wall, inside, value = run_once(code)
                if k != "python":
                    assert abs(value - expected) < 1e-5, (k, value, expected)
                walls[k].append(wall)
                insides[k].append(inside)
    med = {k: (float(np.median(walls[k])), float(np.median(insides[k]))) for k in codes}
    rows = [[k, f"{w:.3f}", f"{i:.3f}", f"{w / med['ort'][0]:.2f}"] for k, (w, i) in med.items()]
    print(markdown_table(["variant", "process wall s (median)", "in-process s (median)",
                          "wall / ort"], rows))
    w = med["scoring"][0]
    ok = w <= TARGET_S and w <= TARGET_RATIO * med["ort"][0]
    print(f"\ntarget: scoring <= {TARGET_S} s and <= {TARGET_RATIO}x ort: "
          f"{w:.3f} s, {w / med['ort'][0]:.2f}x -> {'met' if ok else 'MISSED'}  "
          f"(load after: {load_average()})")
    if args.json:
        write_json(args.json, {"machine": info, "trials": args.trials, "walls": walls,
                               "insides": insides, "medians": med, "target_met": ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())
