"""One time step of several streams at once: ``layer.step`` against ``Scorer.step``.

Both compute exactly the same outputs (stepping equals the whole sequence at every
batch size, tested). A call of 4+ rows takes the packed kernels; a layer packs its
weights per call (they may change between calls), a scorer loaded from a file packs
them once, on its first such call. This script measures what that costs at the
Vollo-sized stacked LSTMs of ``bench_stream.py`` (32 input features, no head,
carried state), for 1, 4, 8 and 16 streams, cyrnn only.

Run (quiet machine, from the repository root)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. \\
        python benchmarks/bench_multistream.py

Writes ``benchmarks/results/multistream.json`` and prints two tables (median and IQR
of interleaved samples, microseconds per call, with the load average seen): the steps,
and whole sequences of a few rows and steps (``model.forward``), where a forward of 4+
rows either packs its weights per call or, for a few steps, reads them as stored.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (interleaved_times, load_average, machine_info,  # noqa: E402
                     markdown_table, write_json)

import numpy as np  # noqa: E402

MODELS = {"lstm_tiny": (2, 128), "lstm_med": (3, 480)}
FEATURES = 32


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lstm_tiny,lstm_med")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--whole", default="4x1,4x6,8x3,64x1,256x1",
                    help="rows x steps of the whole-sequence cases ('' for none)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "multistream.json"))
    args = ap.parse_args(argv)
    import cyrnn
    from cyrnn import scoring

    rng = np.random.default_rng(0)
    load_start = load_average()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            layers, hidden = MODELS[name]
            layer = cyrnn.LSTM(FEATURES, hidden, num_layers=layers, random_state=1)
            path = os.path.join(tmp, f"{name}.cyrnn")
            cyrnn.Sequential([layer]).save(path)
            scorer = scoring.load(path)
            for n in (int(s) for s in args.streams.split(",")):
                x = rng.normal(size=(n, FEATURES)).astype(np.float32)
                _, state = layer.step(x, None)
                _, sstate = scorer.step(x, None)
                y1, _ = layer.step(x, state)
                y2, _ = scorer.step(x, sstate)
                assert np.array_equal(y1, y2)  # the same outputs, both ways
                times = interleaved_times(
                    {"layer.step": lambda: layer.step(x, state),
                     "Scorer.step": lambda: scorer.step(x, sstate)},
                    repeats=args.repeats, warmup=5, block=3, settle_seconds=0.05)
                lt, st = times["layer.step"], times["Scorer.step"]
                rows.append([name, n, f"{lt.median * 1e6:.0f} (±{lt.rel_iqr:.0%})",
                             f"{st.median * 1e6:.0f} (±{st.rel_iqr:.0%})",
                             f"{lt.median / st.median:.2f}x"])
                results.append({"model": name, "streams": n,
                                "layer_step_us": lt.median * 1e6,
                                "scorer_step_us": st.median * 1e6,
                                "layer_step": lt, "scorer_step": st})
        whole_rows, whole = [], []
        for name in args.models.split(","):
            layers, hidden = MODELS[name]
            model = cyrnn.Sequential([cyrnn.LSTM(FEATURES, hidden, num_layers=layers,
                                                 random_state=1)])
            cases = {}
            for spec in filter(None, args.whole.split(",")):
                n, T = (int(v) for v in spec.split("x"))
                x = rng.normal(size=(n, T, FEATURES)).astype(np.float32)
                cases[spec] = (lambda x=x: model.forward(x))
            times = interleaved_times(cases, repeats=args.repeats, warmup=3, block=3,
                                      settle_seconds=0.05)
            for spec, t in times.items():
                whole_rows.append([name, spec, f"{t.median * 1e6:.0f} (±{t.rel_iqr:.0%})"])
                whole.append({"model": name, "rows_x_steps": spec, "forward_us": t.median * 1e6,
                              "timing": t})
    table = markdown_table(["model", "streams", "layer.step us", "Scorer.step us",
                            "layer / scorer"], rows)
    print(table)
    whole_table = markdown_table(["model", "rows x steps", "model.forward us"], whole_rows)
    print(whole_table)
    table += "\n\n" + whole_table
    results.append({"whole_sequences": whole})
    print(f"load average: {load_start} at start, {load_average()} at end")
    write_json(args.out, {"benchmark": "multistream", "args": vars(args),
                          "machine": dict(machine_info(), load_average_start=load_start,
                                          load_average_end=load_average()),
                          "results": results, "markdown_table": table})


if __name__ == "__main__":
    main()
