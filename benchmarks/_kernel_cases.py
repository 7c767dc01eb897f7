"""The models of the kernel benchmarks (``bench_kernels.py``, ``bench_memory.py``), their
PyTorch and ONNX Runtime twins, and the "alone" runs of the competitors.

The configurations, data and cyrnn model; its twins (``nn.LSTM/GRU(batch_first=True)`` +
``nn.Linear`` on the last step); their inference and training-step callables, ONNX export and
ONNX Runtime sessions. cyrnn, torch and onnxruntime are imported inside the functions, so a process that
uses only one of them never loads the others.

Run as a script, it is the *alone* process of ``bench_kernels.py``'s fairness check: it
times one competitor case, on inputs the parent saved (data, weights or the ONNX model),
in a fresh process that imports only that library and numpy::

    python benchmarks/_kernel_cases.py --case torch/train --inputs cfg.npz --threads 2 \\
        --repeats 7 --warmup 1 --max-seconds 3 --min-sample-ms 2

and prints ``{"median": seconds, ...}`` as the last line of stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# name: (cell, B, T, D, H)
CONFIGS = {
    "dino-b1": ("lstm", 1, 12, 27, 50),
    "dino-b32": ("lstm", 32, 12, 27, 50),
    "imdb": ("gru", 128, 500, 32, 32),
    "medium": ("lstm", 64, 50, 32, 128),
    "large": ("lstm", 64, 100, 256, 512),
    "score-b1": ("lstm", 1, 50, 8, 64),
}


def make_data(cfg, dtype, seed=1234):
    cell, B, T, D, H = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    y = rng.standard_normal((B, 1)).astype(dtype)
    return x, y


def build_cyrnn(cfg, backend, dtype, seed=0):
    """``Sequential([LSTM/GRU(D, H, return_sequences=False), Dense(H, 1)])`` and its
    ``RMSProp(lr=1e-3, clip_norm=1.0)``."""
    import cyrnn
    from cyrnn.optim import RMSProp

    cell, B, T, D, H = cfg
    Layer = cyrnn.LSTM if cell == "lstm" else cyrnn.GRU
    rnn = Layer(D, H, return_sequences=False, return_state=False, backend=backend, dtype=dtype,
                random_state=seed)
    head = cyrnn.Dense(H, 1, dtype=dtype, random_state=seed + 1)
    model = cyrnn.Sequential([rnn, head])
    opt = RMSProp(model, lr=1e-3, clip_norm=1.0)
    return model, opt


def torch_net(cell, D, H, dtype=np.float32):
    """``nn.LSTM/GRU(D, H, batch_first=True)`` + ``nn.Linear(H, 1)`` on the last step."""
    import torch

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
            self.rnn = rnn(D, H, batch_first=True)
            self.head = torch.nn.Linear(H, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    net = TorchNet()
    return net.double() if np.dtype(dtype) == np.float64 else net


def load_weights(net, state):
    """Copy ``{name: ndarray}`` (``net.state_dict()`` names) into ``net``."""
    import torch

    with torch.no_grad():
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return net


def torch_cases(net, x, y, autocast=False):
    """``(infer, train)`` callables: inference under ``torch.inference_mode()``; a training
    step (zero_grad, forward, MSELoss, backward, clip_grad_norm_ 1.0, RMSprop lr=1e-3,
    alpha=0.9, eps=1e-6: the rule of cyrnn's RMSProp). ``autocast``: both under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` (PyTorch's mixed precision: its
    products in bfloat16, float32 parameters; the loss in float32)."""
    import contextlib

    import torch

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-6)
    lossf = torch.nn.MSELoss()
    params = list(net.parameters())

    def mixed():
        return (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
                else contextlib.nullcontext())

    def infer():
        with torch.inference_mode(), mixed():
            return net(tx)

    def train():
        opt.zero_grad(set_to_none=True)
        with mixed():
            out = net(tx)
        loss = lossf(out.float(), ty)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    return infer, train


def torch_threads_hooks(n):
    """before/after hooks that run a torch case at ``n`` threads."""
    import torch

    saved = []

    def before():
        saved.append(torch.get_num_threads())
        if saved[-1] != n:
            torch.set_num_threads(n)

    def after():
        prev = saved.pop()
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)

    return before, after


def export_onnx(net, x):
    """Export ``net`` for input ``x``; returns (model bytes, exporter description)."""
    import inspect

    import torch

    tx = torch.from_numpy(x)
    net.eval()
    params = inspect.signature(torch.onnx.export).parameters
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "dynamo" in params:
            try:
                buf = io.BytesIO()
                torch.onnx.export(net, (tx,), buf, dynamo=False, input_names=["x"],
                                  output_names=["y"])
                return buf.getvalue(), ("torch.onnx.export(dynamo=False) "
                                        "(legacy TorchScript exporter)")
            except Exception as exc:
                errors.append(f"legacy exporter (dynamo=False): {type(exc).__name__}: {exc}")
        try:
            prog = torch.onnx.export(net, (tx,), dynamo=True, input_names=["x"],
                                     output_names=["y"])
            return prog.model_proto.SerializeToString(), "torch.onnx.export (default exporter)"
        except Exception as exc:
            errors.append(f"default exporter: {type(exc).__name__}: {exc}")
    raise RuntimeError("ONNX export impossible: " + " | ".join(errors))


def ort_session_case(model_bytes, x, threads):
    """ONNX Runtime CPU session on ``model_bytes`` with ``intra_op_num_threads=threads``;
    returns ``(infer, session)``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3          # errors are reported by the script, not ORT's logger
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}

    def infer():
        return sess.run(None, feed)[0]

    return infer, sess


# ----------------------------------------------------------------------------- alone runs
def save_inputs(path, cell, x, y, torch_state=None, onnx_models=None):
    """What an alone process needs: data, torch weights (``torch_state``: name -> array) and
    ONNX models (``onnx_models``: case name -> bytes)."""
    arrays = {"x": x, "y": y, "cell": np.array(cell)}
    for k, v in (torch_state or {}).items():
        arrays["torch:" + k] = np.asarray(v)
    for k, v in (onnx_models or {}).items():
        arrays["onnx:" + k] = np.frombuffer(v, dtype=np.uint8)
    np.savez(path, **arrays)


def alone_argv(case, inputs, threads, timing):
    """argv (after the interpreter) of an alone run of ``case`` ("torch/infer",
    "torch/train", "torch-bf16/train" (autocast), "ort/infer", "ort-cyrnn/infer");
    ``timing``: repeats, warmup,
    max_seconds, min_sample_ms."""
    return [os.path.abspath(__file__), "--case", case, "--inputs", inputs,
            "--threads", str(threads)] + [
        a for k in ("repeats", "warmup", "max_seconds", "min_sample_ms")
        for a in (f"--{k.replace('_', '-')}", str(timing[k]))]


def _alone_main(argv=None):
    ap = argparse.ArgumentParser(description="time one competitor case alone")
    ap.add_argument("--case", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--min-sample-ms", type=float, default=2.0)
    args = ap.parse_args(argv)
    impl, kind = args.case.split("/")
    with np.load(args.inputs) as z:
        data = {k: z[k] for k in z.files}
    x, y = data["x"], data["y"]
    info = {}
    if impl.startswith("torch"):
        import torch
        torch.set_num_threads(args.threads)
        state = {k[6:]: v for k, v in data.items() if k.startswith("torch:")}
        D, H = x.shape[2], state["rnn.weight_hh_l0"].shape[1]
        net = load_weights(torch_net(str(data["cell"]), D, H, x.dtype), state)
        fn = dict(zip(("infer", "train"),
                      torch_cases(net, x, y, autocast=impl == "torch-bf16")))[kind]
        info["torch_threads"] = torch.get_num_threads()
    else:
        fn, _ = ort_session_case(data["onnx:" + impl].tobytes(), x, args.threads)
        info["intra_op_num_threads"] = args.threads
    t = C.median_time(fn, repeats=args.repeats, warmup=args.warmup,
                      max_seconds=args.max_seconds, min_sample_seconds=args.min_sample_ms / 1e3)
    print(json.dumps({"median": t.median, "timing": t.to_dict(keep_times=False),
                      "env_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(_alone_main())
