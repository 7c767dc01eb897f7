"""Quality on the material's tasks, with fixed seeds and budgets that fit CI.

(a) cosine one-step-ahead regression with LSTMRegressor: validation RMSE <= 0.05;
(b) load_digits as 8 steps of 8 features with GRUClassifier: test accuracy >= 0.95;
(c) the IMDB subset with the material's architecture (embedding 500 x 32, GRU 32,
    sigmoid output, RMSProp 1e-3, batch 128, id 0 masked): test accuracy >= 0.65
    on the real test split, with a smaller budget than examples/imdb_sentiment.py
    (reviews cut to 200 ids, 4 epochs instead of 500 ids and 10).
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from cyrnn.estimators import GRUClassifier, LSTMRegressor
from cyrnn.preprocessing import pad_sequences

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_cosine_one_step_ahead_lstm():
    series = np.cos(np.arange(200))
    windows = np.lib.stride_tricks.sliding_window_view(series, 51)
    X, y = windows[:, :50], windows[:, 50]        # 50 steps of one feature -> next value
    X_train, y_train, X_val, y_val = X[:100], y[:100], X[100:150], y[100:150]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LSTMRegressor(hidden_size=32, optimizer="adam", learning_rate=1e-2, max_iter=30,
                            batch_size=25, random_state=0).fit(X_train, y_train)
    rmse = float(np.sqrt(np.mean((est.predict(X_val) - y_val) ** 2)))
    print(f"cosine validation RMSE: {rmse:.4f}")
    assert rmse <= 0.05


def test_digits_gru():
    digits = load_digits()
    X = digits.data.reshape(-1, 8, 8) / 16.0      # 8 rows = 8 steps of 8 pixels
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = GRUClassifier(optimizer="adam", learning_rate=1e-2, max_iter=30,
                            random_state=0).fit(X_train, y_train)
    accuracy = clf.score(X_test, y_test)
    print(f"digits test accuracy: {accuracy:.4f}")
    assert accuracy >= 0.95


def _read_imdb(path):
    """A small private reader (cyrnn.datasets is another issue's)."""
    with np.load(path, allow_pickle=False) as d:
        def split(part):
            tokens, offsets = d[f"{part}_tokens"], d[f"{part}_offsets"]
            return ([tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)],
                    d[f"{part}_labels"].astype(np.int64))
        return split("train"), split("test")


def test_imdb_gru_sentiment():
    path = DATA / "imdb_subset.npz"
    if not path.exists():
        pytest.skip(f"IMDB subset not found at {path} (the shared data folder is absent)")
    (train, y_train), (test, y_test) = _read_imdb(path)
    X_train = pad_sequences(train, maxlen=200)      # pre-padding/truncation, id 0 masked
    X_test = pad_sequences(test, maxlen=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = GRUClassifier(vocab_size=500, embedding_dim=32, hidden_size=32,
                            optimizer="rmsprop", learning_rate=1e-3, batch_size=128,
                            max_iter=4, random_state=0).fit(X_train, y_train)
    assert clf.model_.layers[-1].out_features == 1          # one sigmoid logit
    assert len(X_test) == 1000
    accuracy = clf.score(X_test, y_test)
    print(f"IMDB test accuracy: {accuracy:.4f}")
    assert accuracy >= 0.65
