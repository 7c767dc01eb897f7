"""Streaming latency: one time step, batch 1, carried state, against ONNX Runtime.

Stacked LSTMs with 32 input features and no head, at the layer and hidden sizes of
Myrtle.ai Vollo's published LSTM benchmarks: ``lstm_tiny`` (2 x 128), ``lstm_med``
(3 x 480), ``lstm_large`` (3 x 960). On the weights of one ``torch.nn.LSTM``:

* ``layer.step``: ``cyrnn.from_torch(module).step(x_t, state)``;
* ``Scorer.step``: the same layer in a ``Sequential``, saved and loaded with
  ``cyrnn.scoring.load``, ``scorer.step(x_t, state)``;
* ``Scorer.step packed`` / ``Scorer.step bf16``: loaded with ``weights="packed"``
  (weights packed once, float32) / ``weights="bfloat16"`` (packed once as bfloat16;
  float32 arithmetic on the rounded weights, so its outputs differ from PyTorch's by
  the rounding: checked to 1e-3 on the first steps, the others to 1e-4);
* ``ort-1t``: ONNX Runtime, one intra-op (and inter-op) thread, the module exported
  with the states as inputs and outputs (``x, h0, c0 -> y, hn, cn``);
* ``ort``: the same session with default options;
* ``torch``: the module under ``torch.inference_mode()``, ``module(x, (h, c))``.

Every case feeds back the state it returned (carried state). Calls are timed one by
one (``perf_counter_ns``) in interleaved rounds; p50 and p99 are over all calls of all
rounds. The competitors are also measured alone in fresh processes with the
environment the script started with (cyrnn sets ``OMP_WAIT_POLICY=PASSIVE`` when it
loads, which slows a child's PyTorch), and so are cyrnn's cases (one after the other,
as each competitor runs alone: in the interleaved rounds the first calls after a switch
find the caches holding another case's weights, which sets the p99 of every case):
``--alone-runs`` fresh processes each (default 3, taken in turn across the competitors),
whose median p50 and median p99 are the alone figures (on the shared test machine one
fresh process sometimes ran every call 40-75% slower than the next: 2026-12-04). A
ratio is in-run against in-run when the competitor's in-run p50 is within 15 % of its
alone one, else alone against alone (marked); both are reported.

cyrnn's kernels run with their default threads (OpenMP over the cores: the step of
an op whose W_hh has 1.5 MiB or more, lstm_med's and lstm_large's, is shared by columns
between them, the small-batch team of docs/architecture.md; lstm_tiny's runs on the
calling thread); ``--threads 1`` calls ``cyrnn.set_num_threads(1)`` first (one
kernel and BLAS thread: no thread wake-ups in a step). The team steps aside for 0.5 s
when its threads do not get their cores, as after PyTorch's calls in the same
process, whose OpenMP threads spin for a while.

    python benchmarks/bench_stream.py [--configs lstm_tiny lstm_med] [--rounds 20]
    python benchmarks/bench_stream.py --threads 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_share, load_average, machine_info, markdown_table, write_json  # noqa

START_ENV = dict(os.environ)
CONFIGS = {"lstm_tiny": (2, 128), "lstm_med": (3, 480), "lstm_large": (3, 960)}
FEATURES = 32
TARGETS = {"lstm_tiny": 2.0, "lstm_med": 1.5, "lstm_large": 1.5}
COMPETITORS = ("ort-1t", "ort", "torch")
CYRNN_CASES = ("layer.step", "Scorer.step", "Scorer.step packed", "Scorer.step bf16")
TOLERANCE = 0.15


def torch_module(name):
    import torch

    L, H = CONFIGS[name]
    torch.manual_seed(0)
    return torch.nn.LSTM(FEATURES, H, num_layers=L, batch_first=True).eval()


def inputs(name, steps=64):
    return np.random.default_rng(1).standard_normal((steps, 1, FEATURES)).astype(np.float32)


def _cycle(xs):
    i = [0]

    def nxt():
        i[0] = (i[0] + 1) % len(xs)
        return xs[i[0]]
    return nxt


def ort_case(module, name, threads):
    import onnxruntime as ort
    import torch

    L, H = CONFIGS[name]
    buf = io.BytesIO()
    z = torch.zeros(L, 1, H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, FEATURES), (z, z)), buf, dynamo=False,
                          input_names=["x", "h0", "c0"], output_names=["y", "hn", "cn"])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = threads
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xs = [x[:, None, :] for x in inputs(name)]
    nxt = _cycle(xs)
    st = {"h0": np.zeros((L, 1, H), np.float32), "c0": np.zeros((L, 1, H), np.float32)}

    def run():
        y, st["h0"], st["c0"] = sess.run(None, {"x": nxt(), **st})
        return y
    return run


def torch_case(module, name):
    import torch

    nxt = _cycle([torch.from_numpy(x[:, None, :]) for x in inputs(name)])
    st = [None]

    def run():
        with torch.inference_mode():
            y, st[0] = module(nxt(), st[0])
        return y
    return run


def competitor(which, name):
    module = torch_module(name)
    if which == "torch":
        return torch_case(module, name)
    return ort_case(module, name, 1 if which == "ort-1t" else None)


def cyrnn_cases(name, folder):
    import cyrnn
    from cyrnn import scoring

    module = torch_module(name)
    layer = cyrnn.from_torch(module)
    path = os.path.join(folder, f"{name}.cyrnn")
    cyrnn.Sequential([cyrnn.from_torch(module)]).save(path)
    sc = scoring.load(path)
    variants = {"packed": scoring.load(path, weights="packed"),
                "bf16": scoring.load(path, weights="bfloat16")}
    xs = list(inputs(name))
    # both equal PyTorch on a few steps (same weights, carried state)
    import torch
    with torch.inference_mode():
        ref = module(torch.from_numpy(np.stack(xs[:5], 1)))[0].numpy()
    s1 = s2 = None
    sv = dict.fromkeys(variants)
    for t in range(5):
        y1, s1 = layer.step(xs[t], s1)
        y2, s2 = sc.step(xs[t], s2)
        np.testing.assert_allclose(y1, ref[:, t], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(y1, y2)
        for k, v in variants.items():
            y3, sv[k] = v.step(xs[t], sv[k])
            tol = 1e-3 if k == "bf16" else 1e-4
            np.testing.assert_allclose(y3, ref[:, t], rtol=tol, atol=tol)
    nxt_a, nxt_b = _cycle(xs), _cycle(xs)
    sa, sb = [None], [None]

    def variant_step(v):
        nxt, st = _cycle(xs), [None]

        def run():
            y, st[0] = v.step(nxt(), st[0])
            return y
        return run

    def layer_step():
        y, sa[0] = layer.step(nxt_a(), sa[0])
        return y

    def scorer_step():
        y, sb[0] = sc.step(nxt_b(), sb[0])
        return y
    return {"layer.step": layer_step, "Scorer.step": scorer_step,
            **{f"Scorer.step {k}": variant_step(v) for k, v in variants.items()}}


WARMUP_S = 0.5


def latencies(cases, rounds, calls):
    """Per-call times (s) of each case: ``rounds`` interleaved rounds of ``calls`` calls
    (after a warm-up round of ``calls`` calls and at least WARMUP_S seconds per case:
    the set-up's PyTorch calls leave its OpenMP threads spinning for a while, which
    made cyrnn's team step aside for the first half second of a fresh process)."""
    times = {k: [] for k in cases}
    for r in range(rounds + 1):
        for k, fn in cases.items():
            out = times[k] if r else []
            end = time.perf_counter() + (0 if r else WARMUP_S)
            i = 0
            while i < calls or time.perf_counter() < end:
                t0 = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - t0)
                i += 1
    return {k: np.asarray(v) * 1e-9 for k, v in times.items()}


def pct(t):
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def alone(which, name, rounds, calls):
    if which == "cyrnn":  # every cyrnn case, one after the other: {case: (p50, p99)}
        with tempfile.TemporaryDirectory() as folder:
            cases = cyrnn_cases(name, folder)
        return {k: pct(latencies({k: fn}, rounds, calls)[k]) for k, fn in cases.items()}
    t = latencies({which: competitor(which, name)}, rounds, calls)[which]
    return pct(t)


def _median_pcts(runs):
    """The median p50 and the median p99 of alone runs (each ``(p50, p99)``)."""
    return tuple(float(np.median([r[i] for r in runs])) for i in (0, 1))


def _spread(lo_hi):
    """The alone p50s' range over the fresh processes, when there were several."""
    lo, hi = lo_hi
    return "" if lo == hi else f" (p50 {lo * 1e6:.1f}-{hi * 1e6:.1f} over the processes)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--alone", choices=COMPETITORS + ("cyrnn",), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None,
                    help="cyrnn.set_num_threads(n) for the cyrnn cases")
    ap.add_argument("--alone-runs", type=int, default=3,
                    help="fresh processes per alone measurement (their median)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.alone_runs < 1:
        ap.error("--alone-runs must be at least 1")
    if args.alone:
        if args.threads and args.alone == "cyrnn":
            import cyrnn
            cyrnn.set_num_threads(args.threads)
        print(json.dumps(alone(args.alone, args.configs[0], args.rounds, args.calls)))
        return 0
    info = machine_info(env_snapshot={k: START_ENV.get(k) for k in ("OMP_NUM_THREADS",
                                                                  "OMP_WAIT_POLICY")})
    if args.threads:
        import cyrnn
        cyrnn.set_num_threads(args.threads)
    print(f"# bench_stream {time.strftime('%Y-%m-%d %H:%M')}  {info['cpu_model']}, "
          f"{info['cores']} cores, load {load_average()}, cpu share {cpu_share()}, "
          f"cyrnn threads {args.threads or 'default'}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.configs:
            cases = cyrnn_cases(name, folder)
            cases.update({w: competitor(w, name) for w in COMPETITORS})
            t = latencies(cases, args.rounds, args.calls)
            res = {k: pct(v) for k, v in t.items()}
            checks, runs = {}, {w: [] for w in COMPETITORS + ("cyrnn",)}
            for _ in range(args.alone_runs):
                for w in runs:
                    extra = ["--threads", str(args.threads)] if args.threads else []
                    out = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--alone", w,
                         "--configs", name, "--rounds", str(args.rounds), "--calls",
                         str(args.calls), *extra],
                        capture_output=True, text=True, check=True, env=START_ENV)
                    runs[w].append(json.loads(out.stdout.strip().splitlines()[-1]))
            alone_res = {w: _median_pcts(runs[w]) for w in COMPETITORS}
            alone_res["cyrnn"] = {k: _median_pcts([r[k] for r in runs["cyrnn"]])
                                  for k in runs["cyrnn"][0]}
            spread = {k: (min(r[k][0] for r in runs["cyrnn"]),
                          max(r[k][0] for r in runs["cyrnn"])) for k in runs["cyrnn"][0]}
            spread.update({w: (min(r[0] for r in runs[w]), max(r[0] for r in runs[w]))
                           for w in COMPETITORS})
            for w in COMPETITORS:
                a = alone_res[w]
                diff = res[w][0] / a[0] - 1
                checks[w] = {"in_run": res[w], "alone": a, "diff": diff,
                             "ok": abs(diff) <= TOLERANCE}
            comp = {w: (checks[w]["in_run"] if checks[w]["ok"] else checks[w]["alone"])
                    for w in COMPETITORS}
            # alone against alone when ORT's in-run figure is not its alone one
            paired = checks["ort-1t"]["ok"]
            mine = res if paired else alone_res["cyrnn"]
            results[name] = {"in_run": res, "checks": checks, "used": comp,
                             "cyrnn_alone": alone_res["cyrnn"], "alone_runs": runs,
                             "ratios": "in-run" if paired else "alone vs alone"}
            ref50, ref99 = comp["ort-1t"]
            o50, o99 = checks["ort-1t"]["alone"]
            for k in CYRNN_CASES:
                p50, p99 = mine[k]
                met = ref50 / p50 >= TARGETS[name] and ref99 / p99 >= TARGETS[name]
                a50, a99 = alone_res["cyrnn"][k]
                rows.append([name, k + ("" if paired else " (alone)"), f"{p50 * 1e6:.1f}",
                             f"{p99 * 1e6:.1f}", f"{ref50 / p50:.2f}x / {ref99 / p99:.2f}x",
                             f">= {TARGETS[name]}x: {'met' if met else 'MISSED'}; alone "
                             f"{a50 * 1e6:.1f} / {a99 * 1e6:.1f} us{_spread(spread[k])}, "
                             f"against ort-1t alone {o50 / a50:.2f}x / {o99 / a99:.2f}x"])
            for w in COMPETITORS:
                p50, p99 = comp[w]
                c = checks[w]
                rows.append([name, w + ("" if c["ok"] else " (alone)"), f"{p50 * 1e6:.1f}",
                             f"{p99 * 1e6:.1f}", f"{ref50 / p50:.2f}x / {ref99 / p99:.2f}x",
                             f"in-run p50 {c['in_run'][0] * 1e6:.1f}, alone "
                             f"{c['alone'][0] * 1e6:.1f} / {c['alone'][1] * 1e6:.1f} us"
                             f"{_spread(spread[w])} ({c['diff']:+.0%})"])
            print(f"  {name} done", file=sys.stderr)
    print(markdown_table(["config", "case", "p50 us", "p99 us", "ort-1t / case (p50 / p99)",
                          "target / note"], rows))
    print(f"(load after: {load_average()})")
    if args.json:
        write_json(args.json, {"machine": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
