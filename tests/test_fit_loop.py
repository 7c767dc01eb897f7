"""The fit loops of the estimators and the language model.

``test_fits_match_the_loops_they_replaced`` pins what the estimators' and the
language model's own epoch loops did before they shared ``run_epochs``: a digest of
the inputs of every ``train_step`` call (the batches, their order, padding, lengths
and weights), of the generators' final states and of the number of epochs, recorded
with the old loops for a dozen small fits. Those inputs depend only on the data and
the seed, never on floating-point round-off, so the digests hold on any machine;
equal inputs in equal order give bit-identical parameters (also checked directly on
the machine where the loops were replaced).
"""

import hashlib

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cyrnn import training
from cyrnn.estimators import (GRUClassifier, GRURegressor, LSTMClassifier, LSTMRegressor,
                              SimpleRNNClassifier, SimpleRNNRegressor)
from cyrnn.language_model import CharLanguageModel
from cyrnn.preprocessing import pad_sequences

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

NAMES = ["Aardonyx", "Abelisaurus", "Achelousaurus", "Acrocanthosaurus", "Aegyptosaurus",
         "Afrovenator", "Agilisaurus", "Alamosaurus", "Albertosaurus", "Allosaurus", "Ada", "Bo"]


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(1):
        yield


def _fixed(n=40, T=6, F=2, seed=0):
    X = np.random.default_rng(seed).normal(size=(n, T, F))
    return X, X[:, :, 0].sum(axis=1)


def _ragged(n=40, F=2, seed=0, low=2, high=10):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(low, high)), F)) for _ in range(n)]
    return X, np.array([x[:, 0].sum() for x in X])


def _tokens(n=60, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, vocab, size=int(rng.integers(3, 12))) for _ in range(n)]
    return seqs, np.array([int((s == 5).any()) for s in seqs])


def _warm():
    X, y = _fixed(30)
    est = GRURegressor(hidden_size=6, max_iter=2, warm_start=True, batch_size=8,
                       random_state=0).fit(X, y)
    return est.fit(X, y)


def _partial():
    X, y = _ragged(30, seed=8)
    est = LSTMRegressor(hidden_size=6, batch_size=8, random_state=0)
    est.partial_fit(X[:15], y[:15])
    return est.partial_fit(X[15:], y[15:])


def _token_ragged_seq():
    S, _ = _tokens(seed=5)
    sw = np.ones(len(S))
    sw[:7] = 0  # zero-weight sequences: some batches have nothing to learn from
    return GRUClassifier(hidden_size=6, vocab_size=20, max_iter=2, batch_size=8,
                         return_sequences=True, random_state=0).fit(
        S, [np.cumsum(s) % 3 for s in S], sample_weight=sw)


CASES = {  # name: (fit, train_step calls, digest recorded with the old loops)
    "fixed": (lambda: GRURegressor(hidden_size=6, max_iter=3, batch_size=8, random_state=0)
              .fit(*_fixed()), 15, "67c484a21d6ebd4f77ca4fa0"),
    "ragged_clf": (lambda: LSTMClassifier(hidden_size=6, max_iter=3, batch_size=8,
                                          random_state=1).fit(_ragged()[0], _ragged()[1] > 0),
                   15, "ebf6e8a1190cb56883d14285"),
    "pools": (lambda: SimpleRNNRegressor(hidden_size=4, max_iter=2, batch_size=2,
                                         random_state=2).fit(*_ragged(n=120, seed=3)),
              120, "332dd62ded9e583dc6662cdd"),
    "noshuffle": (lambda: GRURegressor(hidden_size=4, max_iter=2, batch_size=8, shuffle=False,
                                       random_state=0).fit(*_ragged(seed=4)),
                  10, "373cf175afa0863f333a4f01"),
    "token_table": (lambda: SimpleRNNClassifier(
        hidden_size=6, vocab_size=20, embedding_dim=4, max_iter=3, batch_size=8,
        random_state=0).fit(pad_sequences(_tokens()[0], maxlen=12), _tokens()[1]),
        24, "ba8bce8b2d582f4a7f718d56"),
    "token_ragged_seq": (_token_ragged_seq, 16, "45c425979b6de3aee5b30f3c"),
    "ragged_seq_reg": (lambda: LSTMRegressor(
        hidden_size=5, max_iter=2, batch_size=8, return_sequences=True, random_state=0,
        dtype="float64").fit(_ragged(seed=6)[0], [x[:, 0] * 2 for x in _ragged(seed=6)[0]]),
        10, "ec01b9eac3576903cd4725c3"),
    "early_stopping": (lambda: LSTMRegressor(
        hidden_size=6, max_iter=6, early_stopping=True, tol=0.0, n_iter_no_change=100,
        validation_fraction=0.2, batch_size=8, random_state=0).fit(*_fixed(60)),
        36, "5b407ffd3c77abf43b13343d"),
    "classifier_early": (lambda: GRUClassifier(
        hidden_size=6, max_iter=4, early_stopping=True, tol=0.0, n_iter_no_change=100,
        batch_size=8, random_state=0).fit(_ragged(60, seed=7)[0],
                                          np.digitize(_ragged(60, seed=7)[1], [-1, 1])),
        28, "02be6690e894588a399a4895"),
    "warm": (_warm, 16, "c7d0aebed29a0aa3a89a5f1d"),
    "partial": (_partial, 4, "44b4a1301861349f0c2b8f4a"),
    "lm_names": (lambda: CharLanguageModel(hidden_size=8, embedding_dim=4, batch_size=4,
                                           max_epochs=3, random_state=0).fit(NAMES),
                 9, "9581f2ce55aecff1d67c3bbe"),
    "lm_onehot_gru": (lambda: CharLanguageModel(
        cell="gru", hidden_size=8, embedding_dim=None, batch_size=5, max_epochs=2,
        num_layers=2, dtype=np.float64, random_state=3).fit(NAMES), 6,
        "c6233daf2984008167835c38"),
    "lm_text": (lambda: CharLanguageModel(hidden_size=8, embedding_dim=4, batch_size=3, bptt=7,
                                          max_epochs=2, random_state=0).fit(" ".join(NAMES * 3)),
                38, "c24e442593faabb23299d509"),
}


def _record(monkeypatch, fit):
    """Fit, hashing the inputs of every train_step call wherever it is called from."""
    import cyrnn.estimators.base as base
    import cyrnn.language_model as lm_module

    digest, calls, real = hashlib.sha256(), [0], training.train_step

    def feed(a):
        if a is None:
            digest.update(b"None")
            return
        a = np.asarray(a)
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())

    def step(model, optimizer, loss, x, y, lengths=None, mask=None, initial_states=None,
             sample_weight=None, return_states=False):
        calls[0] += 1
        for a in (x, y, lengths, mask, sample_weight):
            feed(a)
        feed(np.array([initial_states is None, return_states]))
        return real(model, optimizer, loss, x, y, lengths=lengths, mask=mask,
                    initial_states=initial_states, sample_weight=sample_weight,
                    return_states=return_states)

    for module in (training, base, lm_module):
        monkeypatch.setattr(module, "train_step", step)
    est = fit()
    monkeypatch.undo()
    rngs = (est._rng, est._sample_rng) if isinstance(est, CharLanguageModel) else (est._rng,)
    for rng in rngs:
        digest.update(repr(rng.bit_generator.state).encode())
    digest.update(repr(len(est.loss_curve_)).encode())
    return est, calls[0], digest.hexdigest()[:24]


@pytest.mark.parametrize("name", CASES)
def test_fits_match_the_loops_they_replaced(monkeypatch, name):
    fit, n_calls, expected = CASES[name]
    est, calls, digest = _record(monkeypatch, fit)
    assert (calls, digest) == (n_calls, expected)
    # ... and the same seed fits the same parameters, bit for bit
    np.testing.assert_array_equal(fit().model_.params.data, est.model_.params.data)
