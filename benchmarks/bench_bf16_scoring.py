#!/usr/bin/env python
"""Batch scoring in bfloat16: a scorer's float32 weights, bfloat16 weights (float32
arithmetic) and bfloat16 arithmetic (``cyrnn.scoring.load(path, compute="bfloat16")``,
AVX-512 BF16's VDPBF16PS, or AMX tiles where the CPU has them; ``CYRNN_AMX=0`` keeps
VDPBF16PS), against ONNX Runtime on the same model.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_bf16_scoring.py \\
        [--configs dino-b32,medium,imdb,large] [--json benchmarks/results/bf16_scoring.json]

The models and inputs are ``bench_kernels.py``'s (``benchmarks/_kernel_cases.py``: an
LSTM or GRU with a Dense head on the last step), saved and loaded as a scorer would
load them; ``Scorer.predict`` of the whole batch is timed, interleaved with ONNX
Runtime's ``run`` of ``cyrnn.to_onnx`` of the same model (intra-op threads = cyrnn's
threads), medians of repeated samples (visited in blocks of a third of them, each
after 0.3 s of untimed calls, as in ``bench_kernels.py``). ONNX Runtime is also timed alone in a fresh
process; its ratio is reported only where both agree within 15%. GFLOP/s counts the
products (``bench_kernels.flops``). The accuracy columns: the largest difference of
each variant's outputs from the float32 scorer's (outputs of order 0.1-1).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402
from _kernel_cases import (CONFIGS, alone_argv, build_cyrnn, make_data,  # noqa: E402
                           ort_session_case, save_inputs)

GATES = {"lstm": 4, "gru": 3}
WARMUP_S = 0.5


def flops(cell, B, T, D, H):
    G = GATES[cell]
    return 2.0 * T * B * G * H * (D + H) + 2.0 * B * H


def run_config(name, args, threads, folder):
    import cyrnn
    from cyrnn import scoring

    cfg = CONFIGS[name]
    cell, B, T, D, H = cfg
    x, y = make_data(cfg, np.float32)
    model, _ = build_cyrnn(cfg, "cython", np.float32)
    path = os.path.join(folder, f"{name}.cyrnn")
    model.save(path)
    scorers = {"float32": scoring.load(path), "bfloat16 weights": scoring.load(path, weights="bfloat16")}
    if cyrnn.backends.get_backend("cython").bf16_arithmetic_available():
        scorers["bfloat16 arithmetic"] = scoring.load(path, compute="bfloat16")
    cases = {k: (lambda s=s: s.predict(x)) for k, s in scorers.items()}
    onnx_bytes = cyrnn.to_onnx(model).SerializeToString()
    cases["ort"], _ = ort_session_case(onnx_bytes, x, threads)
    outs = {k: np.asarray(f(), np.float64).reshape(B, -1) for k, f in cases.items()}
    # warm-up of at least WARMUP_S per case: a process's first parallel regions (thread
    # creation, first page faults) can look contended to the governor, which then runs
    # the next calls on one thread for a while
    for f in cases.values():
        end = time.perf_counter() + WARMUP_S
        while time.perf_counter() < end:
            f()
    timing = dict(repeats=args.repeats, warmup=2, max_seconds=args.max_seconds,
                  min_sample_ms=2.0)
    # visited in blocks of a third of the samples after 0.3 s of untimed calls, as
    # bench_kernels.py does (the previous case's spinning thread pools go idle first)
    times = C.interleaved_times(cases, repeats=args.repeats, warmup=2,
                                max_seconds=args.max_seconds, min_sample_seconds=2e-3,
                                block=-(-args.repeats // 3), settle_seconds=0.3)
    inputs = os.path.join(folder, f"{name}.npz")
    save_inputs(inputs, cell, x, y, onnx_models={"ort-cyrnn": onnx_bytes})
    alone = C.run_alone(alone_argv("ort-cyrnn/infer", inputs, threads, timing))["median"]
    fair = C.fairness(times["ort"].median, alone)
    fl = flops(*cfg)
    base = times["float32"].median
    rows = {}
    for k, t in times.items():
        rows[k] = {"ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3 if hasattr(t, "iqr") else None,
                   "gflops": fl / t.median * 1e-9,
                   "speedup_vs_float32": base / t.median,
                   "max_abs_diff_vs_float32": float(np.abs(outs[k] - outs["float32"]).max())}
        if k != "ort":
            rows[k]["vs_ort"] = fair["in_run"] / t.median if fair["ok"] else None
    return {"config": cfg, "flops": fl, "ort_fairness": fair, "rows": rows}


def main(argv=None):
    ap = C.config_parser(__doc__.split("\n")[0], "dino-b32,medium,imdb,large", 6.0)
    args = ap.parse_args(argv)

    import cyrnn

    threads = cyrnn.get_num_threads()
    results, meta = C.run_configs(args.configs.split(","),
                                  lambda name, folder: run_config(name, args, threads, folder),
                                  threads)
    print(f"\n{meta.pop('line')} (cyrnn and ORT)\n")
    table = []
    for name, r in results.items():
        f = r["ort_fairness"]
        for k, row in r["rows"].items():
            vs = "–" if k == "ort" else C.ratio_cell(row.get("vs_ort"), f, "ORT")
            table.append([name, k, f"{row['ms']:.3f}", f"{row['gflops']:.1f}",
                          f"{row['speedup_vs_float32']:.2f}x", vs,
                          f"{row['max_abs_diff_vs_float32']:.1e}"])
    print(C.markdown_table(["config", "scorer", "ms", "GFLOP/s", "vs float32 scorer",
                            "vs ORT", "max |diff| vs float32"], table))
    if args.json:
        C.write_json(args.json, {**meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
