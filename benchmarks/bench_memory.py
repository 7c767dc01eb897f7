#!/usr/bin/env python
"""Peak resident memory added by 20 inference calls and by 20 training steps.

The model and data of ``bench_kernels.py`` (many-to-one LSTM/GRU + Dense head, same shapes,
float32), for cyrnn (Cython backend), PyTorch CPU and ONNX Runtime (inference only, on
``cyrnn.to_onnx``'s export of the same model, so the process needs no torch). Every
(library, kind, baseline) runs in its own fresh process, started with the environment this
script started with, which imports only that library (and numpy) and:

1. builds the model (and optimizer), the data and the ONNX Runtime session;
2. baseline ``creation``: ``gc.collect()``; baseline ``warm``: one more (untimed) call first,
   then ``gc.collect()``;
3. reads VmRSS (``rss0``) and resets the peak (VmHWM) to it by writing 5 to
   ``/proc/self/clear_refs``;
4. runs 20 calls (inference) or 20 training steps, then reads VmHWM (``hwm``).

Reported: **peak growth = hwm - rss0** in MiB ("MB"), and the RSS still held after the calls
(``rss_after - rss0``). ``creation`` is the issue's "growth measured from after model
creation" (the first call's one-off allocations count: thread pools, workspaces, Numba/oneDNN
caches); ``warm`` leaves those out. Where clear_refs cannot be written the peak is VmHWM
(or ``ru_maxrss``) since process start, and the JSON says ``hwm_reset: false``.

Targets (issue 16, baseline ``creation``, at large and imdb): inference <= 1.2x PyTorch's
growth, training <= 1.0x.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/bench_memory.py
    PYTHONPATH=. python benchmarks/bench_memory.py --configs medium --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402  (captures the start environment first)
import numpy as np  # noqa: E402
from _kernel_cases import CONFIGS, build_cyrnn, make_data  # noqa: E402

DEFAULT_CONFIGS = ("large", "imdb")
LIBS = ("cyrnn", "torch", "ort")
TARGETS = {"infer": 1.2, "train": 1.0}      # cyrnn growth / torch growth, at most
CALLS = 20
MiB = 1 << 20


def _cases(lib, cfg, threads):
    """(infer, train or None) of ``lib`` on ``cfg``."""
    dtype = np.float32
    x, y = make_data(cfg, dtype)
    if lib == "torch":
        import torch
        from _kernel_cases import torch_cases, torch_net

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        return torch_cases(torch_net(cfg[0], cfg[3], cfg[4], dtype), x, y)
    model, opt = build_cyrnn(cfg, "cython", dtype)
    if lib == "cyrnn":
        from cyrnn.training import train_step

        if threads:
            from cyrnn import threads as cy_threads
            cy_threads.set_num_threads(threads)
        return (lambda: model.forward(x, training=False),
                lambda: train_step(model, opt, "mse", x, y))
    import cyrnn
    from _kernel_cases import ort_session_case

    infer, _ = ort_session_case(cyrnn.to_onnx(model).SerializeToString(), x,
                                threads or C.cpu_count()["usable"])
    return infer, None


def child(lib, kind, name, baseline, threads, calls=CALLS):
    """Run in the fresh process: the measurement described in the module docstring."""
    infer, train = _cases(lib, CONFIGS[name], threads)
    fn = infer if kind == "infer" else train
    if baseline == "warm":
        fn()
    gc.collect()
    rss0 = C.memory_status()["VmRSS"]
    reset = C.reset_peak_rss()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    st = C.memory_status()
    return {"lib": lib, "kind": kind, "config": name, "baseline": baseline, "calls": calls,
            "rss0_mb": rss0 / MiB if rss0 else None, "hwm_mb": st["VmHWM"] / MiB,
            "peak_growth_mb": (st["VmHWM"] - rss0) / MiB if rss0 else None,
            "rss_after_growth_mb": (st["VmRSS"] - rss0) / MiB if rss0 else None,
            "hwm_reset": reset, "seconds": elapsed}


def measure(names, libs=LIBS, baselines=("creation", "warm"), threads=None, log=print):
    """``{config: {kind: {baseline: {lib: child result}}}}``, one fresh process each."""
    out = {}
    for name in names:
        for kind in ("infer", "train"):
            for baseline in baselines:
                for lib in libs:
                    if lib == "ort" and kind == "train":
                        continue
                    argv = [os.path.abspath(__file__), "--child", lib, kind, name, baseline]
                    if threads:
                        argv += ["--threads", str(threads)]
                    try:
                        r = C.run_alone(argv, timeout=900)
                    except Exception as exc:
                        r = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    out.setdefault(name, {}).setdefault(kind, {}).setdefault(baseline, {})[
                        lib] = r
                    log(f"  {name} {kind} {baseline} {lib}: " + (
                        f"+{r['peak_growth_mb']:.1f} MB peak" if r.get("peak_growth_mb")
                        is not None else r.get("error", "?")[:300]))
    return out


def evaluate(results):
    rows, targets = [], []
    for name, kinds in results.items():
        for kind, bases in kinds.items():
            for baseline, libs in bases.items():
                g = {lib: libs.get(lib, {}).get("peak_growth_mb") for lib in LIBS}
                ratio = g["cyrnn"] / g["torch"] if g["cyrnn"] is not None and g["torch"] else None
                thr = TARGETS[kind]
                status = "n/a" if ratio is None else ("MET" if ratio <= thr else "MISSED")
                if baseline == "creation":
                    targets.append({"target": f"{kind} peak growth <= {thr:g}x PyTorch",
                                    "config": name, "value": ratio, "threshold": thr,
                                    "status": status})
                rows.append([name, kind, baseline] + [
                    "–" if g[lib] is None else f"{g[lib]:.1f}" for lib in LIBS] + [
                    "–" if ratio is None else f"{ratio:.2f}x",
                    f"<= {thr:g}x: {status}" if baseline == "creation" else "(informative)"])
    md = C.markdown_table(["config", "kind", "baseline", "cyrnn MB", "torch MB", "ORT MB",
                           "cyrnn/torch", "target"], rows)
    return md, targets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", help=f"comma list from {','.join(CONFIGS)} "
                                      f"(default {','.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--libs", default=",".join(LIBS), help="comma list of cyrnn,torch,ort")
    ap.add_argument("--baselines", default="creation,warm",
                    help="creation (the issue's) and/or warm (after one call)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every library (default: each library's default; ORT: "
                         "the usable cores)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--out-name", default="memory", help="JSON file name without .json")
    ap.add_argument("--child", nargs=4, metavar=("LIB", "KIND", "CONFIG", "BASELINE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, threads=args.threads)))
        return 0
    names = [c.strip() for c in (args.configs or ",".join(DEFAULT_CONFIGS)).split(",")
             if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configs {bad}; choose from {list(CONFIGS)}")
    libs = [lib for lib in args.libs.split(",") if lib in LIBS]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = measure(names, libs, args.baselines.split(","), args.threads, log)
    md, targets = evaluate(results)
    path = os.path.join(args.out_dir, args.out_name + ".json")
    C.write_json(path, {"benchmark": "bench_memory", "args": vars(args),
                        "machine": C.machine_info(env_snapshot=C.START_ENV),
                        "calls": CALLS, "unit": "MiB", "results": results,
                        "targets": targets, "markdown_table": md})
    print(f"## Peak resident memory added by {CALLS} calls (MiB; fresh process each)\n")
    print(md)
    print("\nbaseline creation: from after model creation (first call included); warm: from "
          "after one call. Peak = VmHWM reset to VmRSS at the baseline (/proc/self/clear_refs)."
          "\n\n### Targets\n")
    for t in targets:
        v = "–" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"- [{t['status']}] cyrnn {t['config']}: {t['target']}: {v}")
    print(f"\nWrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
