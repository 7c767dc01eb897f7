"""Layer calls against PyTorch and ONNX Runtime on the same weights, in one process.

For each configuration (batch, steps, features, hidden) a torch module with random
weights is converted with ``cyrnn.from_torch``, and these are timed interleaved (median
of at least 5 samples each):

* ``layer``: the plain cyrnn layer call ``layer(x)`` (returns output and state);
* ``sequential``: the same layer as ``cyrnn.Sequential([layer])`` (output only);
* ``estimator``: a fitted estimator's ``predict`` with the same recurrent weights
  (it adds a Dense head and the estimator's input handling);
* ``torch``: the module under ``torch.inference_mode()``;
* ``ort``: ONNX Runtime (default session options) on ``torch.onnx.export`` of the module.

Each competitor's in-run median is checked against its median measured alone in a
fresh process (same weights, same input, the environment the script started with); a
difference over 15 % is flagged, and the alone figure is the one the ratios use in that
case.

Run from a checkout (unset the OpenBLAS tuning variables some machines set):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --configs dino-b1 --backends cython --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (FAIR_TOLERANCE, START_ENV, cpu_share, fairness,  # noqa: E402
                     interleaved_times, load_average, machine_info, markdown_table, run_alone,
                     write_json)

CONFIGS = {
    # name: (batch, steps, features, hidden, kind, num_layers, bidirectional)
    "dino-b1": (1, 12, 27, 50, "LSTM", 1, False),
    "score-b1": (1, 50, 8, 64, "LSTM", 1, False),
    "bilstm-b1": (1, 63, 24, 32, "LSTM", 1, True),
    "gru2-b1": (1, 100, 16, 64, "GRU", 2, False),
    "medium": (64, 50, 32, 128, "LSTM", 1, False),
}
# The "alone" processes get _common.START_ENV, the environment before cyrnn was imported:
# cyrnn's backends set OMP_WAIT_POLICY=PASSIVE in os.environ when they load (unless it is
# set), which a child would inherit and which makes PyTorch's two-thread calls 3-10x slower.


def torch_module(name):
    import torch

    B, T, D, H, kind, L, bi = CONFIGS[name]
    torch.manual_seed(0)
    cls = getattr(torch.nn, kind)
    return cls(D, H, num_layers=L, bidirectional=bi, batch_first=True).eval()


def data(name):
    B, T, D = CONFIGS[name][:3]
    return np.random.default_rng(1).standard_normal((B, T, D)).astype(np.float32)


def torch_case(module, x):
    import torch

    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return module(tx)[0]
    return run


def ort_case(module, x):
    import onnxruntime as ort
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}})
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return lambda: sess.run(None, feed)[0]


def competitor(name, which, x):
    module = torch_module(name)
    return torch_case(module, x) if which == "torch" else ort_case(module, x)


def alone(name, which, repeats):
    """Median of ``which`` alone (run in a fresh process by the parent)."""
    x = data(name)
    t = interleaved_times({which: competitor(name, which, x)}, repeats=repeats, warmup=3)
    return t[which].median


def cyrnn_cases(name, backend, x):
    import cyrnn

    module = torch_module(name)
    layer = cyrnn.from_torch(module, backend=backend)
    seq_layer = cyrnn.from_torch(module, backend=backend)
    seq_layer.return_state = False
    model = cyrnn.Sequential([seq_layer])
    B, T, D, H, kind, L, bi = CONFIGS[name]
    est_cls = cyrnn.LSTMRegressor if kind == "LSTM" else cyrnn.GRURegressor
    est = est_cls(hidden_size=H, num_layers=L, bidirectional=bi, max_iter=1, backend=backend,
                  random_state=0, verbose=0)
    rng = np.random.default_rng(2)
    est.fit(rng.standard_normal((8, T, D)).astype(np.float32), rng.standard_normal(8))
    rec = est.model_.recurrent_layers[0]
    rec.params.load_state_dict(layer.params.state_dict())
    ref = layer(x)[0]
    np.testing.assert_allclose(model.forward(x), ref, rtol=1e-5, atol=1e-6)
    return {"layer": lambda: layer(x), "sequential": lambda: model.forward(x),
            "estimator": lambda: est.predict(x)}, ref


def run_config(name, args):
    x = data(name)
    module = torch_module(name)
    cases = {}
    for be in args.backends:
        cy, ref = cyrnn_cases(name, be, x)
        cases.update({f"{k}[{be}]": v for k, v in cy.items()})
    import torch
    with torch.inference_mode():
        np.testing.assert_allclose(module(torch.from_numpy(x))[0].numpy(), ref, rtol=1e-4,
                                   atol=1e-5)
    cases["torch"] = torch_case(module, x)
    cases["ort"] = ort_case(module, x)
    share = cpu_share()
    times = interleaved_times(cases, repeats=args.repeats, warmup=3)
    res = {k: t.median for k, t in times.items()}
    checks = {}
    for which in ("torch", "ort"):
        t_alone = run_alone([os.path.abspath(__file__), "--alone", which, "--configs", name,
                             "--repeats", str(args.repeats)], env=START_ENV)["median"]
        checks[which] = fairness(res[which], t_alone)
    return {"times": res, "checks": checks, "cpu_share": share}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--backends", nargs="+", default=["cython", "numba"])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--alone", choices=["torch", "ort"], help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.repeats = max(5, args.repeats)
    if args.alone:
        print(json.dumps({"median": alone(args.configs[0], args.alone, args.repeats)}))
        return 0
    info = machine_info()
    print(f"# bench_layers {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}")
    results = {}
    rows = []
    for name in args.configs:
        r = run_config(name, args)
        results[name] = r
        t, c = r["times"], r["checks"]
        # the competitor figure the ratios use: the alone one when the in-run one is off
        comp = {w: (c[w]["in_run"] if c[w]["ok"] else c[w]["alone"]) for w in ("torch", "ort")}
        for be in args.backends:
            lay, seq, est = t[f"layer[{be}]"], t[f"sequential[{be}]"], t[f"estimator[{be}]"]
            rows.append([name, be, f"{lay * 1e3:.4f}", f"{seq * 1e3:.4f}", f"{est * 1e3:.4f}",
                         f"{lay / seq:.2f}", f"{comp['ort'] / lay:.2f}x",
                         f"{comp['torch'] / lay:.1f}x", f"{r['cpu_share']:.2f}"])
        rows.append([name, "torch / ort", f"{c['torch']['in_run'] * 1e3:.4f}",
                     f"{c['ort']['in_run'] * 1e3:.4f}", "",
                     f"alone: {c['torch']['alone'] * 1e3:.4f} / {c['ort']['alone'] * 1e3:.4f}",
                     f"{c['ort']['diff']:+.0%}" + ("" if c["ort"]["ok"] else " !"),
                     f"{c['torch']['diff']:+.0%}" + ("" if c["torch"]["ok"] else " !"), ""])
        print(f"  {name} done", file=sys.stderr)
    print(markdown_table(["config", "backend", "layer ms", "Sequential ms", "estimator ms",
                          "layer/Seq", "ORT/layer", "torch/layer", "cpu share"], rows))
    print("\n(torch / ort rows: in-run medians, alone medians, and in-run vs alone; '!' = "
          f"over {FAIR_TOLERANCE:.0%}: ratios then use the alone figure)")
    if args.json:
        write_json(args.json, {"benchmark": "bench_layers", "machine": info,
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
