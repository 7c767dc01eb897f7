"""Per-call overhead of the compiled plan: the Python work around the fused call.

For a layer call ``layer(x)``, ``Sequential.forward(x)``, ``layer.step`` and
``Sequential.step`` at batch 1, the time of the public call minus the time of the bare
backend call it makes (``infer`` with the same arguments), interleaved, medians of
repeated samples. The difference is validation, plan lookup, output allocation and
packaging.

    python benchmarks/bench_overhead.py                 # cython and numba
    python benchmarks/bench_overhead.py --backends cython
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_times, load_average, markdown_table  # noqa: E402


def cases(backend, B=1, T=12, D=27, H=50):
    import cyrnn

    rng = np.random.default_rng(0)
    layer = cyrnn.LSTM(D, H, backend=backend, random_state=0).eval()
    model = cyrnn.Sequential([cyrnn.LSTM(D, H, return_state=False, backend=backend,
                                         random_state=0)])
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    x_t = np.ascontiguousarray(x[:, 0])
    state = (np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32))
    lp, mp = layer._plan(), model._plan()
    x1 = np.ascontiguousarray(x_t[:, None, :])
    return {
        "layer(x)": (lambda: layer(x),
                     lambda: lp.infer(lp.spec, layer.params.data, x, None, None, None, True)),
        "Sequential.forward(x)": (lambda: model.forward(x),
                                  lambda: mp.infer(mp.spec, model.params.data, x)),
        "layer.step(x_t, state)": (lambda: layer.step(x_t, state),
                                   lambda: lp.infer(lp.spec, layer.params.data, x1, None,
                                                    state[0], state[1], True)),
        "Sequential.step(x_t, states)": (lambda: model.step(x_t, [state]),
                                         lambda: mp.infer(mp.spec, model.params.data, x1,
                                                          None, state[0], state[1], True)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["cython", "numba"])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    rows = []
    for be in args.backends:
        for name, (public, bare) in cases(be).items():
            t = interleaved_times({"public": public, "bare": bare}, repeats=args.repeats,
                                  warmup=5)
            p, b = t["public"].median, t["bare"].median
            rows.append([be, name, f"{p * 1e6:.1f}", f"{b * 1e6:.1f}", f"{(p - b) * 1e6:.1f}"])
    print(f"# bench_overhead: LSTM 27 -> 50, batch 1, 12 steps (steps: 1); load "
          f"{load_average()}")
    print(markdown_table(["backend", "call", "public us", "bare fused call us",
                          "overhead us"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
