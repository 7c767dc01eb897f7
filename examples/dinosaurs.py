"""Invent dinosaur names with a character-level LSTM (the material's favourite demo).

Trains ``cyrnn.CharLanguageModel`` with its default settings on 90% of the 1,543
bundled dinosaur names, then reports

* the perplexity on the 10% held out (and, for scale, a unigram model's and a
  uniform guess's),
* of 100 names sampled at temperature 0.8: how many are new (not in the
  training list) and 4 to 20 letters long,

and prints a few samples (plain, greedy, with a prefix). About 10 seconds on 2 cores.

Run:  python examples/dinosaurs.py
"""

import math
import time
from collections import Counter

import numpy as np
from threadpoolctl import threadpool_limits

from cyrnn.datasets import load_dinos
from cyrnn.language_model import CharLanguageModel

names = load_dinos()
rng = np.random.default_rng(0)
order = rng.permutation(len(names))
held_out = [names[i] for i in order[:len(names) // 10]]
train = [names[i] for i in order[len(names) // 10:]]

# One BLAS/OpenMP thread: these matrices are small (see `cyrnn --help` / cyrnn.cli).
with threadpool_limits(1):
    start = time.perf_counter()
    lm = CharLanguageModel(random_state=0, verbose=True).fit(train)
    fit_time = time.perf_counter() - start
    known = [n for n in held_out if set(n) <= set(lm.chars_)]
    ppl = lm.perplexity(known)
    samples = lm.sample(100, temperature=0.8, random_state=1)
    greedy = lm.sample(1, top_k=1)[0]
    with_prefix = lm.sample(3, temperature=0.8, prefix="Tyranno", random_state=2)

# Unigram baseline on the same held-out characters (+ end markers), add-one smoothing.
counts = Counter("".join(train))
counts["</s>"] = len(train)
total, V = sum(counts.values()), len(lm.chars_) + 1
nll = -sum(math.log((counts[c] + 1) / (total + V)) for n in known for c in [*n, "</s>"])
unigram = math.exp(nll / sum(len(n) + 1 for n in known))

train_set = set(train)
new = [s for s in samples if s not in train_set]
good = [s for s in new if 4 <= len(s) <= 20]
print(f"\n{lm!r}: trained on {len(train)} names in {fit_time:.1f} s "
      f"({lm.max_epochs} epochs, final loss {lm.loss_curve_[-1]:.3f} nats/char)")
print(f"held-out perplexity: {ppl:.2f} per character ({len(known)} names; "
      f"unigram {unigram:.2f}, uniform guess {lm.vocab_size_})")
print(f"100 samples at temperature 0.8: {len(new)}% new, {len(good)}% new and 4-20 letters "
      f"long, {len(set(samples))} distinct")
print("samples:", ", ".join(samples[:10]))
print("greedy (top_k=1):", greedy)
print("prefix 'Tyranno':", ", ".join(with_prefix))
