"""Training faults (issue 15, items 4-6): divergence that stays finite, interrupted
fits, and targets or weights that train_step must refuse before any state changes."""

import copy
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import cyrnn
from cyrnn.estimators import (GRUClassifier, GRURegressor, LSTMClassifier, LSTMRegressor,
                              SimpleRNNClassifier)
from cyrnn.language_model import CharLanguageModel
from cyrnn.optim import SGD
from cyrnn import training
from cyrnn.training import train_step

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Niklaus", "Frances"]


def _data(kind):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6, 3))
    s = X[:, :, 0].sum(axis=1)
    return X, {"reg": s, "bin": (s > 0).astype(int), "multi": np.digitize(s, [-1, 1])}[kind]


def _state(est):
    """Everything a failed fit must leave as it was."""
    return {"params": est.model_.params.data.copy(), "curve": list(est.loss_curve_),
            "n_iter": est.n_iter_, "opt": copy.deepcopy(est._optimizer_state),
            "rng": copy.deepcopy(est._rng.bit_generator.state),
            "pred": est.predict(_data("reg")[0])}


def _assert_same(a, b):
    np.testing.assert_array_equal(a["params"], b["params"])
    np.testing.assert_array_equal(a["pred"], b["pred"])
    assert a["curve"] == b["curve"] and a["n_iter"] == b["n_iter"] and a["rng"] == b["rng"]
    assert a["opt"][0] == b["opt"][0]
    for k, v in a["opt"][1].items():
        np.testing.assert_array_equal(v, b["opt"][1][k])


# --------------------------------------------------------------- item 4
def test_the_rule():
    check_divergence = training.check_divergence
    assert training.DIVERGENCE_FACTOR == 10
    p = np.zeros(3)
    check_divergence([1.0, 0.5, 9.9], p)                  # below 10x the first epoch
    with pytest.raises(ValueError, match="diverged"):
        check_divergence([1.0, 0.5, 10.5], p)
    check_divergence([50.0], p)                           # no reference yet
    with pytest.raises(ValueError, match="epoch 1"):
        check_divergence([50.0], p, start_loss=2.0)        # the first epoch vs the start
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_divergence([1.0], np.array([0.0, np.inf]))
    assert "10" in check_divergence.__doc__
    # the loss of predicting zero on the current data is a reference too (a warm start
    # on larger targets), but not alone
    check_divergence([0.1, 0.08, 19.9], p, baseline=20.0)
    with pytest.raises(ValueError, match="diverged"):
        check_divergence([0.1, 0.08, 201.0], p, baseline=20.0)
    check_divergence([50.0], p, baseline=1.0)


@pytest.mark.parametrize("cls", [GRURegressor, LSTMRegressor])
def test_continued_fits_on_larger_targets_are_not_divergence(cls):
    # a stream whose targets grow: the loss grows with them (as MLPRegressor's would)
    X, y = _data("reg")
    est = cls(hidden_size=4, max_iter=3, random_state=0).partial_fit(X[:30], 0.1 * y[:30])
    est.partial_fit(X[30:], 20 * y[30:])
    assert est.loss_curve_[1] > 100 * est.loss_curve_[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(hidden_size=4, max_iter=3, random_state=0).fit(X[:30], 0.1 * y[:30])
        est.set_params(warm_start=True).fit(X[30:], 20 * y[30:])
    assert len(est.loss_curve_) == 6


def test_partial_fit_on_data_the_model_fits_badly_is_not_divergence():
    """A model trained on one regime and then on another starts the new data at a high
    loss (confidently wrong, its parameters sane): the loss of the model on the call's
    data before the call trains it is a reference of every call, not only of a fresh
    fit's first epoch. Before, the earlier epochs' losses (on other data) were the
    reference, and every later call on the new data raised, whatever it did."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6, 3)).astype(np.float32)
    clf = LSTMClassifier(hidden_size=8, optimizer="adam", learning_rate=0.05, random_state=0)
    for _ in range(120):  # regime 1: every label 0
        clf.partial_fit(X[:20], np.zeros(20, int), classes=[0, 1])
    start = clf.loss_curve_[-1]
    clf.partial_fit(X[20:], np.ones(20, int))  # regime 2: every label 1
    assert clf.loss_curve_[-1] > 10 * max(start, clf.loss_curve_[0])  # what used to raise
    for _ in range(3):
        clf.partial_fit(X[20:], np.ones(20, int))
    assert clf.loss_curve_[-1] < clf.loss_curve_[-4]  # it learns the new regime
    assert np.isfinite(clf.model_.params.data).all()


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_divergence_on_the_layer_path_is_reported_as_divergence(backend):
    # the NumPy backend trains through the layers: a Dense layer that refused the NaN
    # of a diverged recurrent layer blamed the user's (finite) x instead
    if backend not in cyrnn.backends.available():
        pytest.skip(f"{backend} backend not available")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6, 2))
    y = X[:, :, 0].sum(axis=1) * 1e5
    est = LSTMRegressor(hidden_size=4, max_iter=3, batch_size=3, optimizer="sgd",
                        learning_rate=1e36, backend=backend, random_state=0)
    with pytest.raises(ValueError, match="training diverged"):
        est.fit(X, y)


def test_one_large_target_anywhere_is_not_divergence():
    """The loss of predicting zero, a reference of the rule, covers every row: on a
    sample of rows one large target outside it made a sound first epoch look diverged
    (row 1 here; row 0 was in the sample), so the outcome depended on the row order."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3, 1)).astype(np.float32)
    y = rng.normal(size=2000)
    curves = []
    for row in (0, 1):
        yy = y.copy()
        yy[row] = 300.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = GRURegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, yy)
        curves.append(est.loss_curve_[0])
    assert 40 < min(curves) and max(curves) < 50  # about mean(y**2): nothing diverged


CASES = [(GRURegressor, "reg", "rmsprop"), (LSTMRegressor, "reg", "adam"),
         (LSTMClassifier, "bin", "rmsprop"), (GRUClassifier, "multi", "adam"),
         (SimpleRNNClassifier, "multi", "rmsprop")]


@pytest.mark.parametrize("cls,task,opt", CASES, ids=[f"{c.__name__}-{o}" for c, _, o in CASES])
def test_finite_divergence_raises_and_changes_nothing(cls, task, opt):
    X, y = _data(task)
    kw = dict(hidden_size=8, optimizer=opt, max_iter=4, random_state=0)
    fresh = cls(learning_rate=1e3, **kw)
    with pytest.raises(ValueError, match="diverged"):
        fresh.fit(X, y)
    assert not hasattr(fresh, "model_")

    est = cls(learning_rate=1e-2, **kw).fit(X, y)
    before = _state(est)
    est.set_params(learning_rate=1e3, warm_start=True)
    with pytest.raises(ValueError, match="diverged"):
        est.fit(X, y)
    _assert_same(before, _state(est))
    for _ in range(3):  # a few diverging epochs, one partial_fit call each
        try:
            est.partial_fit(X, y)
        except ValueError as exc:
            assert "diverged" in str(exc)
            break
    else:
        pytest.fail("three partial_fit calls at learning_rate=1e3 did not diverge")


def test_language_model_divergence_raises_and_keeps_the_fitted_model():
    for opt in ("adam", "rmsprop", "sgd"):
        lm = CharLanguageModel(hidden_size=16, optimizer=opt, learning_rate=1e3, max_epochs=3,
                               random_state=0)
        with pytest.raises(ValueError, match="diverged"):
            lm.fit(NAMES)
        assert not hasattr(lm, "model_")
    lm = CharLanguageModel(hidden_size=16, max_epochs=3, random_state=0).fit(NAMES)
    params, curve = lm.model_.params.data.copy(), list(lm.loss_curve_)
    lm.learning_rate = 1e3
    with pytest.raises(ValueError, match="diverged"):
        lm.fit(NAMES + ["Zuse"])
    with pytest.raises(ValueError, match="diverged"):
        lm.fit_text(" ".join(NAMES * 20))
    np.testing.assert_array_equal(lm.model_.params.data, params)
    assert lm.loss_curve_ == curve and lm.mode_ == "sequences" and "Z" not in lm.chars_


# --------------------------------------------------------------- item 5
class _Interrupt:
    """Replaces train_step / tbptt: the real one until call ``after``, then Ctrl-C."""

    def __init__(self, real, after):
        self.real, self.after, self.calls = real, after, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("mode", ["sequences", "text"])
def test_interrupted_fit_leaves_the_model_as_it_was(monkeypatch, mode):
    import cyrnn.language_model as lm_module

    data = NAMES if mode == "sequences" else " ".join(NAMES * 10)
    name = "train_step" if mode == "sequences" else "tbptt"
    real = getattr(lm_module, name)

    fresh = CharLanguageModel(hidden_size=8, batch_size=2, bptt=8, max_epochs=20,
                              random_state=0)
    monkeypatch.setattr(lm_module, name, _Interrupt(real, after=10))
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(data)
    assert not hasattr(fresh, "model_") and not hasattr(fresh, "loss_curve_")
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh.save("never-written.cyrnn")

    monkeypatch.setattr(lm_module, name, real)
    lm = CharLanguageModel(hidden_size=8, batch_size=2, bptt=8, max_epochs=2,
                           random_state=0).fit(data)
    before = {k: copy.deepcopy(v) for k, v in vars(lm).items() if k.endswith("_")}
    params = lm.model_.params.data.copy()
    samples = lm.sample(3, random_state=1)
    lm.max_epochs = 20
    monkeypatch.setattr(lm_module, name, _Interrupt(real, after=10))
    with pytest.raises(KeyboardInterrupt):
        lm.fit(["Zuse", "Hopper"] if mode == "sequences" else "Zuse Hopper " * 20)
    after = {k: v for k, v in vars(lm).items() if k.endswith("_")}
    assert after.keys() == before.keys()
    for k in ("chars_", "vocab_size_", "mode_", "max_length_", "loss_curve_", "train_time_"):
        assert after[k] == before[k], k
    np.testing.assert_array_equal(lm.model_.params.data, params)
    assert lm.sample(3, random_state=1) == samples


# --------------------------------------------------------------- item 6
def _model(backend, seq, out, rng):
    layers = [cyrnn.GRU(3, 5, return_sequences=seq, backend=backend, random_state=rng),
              cyrnn.Dense(5, out, random_state=rng)]
    return cyrnn.Sequential(layers)


BAD_TARGETS = [
    # (per-step?, outputs, loss, y, sample_weight, message)
    (False, 1, "mse", np.array([[np.nan], [1.0]]), None, "NaN"),
    (False, 1, "mse", np.ones((2, 1)), [np.inf, 1.0], "finite"),
    (False, 1, "mse", np.ones((2, 1)), [-1.0, 1.0], "non-negative"),
    (False, 1, "mse", np.ones((2, 1)), [0.0, 0.0], "positive"),
    (False, 1, "mse", np.ones((2, 1)), [1.0, 1.0, 1.0], "sample_weight must have shape"),
    (True, 1, "mse", np.ones((4, 2)), None, "output's shape"),   # (T, n) for (n, T, 1)
    (True, 1, "mse", np.ones((2, 4, 2)), None, "output's shape"),
    (False, 3, "softmax_cross_entropy", np.array([0, np.nan]), None, "whole numbers"),
    (False, 3, "softmax_cross_entropy", np.array([0, 3]), None, r"\[0, 3\)"),
    (False, 3, "softmax_cross_entropy", np.array([0, -1]), None, r"\[0, 3\)"),
    (False, 3, "softmax_cross_entropy", np.array([0.0, 2.7]), None, "whole numbers"),
    (False, 3, "softmax_cross_entropy", np.array([0, 1, 2]), None, "labels must have shape"),
    (True, 3, "softmax_cross_entropy", np.zeros((4, 2), int), None, "labels must have shape"),
    (False, 1, "sigmoid_binary_cross_entropy", np.array([[0.0], [2.0]]), None, r"\[0, 1\]"),
    (False, 1, "mse", np.array([["a"], ["b"]]), None, "numeric"),
]


@pytest.mark.parametrize("seq,out,loss,y,sw,match", BAD_TARGETS)
def test_train_step_refuses_bad_targets_before_any_change(backend, rng, seq, out, loss, y,
                                                          sw, match):
    model = _model(backend, seq, out, rng)
    opt = SGD(model, lr=0.1, momentum=0.9)
    x = rng.normal(size=(2, 4, 3))
    good = np.zeros((2, 4, out) if seq else (2, out)) if loss != "softmax_cross_entropy" \
        else np.zeros((2, 4) if seq else (2,), int)
    train_step(model, opt, loss, x, good)  # momentum state and gradients exist
    data, grad, opt_state = model.params.data.copy(), model.params.grad.copy(), opt.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        train_step(model, opt, loss, x, y, sample_weight=sw)
    np.testing.assert_array_equal(model.params.data, data)
    np.testing.assert_array_equal(model.params.grad, grad)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(v, opt_state[k])
    assert np.isfinite(model.params.data).all()


def test_train_step_still_takes_the_forms_it_took(backend, rng):
    model = _model(backend, True, 1, rng)
    opt = SGD(model, lr=0.01)
    x = rng.normal(size=(2, 4, 3))
    for y in (np.zeros((2, 4, 1)), np.zeros((2, 4)), np.zeros((2, 4, 1)).tolist()):
        assert np.isfinite(train_step(model, opt, "mse", x, y, lengths=[4, 2],
                                      sample_weight=np.ones((2, 4))))
    clf = _model(backend, False, 3, rng)
    assert np.isfinite(train_step(clf, SGD(clf, lr=0.01), "softmax_cross_entropy", x,
                                  np.array([2.0, 0.0])))
