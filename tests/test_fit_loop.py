"""The one fit loop (cyrnn.fitting) and the one batcher (cyrnn.batching).

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
from cyrnn.batching import LengthBatcher, pad, sorted_batches
from cyrnn.estimators import (GRUClassifier, GRURegressor, LSTMClassifier, LSTMRegressor,
                              SimpleRNNClassifier, SimpleRNNRegressor)
from cyrnn.fitting import History, Progress, Stopping, run_epochs
from cyrnn.language_model import CharLanguageModel
from cyrnn.preprocessing import pad_sequences
from test_estimators import make_fixed as _fixed
from test_estimators import make_ragged as _ragged
from test_estimators import make_tokens as _tokens

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

NAMES = ["Aardonyx", "Abelisaurus", "Achelousaurus", "Acrocanthosaurus", "Aegyptosaurus",
         "Afrovenator", "Agilisaurus", "Alamosaurus", "Albertosaurus", "Allosaurus", "Ada", "Bo"]


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(1):
        yield


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


# ---------------------------------------------------------------- the batcher
def test_length_batcher_groups_by_length_and_shuffles():
    lengths = np.random.default_rng(1).integers(1, 30, size=103)
    batcher = LengthBatcher(4, lengths, pool_batches=5)
    rng = np.random.default_rng(0)
    epochs = [batcher.epoch(rng) for _ in range(2)]
    for batches in epochs:
        assert sorted(np.concatenate(batches).tolist()) == list(range(103))  # each once
        assert all(len(b) <= 4 for b in batches)
        assert all((np.diff(lengths[b]) >= 0).all() for b in batches)  # sorted in a batch
    assert [b.tolist() for b in epochs[0]] != [b.tolist() for b in epochs[1]]
    # one pool: the tightest batches, the same multiset of lengths every epoch
    tight = LengthBatcher(4, lengths, pool_batches=None).epoch(rng)
    spans = sorted(int(np.ptp(lengths[b])) for b in tight)
    assert sum(spans) <= 29 and sorted(np.concatenate(tight).tolist()) == list(range(103))
    # shuffle=False draws nothing and keeps the order; no lengths: plain chunks
    state = rng.bit_generator.state
    fixed = LengthBatcher(4, lengths, pool_batches=None).epoch(rng, shuffle=False)
    assert rng.bit_generator.state == state
    assert [b.tolist() for b in fixed] == [b.tolist() for b in
                                           sorted_batches(lengths, 4)]
    plain = LengthBatcher(4, n=10).epoch(rng, shuffle=False)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="draw"):
        LengthBatcher(4, lengths, draw="sorted")


def test_uniform_draw_is_the_language_models_old_order():
    """draw='uniform' with one pool is what CharLanguageModel.fit computed inline."""
    lengths = np.random.default_rng(2).integers(1, 6, size=37)
    ours = LengthBatcher(5, lengths, pool_batches=None, draw="uniform").epoch(
        np.random.default_rng(7))
    rng = np.random.default_rng(7)
    order = np.lexsort((rng.random(37), lengths))
    chunks = [order[i:i + 5] for i in range(0, 37, 5)]
    old = [chunks[i] for i in rng.permutation(len(chunks))]
    assert [b.tolist() for b in ours] == [b.tolist() for b in old]


def test_pad():
    items = [np.ones((3, 2), np.float32), np.full((1, 2), 2, np.float32), np.zeros((2, 2))]
    out = pad(items, [1, 0])
    assert out.shape == (2, 3, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], [[2, 2], [0, 0], [0, 0]])
    assert pad(items, [1], T=4, dtype=np.float64).shape == (1, 4, 2)
    assert pad([np.array([5, 6]), np.array([7])], [0, 1], dtype=np.int64).tolist() == \
        [[5, 6], [7, 0]]


# ---------------------------------------------------------------- the loop
class _Model:
    """What run_epochs needs of a model: a flat parameter vector and clear_caches."""

    def __init__(self):
        self.params = type("P", (), {"data": np.zeros(3)})()
        self.cleared = 0

    def clear_caches(self):
        self.cleared += 1


def test_run_epochs_bookkeeping():
    model, history = _Model(), History()
    losses = iter([4.0, 2.0, None, 1.0, 1.0, 1.0])
    calls = []

    def step(batch):
        value = next(losses)
        model.params.data += 1
        return None if value is None else (value, batch)

    result = run_epochs(model, history, epochs=3, batches=lambda: [1, 3],
                        step=step, start_loss=lambda: calls.append(1) or 5.0)
    # weighted means: (4*1 + 2*3)/4, the skipped batch does not count, then 1
    assert history.loss_curve == [2.5, 1.0, 1.0] and calls == [1]
    assert not result.stopped and result.seconds >= 0 and model.cleared == 1
    # a warm start continues the history; its start loss is a reference too
    run_epochs(model, history, epochs=1, batches=lambda: [1], step=lambda b: (1.5, 1),
               start_loss=lambda: calls.append(2) or 5.0)
    assert history.loss_curve == [2.5, 1.0, 1.0, 1.5] and calls == [1, 2]
    # ... so a warm start on data the model fits badly (its loss there 20, ten times
    # more than before) is no divergence, and one far above that still is
    run_epochs(model, history, epochs=1, batches=lambda: [1], step=lambda b: (19.0, 1),
               start_loss=lambda: 20.0)
    with pytest.raises(ValueError, match="more than 10 times its reference 20"):
        run_epochs(model, history, epochs=1, batches=lambda: [1], step=lambda b: (201.0, 1),
                   start_loss=lambda: 20.0)


def test_divergence_spread_over_calls_is_caught():
    """Each call's start counts as a reference up to 10 times the earlier ones: a loss
    rising fivefold in every partial_fit call on the same data (each call starting
    where the last ended) raises once it is 100 times the first epoch's."""
    model, history = _Model(), History()
    run_epochs(model, history, epochs=1, batches=lambda: [1], step=lambda b: (1.0, 1),
               start_loss=lambda: 1.0)
    for call in range(1, 10):
        start = history.loss_curve[-1]
        try:
            run_epochs(model, history, epochs=1, batches=lambda: [1],
                       step=lambda b: (5.0 * start, 1), start_loss=lambda: start)
        except ValueError as exc:
            assert "more than 10 times its reference 10 " in str(exc)
            break
    else:
        pytest.fail("a loss rising fivefold per call was never reported")
    assert call == 3 and history.loss_curve == [1.0, 5.0, 25.0, 125.0]
    # earlier losses of 0 (no cap to take from them): the start counts whole
    from cyrnn.training import check_divergence
    with pytest.raises(ValueError, match="reference 5 "):
        check_divergence([0.0, 0.0, 1e6], np.zeros(2), start_loss=5.0)


def test_run_epochs_divergence_and_stopping(capsys):
    model = _Model()
    with pytest.raises(ValueError, match=r"the loss became nan in epoch 1; do this"):
        run_epochs(model, History(), epochs=2, batches=lambda: [0],
                   step=lambda b: (float("nan"), 1), advice="do this")
    with pytest.raises(ValueError, match="more than 10 times its reference 1"):
        run_epochs(model, History(), epochs=1, batches=lambda: [0],
                   step=lambda b: (11.0, 1), start_loss=lambda: 1.0)
    # the training loss stops improving by tol: stop after n_iter_no_change + 1 epochs
    history = History()
    result = run_epochs(model, history, epochs=50, batches=lambda: [0],
                        step=lambda b: (1.0, 1), stopping=Stopping(0.1, 2),
                        progress=Progress(True, 50))
    assert result.stopped and len(history.loss_curve) == 4 and history.best_loss == 1.0
    err = capsys.readouterr().err
    assert "epoch 4/50" in err and "Training loss did not improve more than tol=0.1" in err
    # with a held-out score, its best weights come back
    scores = iter([0.5, 0.9, 0.1, 0.2])

    def step(batch):
        model.params.data += 1
        return 1.0, 1

    history = History()
    run_epochs(model, history, epochs=4, batches=lambda: [0], step=step,
               stopping=Stopping(0.0, 10, score=lambda m: next(scores)))
    assert history.validation_scores == [0.5, 0.9, 0.1, 0.2]
    assert history.best_validation_score == 0.9
    np.testing.assert_array_equal(model.params.data, np.full(3, 2.0))  # after epoch 2


def test_language_model_progress_bar(capsys):
    CharLanguageModel(hidden_size=4, embedding_dim=2, max_epochs=2, batch_size=3,
                      verbose=True, random_state=0).fit(NAMES[:6])
    err = capsys.readouterr().err
    assert "training" in err and "epoch 2/2, loss" in err
