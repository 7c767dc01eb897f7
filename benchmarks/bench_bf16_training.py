#!/usr/bin/env python
"""Training steps in bfloat16 arithmetic (``Sequential.train_compute="bfloat16"``, the
estimators' ``train_compute``) against float32, and against PyTorch in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (its mixed precision: the like-for-like
competitor of the bfloat16 step).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_bf16_training.py \\
        [--configs medium,imdb,large] [--json benchmarks/results/bf16_training.json]

The models, inputs and training step are ``bench_kernels.py``'s (``benchmarks/_kernel_cases.py``:
an LSTM or GRU with a Dense head on the last step, MSE loss, RMSProp with clipping; the
same initial weights for every case). Each case's step is timed interleaved with the
others (medians of repeated samples, visited in blocks of a third of them, each after
0.3 s of untimed calls, as in ``bench_kernels.py``), after at least 0.5 s of warm-up per
case; every PyTorch case is timed again alone in a fresh process and its ratio is
reported only where both agree within 15%. GFLOP/s counts the products of a step
(``bench_kernels.flops``: three times the forward's). The loss columns: each case's
loss after ``--steps`` further steps from the same weights (a check that the bfloat16
steps train like the float32 ones, not a convergence study: see
``bench_bf16_accuracy.py --train``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

# torch before cyrnn (bench_kernels.py, "Import order"): libgomp reads OMP_WAIT_POLICY once,
# when it loads, and cyrnn's backends set it to PASSIVE (setdefault), under which torch's
# per-step thread hand-offs run several times slower than torch alone
import torch  # noqa: E402,F401
from _kernel_cases import (CONFIGS, alone_argv, build_cyrnn, load_weights,  # noqa: E402
                           make_data, save_inputs, torch_cases, torch_net, torch_threads_hooks)

GATES = {"lstm": 4, "gru": 3}
WARMUP_S = 0.5
TORCH_CASES = ("torch float32", "torch autocast bf16")


def train_flops(cell, B, T, D, H):
    G = GATES[cell]
    return 3.0 * (2.0 * T * B * G * H * (D + H) + 2.0 * B * H)


def run_config(name, args, threads, folder):
    import cyrnn
    from cyrnn.training import train_step

    cfg = CONFIGS[name]
    cell, B, T, D, H = cfg
    x, y = make_data(cfg, np.float32)
    state = None
    cases, models = {}, {}
    for tc in ("float32", "bfloat16"):
        if tc == "bfloat16" and not cyrnn.backends.get_backend(
                "cython").bf16_arithmetic_available():
            print("  no AVX-512 BF16 here: the bfloat16 step is not measured", flush=True)
            continue
        model, opt = build_cyrnn(cfg, "cython", np.float32)
        model.train_compute = tc
        models[tc] = model
        cases[f"cyrnn {tc}"] = (lambda m=model, o=opt: train_step(m, o, "mse", x, y))
        if state is None:
            rnn, head = model.layers
            state = {f"rnn.{k}": v.detach().numpy().copy()
                     for k, v in rnn.to_torch_state_dict().items()}
            state["head.weight"] = head.params["weight"].copy()
            state["head.bias"] = head.params["bias"].copy()
    before, after = torch_threads_hooks(threads)
    for k, autocast in zip(TORCH_CASES, (False, True)):
        net = load_weights(torch_net(cell, D, H, np.float32), state)
        _, tr = torch_cases(net, x, y, autocast=autocast)
        cases[k] = C.Case(tr, before, after)  # as the alone run times it
    # warm-up of at least WARMUP_S per case (thread creation, first page faults, the
    # kernel governor's first judgements)
    for f in cases.values():
        end = time.perf_counter() + WARMUP_S
        while time.perf_counter() < end:
            f()
    times = C.interleaved_times(cases, repeats=args.repeats, warmup=2,
                                max_seconds=args.max_seconds, min_sample_seconds=2e-3,
                                block=-(-args.repeats // 3), settle_seconds=0.3)
    inputs = os.path.join(folder, f"{name}.npz")
    save_inputs(inputs, cell, x, y, torch_state=state)
    timing = dict(repeats=args.repeats, warmup=2, max_seconds=args.max_seconds,
                  min_sample_ms=2.0)
    fair = {}
    for k, impl in zip(TORCH_CASES, ("torch", "torch-bf16")):
        alone = C.run_alone(alone_argv(f"{impl}/train", inputs, threads, timing))["median"]
        fair[k] = C.fairness(times[k].median, alone)
    # a few more steps of each (same starting point: every case has run the same number
    # of steps by now only approximately, so the losses are compared after fresh builds)
    losses = {}
    for tc in models:
        m, o = build_cyrnn(cfg, "cython", np.float32)
        m.train_compute = tc
        losses[f"cyrnn {tc}"] = [float(train_step(m, o, "mse", x, y)) for _ in range(args.steps)]
    for k, autocast in zip(TORCH_CASES, (False, True)):
        net = load_weights(torch_net(cell, D, H, np.float32), state)
        _, tr = torch_cases(net, x, y, autocast=autocast)
        before()
        try:
            losses[k] = [tr().item() for _ in range(args.steps)]
        finally:
            after()
    fl = train_flops(*cfg)
    rows = {}
    for k, t in times.items():
        rows[k] = {"ms": t.median * 1e3, "gflops": fl / t.median * 1e-9,
                   "loss_first": losses[k][0], "loss_last": losses[k][-1]}
        if k.startswith("cyrnn"):
            for c in TORCH_CASES:
                rows[k][f"vs {c}"] = (fair[c]["in_run"] / t.median if fair[c]["ok"] else None)
    if "cyrnn bfloat16" in rows:
        rows["cyrnn bfloat16"]["vs cyrnn float32"] = (times["cyrnn float32"].median
                                                     / times["cyrnn bfloat16"].median)
    return {"config": cfg, "flops": fl, "torch_fairness": fair, "rows": rows,
            "torch_version": torch.__version__}


def main(argv=None):
    ap = C.config_parser(__doc__.split("\n")[0], "medium,imdb,large", 8.0)
    ap.add_argument("--steps", type=int, default=20, help="steps of the loss check (20)")
    args = ap.parse_args(argv)

    import cyrnn

    threads = cyrnn.get_num_threads()
    results, meta = C.run_configs(args.configs.split(","),
                                  lambda name, folder: run_config(name, args, threads, folder),
                                  threads)
    print(f"\n{meta.pop('line')} (cyrnn and torch)\n")
    table = []
    for name, r in results.items():
        for k, row in r["rows"].items():
            cols = []
            for c in TORCH_CASES:
                f = r["torch_fairness"][c]
                cols.append("–" if not k.startswith("cyrnn") else
                            C.ratio_cell(row.get(f"vs {c}"), f, c))
            vs32 = row.get("vs cyrnn float32")
            table.append([name, k, f"{row['ms']:.2f}", f"{row['gflops']:.1f}",
                          f"{vs32:.2f}x" if vs32 else "–", *cols,
                          f"{row['loss_first']:.4g} -> {row['loss_last']:.4g}"])
    print(C.markdown_table(["config", "training step", "ms", "GFLOP/s", "vs cyrnn float32",
                            "vs torch float32", "vs torch autocast bf16",
                            f"loss, {args.steps} steps"], table))
    for name, r in results.items():
        for c, f in r["torch_fairness"].items():
            print(f"{name} {c}: in-run {f['in_run'] * 1e3:.2f} ms, alone "
                  f"{f['alone'] * 1e3:.2f} ms ({100 * f['diff']:+.0f}%)")
    if args.json:
        C.write_json(args.json, {**meta, "results": results,
                                 "command": "python benchmarks/bench_bf16_training.py "
                                            + " ".join(argv or sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
