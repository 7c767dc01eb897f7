"""IMDB sentiment with a GRU: cyrnn's GRUClassifier beside PyTorch.

The material's architecture: embedding 500 x 32 -> GRU 32 -> one sigmoid
output; RMSProp (lr 1e-3), batch 128, 10 epochs; reviews pre-padded or
truncated to 500 word ids, id 0 (padding) masked. Data: the 5,000 / 1,000
review subset that ships with cyrnn (``cyrnn.datasets.load_imdb_subset``;
vocabulary 500, id 1 = start, 2 = out-of-vocabulary).

The PyTorch model has the same shape, the same initialisation scheme as cyrnn's
(Keras's, with orthogonal recurrent blocks: uniform embedding, Glorot input
weights, each recurrent gate block orthogonal, zero biases), the same RMSProp constants (decay 0.9, eps 1e-6), batch size and
epochs; padding is skipped with packed sequences, which is what cyrnn's mask
does. torch is optional: without it that part is skipped.

Run from the repository root::

    python examples/imdb_sentiment.py
"""

import sys
import time

import numpy as np

from cyrnn.datasets import load_imdb_subset
from cyrnn.estimators import GRUClassifier
from cyrnn.preprocessing import pad_sequences

VOCAB, EMBED, HIDDEN, MAXLEN = 500, 32, 32, 500
LR, BATCH, EPOCHS, SEED = 1e-3, 128, 10, 0


def run_cyrnn(X_train, y_train, X_test, y_test):
    clf = GRUClassifier(vocab_size=VOCAB, embedding_dim=EMBED, hidden_size=HIDDEN,
                        optimizer="rmsprop", learning_rate=LR, batch_size=BATCH,
                        max_iter=EPOCHS, random_state=SEED, verbose=1)
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    return clf.score(X_test, y_test), seconds


def run_torch(X_train, y_train, X_test, y_test):
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, EMBED)
            self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
            self.out = nn.Linear(HIDDEN, 1)
            with torch.no_grad():  # Keras's initialisation, as cyrnn's
                nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
                nn.init.xavier_uniform_(self.gru.weight_ih_l0)
                for block in self.gru.weight_hh_l0.chunk(3):
                    nn.init.orthogonal_(block)
                nn.init.zeros_(self.gru.bias_ih_l0)
                nn.init.zeros_(self.gru.bias_hh_l0)
                nn.init.xavier_uniform_(self.out.weight)
                nn.init.zeros_(self.out.bias)

        def forward(self, ids):
            # pre-padded rows -> post-padded + lengths, so padding is skipped (masked)
            lengths = (ids != 0).sum(1)
            order = torch.argsort(ids != 0, dim=1, descending=True, stable=True)
            post = torch.gather(ids, 1, order)
            packed = pack_padded_sequence(self.embedding(post), lengths.cpu(),
                                          batch_first=True, enforce_sorted=False)
            _, h_n = self.gru(packed)
            return self.out(h_n[-1])[:, 0]

    net = Net()
    opt = torch.optim.RMSprop(net.parameters(), lr=LR, alpha=0.9, eps=1e-6)
    loss_fn = nn.BCEWithLogitsLoss()
    Xtr, ytr = torch.from_numpy(X_train.astype(np.int64)), torch.from_numpy(y_train).float()
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        net.train()
        order = rng.permutation(len(Xtr))
        total = 0.0
        for s in range(0, len(order), BATCH):
            idx = torch.from_numpy(order[s:s + BATCH])
            opt.zero_grad()
            loss = loss_fn(net(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"torch epoch {epoch + 1}/{EPOCHS}: loss {total / len(Xtr):.4f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(X_test.astype(np.int64)))
    accuracy = float(((logits > 0).numpy().astype(np.int64) == y_test).mean())
    return accuracy, seconds


def prepare():
    """(X_train, y_train, X_test, y_test): the reviews pre-padded/truncated to MAXLEN."""
    train_reviews, y_train, test_reviews, y_test = load_imdb_subset()
    X_train = pad_sequences(train_reviews, maxlen=MAXLEN)  # pre-padding, pre-truncation
    X_test = pad_sequences(test_reviews, maxlen=MAXLEN)
    return X_train, y_train.astype(np.int64), X_test, y_test.astype(np.int64)


def main():
    X_train, y_train, X_test, y_test = prepare()
    print(f"{len(X_train)} training and {len(X_test)} test reviews, padded to {MAXLEN} ids")

    acc, seconds = run_cyrnn(X_train, y_train, X_test, y_test)
    rows = [("cyrnn GRUClassifier", acc, seconds)]
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: skipping the PyTorch comparison")
    else:
        rows.append(("PyTorch nn.GRU", *run_torch(X_train, y_train, X_test, y_test)))
    print(f"\n{'model':<22}{'test accuracy':>15}{'train time':>14}")
    for name, acc, seconds in rows:
        print(f"{name:<22}{acc:>15.3f}{seconds:>12.1f} s")


if __name__ == "__main__":
    main()
