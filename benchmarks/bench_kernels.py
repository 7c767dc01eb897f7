#!/usr/bin/env python
"""Kernel benchmark: cyrnn backends vs PyTorch CPU and ONNX Runtime.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_kernels.py            # full run (~10 min on 2 cores)
    PYTHONPATH=. python benchmarks/bench_kernels.py --quick    # smoke run (no imdb/large)
    PYTHONPATH=. python benchmarks/bench_kernels.py --configs dino-b1,medium \
        --backends cython,torch
    PYTHONPATH=. python benchmarks/bench_kernels.py --contention --configs medium,large
    PYTHONPATH=. python benchmarks/bench_kernels.py --memory       # bench_memory.py: large, imdb

Smoke runs: pass ``--out-dir /tmp/somewhere`` so that benchmarks/results/kernels.json stays.

For every configuration (cell, batch B, steps T, input D, hidden H) and implementation it
times, in one process:

* **inference**: a many-to-one model ``Sequential([LSTM/GRU(D, H, return_sequences=False),
  Dense(H, 1)])`` called with ``training=False`` (torch: ``nn.LSTM/GRU(batch_first=True)`` +
  ``nn.Linear`` on the last step under ``torch.inference_mode()``; ONNX Runtime: that torch
  model exported to ONNX; "ort-cyrnn": ONNX Runtime on ``cyrnn.to_onnx`` of the cyrnn model,
  so the two exports are compared too);
* **training step**: ``cyrnn.training.train_step`` (zero grads, forward, MSE loss on the last
  step, backward, clip by global norm 1.0, RMSProp lr=1e-3) with
  ``cyrnn.optim.RMSProp(model, lr=1e-3, clip_norm=1.0)``; torch: ``zero_grad(set_to_none=True)``,
  forward, ``MSELoss``, ``backward``, ``clip_grad_norm_(.., 1.0)``,
  ``torch.optim.RMSprop(lr=1e-3, alpha=0.9, eps=1e-6)`` (the same rule as cyrnn's RMSProp).

Timing: medians of repeated samples after untimed warm-up, with the IQR as spread; the cases of
one configuration are visited round-robin (``--block`` samples per visit, default a third of
``--repeats``, after ``--settle-seconds`` of untimed calls, default 0.3 s) so that load drift on
a shared machine hits all of them alike (see ``benchmarks/_common.py``).

Fairness
--------
Every competitor case (torch inference and training step at its default threads, ``torch@Nt``
where that differs, ORT and ORT on cyrnn's export) is timed again *alone*: in a fresh process
(``_kernel_cases.py`` run as a script) started with the environment this script started with
(``_common.START_ENV``, read before cyrnn is imported), importing only that library, with the
same thread count, data, weights (or ONNX model) and timing settings. Both medians go to the
JSON (``fairness``); when they differ by more than 15 % no ratio against that competitor is
reported (the table says "unfair: in-run X ms vs alone Y ms", ``evaluate_targets`` reports the
target as UNFAIR, never MET).

Why PyTorch looked slow here before (2-core Xeon, medium, 2 threads, quiet moments of a shared
machine; torch 2.13, OpenBLAS 0.3.30/0.3.31): alone in a fresh process torch took 3.6-4.0 ms per
inference and 12.9-14.8 ms per training step. In this process, sampled strictly round-robin
with cyrnn's cases (one sample of each case in turn), 9.3-86 ms and 36-73 ms. The cause is the
thread pools of the case run just before: OpenBLAS's worker threads keep spinning (a
``sched_yield`` loop of about 2**28 cycles, ~0.1 s) after every cyrnn call, ORT's spin too, and
torch's two OpenMP threads, which synchronise at every time step, then share the two cores
with them. With the OpenBLAS workers made to sleep at once (``OPENBLAS_THREAD_TIMEOUT=4``)
torch took 7.7-9.3 / 19-21 ms, with ``OPENBLAS_NUM_THREADS=1`` 6.1 / 19.5 ms; visited in blocks
of 3 samples after 0.3 s of untimed calls of its own, 3.6-5.0 / 13.2 ms, the alone figures
(cyrnn's cases also became steadier: medium cython train 21-24 ms instead of 23-30 ms).
Sleeping instead of settling is worse: 0.3 s of sleep before each sample made torch *alone*
8x slower (29.6 / 75.5 ms), every pool's threads asleep.

Import order is the second trap: libgomp reads ``OMP_WAIT_POLICY`` once, when it loads, and
cyrnn's Cython and Numba backends ``os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")`` when
they load. With ``--import-order cyrnn-first`` torch's libgomp loads under PASSIVE and torch ran
3.5-4x slower (14.2 / 46.5 ms); a child process started with ``os.environ`` after cyrnn's
import inherits PASSIVE (torch alone 6.4-12.3 / 24.7-40.5 ms). torch-first (the default) with
cyrnn merely loaded: 4.2 / 14.0-14.9 ms. Hence the default import order, and alone processes
started with the start environment, not ``os.environ``.

FLOP count (analytic, GEMM work only)
-------------------------------------
With ``G`` gates (LSTM 4, GRU 3)::

    forward  = 2*T*B*D*G*H      (input projection, one GEMM over all steps)
             + 2*T*B*H*G*H      (recurrent products, one per step)
             + 2*B*H*1          (Dense head on the last step)
    inference = forward
    training  = 3 * forward     (backward = 2x forward: one GEMM for the weight gradient and
                                 one for the input/state gradient per forward GEMM)

Gate element-wise math (sigmoid/tanh/products, ~10-20 flop per hidden unit and step), the loss
and the optimizer are *not* counted, so GFLOP/s is a lower bound of the work done and is
comparable across implementations. "% of peak" divides it by this machine's best measured
square GEMM throughput (the better of NumPy's BLAS and torch on 4096 x 4096, same dtype and
thread count as cyrnn; medians).

Contention (``--contention``): every case of the selected configurations is timed quiet, then
one pure-Python busy-loop process (``while True: pass``, unpinned, killed at the end also on
errors and Ctrl-C) is started and everything is timed again, in one invocation (each phase
with its own alone checks); slowdown = busy median / quiet median; target: cyrnn's inference
slowdown at medium and large no worse than ORT's. Writes ``kernels_contention.json``.

Memory (``--memory``): ``bench_memory.py`` (its docstring says exactly what is measured);
writes ``kernels_memory.json``.

Outputs ``benchmarks/results/kernels.json`` (machine info, every median/IQR/sample) and
``benchmarks/results/kernels.png`` (speedup vs PyTorch per configuration, log scale), and
prints a Markdown table ready to paste into the README.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common as C  # noqa: E402
from _kernel_cases import (CONFIGS, alone_argv, build_cyrnn, export_onnx,  # noqa: E402
                           make_data, ort_session_case, save_inputs, torch_cases, torch_net,
                           torch_threads_hooks)

# The environment as the user gave it: cyrnn's Cython backend sets OMP_WAIT_POLICY=PASSIVE
# (setdefault) when imported, so read it before importing anything.
ENV_AT_START = {k: os.environ.get(k) for k in C.ENV_VARS}

import numpy as np  # noqa: E402

torch = None
TORCH_ERROR = None


def _import_torch():
    global torch, TORCH_ERROR
    try:
        import torch as _torch
        torch = _torch
    except ImportError as exc:  # torch is optional
        TORCH_ERROR = str(exc)


# Import order matters when torch is installed: torch ships its own libgomp.so.1, which the
# Cython extension then shares (same soname), and libgomp reads OMP_WAIT_POLICY once, when it
# loads. "torch-first" (default): the runtime starts with the user's environment, i.e.
# torch's defaults (threads spin-wait), and cyrnn's Cython backend runs under that policy.
# "cyrnn-first": cyrnn's Cython backend sets OMP_WAIT_POLICY=PASSIVE (setdefault) before the
# runtime loads, and torch runs under it. Chosen with --import-order (read from argv here).
IMPORT_ORDER = "cyrnn-first" if "--import-order=cyrnn-first" in sys.argv or (
    "--import-order" in sys.argv[:-1]
    and sys.argv[sys.argv.index("--import-order") + 1] == "cyrnn-first") else "torch-first"
if IMPORT_ORDER == "torch-first":
    _import_torch()
try:
    import cyrnn  # noqa: E402
except ImportError:
    sys.path.insert(0, ROOT)
    import cyrnn  # noqa: E402
from cyrnn.backends import available as available_backends, get_backend  # noqa: E402
from cyrnn.layers.recurrent import project  # noqa: E402
from cyrnn.training import train_step  # noqa: E402

if IMPORT_ORDER == "cyrnn-first":
    for _b in available_backends():     # loads the Cython extension (and its OpenMP runtime)
        if _b == "cuda":  # a GPU backend: not a CPU competitor
            continue
        get_backend(_b)
    _import_torch()

HEAVY = ("imdb", "large")          # skipped by --quick; the numpy backend's repeats are capped
SMALL = ("dino-b1", "dino-b32", "score-b1")
GATES = {"lstm": 4, "gru": 3}

# Targets (speedup = other time / cyrnn time). Evaluated for every compiled cyrnn backend.
TRAIN_VS_TORCH = {"dino-b1": 3.0, "dino-b32": 3.0, "score-b1": 3.0, "imdb": 1.5, "medium": 1.5,
                  "large": 1.0}
INFER_B1 = {"dino-b1", "score-b1"}            # >= 5x torch, no slower than ORT
INFER_B1_VS_TORCH = 5.0
VS_NUMPY = {"dino-b1": 10.0, "dino-b32": 10.0, "score-b1": 10.0, "medium": 3.0}
LARGE_PCT_PEAK = 60.0

TORCH = "torch"          # torch at its default thread count
ORT = "ort"              # ONNX Runtime on PyTorch's export (inference only)
ORT_CYRNN = "ort-cyrnn"  # ONNX Runtime on cyrnn.to_onnx's export of the same model


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- flops
def flops(cell, B, T, D, H):
    G = GATES[cell]
    fwd = 2 * T * B * D * G * H + 2 * T * B * H * G * H + 2 * B * H * 1
    return {"infer": float(fwd), "train": float(3 * fwd),
            "formula": "fwd = 2*T*B*D*G*H + 2*T*B*H*G*H + 2*B*H; infer = fwd; train = 3*fwd"}


# ----------------------------------------------------------------------------- builders
def cyrnn_cases(cfg, backend, dtype, x, y):
    model, opt = build_cyrnn(cfg, backend, dtype)

    def infer():
        return model.forward(x, training=False)

    def train():
        return train_step(model, opt, "mse", x, y)

    return model, infer, train


def build_torch(cfg, dtype, cy_model):
    """The torch twin of ``cy_model`` (same weights)."""
    cell, B, T, D, H = cfg
    net = torch_net(cell, D, H, dtype)
    rnn, head = cy_model.layers
    with torch.no_grad():
        net.rnn.load_state_dict({k: v.clone() for k, v in rnn.to_torch_state_dict().items()})
        net.head.weight.copy_(torch.from_numpy(head.params["weight"].copy()))
        net.head.bias.copy_(torch.from_numpy(head.params["bias"].copy()))
    return net


def ort_case(net, x, threads):
    """ONNX Runtime on PyTorch's export of ``net``; returns (infer, info, model bytes)."""
    model_bytes, exporter = export_onnx(net, x)
    try:
        import onnx
        ops = sorted({n.op_type for n in onnx.load_from_string(model_bytes).graph.node})
    except Exception:
        ops = None
    infer, sess = ort_session_case(model_bytes, x, threads)
    return infer, {"exporter": exporter, "onnx_ops": ops, "intra_op_num_threads": int(threads),
                   "providers": sess.get_providers()}, model_bytes


def ort_cyrnn_case(model, x, threads):
    """ONNX Runtime on the model cyrnn exported (``cyrnn.to_onnx``); returns (infer, info,
    model bytes)."""
    exported = cyrnn.to_onnx(model)
    model_bytes = exported.SerializeToString()
    infer, _ = ort_session_case(model_bytes, x, threads)
    ops = sorted({n.op_type for n in exported.graph.node})
    return infer, {"exporter": "cyrnn.to_onnx", "onnx_ops": ops,
                   "intra_op_num_threads": int(threads)}, model_bytes


# ----------------------------------------------------------------------------- breakdown
def breakdown(cfg, backend, dtype, x, y, repeats, warmup, max_seconds):
    """Where one training step (and one inference) of ``backend`` spends its time.

    Times the pieces of ``train_step`` in isolation, on the same shapes: projection GEMM,
    recurrent loop forward (with cache) and backward (backend kernels), the input-side
    gradient GEMMs, the optimizer (clip + RMSProp) and zero_grad; "other" is the rest of the
    measured total (validation, transposes, Dense head, loss, Python glue).
    """
    cell_kind, B, T, D, H = cfg
    model, opt = build_cyrnn(cfg, backend, dtype)
    rnn = model.layers[0]
    be = get_backend(backend)
    cell, p = rnn.cell, rnn.params
    w_ih, w_hh, b_ih, b_hh = (p[n] for n in rnn._names(0, 0))
    GH = w_hh.shape[0]
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))
    h0 = np.zeros((B, H), dtype)
    c0 = np.zeros((B, H), dtype) if cell.has_cell_state else None
    xp = project(x_tm, w_ih, b_ih)
    _, _, _, cache = be.forward(cell, xp, w_hh, b_hh, h0, c0, None, keep_cache=True)
    rng = np.random.default_rng(7)
    dh_T = rng.standard_normal((B, H)).astype(dtype) * 0.01
    dc_T = np.zeros((B, H), dtype) if cell.has_cell_state else None
    dxp = be.backward(cell, cache, w_hh, None, None, dh_T, dc_T, None)[0]
    dxp2 = dxp.reshape(-1, GH)
    src2 = x_tm.reshape(-1, D)
    train_step(model, opt, "mse", x, y)   # populate grads for the optimizer case
    # The recurrent GEMMs alone, with the shapes the kernels use (an estimate of the BLAS part
    # of the loops: one (B,H)x(H,GH) product per step forward; backward one (B,GH)x(GH,H) per
    # step plus the dW_hh contraction; includes ~1 us/step of Python loop overhead).
    h_all = np.ascontiguousarray(cache["h"][:T].reshape(T * B, H))
    buf_f = np.empty((B, GH), dtype)
    buf_b = np.empty((B, H), dtype)
    w_hh_T = w_hh.T
    dg = rng.standard_normal((T, B, GH)).astype(dtype)
    dg2 = dg.reshape(T * B, GH)

    def rec_gemms_fwd():
        for t in range(T):
            np.matmul(h_all[t * B:(t + 1) * B], w_hh_T, out=buf_f)

    def rec_gemms_bwd():
        for t in range(T):
            np.matmul(dg[t], w_hh, out=buf_b)
        return dg2.T @ h_all
    cases = {
        "train_total": lambda: train_step(model, opt, "mse", x, y),
        "projection_gemm": lambda: project(x_tm, w_ih, b_ih),
        "recurrent_fwd": lambda: be.forward(cell, xp, w_hh, b_hh, h0, c0, None, keep_cache=True),
        "recurrent_bwd": lambda: be.backward(cell, cache, w_hh, None, None, dh_T, dc_T, None),
        "recurrent_gemms_fwd_est": rec_gemms_fwd,
        "recurrent_gemms_bwd_est": rec_gemms_bwd,
        "input_grad_gemms": lambda: (dxp2.T @ src2, dxp2.sum(axis=0)),
        "dx_gemm": lambda: dxp2 @ w_ih,
        "optimizer": opt.step,
        "zero_grad": model.zero_grad,
        "infer_total": lambda: model.forward(x, training=False),
        "recurrent_fwd_infer": lambda: be.forward(cell, xp, w_hh, b_hh, h0, c0, None,
                                                  keep_cache=False),
    }
    t = C.interleaved_times(cases, repeats=repeats, warmup=warmup, max_seconds=max_seconds)
    med = {k: v.median for k, v in t.items()}
    train_parts = ["projection_gemm", "recurrent_fwd", "recurrent_bwd", "input_grad_gemms",
                   "dx_gemm", "optimizer", "zero_grad"]
    total = med["train_total"]
    train_share = {k: med[k] / total for k in train_parts}
    train_share["other"] = max(0.0, 1.0 - sum(train_share.values()))
    # split of the recurrent loops into BLAS products and the rest (gate math, loop glue)
    loops = {}
    for part, gem in (("recurrent_fwd", "recurrent_gemms_fwd_est"),
                      ("recurrent_bwd", "recurrent_gemms_bwd_est")):
        share = med[gem] / med[part]
        if share >= 0.95:   # the estimate's own Python loop (~1 us/step) swamps small kernels
            loops[part] = {"gemm_share_est": None, "gate_math_share_est": None}
        else:
            loops[part] = {"gemm_share_est": share, "gate_math_share_est": 1 - share}
    itotal = med["infer_total"]
    infer_share = {"projection_gemm": med["projection_gemm"] / itotal,
                   "recurrent_fwd_infer": med["recurrent_fwd_infer"] / itotal}
    infer_share["other"] = max(0.0, 1.0 - sum(infer_share.values()))
    return {"timings": {k: v.to_dict(keep_times=False) for k, v in t.items()},
            "train_share": train_share, "infer_share": infer_share, "loop_split": loops,
            "train_dominant": max(train_share, key=train_share.get),
            "infer_dominant": max(infer_share, key=infer_share.get)}


# ----------------------------------------------------------------------------- one config
def build_cases(name, cfg, args, dtype, cy_backends, threads, torch_default_threads):
    """Models, callables and output checks of one configuration.

    Returns ``(res, infer_cases, train_cases, alone)``: ``res`` holds spec, FLOPs, errors,
    export info and output checks; ``alone`` what the fresh-process runs of the competitor
    cases need (data, torch weights, ONNX models, each case's thread count)."""
    cell, B, T, D, H = cfg
    x, y = make_data(cfg, dtype)
    fl = flops(*cfg)
    res = {"spec": {"cell": cell, "B": B, "T": T, "D": D, "H": H, "gates": GATES[cell]},
           "flops": fl, "errors": {}, "info": {}, "check": {}}
    alone = {"cell": cell, "x": x, "y": y, "torch_state": None, "onnx": {}, "threads": {}}
    infer_cases, train_cases = {}, {}
    cy_models = {}
    for b in cy_backends:
        try:
            model, inf, tr = cyrnn_cases(cfg, b, dtype, x, y)
            inf()                                    # fail here, not in the timing loop
            cy_models[b] = model
            infer_cases[b], train_cases[b] = inf, tr
        except Exception as exc:
            res["errors"][b] = f"{type(exc).__name__}: {exc}"
            log(f"  {b}: FAILED ({res['errors'][b]})")
    ref_model = next(iter(cy_models.values()), None)
    ref_out = ref_model.forward(x, training=False) if ref_model is not None else None
    for b, m in cy_models.items():
        res["check"][f"{b}_max_abs_diff_vs_{next(iter(cy_models))}"] = float(
            np.max(np.abs(m.forward(x, training=False) - ref_out)))

    torch_same = None
    if args.use_torch:
        if ref_model is None:
            ref_model = build_cyrnn(cfg, "numpy", dtype)[0]
            ref_out = ref_model.forward(x, training=False)
        net = build_torch(cfg, dtype, ref_model)
        alone["torch_state"] = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        with torch.inference_mode():
            res["check"]["torch_max_abs_diff"] = float(
                np.max(np.abs(net(torch.from_numpy(x)).numpy() - ref_out)))
        inf, tr = torch_cases(net, x, y)
        before, after = torch_threads_hooks(torch_default_threads)
        infer_cases[TORCH] = C.Case(inf, before, after)
        train_cases[TORCH] = C.Case(tr, before, after)
        alone["threads"][TORCH] = torch_default_threads
        if threads != torch_default_threads:
            torch_same = f"torch@{threads}t"
            net2 = build_torch(cfg, dtype, ref_model)
            inf2, tr2 = torch_cases(net2, x, y)
            before2, after2 = torch_threads_hooks(threads)
            infer_cases[torch_same] = C.Case(inf2, before2, after2)
            train_cases[torch_same] = C.Case(tr2, before2, after2)
            alone["threads"][torch_same] = threads
        if args.use_ort:
            try:
                inf_o, info, alone["onnx"][ORT] = ort_case(build_torch(cfg, dtype, ref_model),
                                                           x, threads)
                res["check"]["ort_max_abs_diff"] = float(np.max(np.abs(inf_o() - ref_out)))
                infer_cases[ORT] = inf_o
                res["info"][ORT] = info
                alone["threads"][ORT] = threads
            except Exception as exc:
                res["errors"][ORT] = f"{type(exc).__name__}: {exc}"
                log(f"  ort: unavailable ({res['errors'][ORT][:300]})")
    elif args.use_ort:
        res["errors"][ORT] = "ONNX Runtime is measured on the exported torch model; torch is " \
                             "not available/selected"
    if args.use_ort and ref_model is not None and dtype == np.float32:
        try:  # ORT's recurrent kernels are float32 only
            inf_c, info, alone["onnx"][ORT_CYRNN] = ort_cyrnn_case(ref_model, x, threads)
            res["check"]["ort_cyrnn_max_abs_diff"] = float(np.max(np.abs(inf_c() - ref_out)))
            infer_cases[ORT_CYRNN] = inf_c
            res["info"][ORT_CYRNN] = info
            alone["threads"][ORT_CYRNN] = threads
        except Exception as exc:
            res["errors"][ORT_CYRNN] = f"{type(exc).__name__}: {exc}"
            log(f"  ort-cyrnn: unavailable ({res['errors'][ORT_CYRNN][:300]})")
    res["torch_same_threads_key"] = torch_same or (TORCH if args.use_torch else None)
    return res, infer_cases, train_cases, alone


def timing_kw(args):
    return dict(repeats=args.repeats, warmup=args.warmup, max_seconds=args.max_seconds_per_case,
                min_sample_seconds=args.min_sample_ms / 1e3)


def time_cases(name, res, infer_cases, train_cases, args):
    """In-run medians of every case: round-robin visits of ``args.block`` samples, each after
    ``args.settle_seconds`` of untimed calls (see the module docstring, "Fairness")."""
    caps = {}
    if name in HEAVY and "numpy" in infer_cases:
        caps["numpy"] = args.numpy_repeats
    kw = dict(timing_kw(args), repeats_per_case=caps, block=args.block,
              settle_seconds=args.settle_seconds)
    timings = {}
    for kind, cases in (("infer", infer_cases), ("train", train_cases)):
        log(f"  {kind}: {', '.join(cases)}")
        t0 = time.perf_counter()
        try:
            got = C.interleaved_times(cases, **kw)
        except Exception as exc:
            # one broken backend must not lose the others: time them one by one
            log(f"  {kind}: interleaved timing failed ({exc}); timing cases separately")
            got = {}
            for cname, fn in cases.items():
                try:
                    got[cname] = C.interleaved_times({cname: fn}, **kw)[cname]
                except Exception as exc2:
                    res["errors"][f"{cname}/{kind}"] = f"{type(exc2).__name__}: {exc2}"
        for cname, t in got.items():
            timings.setdefault(cname, {})[kind] = t
        log(f"  {kind}: done in {time.perf_counter() - t0:.1f}s")
    return timings


def check_alone(timings, alone, args):
    """Every competitor case (torch, torch@Nt, ort, ort-cyrnn) timed again alone, each in a
    fresh process with the environment the script started with, the same thread count,
    data, weights (or ONNX model) and timing settings; ``{impl: {kind: C.fairness(...)}}``
    (``{"error": ...}`` where the alone run failed)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        path = os.path.join(tmp, "inputs.npz")
        save_inputs(path, alone["cell"], alone["x"], alone["y"], alone["torch_state"],
                    alone["onnx"])
        for impl, n_threads in alone["threads"].items():
            for kind, t in timings.get(impl, {}).items():
                argv = alone_argv(f"{impl}/{kind}", path, n_threads, dict(
                    repeats=args.repeats, warmup=args.warmup,
                    max_seconds=args.max_seconds_per_case, min_sample_ms=args.min_sample_ms))
                share = C.cpu_share(seconds=0.2, threads=max(1, n_threads))
                try:
                    got = C.run_alone(argv, timeout=600)
                    f = C.fairness(t.median, got["median"])
                    f["alone_timing"] = got["timing"]
                    f["cpu_share_before_alone"] = share
                except Exception as exc:
                    f = {"error": f"{type(exc).__name__}: {exc}"[:2000], "ok": False}
                out.setdefault(impl, {})[kind] = f
                log(f"  {impl} {kind}: in-run {_ms(t.median)} ms, alone " +
                    (f"{_ms(f['alone'])} ms ({100 * f['diff']:+.0f}%)" if "alone" in f
                     else f"FAILED: {f['error'][:300]}"))
    return out


def run_config(name, cfg, args, dtype, cy_backends, threads, torch_default_threads):
    res, infer_cases, train_cases, alone = build_cases(name, cfg, args, dtype, cy_backends,
                                                       threads, torch_default_threads)
    res["timings"] = time_cases(name, res, infer_cases, train_cases, args)
    res["fairness"] = check_alone(res["timings"], alone, args)
    return res


# ----------------------------------------------------------------------------- derived
def _ms(seconds):
    ms = 1e3 * seconds
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def unfair_note(f):
    """'unfair: in-run X ms vs alone Y ms' for a failed fairness entry, else None."""
    if f is None or f.get("ok"):
        return None
    if "alone" not in f:
        return f"unchecked: alone run failed ({f.get('error', '?')[:80]})"
    return f"unfair: in-run {_ms(f['in_run'])} ms vs alone {_ms(f['alone'])} ms"


def derive(results, peak_gflops):
    """Add GFLOP/s, % of peak and ratios to every configuration's results.

    A ratio against a competitor (torch, torch@Nt, ORT) is stored only when that competitor's
    in-run median is within ``C.FAIR_TOLERANCE`` of its median alone in a fresh process;
    otherwise ``<label>`` is None and ``<label>_unfair`` says why."""
    for name, r in results.items():
        tm = r["timings"]
        fair = r.get("fairness", {})
        r["derived"] = {}
        same = r.get("torch_same_threads_key")
        for impl, kinds in tm.items():
            d = {}
            for kind, t in kinds.items():
                g = r["flops"][kind] / t.median / 1e9
                d[kind] = {"median_ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3,
                           "gflops": g, "pct_peak": 100 * g / peak_gflops if peak_gflops else None}
                f = fair.get(impl, {}).get(kind)
                if f is not None:
                    d[kind]["alone_ms"] = 1e3 * f["alone"] if "alone" in f else None
                    d[kind]["fair"] = bool(f.get("ok"))
                for ref_key, label in ((TORCH, "speedup_vs_torch"),
                                       (same, "speedup_vs_torch_same_threads"),
                                       ("numpy", "speedup_vs_numpy"), (ORT, "speedup_vs_ort")):
                    if not (ref_key and ref_key in tm and kind in tm[ref_key]):
                        continue
                    note = None
                    if ref_key not in (impl, "numpy"):
                        note = unfair_note(fair.get(ref_key, {}).get(
                            kind, {"ok": False, "error": "not measured"}))
                    if note is None:
                        d[kind][label] = tm[ref_key][kind].median / t.median
                    else:
                        d[kind][label] = None
                        d[kind][label + "_unfair"] = note
            r["derived"][impl] = d


def evaluate_targets(results, compiled, peak):
    out = []

    unfair = {}

    def get(cfg, impl, kind, key):
        d = results.get(cfg, {}).get("derived", {}).get(impl, {}).get(kind, {})
        if d.get(key + "_unfair"):
            unfair[(cfg, impl, kind, key)] = d[key + "_unfair"]
        return d.get(key)

    def add(desc, cfg, impl, value, threshold, unit="x", same=None):
        why = next((v for (c, i, _, _), v in unfair.items() if (c, i) == (cfg, impl)
                    and value is None), None)
        status = ("UNFAIR" if why else "n/a") if value is None else (
            "MET" if value >= threshold else "MISSED")
        out.append({"target": desc, "config": cfg, "backend": impl, "value": value,
                    "threshold": threshold, "unit": unit, "status": status,
                    "value_same_threads": same, "unfair": why})
        unfair.clear()

    for b in compiled:
        for cfg, thr in TRAIN_VS_TORCH.items():
            if cfg in results:
                add(f"train step vs PyTorch >= {thr:g}x", cfg, b,
                    get(cfg, b, "train", "speedup_vs_torch"), thr,
                    same=get(cfg, b, "train", "speedup_vs_torch_same_threads"))
        for cfg in sorted(INFER_B1):
            if cfg in results:
                add(f"batch-1 inference vs PyTorch >= {INFER_B1_VS_TORCH:g}x", cfg, b,
                    get(cfg, b, "infer", "speedup_vs_torch"), INFER_B1_VS_TORCH,
                    same=get(cfg, b, "infer", "speedup_vs_torch_same_threads"))
                add("batch-1 inference no slower than ONNX Runtime (>= 1x)", cfg, b,
                    get(cfg, b, "infer", "speedup_vs_ort"), 1.0)
        for cfg, thr in VS_NUMPY.items():
            if cfg in results:
                for kind in ("train", "infer"):
                    add(f"{kind} vs numpy backend >= {thr:g}x", cfg, b,
                        get(cfg, b, kind, "speedup_vs_numpy"), thr)
        if "large" in results:
            add(f"large training >= {LARGE_PCT_PEAK:g}% of best sgemm", "large", b,
                get("large", b, "train", "pct_peak"), LARGE_PCT_PEAK, unit="%")
            add(f"large inference >= {LARGE_PCT_PEAK:g}% of best sgemm (informative)", "large",
                b, get("large", b, "infer", "pct_peak"), LARGE_PCT_PEAK, unit="%")
    return out


# ----------------------------------------------------------------------------- output
def ratio_cell(d, key):
    """A ratio, or the reason it is not reported ('unfair: in-run X ms vs alone Y ms')."""
    return d.get(key + "_unfair") or C.fmt_ratio(d.get(key))


def table(results, order):
    headers = ["config", "backend", "infer ms", "train ms", "alone ms infer/train",
               "vs torch infer", "vs torch train", "vs ORT infer", "vs numpy infer/train",
               "GFLOP/s infer/train", "% peak infer/train"]
    rows = []
    for name, r in results.items():
        tm, dv = r["timings"], r["derived"]
        for impl in [i for i in order if i in tm] + [i for i in tm if i not in order]:
            t_i, t_t = tm[impl].get("infer"), tm[impl].get("train")
            d_i, d_t = dv[impl].get("infer", {}), dv[impl].get("train", {})

            def pair(key, fmt):
                a, b = d_i.get(key), d_t.get(key)
                fa = "–" if a is None else fmt(a)
                fb = "–" if b is None else fmt(b)
                return f"{fa} / {fb}"

            def alone_cell(d):
                if "fair" not in d:
                    return "–"
                a = d.get("alone_ms")
                return ("failed" if a is None else f"{a:.3g}") + ("" if d["fair"] else " (!)")

            alone = "–" if not ("fair" in d_i or "fair" in d_t) else \
                f"{alone_cell(d_i)} / {alone_cell(d_t)}"
            rows.append([
                name, impl, C.fmt_time_ms(t_i), C.fmt_time_ms(t_t), alone,
                "1x" if impl == TORCH else ratio_cell(d_i, "speedup_vs_torch"),
                "1x" if impl == TORCH else ratio_cell(d_t, "speedup_vs_torch"),
                "1x" if impl == ORT else ratio_cell(d_i, "speedup_vs_ort"),
                pair("speedup_vs_numpy", C.fmt_ratio),
                pair("gflops", lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"),
                pair("pct_peak", lambda v: f"{v:.1f}" if v < 10 else f"{v:.0f}"),
            ])
    return C.markdown_table(headers, rows)


def plot(results, order, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    cfgs = list(results)
    impls = [i for i in order if i != TORCH and any(i in results[c]["derived"] for c in cfgs)]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(cfgs) + 3), 8.5), sharex=True)
    width = 0.8 / max(1, len(impls))
    xs = np.arange(len(cfgs))
    for ax, kind, label in ((axes[0], "train", "training step"), (axes[1], "infer", "inference")):
        for j, impl in enumerate(impls):
            vals = []
            for c in cfgs:
                v = results[c]["derived"].get(impl, {}).get(kind, {}).get("speedup_vs_torch")
                vals.append(np.nan if v is None else v)
            pos = xs - 0.4 + width * (j + 0.5)
            ax.bar(pos, vals, width, label=impl, color=colours(j % 10))
            for px, v in zip(pos, vals):
                if np.isfinite(v):
                    ax.text(px, v, f"{v:.2g}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(f"speedup vs PyTorch CPU\n({label}; >1 = faster)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(xs)
    specs = [results[c]["spec"] for c in cfgs]
    axes[1].set_xticklabels([f"{c}\n{s['cell'].upper()} B{s['B']} T{s['T']}\nD{s['D']} H{s['H']}"
                             for c, s in zip(cfgs, specs)], fontsize=8)
    axes[0].legend(ncol=min(len(impls), 5), fontsize=8, loc="upper right")
    import textwrap
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def share_line(bd):
    names = {"projection_gemm": "proj GEMM", "recurrent_fwd": "loop fwd",
             "recurrent_bwd": "loop bwd", "input_grad_gemms": "dW_ih GEMM",
             "dx_gemm": "dx GEMM (unused)", "optimizer": "optimizer", "zero_grad": "zero_grad",
             "other": "other"}
    s = bd["train_share"]
    parts = sorted(s.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{names.get(k, k)} {100 * v:.0f}%" for k, v in parts if v >= 0.005)


# ----------------------------------------------------------------------------- contention
def contention_report(phases, compiled):
    """Slowdowns (busy / quiet medians), the targets and the Markdown table."""
    slow, rows, targets = {}, [], []
    for name in phases["quiet"]:
        q, b = phases["quiet"][name], phases["busy"].get(name)
        if b is None:
            continue
        for impl, kinds in q["timings"].items():
            row = [name, impl]
            for kind in ("infer", "train"):
                tq, tb = kinds.get(kind), b["timings"].get(impl, {}).get(kind)
                if tq is None or tb is None:
                    row += ["–", "–", "–"]
                    continue
                notes = [unfair_note(ph["fairness"].get(impl, {}).get(kind))
                         for ph in (q, b) if impl in ph["fairness"]]
                notes = [n for n in notes if n]
                entry = {"quiet_ms": 1e3 * tq.median, "busy_ms": 1e3 * tb.median,
                         "slowdown": tb.median / tq.median, "unfair": notes or None}
                slow.setdefault(name, {}).setdefault(impl, {})[kind] = entry
                row += [C.fmt_time_ms(tq), C.fmt_time_ms(tb),
                        f"{entry['slowdown']:.2f}x" + (f" ({'; '.join(notes)})" if notes else "")]
            rows.append(row)
    for b in compiled:
        for name in ("medium", "large"):
            mine = slow.get(name, {}).get(b, {}).get("infer")
            ort = slow.get(name, {}).get(ORT, {}).get("infer")
            if mine is None or ort is None:
                continue
            status = "UNFAIR" if ort["unfair"] else (
                "MET" if mine["slowdown"] <= ort["slowdown"] else "MISSED")
            targets.append({"target": "inference slowdown under contention <= ONNX Runtime's",
                            "config": name, "backend": b, "value": mine["slowdown"],
                            "threshold": ort["slowdown"], "status": status,
                            "unfair": ort["unfair"]})
    md = C.markdown_table(["config", "impl", "infer quiet ms", "infer busy ms", "infer slowdown",
                           "train quiet ms", "train busy ms", "train slowdown"], rows)
    return slow, targets, md


def run_contention(cfg_names, args, dtype, cy_backends, threads, torch_default_threads, info,
                   notes):
    """--contention: every case quiet, then with one busy-loop process (same invocation)."""
    compiled = [b for b in cy_backends if b != "numpy"]
    built = {}
    for name in cfg_names:
        log(f"[{name}] building")
        built[name] = build_cases(name, CONFIGS[name], args, dtype, cy_backends, threads,
                                  torch_default_threads)
    phases = {"quiet": {}, "busy": {}}

    def measure(phase):
        info[f"cpu_share_per_thread_{phase}"] = C.cpu_share(threads=max(threads, 1))
        info[f"load_average_{phase}"] = C.load_average()
        for name, (res, inf, tr, alone) in built.items():
            log(f"[{name}] {phase}")
            timings = time_cases(name, res, inf, tr, args)
            phases[phase][name] = {"timings": timings, "fairness": check_alone(timings, alone,
                                                                               args)}

    t0 = time.perf_counter()
    measure("quiet")
    with C.busy_loop() as pids:
        log(f"busy-loop process {pids[0]} started")
        measure("busy")
    slow, targets, md = contention_report(phases, compiled)
    info["elapsed_seconds"] = time.perf_counter() - t0
    path = os.path.join(args.out_dir, (args.out_name or "kernels_contention") + ".json")
    C.write_json(path, {
        "benchmark": "bench_kernels --contention", "args": vars(args), "machine": info,
        "busy_process": "python -c 'while True: pass' (one, unpinned, started after the quiet "
                        "phase, killed at the end)",
        "configs": {n: {"spec": built[n][0]["spec"], "errors": built[n][0]["errors"],
                        "check": built[n][0]["check"],
                        **{ph: {"timings": {i: {k: t.to_dict() for k, t in kinds.items()}
                                            for i, kinds in phases[ph][n]["timings"].items()},
                                "fairness": phases[ph][n]["fairness"]}
                           for ph in phases if n in phases[ph]}}
                    for n in built},
        "slowdown": slow, "targets": targets, "notes": notes, "markdown_table": md})
    print(f"## cyrnn under contention (one busy-loop process; {np.dtype(dtype).name}, "
          f"{threads} threads)\n")
    print(f"{info['cpu_model']}, {info['cores']['usable']} cores usable; CPU share per "
          f"thread quiet {info['cpu_share_per_thread_quiet']:.2f}, busy "
          f"{info['cpu_share_per_thread_busy']:.2f}; {info['date']}.\n")
    print(md)
    print("\nslowdown = busy median / quiet median, same invocation; competitors' in-run "
          "medians are checked against fresh-process medians in each phase.\n\n### Targets\n")
    for t in targets:
        print(f"- [{t['status']}] {t['backend']} {t['config']}: {t['target']}: "
              f"{t['value']:.2f}x vs ORT {t['threshold']:.2f}x"
              + (f" ({'; '.join(t['unfair'])})" if t["unfair"] else ""))
    print("\n### Notes\n")
    for n in notes:
        print(f"- {n}")
    print(f"\nWrote {os.path.relpath(path)}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", help=f"comma list from {','.join(CONFIGS)} (default: all; "
                                      "--quick: without imdb,large)")
    ap.add_argument("--backends", help="comma list of cyrnn backends plus 'torch' and 'ort' "
                                       "(default: every available cyrnn backend, torch, ort)")
    ap.add_argument("--repeats", type=int, help="samples per case (default 25; --quick 7)")
    ap.add_argument("--warmup", type=int, help="untimed calls per case (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip imdb and large")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--max-seconds-per-case", type=float, default=None,
                    help="sampling budget per case in seconds (default 8; --quick 3)")
    ap.add_argument("--numpy-repeats", type=int, default=5,
                    help="cap on the numpy backend's samples at imdb and large (default 5)")
    ap.add_argument("--min-sample-ms", type=float, default=2.0,
                    help="each sample repeats a call until it lasts this long (default 2 ms)")
    ap.add_argument("--threads", type=int, default=None,
                    help="thread count for cyrnn (BLAS/OpenMP via threadpoolctl), the 'same "
                         "threads' torch run, ORT intra-op and the GEMM peak (default: BLAS's)")
    ap.add_argument("--gemm-n", type=int, default=4096, help="size of the peak GEMM (4096)")
    ap.add_argument("--import-order", choices=["torch-first", "cyrnn-first"],
                    default="torch-first",
                    help="which library loads the shared OpenMP runtime first (see the note "
                         "at the top of the script; default torch-first)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the per-component profile (breakdown) of a training step")
    ap.add_argument("--breakdown-backends", default="cython",
                    help="compiled backends to profile (comma list, or 'all'; default cython)")
    ap.add_argument("--settle-seconds", type=float, default=0.3,
                    help="untimed calls of a case before each visit's samples, so that the "
                         "previous case's thread pools have gone idle (default 0.3 s; 0 with "
                         "--block 1: the old strict round-robin)")
    ap.add_argument("--block", type=int, default=None,
                    help="samples per visit of a case (default: repeats / 3, rounded up)")
    ap.add_argument("--contention", action="store_true",
                    help="time the configs quiet, then again with one pure-Python busy-loop "
                         "process running; report each implementation's slowdown (writes "
                         "kernels_contention.json)")
    ap.add_argument("--memory", action="store_true",
                    help="peak memory added by 20 calls, fresh process each (runs "
                         "bench_memory.py; default configs large,imdb; writes "
                         "kernels_memory.json)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"),
                    help="where kernels.json and kernels.png go (default benchmarks/results)")
    ap.add_argument("--out-name", default=None,
                    help="output file name without extension (default kernels, "
                         "kernels_contention or kernels_memory)")
    args = ap.parse_args(argv)
    if args.memory:
        import bench_memory
        mem_argv = ["--out-dir", args.out_dir, "--out-name", args.out_name or "kernels_memory"]
        if args.configs:
            mem_argv += ["--configs", args.configs]
        if args.threads:
            mem_argv += ["--threads", str(args.threads)]
        return bench_memory.main(mem_argv)

    t_start = time.perf_counter()
    load_start = C.load_average()
    dtype = np.dtype(args.dtype).type
    args.repeats = args.repeats or (7 if args.quick else 25)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.max_seconds_per_case is None:
        args.max_seconds_per_case = 3.0 if args.quick else 8.0
    if args.block is None:
        args.block = max(1, math.ceil(args.repeats / 3))
    if args.configs:
        cfg_names = [c.strip() for c in args.configs.split(",") if c.strip()]
        bad = [c for c in cfg_names if c not in CONFIGS]
        if bad:
            ap.error(f"unknown configs {bad}; choose from {list(CONFIGS)}")
    else:
        cfg_names = [c for c in CONFIGS if not (args.quick and c in HEAVY)]

    avail = [b for b in available_backends() if b != "cuda"]  # the CPU backends
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in avail and b not in (TORCH, ORT)]
        if unknown:
            ap.error(f"unknown or unavailable backends {unknown}; available: "
                     f"{avail + [TORCH, ORT]}")
    else:
        wanted = avail + [TORCH, ORT]
    cy_backends = [b for b in avail if b in wanted]
    compiled = [b for b in cy_backends if b != "numpy"]
    notes = []
    args.use_torch = TORCH in wanted and torch is not None
    if TORCH in wanted and torch is None:
        notes.append(f"PyTorch not installed ({TORCH_ERROR}): no torch/ORT comparison")
    args.use_ort = ORT in wanted
    if args.use_ort:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            args.use_ort = False
            notes.append(f"ONNX Runtime not installed ({exc}): no ORT comparison")

    # Load every backend now, so threadpoolctl sees their BLAS / OpenMP libraries.
    for b in cy_backends:
        get_backend(b)
    from threadpoolctl import threadpool_info, threadpool_limits
    blas_threads = max([lib["num_threads"] for lib in threadpool_info()
                        if lib["user_api"] == "blas"] or [1])
    threads = args.threads or blas_threads
    # read before threadpool_limits, which also limits torch's OpenMP runtime
    torch_default_threads = torch.get_num_threads() if torch is not None else None
    limiter = None
    cyrnn_threads_status = None
    if args.threads:
        limiter = threadpool_limits(limits=threads)      # BLAS and OpenMP runtimes
        try:   # cyrnn's own knob, where this version has it (Numba row blocks, OpenMP)
            from cyrnn import threads as cy_threads
            cy_threads.set_num_threads(threads)
            cyrnn_threads_status = getattr(cy_threads, "_status", dict)()
        except ImportError:
            cyrnn_threads_status = "cyrnn.threads not available in this version"
    share_start = C.cpu_share(threads=max(threads, 1))

    info = C.machine_info(env_snapshot=ENV_AT_START)
    info["cyrnn_backends_available"] = avail
    info["cyrnn_threads"] = threads
    info["cyrnn_threads_status"] = cyrnn_threads_status
    info["import_order"] = IMPORT_ORDER
    info["torch_default_threads"] = torch_default_threads
    info["torch_config"] = torch.__config__.show() if torch is not None else None
    coretype = ENV_AT_START.get("OPENBLAS_CORETYPE")
    archs = sorted({f"{lib.get('prefix')} {lib.get('version')}: {lib.get('architecture')}"
                    for lib in info["blas"] if lib.get("internal_api") == "openblas"})
    info["openblas_coretype_set"] = coretype is not None
    if coretype:
        notes.append(f"OPENBLAS_CORETYPE={coretype} is set (OpenBLAS kernels: "
                     f"{'; '.join(archs)}).")
    else:
        avx512_kernels = ("skylakex", "cooperlake", "sapphirerapids")
        detected = [str(lib.get("architecture", "")).lower() for lib in info["blas"]
                    if lib.get("internal_api") == "openblas"]
        already = detected and all(a in avx512_kernels for a in detected)
        notes.append("OPENBLAS_CORETYPE is NOT set. OpenBLAS detected these kernels: "
                     f"{'; '.join(archs) or 'none'}. On AMD CPUs with AVX-512 an OpenBLAS that "
                     "does not recognise the CPU falls back to Haswell kernels; "
                     "`export OPENBLAS_CORETYPE=SkylakeX` before starting Python can then roughly "
                     "double large sgemm throughput (the script never sets it itself)."
                     + (" Here every OpenBLAS already runs AVX-512 kernels, so setting it "
                        "should change nothing." if already else
                        " Try it here: some OpenBLAS here does not use AVX-512 kernels."
                        if "avx512f" in info["cpu_simd"] else ""))
    if torch is not None:
        same = "the same as" if torch_default_threads == threads else "different from"
        notes.append(f"torch default threads = {torch_default_threads}, {same} cyrnn's "
                     f"{threads}" + (" (the default-thread torch run doubles as the "
                                     "same-thread run)" if same == "the same as" else
                                     f" (extra rows torch@{threads}t)"))
    cores = info["cores"]["usable"] or 1
    busy = (load_start is not None and load_start[0] > 0.5 * cores) or share_start < 0.8
    if busy:
        notes.append(f"MACHINE LOADED at start: load average {load_start} on {cores} cores, each "
                     f"of {threads} busy threads got {100 * share_start:.0f}% of a core. "
                     "Multi-threaded timings (BLAS/OpenMP synchronise every time step) are "
                     "inflated by preemption, torch's and cyrnn's alike; compare same-thread "
                     "rows, or rerun on a quiet machine / with --threads 1.")
    omp = [lib for lib in info["blas"] if lib.get("user_api") == "openmp"]
    if torch is not None and any("torch" in str(lib.get("filepath")) for lib in omp):
        notes.append(f"Import order {IMPORT_ORDER}: cyrnn's Cython kernels and torch share "
                     "torch's bundled libgomp.so.1 (one OpenMP runtime, one OMP_WAIT_POLICY: "
                     + ("the user's/torch's default, not the PASSIVE policy cyrnn sets for "
                        "itself" if IMPORT_ORDER == "torch-first" else
                        "cyrnn's PASSIVE default, also for torch") +
                     f", env at start: {ENV_AT_START.get('OMP_WAIT_POLICY')}). Compare "
                     "--import-order cyrnn-first.")
    log(f"cyrnn backends: {cy_backends}; torch: {args.use_torch}; ort: {args.use_ort}; "
        f"threads: cyrnn {threads}, torch default {torch_default_threads}; load {load_start}; "
        f"cpu share per thread {share_start}")

    if args.contention:
        return run_contention(cfg_names, args, dtype, cy_backends, threads,
                              torch_default_threads, info, notes)

    # ---- GEMM peak
    log(f"GEMM peak ({args.gemm_n}^2, {np.dtype(dtype).name}) ...")
    peak = C.gemm_gflops(n=args.gemm_n, dtype=dtype, repeats=3 if args.quick else 7,
                         warmup=1, max_seconds=20, torch_too=args.use_torch, threads=threads)
    log(f"  best {peak['best']:.1f} GFLOP/s ({peak['best_source']}); " + ", ".join(
        f"{k} {peak[k]['gflops']:.1f}" for k in ("numpy", "torch_matmul", "torch_linear",
                                                   "torch_onednn_linear") if k in peak))

    # ---- configurations
    results = {}
    for name in cfg_names:
        cfg = CONFIGS[name]
        log(f"[{name}] {cfg[0].upper()} B={cfg[1]} T={cfg[2]} D={cfg[3]} H={cfg[4]}")
        try:
            results[name] = run_config(name, cfg, args, dtype, cy_backends, threads,
                                       torch_default_threads)
        except Exception as exc:
            log(f"  config {name} failed: {exc}\n{traceback.format_exc()}")
            notes.append(f"config {name} failed: {type(exc).__name__}: {exc}")
    derive(results, peak["best"])

    # ---- breakdown of the compiled backends
    breakdowns = {}
    if not args.no_breakdown:
        prof = compiled if args.breakdown_backends == "all" else [
            b for b in args.breakdown_backends.split(",") if b in compiled]
        for b in prof:
            for name in results:
                if b in results[name]["timings"]:
                    log(f"[breakdown] {b} {name}")
                    x, y = make_data(CONFIGS[name], dtype)
                    try:
                        breakdowns.setdefault(b, {})[name] = breakdown(
                            CONFIGS[name], b, dtype, x, y, repeats=max(5, args.repeats // 3),
                            warmup=1, max_seconds=args.max_seconds_per_case / 4)
                    except Exception as exc:
                        breakdowns.setdefault(b, {})[name] = {
                            "error": f"{type(exc).__name__}: {exc}"}

    targets = evaluate_targets(results, compiled, peak)
    if limiter is not None:
        limiter.restore_original_limits()
    load_end = C.load_average()
    share_end = C.cpu_share(threads=max(threads, 1))
    info["cpu_share_per_thread_start"], info["cpu_share_per_thread_end"] = share_start, share_end
    elapsed = time.perf_counter() - t_start
    info["load_average_start"], info["load_average_end"] = load_start, load_end
    info["elapsed_seconds"] = elapsed

    order = cy_backends + ([TORCH] if args.use_torch else [])
    if args.use_torch and threads != torch_default_threads:
        order.append(f"torch@{threads}t")
    if args.use_ort:
        order += [ORT, ORT_CYRNN]
    md = table(results, order)

    # ---- write
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, (args.out_name or "kernels") + ".json")
    png_path = os.path.join(args.out_dir, (args.out_name or "kernels") + ".png")
    load_desc = f"load avg {load_start[0] if load_start else '?'} -> " \
                f"{load_end[0] if load_end else '?'} on {cores} cores, CPU share per thread " \
                f"{share_start:.2f} -> {share_end:.2f}"
    C.write_json(json_path, {
        "benchmark": "bench_kernels",
        "args": {k: v for k, v in vars(args).items()},
        "machine": info,
        "flop_formula": flops("lstm", 1, 1, 1, 1)["formula"] +
        " (G = 4 LSTM, 3 GRU; gate element-wise math, loss and optimizer not counted)",
        "gemm_peak": peak,
        "configs": {n: {"spec": r["spec"], "flops": r["flops"], "errors": r["errors"],
                        "info": r["info"], "check": r["check"],
                        "torch_same_threads_key": r["torch_same_threads_key"],
                        "fairness": r["fairness"],
                        "timings": {i: {k: t.to_dict() for k, t in kinds.items()}
                                    for i, kinds in r["timings"].items()},
                        "derived": r["derived"]}
                    for n, r in results.items()},
        "breakdown": breakdowns,
        "targets": targets,
        "notes": notes,
        "markdown_table": md,
    })
    if results:
        try:
            plot(results, order, png_path,
                 f"cyrnn kernels vs PyTorch CPU ({np.dtype(dtype).name}, {threads} threads, "
                 f"{info['cpu_model']}, {load_desc}{', quick' if args.quick else ''})")
        except Exception as exc:
            notes.append(f"plot failed: {type(exc).__name__}: {exc}")

    # ---- report
    print(f"## cyrnn kernel benchmark ({np.dtype(dtype).name}"
          f"{', --quick' if args.quick else ''})\n")
    print(f"{info['cpu_model']}, {cores} cores usable, cyrnn threads {threads}; {load_desc}; "
          f"numpy {info['versions']['numpy']}, torch {info['versions']['torch']}, "
          f"onnxruntime {info['versions']['onnxruntime']}; {info['date']}; "
          f"{elapsed / 60:.1f} min.\n")
    print(f"Best {peak['dtype']} GEMM ({peak['n']}^2): {peak['best']:.1f} GFLOP/s "
          f"({peak['best_source']}); " + ", ".join(
              f"{k} {peak[k]['gflops']:.1f}" for k in ("numpy", "torch_matmul", "torch_linear",
                                                       "torch_onednn_linear") if k in peak) + "\n")
    print(md)
    print("\nTimes: median (± = IQR / median) per call. Speedup = other time / this time "
          "(torch: default threads). GFLOP/s counts GEMM work only: fwd = 2TBG H(D+H) + 2BH, "
          "train = 3 fwd. % peak = GFLOP/s / best GEMM above.\n")
    for name, r in results.items():
        for k, v in r["errors"].items():
            print(f"- {name}: {k}: {v[:400]}")
        chk = ", ".join(f"{k} {v:.1e}" for k, v in r["check"].items())
        if chk:
            print(f"- {name}: output checks: {chk}")
    if any(ORT in r["info"] for r in results.values()):
        o = next(r["info"][ORT] for r in results.values() if ORT in r["info"])
        print(f"- ONNX: {o['exporter']}; ops {o['onnx_ops']}; ORT intra_op threads "
              f"{o['intra_op_num_threads']}")
    if breakdowns:
        print("\n### Where a training step goes (share of the measured train_step)\n")
        for b, per in breakdowns.items():
            for name, bd in per.items():
                if "error" in bd:
                    print(f"- {b} {name}: {bd['error']}")
                    continue
                tot = bd["timings"]["train_total"]["median"] * 1e3
                inf = bd["infer_share"]
                ls = bd["loop_split"]

                def pct(v):
                    return "n/a" if v is None else f"{100 * v:.0f}%"
                print(f"- {b} {name} ({tot:.3g} ms): {share_line(bd)}; inference: "
                      f"loop {100 * inf['recurrent_fwd_infer']:.0f}%, proj "
                      f"{100 * inf['projection_gemm']:.0f}%, other {100 * inf['other']:.0f}%; "
                      f"BLAS share of the loops (est.): fwd "
                      f"{pct(ls['recurrent_fwd']['gemm_share_est'])}, bwd "
                      f"{pct(ls['recurrent_bwd']['gemm_share_est'])} (rest: gate math, glue)")
    if targets:
        print("\n### Targets\n")
        for t in targets:
            v = t["value"]
            vs = "–" if v is None else (f"{v:.1f}%" if t["unit"] == "%" else f"{v:.2f}x")
            s = t.get("value_same_threads")
            extra = f" (torch at cyrnn's thread count: {s:.2f}x)" if (
                s is not None and v is not None and abs(s - v) > 1e-12) else ""
            why = f" ({t['unfair']})" if t.get("unfair") else ""
            print(f"- [{t['status']}] {t['backend']} {t['config']}: {t['target']}: {vs}{extra}"
                  f"{why}")
    print("\n### Notes\n")
    for n in notes:
        print(f"- {n}")
    print(f"\nWrote {os.path.relpath(json_path)} and {os.path.relpath(png_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
