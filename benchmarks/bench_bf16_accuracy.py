"""Accuracy of bfloat16 weights (``cyrnn.scoring.load(path, weights="bfloat16")``) and
of bfloat16 arithmetic (``compute="bfloat16"``).

Each model is trained in float32, saved, and scored from the file: with its float32
weights, with the recurrent and Dense weights rounded to bfloat16 (the arithmetic
stays float32), and, where the CPU has AVX-512 BF16, in bfloat16 arithmetic (the
products' inputs rounded to bfloat16 too, float32 accumulation). Reported per task:

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

``--train`` measures training in bfloat16 arithmetic instead (``train_compute="bfloat16"``,
where the CPU has AVX-512 BF16): the same IMDB and cosine models fitted with float32
and with bfloat16 products from the same seeds (IMDB 3, cosine 6), each scored in
float32: IMDB test accuracy, cosine validation RMSE, the final training loss and each
fit's wall time (indicative only; speed claims come from ``bench_bf16_training.py``),
per seed and their medians.

    python benchmarks/bench_bf16_accuracy.py --train [--json benchmarks/results/bf16_training_accuracy.json]
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


ARITHMETIC = False  # set by main: whether this CPU has AVX-512 BF16


def variants(est, folder, name):
    """``{variant: scorer}`` of ``est``'s file: "float32", "bfloat16" (weights) and,
    where available, "bfloat16_arithmetic"."""
    from cyrnn import scoring

    path = os.path.join(folder, f"{name}.cyrnn")
    est.save(path)
    out = {"float32": scoring.load(path), "bfloat16": scoring.load(path, weights="bfloat16")}
    if ARITHMETIC:
        out["bfloat16_arithmetic"] = scoring.load(path, compute="bfloat16")
    return out


def _arithmetic_available():
    from cyrnn.backends import get_backend

    return bool(get_backend("cython").bf16_arithmetic_available())


def imdb(folder):
    import imdb_sentiment as ex
    from cyrnn.estimators import GRUClassifier

    X_train, y_train, X_test, y_test = ex.prepare()
    clf = GRUClassifier(vocab_size=ex.VOCAB, embedding_dim=ex.EMBED, hidden_size=ex.HIDDEN,
                        optimizer="rmsprop", learning_rate=ex.LR, batch_size=ex.BATCH,
                        max_iter=ex.EPOCHS, random_state=ex.SEED).fit(X_train, y_train)
    scorers = variants(clf, folder, "imdb")
    p = {k: sc.predict_proba(X_test) for k, sc in scorers.items()}
    c = {k: scorers[k].classes_[v.argmax(1)] for k, v in p.items()}
    out = {"n_test": int(len(y_test))}
    for k in p:
        out[f"accuracy_{k}"] = float((c[k] == y_test).mean())
        if k != "float32":
            out[f"predictions_changed_{k}"] = int((c[k] != c["float32"]).sum())
            out[f"max_abs_probability_change_{k}"] = float(np.abs(p[k] - p["float32"]).max())
    return out


def cosine(folder):
    from cyrnn.datasets import make_cosine
    from cyrnn.estimators import LSTMRegressor

    X, y = make_cosine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = LSTMRegressor(hidden_size=32, max_iter=60, learning_rate=1e-2,
                            random_state=0).fit(X[:100], y[:100])
    scorers = variants(reg, folder, "cosine")
    Xv, yv = X[100:], y[100:]
    r = {k: sc.predict(Xv) for k, sc in scorers.items()}
    out = {}
    for k in r:
        out[f"rmse_{k}"] = float(np.sqrt(np.mean((r[k] - yv) ** 2)))
        if k != "float32":
            out[f"max_abs_prediction_change_{k}"] = float(np.abs(r[k] - r["float32"]).max())
    return out


def drift(folder, steps=200):
    import torch

    import cyrnn
    from cyrnn import scoring

    torch.manual_seed(0)
    module = torch.nn.LSTM(32, 480, num_layers=3, batch_first=True).eval()
    path = os.path.join(folder, "lstm_med.cyrnn")
    cyrnn.Sequential([cyrnn.from_torch(module)]).save(path)
    scorers = {"float32": scoring.load(path), "bfloat16": scoring.load(path, weights="bfloat16")}
    if ARITHMETIC:
        scorers["bfloat16_arithmetic"] = scoring.load(path, compute="bfloat16")
    xs = np.random.default_rng(0).standard_normal((steps, 1, 32)).astype(np.float32)
    states = dict.fromkeys(scorers)
    diffs = {k: [] for k in scorers if k != "float32"}
    for t in range(steps):
        ys = {}
        for k, sc in scorers.items():
            ys[k], states[k] = sc.step(xs[t], states[k])
        for k in diffs:
            diffs[k].append(float(np.abs(ys[k] - ys["float32"]).max()))
    out = {"steps": steps, "output_scale": float(np.abs(ys["float32"]).max())}
    for k, d in diffs.items():
        sfx = "" if k == "bfloat16" else f"_{k}"
        out.update({f"max_abs_diff_first_step{sfx}": d[0], f"max_abs_diff_last_step{sfx}": d[-1],
                    f"max_abs_diff_any_step{sfx}": max(d)})
    return out


def _timed_fit(est, X, y):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, time.perf_counter() - t0


def train_variants(seeds=3, cosine_seeds=6):
    """IMDB and cosine fitted with float32 and with bfloat16 products (``--train``), from
    the same seeds: per seed and the median."""
    import imdb_sentiment as ex
    from cyrnn.datasets import make_cosine
    from cyrnn.estimators import GRUClassifier, LSTMRegressor

    X_train, y_train, X_test, y_test = ex.prepare()
    Xc, yc = make_cosine()
    out = {"imdb": {"n_test": int(len(y_test)), "seeds": [ex.SEED + k for k in range(seeds)]},
           "cosine": {"seeds": list(range(cosine_seeds))}}
    for tc in ("float32", "bfloat16"):
        runs = []
        for seed in out["imdb"]["seeds"]:
            clf, secs = _timed_fit(GRUClassifier(
                vocab_size=ex.VOCAB, embedding_dim=ex.EMBED, hidden_size=ex.HIDDEN,
                optimizer="rmsprop", learning_rate=ex.LR, batch_size=ex.BATCH,
                max_iter=ex.EPOCHS, random_state=seed, train_compute=tc), X_train, y_train)
            runs.append({"accuracy": float((clf.predict(X_test) == y_test).mean()),
                         "final_loss": float(clf.loss_curve_[-1]), "fit_seconds": secs})
        out["imdb"][tc] = runs
        runs = []
        for seed in out["cosine"]["seeds"]:
            reg, secs = _timed_fit(LSTMRegressor(hidden_size=32, max_iter=60,
                                                 learning_rate=1e-2, random_state=seed,
                                                 train_compute=tc), Xc[:100], yc[:100])
            runs.append({
                "rmse": float(np.sqrt(np.mean((reg.predict(Xc[100:]) - yc[100:]) ** 2))),
                "final_loss": float(reg.loss_curve_[-1]), "fit_seconds": secs})
        out["cosine"][tc] = runs
        print(f"  {tc}: imdb {out['imdb'][tc]}, cosine {out['cosine'][tc]}", flush=True)
    return out


def main_train(args):
    if not ARITHMETIC:
        print("this CPU has no AVX-512 BF16: nothing to measure")
        return 0
    start = time.perf_counter()
    res = train_variants()
    rows = []
    for task, metric in (("imdb", "accuracy"), ("cosine", "rmse")):
        cells = []
        for key in (metric, "final_loss", "fit_seconds"):
            a = [r[key] for r in res[task]["float32"]]
            b = [r[key] for r in res[task]["bfloat16"]]
            cells.append(f"{np.median(a):.4g} -> {np.median(b):.4g} "
                         f"({', '.join(f'{u:.4g}/{v:.4g}' for u, v in zip(a, b))})")
        rows.append([f"{task} ({len(res[task]['seeds'])} seeds)", *cells])
    print(markdown_table(["task", "test metric, median (per seed float32/bfloat16)",
                          "final training loss", "fit seconds"], rows))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "results": res})
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--train", action="store_true",
                    help="training in bfloat16 arithmetic instead of bfloat16 scoring")
    args = ap.parse_args(argv)
    global ARITHMETIC
    ARITHMETIC = _arithmetic_available()
    if args.train:
        return main_train(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        res = {"imdb": imdb(folder), "cosine": cosine(folder), "drift": drift(folder)}
    i, c, d = res["imdb"], res["cosine"], res["drift"]
    rows = []
    for k, label in (("bfloat16", "bfloat16 weights"),
                     ("bfloat16_arithmetic", "bfloat16 arithmetic")):
        if f"accuracy_{k}" not in i:
            rows.append([label, "not available on this CPU", "", ""])
            continue
        sfx = "" if k == "bfloat16" else f"_{k}"
        rows.append([
            label,
            f"{i['accuracy_float32']:.4f} -> {i[f'accuracy_{k}']:.4f} "
            f"({i[f'predictions_changed_{k}']} of {i['n_test']} predictions changed; "
            f"probabilities by up to {i[f'max_abs_probability_change_{k}']:.2e})",
            f"{c['rmse_float32']:.5f} -> {c[f'rmse_{k}']:.5f} (predictions by up to "
            f"{c[f'max_abs_prediction_change_{k}']:.2e})",
            f"step 1 {d[f'max_abs_diff_first_step{sfx}']:.2e}, step {d['steps']} "
            f"{d[f'max_abs_diff_last_step{sfx}']:.2e}, any {d[f'max_abs_diff_any_step{sfx}']:.2e} "
            f"(outputs up to {d['output_scale']:.2f})"])
    print(markdown_table(["variant", "IMDB test accuracy (float32 -> variant)",
                          "cosine validation RMSE", "lstm_med stream, largest output difference"],
                         rows))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
