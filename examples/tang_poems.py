"""Write Tang poems (五言绝句 / 五言律诗, and acrostic 藏头诗) with a character-level LSTM.

Trains ``cyrnn.CharLanguageModel`` with the ``tang`` preset (the defaults of
``cyrnn generate tang``): 4,000 five-character poems drawn from those written
with the 2,000 most frequent characters, 4- and 8-line poems together, 3 epochs
(about a minute on 2 cores). Then

* held-out perplexity on 300 other poems, against a unigram model (character
  frequencies of the training poems, add-one smoothing) on the same characters;
* quatrains, regulated (8-line) poems and acrostic poems, each checked for its
  exact form: five Chinese characters a line, ``，`` and ``。`` in place, and the
  acrostic's characters first.

Run:  python examples/tang_poems.py
"""

import math
import time
from collections import Counter

import numpy as np
from threadpoolctl import threadpool_limits

from cyrnn.language_model import PRESETS, CharLanguageModel, is_poem, prepare_corpus

settings = dict(PRESETS["tang"])
max_samples, max_vocab = settings.pop("max_samples"), settings.pop("max_vocab")
pool = prepare_corpus("tang", max_vocab=max_vocab)
order = np.random.default_rng(0).permutation(len(pool))
held_out = [pool[i] for i in order[:300]]
train = [pool[i] for i in order[300:300 + max_samples]]

with threadpool_limits(1):  # small matrices: one thread is fastest (see cyrnn.cli)
    start = time.perf_counter()
    lm = CharLanguageModel(**settings, random_state=0, verbose=True).fit(train)
    fit_time = time.perf_counter() - start
    known = [p for p in held_out if set(p) <= set(lm.chars_)]
    ppl = lm.perplexity(known)
    quatrains = lm.sample_poem(5, "quatrain", temperature=0.8, random_state=1)
    regulated = lm.sample_poem(2, "regulated", temperature=0.8, random_state=2)
    heads = ["春夏秋冬", "风花雪月"]
    acrostic = [lm.sample_poem(1, "quatrain", head=h, temperature=0.8, random_state=3)[0]
                for h in heads]

counts = Counter("".join(train))
counts["</s>"] = len(train)
total, V = sum(counts.values()), len(lm.chars_) + 1
nll = -sum(math.log((counts[c] + 1) / (total + V)) for p in known for c in [*p, "</s>"])
unigram = math.exp(nll / sum(len(p) + 1 for p in known))

print(f"\ntrained on {len(train)} poems ({lm.vocab_size_} tokens) in {fit_time:.1f} s, "
      f"final loss {lm.loss_curve_[-1]:.3f} nats/char")
print(f"held-out perplexity: {ppl:.1f} per character vs unigram {unigram:.1f} "
      f"({len(known)} poems)")
ok = all(is_poem(p, "quatrain") for p in quatrains) and \
    all(is_poem(p, "regulated") for p in regulated) and \
    all(is_poem(p, "quatrain", head=h) for p, h in zip(acrostic, heads))
print(f"every sample has its exact form: {ok}")


def show(poem):
    return "\n".join("  " + poem[i:i + 12] for i in range(0, len(poem), 12))


print("\n五言绝句 (quatrains):")
for p in quatrains:
    print(show(p) + "\n")
print("五言律诗 (regulated):")
for p in regulated:
    print(show(p) + "\n")
for h, p in zip(heads, acrostic):
    print(f"藏头诗 {h}:")
    print(show(p) + "\n")
