"""Accuracy of bfloat16 weights (``cyrnn.scoring.load(path, weights="bfloat16")``).

Each model is trained in float32, saved, and scored twice from the file: with its
float32 weights and with the recurrent and Dense weights rounded to bfloat16 (the
arithmetic stays float32). Reported per task:

* **IMDB** (the course model of ``examples/imdb_sentiment.py``: Embedding 500x32,
  GRU 32, 10 epochs of RMSProp on the 5,000-review subset): test accuracy of both,
  the predictions that change, the largest change of a probability;
* **cosine** (one-step-ahead regression, ``cyrnn.datasets.make_cosine``, an
  ``LSTMRegressor`` with 32 hidden units): validation RMSE of both;
* **streaming drift**: ``lstm_med`` of ``bench_stream.py`` (3 x 480 LSTM, PyTorch's
  initialisation), 200 carried steps of one stream: the largest difference between
  the float32 and bfloat16 outputs at the first and the last step (does the error
  grow along the stream?).

    python benchmarks/bench_bf16_accuracy.py [--json benchmarks/results/bf16_accuracy.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, markdown_table, write_json  # noqa: E402


def both(est, folder, name):
    from cyrnn import scoring

    path = os.path.join(folder, f"{name}.cyrnn")
    est.save(path)
    return scoring.load(path), scoring.load(path, weights="bfloat16")


def imdb(folder):
    import imdb_sentiment as ex
    from cyrnn.estimators import GRUClassifier

    X_train, y_train, X_test, y_test = ex.prepare()
    clf = GRUClassifier(vocab_size=ex.VOCAB, embedding_dim=ex.EMBED, hidden_size=ex.HIDDEN,
                        optimizer="rmsprop", learning_rate=ex.LR, batch_size=ex.BATCH,
                        max_iter=ex.EPOCHS, random_state=ex.SEED).fit(X_train, y_train)
    f32, bf16 = both(clf, folder, "imdb")
    p32, p16 = f32.predict_proba(X_test), bf16.predict_proba(X_test)
    c32, c16 = f32.classes_[p32.argmax(1)], bf16.classes_[p16.argmax(1)]
    return {"accuracy_float32": float((c32 == y_test).mean()),
            "accuracy_bfloat16": float((c16 == y_test).mean()),
            "predictions_changed": int((c32 != c16).sum()), "n_test": int(len(y_test)),
            "max_abs_probability_change": float(np.abs(p32 - p16).max())}


def cosine(folder):
    from cyrnn.datasets import make_cosine
    from cyrnn.estimators import LSTMRegressor

    X, y = make_cosine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = LSTMRegressor(hidden_size=32, max_iter=60, learning_rate=1e-2,
                            random_state=0).fit(X[:100], y[:100])
    f32, bf16 = both(reg, folder, "cosine")
    Xv, yv = X[100:], y[100:]
    r32, r16 = f32.predict(Xv), bf16.predict(Xv)
    return {"rmse_float32": float(np.sqrt(np.mean((r32 - yv) ** 2))),
            "rmse_bfloat16": float(np.sqrt(np.mean((r16 - yv) ** 2))),
            "max_abs_prediction_change": float(np.abs(r32 - r16).max())}


def drift(folder, steps=200):
    import torch

    import cyrnn
    from cyrnn import scoring

    torch.manual_seed(0)
    module = torch.nn.LSTM(32, 480, num_layers=3, batch_first=True).eval()
    path = os.path.join(folder, "lstm_med.cyrnn")
    cyrnn.Sequential([cyrnn.from_torch(module)]).save(path)
    f32, bf16 = scoring.load(path), scoring.load(path, weights="bfloat16")
    xs = np.random.default_rng(0).standard_normal((steps, 1, 32)).astype(np.float32)
    s32 = s16 = None
    diffs = []
    for t in range(steps):
        y32, s32 = f32.step(xs[t], s32)
        y16, s16 = bf16.step(xs[t], s16)
        diffs.append(float(np.abs(y32 - y16).max()))
    return {"steps": steps, "max_abs_diff_first_step": diffs[0],
            "max_abs_diff_last_step": diffs[-1], "max_abs_diff_any_step": max(diffs),
            "output_scale": float(np.abs(y32).max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        res = {"imdb": imdb(folder), "cosine": cosine(folder), "drift": drift(folder)}
    i, c, d = res["imdb"], res["cosine"], res["drift"]
    print(markdown_table(["task", "float32", "bfloat16 weights", "change"], [
        ["IMDB test accuracy", f"{i['accuracy_float32']:.4f}", f"{i['accuracy_bfloat16']:.4f}",
         f"{i['predictions_changed']} of {i['n_test']} predictions; largest probability "
         f"change {i['max_abs_probability_change']:.2e}"],
        ["cosine validation RMSE", f"{c['rmse_float32']:.5f}", f"{c['rmse_bfloat16']:.5f}",
         f"largest prediction change {c['max_abs_prediction_change']:.2e}"],
        ["lstm_med stream, 200 steps", "", "",
         f"largest output difference: step 1 {d['max_abs_diff_first_step']:.2e}, step "
         f"{d['steps']} {d['max_abs_diff_last_step']:.2e}, any {d['max_abs_diff_any_step']:.2e}"
         f" (outputs up to {d['output_scale']:.2f})"]]))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
