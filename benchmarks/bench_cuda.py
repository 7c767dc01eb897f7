#!/usr/bin/env python
"""cyrnn's CUDA backend against PyTorch/cuDNN on the GPU.

Run from the repository root on a machine with an NVIDIA GPU::

    PYTHONPATH=. python benchmarks/bench_cuda.py                 # pytest -m gpu, then timings
    PYTHONPATH=. python benchmarks/bench_cuda.py --configs medium --repeats 30
    PYTHONPATH=. python benchmarks/bench_cuda.py --tiny          # smoke test, no GPU needed

First it runs ``pytest -m gpu tests/test_cuda_backend.py`` (the CUDA backend's cases at
realistic shapes; its result is recorded, a failure stops the run). Then, per
configuration of ``_kernel_cases.CONFIGS`` (``LSTM/GRU(D, H)`` + ``Dense(H, 1)`` on the
last step, float32), it times inference and one training step (MSE, RMSProp with
clipping at norm 1) of cyrnn ``backend="cuda"`` and of the same network in PyTorch
(cuDNN) on the GPU, each from host NumPy in to host NumPy out (PyTorch copies its
input to the device and its output, or loss, back), after warm-up: medians of repeated
samples (``_common.median_time``). Writes ``benchmarks/results/cuda.json``.

``--tiny`` runs everything on tiny shapes under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set here before Numba is imported) and PyTorch on whatever
device it has (the CPU here): it proves the script runs, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CONFIGS = ("dino-b1", "score-b1", "medium", "large", "imdb")
# Issue 12's targets: batch-1 inference at least 2x faster than cuDNN, large training at
# least 0.5x cuDNN's speed (ratios are torch time / cyrnn time: > 1 means cyrnn faster).
TARGETS = {("dino-b1", "infer"): 2.0, ("score-b1", "infer"): 2.0, ("large", "train"): 0.5}


def run_gpu_tests(tiny):
    """``pytest -m gpu`` on the CUDA cases; returns ``(returncode, last lines)``."""
    env = dict(os.environ)
    if tiny:
        env.pop("NUMBA_ENABLE_CUDASIM", None)  # the GPU suite then skips itself
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "gpu", os.path.join(ROOT, "tests", "test_cuda_backend.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout.strip().splitlines()[-1:]


def torch_device_cases(cfg, model, x, y):
    """The PyTorch twin of ``model`` (same weights) on the GPU (else the CPU):
    ``(infer, train, device)`` from host NumPy to host NumPy."""
    import torch
    import _kernel_cases as K
    from cyrnn.interop import to_torch_state_dict

    cell, B, T, D, H = cfg
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = K.torch_net(cell, D, H)
    rnn_state = to_torch_state_dict(model.layers[0])
    state = {"rnn." + k: v for k, v in rnn_state.items()}
    state["head.weight"] = model.layers[1].params["weight"]
    state["head.bias"] = model.layers[1].params["bias"]
    K.load_weights(net, state)
    net.to(dev)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-6)
    lossf = torch.nn.MSELoss()
    params = list(net.parameters())

    def infer():
        with torch.inference_mode():
            return net(torch.from_numpy(x).to(dev)).cpu().numpy()

    def train():
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(torch.from_numpy(x).to(dev)), torch.from_numpy(y).to(dev))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return infer, train, str(dev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes under the CUDA simulator (a smoke test)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu first")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cuda.json"))
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
    sys.path.insert(0, HERE)
    import _common as C
    import _kernel_cases as K

    unknown = [c for c in args.configs if c not in K.CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {sorted(K.CONFIGS)}")
    result = {"machine": C.machine_info(C.START_ENV), "tiny": args.tiny, "cases": {}}
    if not args.skip_tests:
        rc, tail = run_gpu_tests(args.tiny)
        result["pytest_gpu"] = {"returncode": rc, "summary": tail}
        print("pytest -m gpu:", rc, *tail)
        if rc != 0:
            C.write_json(args.out, result)
            return rc
    import numpy as np

    from cyrnn.backends import get_backend
    from cyrnn.training import train_step

    cuda_mod = get_backend("cuda")  # a clear ValueError without a device or simulator
    from numba import cuda

    device = cuda.get_current_device()
    result["device"] = "CUDA simulator" if args.tiny else device.name.decode() if isinstance(
        device.name, bytes) else str(device.name)
    rows = []
    for name in args.configs:
        cfg = K.CONFIGS[name]
        if args.tiny:
            cell, B, T, D, H = cfg
            cfg = (cell, min(B, 2), min(T, 3), min(D, 3), min(H, 3))
        x, y = K.make_data(cfg, np.float32)
        model, opt = K.build_cyrnn(cfg, cuda_mod.NAME, np.float32)
        t_infer, t_train, dev = torch_device_cases(cfg, model, x, y)
        cases = {"cyrnn/infer": lambda: model.forward(x),
                 "cyrnn/train": lambda: train_step(model, opt, "mse", x, y),
                 "torch/infer": t_infer, "torch/train": t_train}
        np.testing.assert_allclose(cases["cyrnn/infer"](), t_infer(), rtol=1e-3, atol=1e-4)
        times = {k: C.median_time(fn, repeats=args.repeats, warmup=args.warmup,
                                  min_sample_seconds=0.0 if args.tiny else 0.002,
                                  max_number=1 if args.tiny else 10000)
                 for k, fn in cases.items()}
        entry = {"config": dict(zip(("cell", "B", "T", "D", "H"), cfg)), "torch_device": dev,
                 "times": times}
        for kind in ("infer", "train"):
            ratio = times[f"torch/{kind}"].median / times[f"cyrnn/{kind}"].median
            entry[f"{kind}_speedup_vs_torch"] = ratio
            target = TARGETS.get((name, kind))
            if target is not None:
                entry[f"{kind}_target"] = target
                entry[f"{kind}_target_met"] = bool(ratio >= target) and not args.tiny
            rows.append([name, kind, C.fmt_time_ms(times[f"cyrnn/{kind}"]),
                         C.fmt_time_ms(times[f"torch/{kind}"]), C.fmt_ratio(ratio),
                         "-" if target is None else f">= {target}"])
        result["cases"][name] = entry
    print(C.markdown_table(["config", "call", "cyrnn cuda", f"torch ({dev})",
                            "torch / cyrnn", "target"], rows))
    C.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
