"""Character generation and training speed: every cyrnn backend against PyTorch.

The model is the dinosaur-name default (``cyrnn.language_model.PRESETS['dinos']``):
embedding 32 -> LSTM 64 -> Dense(vocabulary 55), float32. Measured, as medians
of repeated runs:

* characters generated per second: ``CharLanguageModel.sample`` (the whole
  sampling loop in the backend's ``generate`` kernel) for a batch of 1 and of
  100 sequences of 50 characters (the end marker is excluded, so every sequence
  has the same length); PyTorch: the usual Python loop over characters
  (embedding, ``nn.LSTM`` step, ``nn.Linear``, softmax with temperature,
  ``torch.multinomial``) under ``torch.no_grad()``;
* seconds per training epoch on the 1,543 names: cyrnn's ``fit`` (batches of 32
  by length, Adam, clipping) against the same loop in PyTorch (padded batches,
  masked cross-entropy, Adam, ``clip_grad_norm_``).

Threads: 1 by default for everything (``--threads``): these matrices are small.
Results go to ``benchmarks/results/generate.json`` and a table is printed.

Run:  python benchmarks/bench_generate.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import cyrnn
from cyrnn.backends import available
from cyrnn.datasets import load_dinos
from cyrnn.language_model import EOS, PRESETS, CharLanguageModel

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
LENGTH = 50


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cyrnn_generation(lm, backend, n, repeats):
    """chars/s of lm.sample with the end marker banned (fixed-length sequences)."""
    lm.backend = backend
    banned = np.zeros(lm.vocab_size_, bool)
    banned[[0, 1, EOS]] = True
    forced = np.full((n, LENGTH), -1, np.int64)
    rng = np.random.default_rng(0)

    def run():
        tokens, lengths = lm._generate(n, np.zeros(0, np.int64), forced, banned, rng, 1.0, 0)
        assert int(lengths.sum()) == n * LENGTH
        return [lm.decode(t) for t in tokens]  # decoding is part of the job

    med, times = median_time(run, repeats)
    return n * LENGTH / med, times


def cyrnn_training(backend, names, repeats):
    settings = dict(PRESETS["dinos"], max_epochs=1)
    times = []
    for r in range(repeats + 1):
        lm = CharLanguageModel(**settings, backend=backend, random_state=r).fit(names)
        times.append(lm.train_time_)
    return statistics.median(times[1:]), times[1:]


def torch_benchmarks(names, chars, repeats, threads):
    import torch
    from torch import nn

    torch.set_num_threads(max(threads, 1) if threads else torch.get_num_threads())
    torch.manual_seed(0)
    V = len(chars) + 3
    index = {c: i + 3 for i, c in enumerate(chars)}

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 32)
            self.lstm = nn.LSTM(32, 64, batch_first=True)
            self.out = nn.Linear(64, V)

        def forward(self, x, state=None):
            h, state = self.lstm(self.emb(x), state)
            return self.out(h), state

    model = CharLSTM()

    def generate(n):
        with torch.no_grad():
            tok = torch.full((n,), 1, dtype=torch.long)
            state, out = None, []
            for _ in range(LENGTH):
                logits, state = model(tok[:, None], state)
                logits = logits[:, 0] / 1.0
                logits[:, [0, 1, EOS]] = -float("inf")
                tok = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
                out.append(tok)
            ids = torch.stack(out, 1).numpy()
        return ["".join(chars[i - 3] for i in row) for row in ids]

    result = {}
    for n in (1, 100):
        med, times = median_time(lambda: generate(n), repeats)
        result[f"chars_per_s_n{n}"] = n * LENGTH / med
        result[f"times_n{n}"] = times

    seqs = [[1] + [index[c] for c in s] + [EOS] for s in names]
    lens = np.array([len(s) - 1 for s in seqs])
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def epoch(seed):
        rng = np.random.default_rng(seed)
        opt = torch.optim.Adam(model.parameters(), lr=0.005)
        order = np.lexsort((rng.random(len(seqs)), lens))
        batches = [order[i:i + 32] for i in range(0, len(order), 32)]
        start = time.perf_counter()
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            T = int(lens[idx].max())
            x = np.zeros((len(idx), T), np.int64)
            y = np.zeros((len(idx), T), np.int64)
            for r, i in enumerate(idx):
                x[r, :lens[i]] = seqs[i][:-1]
                y[r, :lens[i]] = seqs[i][1:]
            mask = torch.from_numpy(np.arange(T)[None, :] < lens[idx][:, None]).float()
            opt.zero_grad()
            logits, _ = model(torch.from_numpy(x))
            loss = (loss_fn(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
                    * mask.reshape(-1)).sum() / mask.sum()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        return time.perf_counter() - start

    epoch(1000)  # warm-up
    times = [epoch(r) for r in range(repeats)]
    result["epoch_s"] = statistics.median(times)
    result["epoch_times"] = times
    result["version"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP/torch threads (0: libraries' defaults)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, for a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    names = load_dinos()
    limits = threadpool_limits(args.threads) if args.threads else None
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    lm = CharLanguageModel(**dict(PRESETS["dinos"], max_epochs=1), random_state=0).fit(names)
    rows = {}
    for backend in [b for b in available() if b != "cuda"]:  # the CPU backends
        row = {}
        for n in (1, 100):
            cps, times = cyrnn_generation(lm, backend, n, repeats)
            row[f"chars_per_s_n{n}"], row[f"times_n{n}"] = cps, times
        row["epoch_s"], row["epoch_times"] = cyrnn_training(backend, names, max(2, repeats // 2))
        rows[backend] = row
        print(f"  {backend}: done", file=sys.stderr)
    try:
        rows["torch"] = torch_benchmarks(names, lm.chars_, repeats, args.threads)
    except ImportError:
        print("  torch not installed: skipped", file=sys.stderr)
    if limits is not None:
        limits.restore_original_limits()

    report = {
        "benchmark": "character generation and training on dinosaur names",
        "model": "Embedding(55, 32) -> LSTM(32, 64) -> Dense(64, 55), float32",
        "sequence_length": LENGTH, "repeats": repeats, "threads": args.threads,
        "cyrnn_version": cyrnn.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(f"\nmedians of {repeats} runs, {args.threads or 'default'} thread(s), "
          f"load average {load_before[0]:.1f}" if load_before else "")
    print(f"{'backend':<10}{'chars/s (n=1)':>16}{'chars/s (n=100)':>18}{'s/epoch':>10}")
    for name, row in rows.items():
        print(f"{name:<10}{row['chars_per_s_n1']:>16,.0f}{row['chars_per_s_n100']:>18,.0f}"
              f"{row['epoch_s']:>10.3f}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
