"""The scikit-learn estimators: API, input kinds, training options, bad input, state."""

import copy
import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

import cyrnn
from conftest import BACKENDS  # the CPU backends
from cyrnn.estimators import (ESTIMATORS, GRUClassifier, GRURegressor, LSTMClassifier,
                              LSTMRegressor, SimpleRNNClassifier, SimpleRNNRegressor)
from cyrnn.preprocessing import SequenceStandardScaler, pad_sequences

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

REGRESSORS = [LSTMRegressor, GRURegressor, SimpleRNNRegressor]
CLASSIFIERS = [LSTMClassifier, GRUClassifier, SimpleRNNClassifier]
SMALL = dict(hidden_size=8, max_iter=3, random_state=0)


def make_fixed(n=40, T=6, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, :, 0].sum(axis=1)


def make_ragged(n=40, F=2, seed=0, low=2, high=10):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(low, high)), F)) for _ in range(n)]
    return X, np.array([x[:, 0].sum() for x in X])


def make_tokens(n=60, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, vocab, size=int(rng.integers(3, 12))) for _ in range(n)]
    return seqs, np.array([int((s == 5).any()) for s in seqs])


def params_of(est):
    return est.model_.params.data.copy()


def fitted_state(est):
    """Everything fit sets, as comparable plain values."""
    out = {}
    params = est.get_params()
    for key, value in vars(est).items():
        if key in params:
            continue
        if key == "model_":
            out[key] = params_of(est)
        elif key == "_rng":
            out[key] = value.bit_generator.state
        elif key == "_optimizer_state":
            out[key] = (value[0], {k: np.copy(v) for k, v in value[1].items()})
        else:
            out[key] = copy.deepcopy(value)
    return out


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "_optimizer_state":
            assert a[key][0] == b[key][0]
            for k in a[key][1]:
                np.testing.assert_array_equal(a[key][1][k], b[key][1][k])
        elif isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


# ---------------------------------------------------------------------------
# scikit-learn API
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ESTIMATORS)
def test_init_stores_params_verbatim_and_validates_in_fit(cls):
    est = cls(hidden_size=-3, optimizer="nope", dtype="float16")
    assert est.hidden_size == -3 and est.optimizer == "nope"
    X, y = make_fixed(10)
    y = y if cls in REGRESSORS else (y > 0).astype(int)
    with pytest.raises(ValueError, match="'(hidden_size|optimizer|dtype)' parameter"):
        est.fit(X, y)
    assert not hasattr(est, "model_")
    with pytest.raises(ValueError, match="'dtype' parameter"):
        cls(dtype="float16").fit(X, y)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_clone_get_set_params(cls):
    est = cls(hidden_size=5, learning_rate=0.01, random_state=3)
    params = est.get_params()
    assert params["hidden_size"] == 5 and params["random_state"] == 3
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    twin.set_params(hidden_size=7, batch_size=4)
    assert twin.hidden_size == 7 and est.hidden_size == 5
    extra = {"activation"} if cls.__name__.startswith("Simple") else \
        {"reset_after"} if cls.__name__.startswith("GRU") else set()
    assert extra <= set(params)
    assert ("class_weight" in params) == (cls in CLASSIFIERS)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_unfitted_raises_not_fitted(cls):
    X, _ = make_fixed(5)
    with pytest.raises(NotFittedError):
        cls().predict(X)


class MyGRURegressor(GRURegressor):
    """A user's subclass (module level: pickle finds it)."""


class MyLSTMClassifier(LSTMClassifier):
    pass


@pytest.mark.parametrize("Mine", [MyGRURegressor, MyLSTMClassifier])
def test_a_subclass_predicts_as_its_base_and_save_refuses_it(Mine, tmp_path):
    """A user's subclass scores as the estimator it derives from (the fast path
    included); save() refuses it before writing, since the file cannot restore it."""
    from cyrnn.scoring import from_estimator

    base = Mine.__mro__[1]
    X, y = make_fixed()
    if base is LSTMClassifier:
        y = (y > 0).astype(int)
    mine, ref = Mine(**SMALL).fit(X, y), base(**SMALL).fit(X, y)
    np.testing.assert_array_equal(mine.predict(X), ref.predict(X))
    assert mine.score(X, y) == ref.score(X, y)
    if base is LSTMClassifier:
        np.testing.assert_array_equal(mine.predict_proba(X), ref.predict_proba(X))
    np.testing.assert_array_equal(from_estimator(mine).predict(X), ref.predict(X))
    assert np.isfinite(cross_val_score(Mine(**SMALL), X, y, cv=2)).all()
    path = tmp_path / "mine.cyrnn"
    with pytest.raises(TypeError, match=f"{Mine.__name__} derives from cyrnn.{base.__name__}"):
        mine.save(path)
    assert not path.exists()
    again = pickle.loads(pickle.dumps(mine))
    assert type(again) is Mine
    np.testing.assert_array_equal(again.predict(X), ref.predict(X))
    with pytest.raises(TypeError, match="needs a fitted cyrnn estimator"):
        from_estimator(object())


@pytest.mark.parametrize("cls, seeds", [(GRURegressor, (6, 7, 11)),
                                         (GRUClassifier, (3, 4, 10))])
def test_early_stopping_with_a_zero_weight_validation_split(cls, seeds, monkeypatch):
    """Most weights zero: these seeds hold out only zero-weighted rows (checked below),
    which are scored unweighted (the regressor raised scikit-learn's r2_score error;
    the classifiers' split is stratified, hence other seeds)."""
    X, y = make_fixed(n=100, T=4)
    if cls is GRUClassifier:
        y = (y > 0).astype(int)
    sw = np.r_[np.zeros(90), np.ones(10)]
    held = []
    score = cls._score_flat

    def spy(self, raw, yy, weights, target_spec):
        held.append(float(np.sum(weights)))
        return score(self, raw, yy, weights, target_spec)

    monkeypatch.setattr(cls, "_score_flat", spy)
    for seed in seeds:
        held.clear()
        est = cls(hidden_size=4, max_iter=2, random_state=seed, early_stopping=True)
        est.fit(X, y, sample_weight=sw)
        assert held and held[0] == 0  # the case under test
        assert np.isfinite(est.validation_scores_).all()


def test_pipeline_with_scaler_fixed_and_ragged():
    for X, y in (make_fixed(30), make_ragged(30)):
        X = X * 50 + 7 if isinstance(X, np.ndarray) else [x * 50 + 7 for x in X]
        pipe = make_pipeline(SequenceStandardScaler(), GRURegressor(**SMALL)).fit(X, y)
        assert pipe.predict(X).shape == (30,)
        assert np.isfinite(pipe.score(X, y))


@pytest.mark.parametrize("ragged", [False, True])
def test_grid_search_parallel(ragged):
    X, y = make_ragged(36) if ragged else make_fixed(36)
    labels = (y > 0).astype(int)
    pipe = make_pipeline(SequenceStandardScaler(), GRUClassifier(max_iter=2, random_state=0))
    grid = GridSearchCV(pipe, {"gruclassifier__hidden_size": [4, 8],
                               "gruclassifier__learning_rate": [1e-3, 1e-2]},
                        cv=2, n_jobs=2, error_score="raise").fit(X, labels)
    assert grid.best_params_["gruclassifier__hidden_size"] in (4, 8)
    assert grid.best_estimator_.predict(X).shape == (36,)
    assert len(grid.cv_results_["mean_test_score"]) == 4


def test_cross_val_score_ragged_lists_and_object_arrays():
    X, y = make_ragged(30)
    obj = np.empty(len(X), dtype=object)
    obj[:] = X
    for data in (X, obj):
        scores = cross_val_score(LSTMRegressor(**SMALL), data, y, cv=3)
        assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_backend_identical_predictions(cls, backend):
    X, y = make_ragged(30, seed=1)
    y = y if cls in REGRESSORS else (y > 0).astype(int)
    kw = dict(hidden_size=6, max_iter=3, backend=backend, dropout=0.3, num_layers=2)
    a = cls(random_state=7, early_stopping=True, n_iter_no_change=1, **kw).fit(X, y)
    b = cls(random_state=7, early_stopping=True, n_iter_no_change=1, **kw).fit(X, y)
    c = cls(random_state=8, early_stopping=True, n_iter_no_change=1, **kw).fit(X, y)
    np.testing.assert_array_equal(params_of(a), params_of(b))
    get = (lambda e: e.predict_proba(X)) if cls in CLASSIFIERS else (lambda e: e.predict(X))
    np.testing.assert_array_equal(get(a), get(b))
    assert not np.array_equal(params_of(a), params_of(c))


def test_predictions_depend_on_batching_only_by_rounding():
    X, y = make_ragged(70, seed=2)
    est = GRURegressor(**SMALL).fit(X, y)
    full = est.predict(X)
    one_by_one = np.concatenate([est.predict([x]) for x in X[:5]])
    np.testing.assert_allclose(full[:5], one_by_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full[::-1], est.predict(X[::-1]), rtol=1e-5, atol=1e-6)
    est64 = GRURegressor(**SMALL, dtype="float64").fit(X, y)
    full64 = est64.predict(X)
    np.testing.assert_allclose(full64[:5], np.concatenate([est64.predict([x]) for x in X[:5]]),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [GRURegressor, LSTMClassifier])
def test_set_params_backend_moves_the_fitted_network(cls, tmp_path):
    """``set_params(backend=...)`` on a fitted or loaded estimator moves its network,
    so predictions run there (as after a pickle round trip, which rebuilds the model);
    an unavailable backend raises before anything changes, and a file fitted on one
    (say 'cuda') is scored elsewhere after ``set_params(backend='auto')``. Predictions
    themselves change nothing (the README's recipe; before, predict ignored it)."""
    X, y = make_fixed(20, seed=3)
    y = y if cls in REGRESSORS else (y > 0).astype(int)
    get = (lambda e: e.predict_proba(X)) if cls in CLASSIFIERS else (lambda e: e.predict(X))
    est = cls(**SMALL).fit(X, y)
    before = get(est)
    recurrent = [layer for layer in est.model_.layers if hasattr(layer, "backend")]
    assert est.set_params(backend="numpy") is est
    assert {layer.backend for layer in recurrent} == {"numpy"}
    on_numpy = get(est)
    np.testing.assert_array_equal(on_numpy, get(pickle.loads(pickle.dumps(est))))
    np.testing.assert_allclose(on_numpy, before, rtol=1e-5, atol=1e-6)
    est.set_params(backend="auto")
    np.testing.assert_array_equal(get(est), before)  # the fast path's plan follows too
    with pytest.raises(TypeError, match="backend must be a string"):
        est.set_params(backend=3)
    assert est.backend == "auto" and {layer.backend for layer in recurrent} == {"auto"}
    # another key failing after backend was set: the network follows what was set
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(backend="numpy", bogus=1)
    assert {layer.backend for layer in recurrent} == {est.backend}
    est.set_params(backend="auto")
    if "cuda" in cyrnn.backends.available():
        return  # (the rest needs a backend that is not available here)
    with pytest.raises(ValueError, match="'cuda' is not available"):
        est.set_params(backend="cuda")
    assert est.backend == "auto" and {layer.backend for layer in recurrent} == {"auto"}
    est.backend = "cuda"  # what a file saved after a fit on a GPU holds
    est.save(tmp_path / "cuda.cyrnn")
    loaded = cyrnn.load(tmp_path / "cuda.cyrnn")
    with pytest.raises(ValueError, match="'cuda' is not available"):
        get(loaded)
    np.testing.assert_array_equal(get(loaded.set_params(backend="auto")), before)


def test_the_fast_path_scorer_lives_and_dies_with_the_model():
    # kept in a WeakKeyDictionary keyed by the model, whose scorer held the model:
    # every fitted model stayed alive for the life of the process
    import gc
    import weakref
    X, y = make_fixed(20, seed=3)
    est = GRURegressor(**SMALL).fit(X, y)
    est.predict(X)
    ref = weakref.ref(est.model_)
    copy.deepcopy(est).predict(X)  # (the cache is not copied)
    del est
    gc.collect()
    assert ref() is None


def test_n_jobs_limits_the_kernels_threads_in_fit_and_predict(monkeypatch):
    """n_jobs limits the compiled kernels' threads (OpenMP's, per thread) during fit and
    predict, and leaves the process-wide BLAS pool alone (issue 15, item 7)."""
    from threadpoolctl import threadpool_info

    import cyrnn.estimators.base as base
    if not any(i["user_api"] == "openmp" for i in threadpool_info()):
        import cyrnn.backends.cython_backend  # noqa: F401 - loads OpenMP where built with it
    blas_before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    seen = []
    real_step, real_raw = base.train_step, base.BaseSequenceModel._raw

    def record():
        info = threadpool_info()
        seen.append(([i["num_threads"] for i in info if i["user_api"] == "openmp"],
                     [i["num_threads"] for i in info if i["user_api"] == "blas"]))

    def step(*args, **kwargs):
        record()
        return real_step(*args, **kwargs)

    def raw(self, *args, **kwargs):
        record()
        return real_raw(self, *args, **kwargs)

    monkeypatch.setattr(base, "train_step", step)
    monkeypatch.setattr(base.BaseSequenceModel, "_raw", raw)
    X, y = make_fixed(20)
    est = LSTMRegressor(n_jobs=1, **SMALL).fit(X, y)
    est.predict(X)
    assert seen
    for openmp, blas in seen:
        assert set(openmp) <= {1} and blas == blas_before


# ---------------------------------------------------------------------------
# inputs and targets
# ---------------------------------------------------------------------------
def test_table_is_one_feature_per_step():
    X, y = make_fixed(30, F=1)
    est = GRURegressor(**SMALL).fit(X[:, :, 0], y)
    assert est.n_features_in_ == 6
    np.testing.assert_array_equal(est.predict(X[:, :, 0]), est.predict(X))
    longer = np.concatenate([X, X], axis=1)
    assert est.predict(longer).shape == (30,)  # 3-D input may have other lengths
    with pytest.raises(ValueError, match="X has 12 features, but GRURegressor is expecting 6"):
        est.predict(longer[:, :, 0])


def test_fixed_3d_n_features_is_per_step():
    X, y = make_fixed(20, F=3)
    est = LSTMRegressor(**SMALL).fit(X, y)
    assert est.n_features_in_ == 3
    with pytest.raises(ValueError, match="X has 2 features per step, but LSTMRegressor is "
                                         "expecting 3"):
        est.predict(X[:, :, :2])
    with pytest.raises(ValueError, match="2-D table.*3 features per step"):
        est.predict(X[:, :, 0])


def test_ragged_matches_individual_sequences_and_3d():
    X, y = make_ragged(20, high=8)
    est = LSTMRegressor(**SMALL).fit(X, y)
    assert est.n_features_in_ == 2
    assert est.predict(X).shape == (20,)
    same = [x for x in X if len(x) == len(X[0])]
    np.testing.assert_allclose(est.predict(np.stack(same)), est.predict(same), rtol=1e-6)


def test_object_2d_array_is_a_table():
    X, y = make_fixed(20, F=1)
    table = X[:, :, 0].astype(object)
    est = SimpleRNNRegressor(**SMALL).fit(table, y)
    assert est.n_features_in_ == 6
    np.testing.assert_array_equal(est.predict(table), est.predict(X[:, :, 0]))


def test_ragged_univariate_sequences():
    rng = np.random.default_rng(0)
    X = [rng.normal(size=int(rng.integers(2, 9))) for _ in range(25)]
    y = np.array([x.sum() for x in X])
    est = GRURegressor(**SMALL).fit(X, y)
    assert est.n_features_in_ == 1
    np.testing.assert_allclose(est.predict(X), est.predict([x[:, None] for x in X]))


def test_token_inputs_padded_and_ragged_agree():
    seqs, y = make_tokens()
    padded = pad_sequences(seqs, maxlen=12)
    est = LSTMClassifier(vocab_size=20, embedding_dim=4, **SMALL).fit(padded, y)
    assert est.model_.layers[0].mask_zero and est.model_.layers[0].params["weight"].shape == (20, 4)
    np.testing.assert_allclose(est.predict_proba(padded), est.predict_proba(seqs), atol=1e-6)
    post = pad_sequences(seqs, maxlen=12, padding="post")
    np.testing.assert_allclose(est.predict_proba(padded), est.predict_proba(post), atol=1e-6)
    ragged = GRUClassifier(vocab_size=20, **SMALL).fit(seqs, y)
    assert ragged.model_.layers[0].params["weight"].shape == (20, 8)  # embedding_dim=None
    assert ragged.predict(seqs).shape == (60,)


def test_token_tables_may_be_padded_to_any_width():
    seqs, y = make_tokens()
    est = GRUClassifier(vocab_size=20, **SMALL).fit(pad_sequences(seqs, maxlen=12), y)
    assert est.n_features_in_ == 12
    np.testing.assert_allclose(est.predict_proba(pad_sequences(seqs, maxlen=20)),
                               est.predict_proba(seqs), atol=1e-6)
    assert est.predict([s[:3] for s in seqs]).shape == (60,)


@pytest.mark.parametrize("cls", REGRESSORS)
def test_regressor_single_and_multi_output(cls):
    X, y = make_fixed(30)
    single = cls(**SMALL).fit(X, y)
    pred = single.predict(X)
    assert pred.shape == (30,) and pred.dtype == np.float64 and single.n_outputs_ == 1
    Y = np.column_stack([y, -y, 2 * y])
    multi = cls(**SMALL).fit(X, Y, sample_weight=np.linspace(0.5, 2, 30))
    assert multi.predict(X).shape == (30, 3) and multi.n_outputs_ == 3
    assert multi.model_.layers[-1].out_features == 3


@pytest.mark.parametrize("cls", CLASSIFIERS)
def test_classifier_binary_and_multiclass(cls):
    X, y = make_fixed(45)
    words = np.where(y > 0, "pos", "neg")
    binary = cls(**SMALL).fit(X, words)
    assert binary.model_.layers[-1].out_features == 1  # one sigmoid logit
    np.testing.assert_array_equal(binary.classes_, ["neg", "pos"])
    proba = binary.predict_proba(X)
    assert proba.shape == (45, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(binary.predict(X), binary.classes_[proba.argmax(1)])
    three = np.digitize(y, [-1, 1]) * 10 + 5  # labels 5, 15, 25
    multi = cls(**SMALL).fit(X, three, sample_weight=np.ones(45))
    assert multi.model_.layers[-1].out_features == 3
    assert set(multi.predict(X)) <= {5, 15, 25}
    assert 0 <= multi.score(X, three) <= 1


def test_binary_loss_is_sigmoid_cross_entropy(monkeypatch):
    import cyrnn.estimators.base as base
    names = []
    real = base.get_loss
    monkeypatch.setattr(base, "get_loss", lambda name: names.append(name) or real(name))
    X, y = make_fixed(20)
    GRUClassifier(**SMALL).fit(X, y > 0)
    GRUClassifier(**SMALL).fit(X, np.digitize(y, [-1, 1]))
    LSTMRegressor(**SMALL).fit(X, y)
    assert names == ["sigmoid_binary_cross_entropy", "softmax_cross_entropy", "mse"]


def test_class_weight():
    X, y = make_fixed(60)
    labels = (y > 1.5).astype(int)  # imbalanced
    plain = GRUClassifier(hidden_size=8, max_iter=15, random_state=0).fit(X, labels)
    heavy = GRUClassifier(hidden_size=8, max_iter=15, random_state=0,
                          class_weight={0: 1.0, 1: 20.0}).fit(X, labels)
    assert heavy.predict_proba(X)[:, 1].mean() > plain.predict_proba(X)[:, 1].mean()
    GRUClassifier(class_weight="balanced", **SMALL).fit(X, labels)
    with pytest.raises(ValueError, match="class_weight has labels that are not classes"):
        GRUClassifier(class_weight={0: 1, 7: 2}, **SMALL).fit(X, labels)
    with pytest.raises(ValueError, match="balanced.*partial_fit"):
        GRUClassifier(class_weight="balanced", **SMALL).partial_fit(X, labels, classes=[0, 1])


def test_sample_weight_ones_equals_none_and_zero_weight_is_ignored():
    X, y = make_fixed(32)
    a = LSTMRegressor(batch_size=32, **SMALL).fit(X, y)
    b = LSTMRegressor(batch_size=32, **SMALL).fit(X, y, sample_weight=np.ones(32))
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6)
    garbage = y.copy()
    garbage[:8] = 1e3
    w = np.r_[np.zeros(8), np.ones(24)]
    c = LSTMRegressor(batch_size=32, **SMALL).fit(X, garbage, sample_weight=w)
    d = LSTMRegressor(batch_size=32, **SMALL).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(c.predict(X), d.predict(X), rtol=1e-6)


# ---------------------------------------------------------------------------
# many-to-many
# ---------------------------------------------------------------------------
def test_many_to_many_regression_shapes_and_score():
    X, _ = make_fixed(30, T=5)
    Y = np.cumsum(X[:, :, 0], axis=1)
    est = GRURegressor(return_sequences=True, **SMALL).fit(X, Y)
    pred = est.predict(X)
    assert pred.shape == (30, 5)
    from sklearn.metrics import r2_score
    assert est.score(X, Y) == pytest.approx(r2_score(Y.ravel(), pred.ravel()))
    Y3 = np.stack([Y, -Y], axis=-1)
    assert GRURegressor(return_sequences=True, **SMALL).fit(X, Y3).predict(X).shape == (30, 5, 2)
    with pytest.raises(ValueError, match="one target per step"):
        GRURegressor(return_sequences=True, **SMALL).fit(X, Y[:, :4])


def test_many_to_many_ragged_regression_and_classification():
    X, _ = make_ragged(30)
    Y = [np.cumsum(x[:, 0]) for x in X]
    reg = LSTMRegressor(return_sequences=True, **SMALL).fit(X, Y)
    pred = reg.predict(X)
    assert isinstance(pred, list) and [p.shape for p in pred] == [y.shape for y in Y]
    flat_t, flat_p = np.concatenate(Y), np.concatenate(pred)
    from sklearn.metrics import accuracy_score, r2_score
    assert reg.score(X, Y) == pytest.approx(r2_score(flat_t, flat_p))
    labels = [np.where(y > 0, "up", "down") for y in Y]
    clf = SimpleRNNClassifier(return_sequences=True, **SMALL).fit(X, labels)
    proba = clf.predict_proba(X)
    assert [p.shape for p in proba] == [(len(x), 2) for x in X]
    got = clf.predict(X)
    assert clf.score(X, labels) == pytest.approx(
        accuracy_score(np.concatenate(labels), np.concatenate(got)))
    with pytest.raises(ValueError, match=r"y\[0\] needs one target per step"):
        LSTMRegressor(return_sequences=True, **SMALL).fit(X, [y[:-1] for y in Y])


def test_many_to_many_token_padding_steps_are_ignored():
    seqs, _ = make_tokens(40)
    padded = pad_sequences(seqs, maxlen=12)
    labels = np.where(padded % 2 == 0, "even", "odd")
    labels[padded == 0] = "PAD"  # a label at padding steps only: never a class
    clf = GRUClassifier(vocab_size=20, return_sequences=True, **SMALL).fit(padded, labels)
    np.testing.assert_array_equal(clf.classes_, ["even", "odd"])
    assert clf.predict(padded).shape == (40, 12)
    assert 0 <= clf.score(padded, labels) <= 1



def test_many_to_many_regressor_ignores_nan_targets_at_padding_steps():
    """Targets at padding steps are ignored (as score and the classifiers do), so NaN
    may mark them: fit gave "Input y contains NaN" where score took the same y. NaN/inf
    at a valid step is still refused, naming the step; float features have no padding."""
    seqs, _ = make_tokens(30)
    padded = pad_sequences(seqs, maxlen=10)
    y = np.random.default_rng(0).normal(size=padded.shape)
    y_nan, y_zero = y.copy(), y.copy()
    y_nan[padded == 0], y_zero[padded == 0] = np.nan, 0.0
    assert np.isnan(y_nan).any()
    est = GRURegressor(vocab_size=20, return_sequences=True, **SMALL).fit(padded, y_nan)
    ref = GRURegressor(vocab_size=20, return_sequences=True, **SMALL).fit(padded, y_zero)
    np.testing.assert_array_equal(est.predict(padded), ref.predict(padded))
    assert est.score(padded, y_nan) == ref.score(padded, y_zero)
    est.partial_fit(padded, y_nan)
    i, t = np.argwhere(padded != 0)[3]
    y_bad = y_nan.copy()
    y_bad[i, t] = np.nan
    with pytest.raises(ValueError, match=f"NaN or infinity at a valid step \\(sequence {i}, "
                                         f"step {t}\\)"):
        est.fit(padded, y_bad)
    ragged = [s[s != 0] for s in padded[:4]]
    ragged[0] = np.concatenate([[0], ragged[0]])  # a padding id in a ragged sequence
    y_ragged = [np.random.default_rng(1).normal(size=len(s)) for s in ragged]
    y_ragged[0][0] = np.nan
    GRURegressor(vocab_size=20, return_sequences=True, **SMALL).fit(ragged, y_ragged)
    y_ragged[1][1] = np.inf
    with pytest.raises(ValueError, match=r"y\[1\] contains NaN or infinity at a valid step "
                                         r"\(step 1\)"):
        GRURegressor(vocab_size=20, return_sequences=True, **SMALL).fit(ragged, y_ragged)
    X = np.random.default_rng(2).normal(size=(8, 5, 2))
    y_float = np.random.default_rng(3).normal(size=(8, 5))
    y_float[0, 0] = np.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        GRURegressor(return_sequences=True, **SMALL).fit(X, y_float)

# ---------------------------------------------------------------------------
# training options
# ---------------------------------------------------------------------------
def test_loss_curve_and_stopping_on_training_loss():
    X, y = make_fixed(30)
    est = SimpleRNNRegressor(hidden_size=8, max_iter=200, tol=10.0, n_iter_no_change=2,
                             random_state=0).fit(X, y)
    # no epoch improves by tol=10: the count exceeds n_iter_no_change after epoch 4
    assert est.n_iter_ == 4 == len(est.loss_curve_)
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None
    with pytest.warns(ConvergenceWarning):
        SimpleRNNRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, y)


def test_early_stopping_says_when_its_split_cannot_be_stratified():
    # a class of one sample: the split fell back to an unstratified one silently
    X, _ = make_fixed(10)
    with pytest.warns(UserWarning, match="not stratified"):
        GRUClassifier(early_stopping=True, validation_fraction=0.2, **SMALL).fit(
            X, [0] * 9 + [1])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not stratified")
        GRUClassifier(early_stopping=True, validation_fraction=0.2, **SMALL).fit(
            X, [0] * 5 + [1] * 5)
        # a regressor's split has no classes: its own error, no word about them
        with pytest.raises(ValueError, match="train set will be empty"):
            GRURegressor(early_stopping=True, validation_fraction=0.95, **SMALL).fit(
                X[:3], np.ones(3))


def test_early_stopping_keeps_the_best_weights():
    X, y = make_fixed(60)
    est = LSTMRegressor(hidden_size=8, max_iter=40, early_stopping=True, n_iter_no_change=3,
                        validation_fraction=0.2, random_state=0).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_ == len(est.loss_curve_)
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None
    with pytest.raises(ValueError, match="validation set is too small"):
        LSTMRegressor(early_stopping=True, validation_fraction=0.01, **SMALL).fit(X[:10], y[:10])


def test_warm_start_continues():
    X, y = make_fixed(30)
    est = GRURegressor(warm_start=True, **SMALL).fit(X, y)
    first = params_of(est)
    est.fit(X, y)
    assert est.n_iter_ == 6 and len(est.loss_curve_) == 6
    assert not np.array_equal(first, params_of(est))
    cold = GRURegressor(**SMALL).fit(X, y)
    cold.fit(X, y)
    assert cold.n_iter_ == 3
    est.set_params(hidden_size=9)
    with pytest.raises(ValueError, match="hidden_size"):
        est.fit(X, y)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_partial_fit(cls):
    X, y = make_fixed(30)
    y = y if cls in REGRESSORS else np.where(y > 0, "a", "b")
    extra = {} if cls in REGRESSORS else {"classes": ["a", "b"]}
    est = cls(hidden_size=8, random_state=0)
    est.partial_fit(X[:15], y[:15], **extra)
    est.partial_fit(X[15:], y[15:])
    assert est.n_iter_ == 2 and len(est.loss_curve_) == 2
    # the same sequence of calls gives the same model
    twin = cls(hidden_size=8, random_state=0)
    twin.partial_fit(X[:15], y[:15], **extra)
    twin.partial_fit(X[15:], y[15:])
    np.testing.assert_array_equal(params_of(est), params_of(twin))


def test_partial_fit_classifier_rules():
    X, y = make_fixed(20)
    labels = (y > 0).astype(int)
    est = GRUClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(X, labels)
    est.partial_fit(X[:5], np.zeros(5, int), classes=[0, 1, 2])  # one class in a batch is fine
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    with pytest.raises(ValueError, match="not the same as"):
        est.partial_fit(X, labels, classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels not in classes_.*\[3\]"):
        est.partial_fit(X, np.full(20, 3))
    with pytest.raises(ValueError, match="early_stopping"):
        GRUClassifier(early_stopping=True).partial_fit(X, labels, classes=[0, 1])
    # one class in classes= is the argument's fault, named as such
    with pytest.raises(ValueError, match=r"classes must list at least 2 classes, got \['a'\]"):
        GRUClassifier(**SMALL).partial_fit(X, np.where(labels, "a", "b"), classes=["a"])
    with pytest.raises(ValueError, match="contains only 1 class: 'a'$"):
        GRUClassifier(**SMALL).fit(X, np.full(20, "a"))


def test_verbose_progress_bar(capsys):
    X, y = make_fixed(20)
    LSTMRegressor(verbose=0, **SMALL).fit(X, y)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    LSTMRegressor(verbose=1, early_stopping=True, **SMALL).fit(X, y)
    out = capsys.readouterr()
    assert out.out == ""
    assert "epoch 1/3" in out.err and "loss=" in out.err and "val_score=" in out.err


def test_dtype_float64_and_float32():
    X, y = make_fixed(20)
    a = GRURegressor(dtype="float64", **SMALL).fit(X, y)
    assert a.model_.params.data.dtype == np.float64 and a.predict(X).dtype == np.float64
    b = GRURegressor(dtype=np.float32, **SMALL).fit(X, y)
    assert b.model_.params.data.dtype == np.float32 and b.predict(X).dtype == np.float64


def test_architecture_options():
    X, y = make_fixed(20)
    est = LSTMRegressor(num_layers=2, bidirectional=True, dropout=0.2, bptt_truncate=2,
                        clip_norm=1.0, clip_value=0.5, optimizer="sgd", **SMALL).fit(X, y)
    rnn = est.model_.layers[0]
    assert rnn.num_layers == 2 and rnn.bidirectional and rnn.bptt_truncate == 2
    assert est.model_.layers[-1].in_features == 16
    relu = SimpleRNNClassifier(activation="relu", **SMALL).fit(X, y > 0)
    assert relu.model_.layers[0].cell.activation == "relu"
    cho = GRUClassifier(reset_after=False, **SMALL).fit(X, y > 0)
    assert not cho.model_.layers[0].cell.reset_after


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
BAD_FIT = [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y),
     "NaN"),
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y),
     "infinity"),
    (lambda X, y: (X[:0], y[:0]), "0 sample"),
    (lambda X, y: (X, y[:-1]), "inconsistent numbers of samples: 20 and 19"),
    (lambda X, y: ([x for x in X[:5]] + [np.ones((4, 3))], y[:6]),
     "mismatched feature counts: X\\[5\\] has 3 features per step, X\\[0\\] has 2"),
    (lambda X, y: ([x[:3] for x in X[:3]] + [np.ones((0, 2))], y[:4]), r"X\[3\] is empty"),
    (lambda X, y: ([x[:3] for x in X[:3]] + [np.full((2, 2), np.nan)], y[:4]),
     r"X\[3\] contains NaN"),
    (lambda X, y: (X, np.where(np.arange(20) == 3, np.nan, y)), "y contains NaN"),
    (lambda X, y: (X[..., None], y), "2-D .* or 3-D"),
    (lambda X, y: (X, None), "requires y to be passed"),
]


@pytest.mark.parametrize("make_bad,message", BAD_FIT)
def test_bad_fit_input_raises_value_error(make_bad, message):
    X, y = make_fixed(20)
    Xb, yb = make_bad(X, y)
    with pytest.raises(ValueError, match=message):
        GRURegressor(**SMALL).fit(Xb, yb)


def test_bad_classifier_input():
    X, y = make_fixed(20)
    with pytest.raises(ValueError, match="at least 2 classes.*1 class"):
        LSTMClassifier(**SMALL).fit(X, np.ones(20))
    with pytest.raises(ValueError, match="Unknown label type"):
        LSTMClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="class"):
        LSTMClassifier(**SMALL).fit(X, y > 0, sample_weight=(y > 0).astype(float))
    with pytest.raises(ValueError, match="weight.*zero|zero.*weight"):
        LSTMClassifier(**SMALL).fit(X, y > 0, sample_weight=np.zeros(20))


def test_bad_token_input():
    seqs, y = make_tokens(20)
    with pytest.raises(ValueError, match=r"ids outside \[0, 20\)"):
        GRUClassifier(vocab_size=20, **SMALL).fit([s + 30 for s in seqs], y)
    with pytest.raises(ValueError, match=r"X\[0\] has no non-padding token"):
        GRUClassifier(vocab_size=20, **SMALL).fit([np.zeros(3, int)] + seqs[1:], y)
    with pytest.raises(ValueError, match="integer token ids"):
        GRUClassifier(vocab_size=20, **SMALL).fit(pad_sequences(seqs, dtype="float32") + 0.5, y)
    with pytest.raises(ValueError, match="embedding_dim is set but vocab_size is None"):
        GRUClassifier(embedding_dim=4, **SMALL).fit(*make_fixed(10))


def test_predict_rejects_bad_input():
    X, y = make_fixed(20)
    est = GRURegressor(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="NaN"):
        est.predict(np.full_like(X, np.nan))
    with pytest.raises(ValueError, match="expecting 2 features per step"):
        est.predict(X[:, :, :1])
    with pytest.raises(ValueError, match="0 sample"):
        est.predict(X[:0])


# ---------------------------------------------------------------------------
# a failed fit leaves a fitted estimator unchanged
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("cls", [GRURegressor, LSTMClassifier])
def test_failed_fit_leaves_estimator_unchanged(cls, warm_start):
    X, y = make_fixed(30)
    y = y if cls is GRURegressor else (y > 0).astype(int)
    est = cls(warm_start=warm_start, **SMALL).fit(X, y)
    before, pred = fitted_state(est), est.predict(X)
    bad_targets = [y[:-1], np.where(np.arange(30) == 2, np.nan, y)]
    if cls is LSTMClassifier:
        bad_targets.append(np.full(30, 1))
    for bad in bad_targets:
        with pytest.raises(ValueError):
            est.fit(X, bad)
    if warm_start:
        with pytest.raises(ValueError, match="expecting 2 features per step"):
            est.fit(X[:, :, :1], y)
    with pytest.raises(ValueError):
        est.set_params(learning_rate=-1).fit(X, y)
    est.set_params(learning_rate=1e-3)
    assert_same_state(before, fitted_state(est))
    np.testing.assert_array_equal(pred, est.predict(X))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow while diverging
def test_failed_partial_fit_and_divergence_leave_estimator_unchanged():
    X, y = make_fixed(30)
    labels = (y > 0).astype(int)
    est = GRUClassifier(**SMALL).fit(X, labels)
    before = fitted_state(est)
    with pytest.raises(ValueError, match="labels not in classes_"):
        est.partial_fit(X, labels + 5)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:, :, :1], labels)
    assert_same_state(before, fitted_state(est))
    reg = LSTMRegressor(optimizer="sgd", learning_rate=1e30, **SMALL)
    with pytest.raises(ValueError, match="diverged|non-finite"):
        reg.fit(X, y * 1e5)
    assert not hasattr(reg, "model_")
    reg = LSTMRegressor(optimizer="sgd", **SMALL).fit(X, y)
    before = fitted_state(reg)
    reg.set_params(learning_rate=1e30, warm_start=True)
    with pytest.raises(ValueError, match="diverged|non-finite"):
        reg.fit(X, y * 1e5)
    assert_same_state(before, fitted_state(reg))


# ---------------------------------------------------------------------------
# pickling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ESTIMATORS)
def test_pickle_and_joblib_round_trip(cls):
    X, y = make_ragged(25)
    y = y if cls in REGRESSORS else np.where(y > 0, "up", "down")
    est = cls(**SMALL).fit(X, y)
    method = "predict_proba" if cls in CLASSIFIERS else "predict"
    for copy_ in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        np.testing.assert_array_equal(getattr(est, method)(X), getattr(copy_, method)(X))
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_array_equal(getattr(est, method)(X), getattr(loaded, method)(X))
    # training goes on identically: the layers share the model's buffer again
    est.partial_fit(X, y)
    loaded.partial_fit(X, y)
    np.testing.assert_array_equal(params_of(est), params_of(loaded))
    assert np.shares_memory(loaded.model_.layers[0].params.data, loaded.model_.params.data)


def test_plot_learning_curve():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cyrnn.plotting import plot_learning_curve
    X, y = make_fixed(30)
    est = LSTMRegressor(early_stopping=True, **SMALL).fit(X, y)
    ax = plot_learning_curve(est)
    assert ax.get_xlabel() == "epoch"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), est.loss_curve_)
    twin = [a for a in ax.figure.axes if a is not ax][0]
    np.testing.assert_allclose(twin.lines[0].get_ydata(), est.validation_scores_)
    fig, own = plt.subplots()
    assert plot_learning_curve(LSTMRegressor(**SMALL).fit(X, y), ax=own) is own
    plt.close("all")
    with pytest.raises(NotFittedError):
        plot_learning_curve(LSTMRegressor())


def test_plot_learning_curve_without_matplotlib(monkeypatch):
    import sys

    from cyrnn.plotting import plot_learning_curve
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    X, y = make_fixed(10)
    with pytest.raises(ImportError, match="plot_learning_curve needs matplotlib"):
        plot_learning_curve(LSTMRegressor(**SMALL).fit(X, y))


def test_no_warnings_for_clean_fit():
    X, y = make_fixed(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GRURegressor(hidden_size=4, max_iter=50, tol=1.0, n_iter_no_change=1,
                     random_state=0).fit(X, y).predict(X)


@pytest.mark.parametrize("cls", [GRURegressor, SimpleRNNClassifier])
def test_sample_weight_equals_repetition_within_one_float64_batch(cls):
    # What check_sample_weight_equivalence_on_dense_data asks, where it can hold:
    # all samples in one batch, float64 (see cyrnn.estimator_checks).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5, 2))
    y = X[:, :, 0].sum(1) if cls is GRURegressor else (X[:, 0, 0] > 0).astype(int)
    sw = np.array([0, 1, 2, 3, 1, 0, 2, 1, 3, 1, 2, 1])
    kw = dict(hidden_size=6, max_iter=20, batch_size=64, dtype="float64", random_state=0)
    weighted = cls(**kw).fit(X, y, sample_weight=sw)
    repeated = cls(**kw).fit(X.repeat(sw, axis=0), y.repeat(sw))
    get = (lambda e: e.predict(X)) if cls is GRURegressor else (lambda e: e.predict_proba(X))
    np.testing.assert_allclose(get(weighted), get(repeated), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# regressions found in review
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ESTIMATORS)
def test_defaults_match_the_specification(cls):
    # learning_rate was 1e-3 until issue 15 (item 13): LSTMRegressor did not fit
    # scikit-learn's toy regression problem at its defaults.
    params = cls().get_params()
    expected = dict(hidden_size=32, num_layers=1, bidirectional=False, dropout=0,
                    vocab_size=None, embedding_dim=None, return_sequences=False,
                    optimizer="rmsprop", learning_rate=3e-3, batch_size=32, max_iter=100,
                    shuffle=True, random_state=None, tol=1e-4, n_iter_no_change=10,
                    early_stopping=False, validation_fraction=0.1, clip_norm=None,
                    clip_value=None, bptt_truncate=None, backend="auto", n_jobs=None,
                    verbose=0, warm_start=False, dtype="float32")
    assert {k: params[k] for k in expected} == expected
    if cls in CLASSIFIERS:
        assert params["class_weight"] is None


def test_zero_class_weights_raise_value_error():
    X, y = make_fixed(20)
    labels = (y > 0).astype(int)
    with pytest.raises(ValueError, match="no sample has a positive weight"):  # was IndexError
        GRUClassifier(class_weight={0: 0.0, 1: 0.0}, **SMALL).fit(X, labels)
    # one class left with weight: named as the data names it (not np.int64(0))
    with pytest.raises(ValueError, match=r"but only class 0 has samples of positive"):
        GRUClassifier(**SMALL).fit(X, labels, sample_weight=np.where(labels == 1, 0.0, 1.0))
    est = GRUClassifier(class_weight={0: 0.0, 1: 1.0, 2: 1.0}, **SMALL)
    with pytest.raises(ValueError, match="no sample has a positive weight"):  # was a NaN loss
        est.partial_fit(X, np.zeros(20, int), classes=[0, 1, 2])
    assert not hasattr(est, "model_")


def test_a_generator_random_state_is_consumed_not_shared():
    X, y = make_fixed(30)
    a = GRURegressor(hidden_size=6, max_iter=2, dropout=0.3, num_layers=2,
                     random_state=np.random.default_rng(4)).fit(X, y)
    gen = a.random_state
    b = GRURegressor(hidden_size=6, max_iter=2, dropout=0.3, num_layers=2,
                     random_state=np.random.default_rng(4)).fit(X, y)
    np.testing.assert_array_equal(params_of(a), params_of(b))
    assert a._rng is not gen and a.model_.layers[0]._rng is not gen
    gen.random(1000)  # the caller goes on using its generator ...
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    np.testing.assert_array_equal(params_of(a), params_of(b))  # ... without effect on a


def test_early_stopping_restores_the_weights_of_the_best_epoch(monkeypatch):
    import cyrnn.estimators.base as base
    split = {}
    real = base.BaseSequenceModel._validation_split

    def spy(self, *args):
        split["train"], split["val"] = real(self, *args)
        return split["train"], split["val"]

    monkeypatch.setattr(base.BaseSequenceModel, "_validation_split", spy)
    X, y = make_fixed(60)
    est = LSTMRegressor(hidden_size=8, max_iter=30, early_stopping=True, n_iter_no_change=30,
                        optimizer="sgd", learning_rate=0.5, validation_fraction=0.2,
                        random_state=0).fit(X, y)
    scores = est.validation_scores_
    assert int(np.argmax(scores)) < len(scores) - 1  # the best epoch is not the last one
    val = split["val"]
    assert est.score(X[val], y[val]) == pytest.approx(est.best_validation_score_, rel=1e-9)
    assert est.best_validation_score_ > scores[-1]
    assert len(set(val) & set(split["train"])) == 0


def test_class_weight_balanced_is_the_inverse_class_frequency():
    from sklearn.utils.class_weight import compute_class_weight
    X, y = make_fixed(40)
    labels = np.digitize(y, [-1, 2])  # three imbalanced classes
    weights = compute_class_weight("balanced", classes=np.unique(labels), y=labels)
    assert len(set(np.round(weights, 6))) == 3  # a test that can fail
    balanced = LSTMClassifier(class_weight="balanced", **SMALL).fit(X, labels)
    explicit = LSTMClassifier(class_weight=dict(enumerate(weights)), **SMALL).fit(X, labels)
    plain = LSTMClassifier(**SMALL).fit(X, labels)
    np.testing.assert_array_equal(params_of(balanced), params_of(explicit))
    assert not np.array_equal(params_of(balanced), params_of(plain))


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_controls_the_batch_order(monkeypatch, shuffle):
    import cyrnn.estimators.base as base
    firsts = []
    real = base.train_step
    monkeypatch.setattr(base, "train_step",
                        lambda model, opt, loss, x, y, **kw: firsts.append(x[0, 0, 0])
                        or real(model, opt, loss, x, y, **kw))
    X, y = make_fixed(40)
    GRURegressor(hidden_size=4, max_iter=2, batch_size=10, shuffle=shuffle,
                 random_state=0).fit(X, y)
    in_order = list(X[::10, 0, 0].astype(np.float32)) * 2
    assert (firsts == in_order) is (not shuffle)


@pytest.mark.parametrize("name", ["LSTMRegressor", "GRUClassifier"])
def test_huge_sample_weights_count_by_their_ratios(name):
    """sample_weight of 1e308 each passed the checks (finite) and overflowed the batch
    sums: a NaN loss curve. Only the ratios of the weights count."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5, 2))
    y = rng.normal(size=12) if name.endswith("Regressor") else rng.integers(0, 2, 12)
    w = rng.uniform(0.5, 2.0, 12)
    kw = dict(hidden_size=4, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small = getattr(cyrnn, name)(**kw).fit(X, y, sample_weight=w)
        huge = getattr(cyrnn, name)(**kw).fit(X, y, sample_weight=w * (1e308 / w.max()))
    np.testing.assert_allclose(huge.loss_curve_, small.loss_curve_, rtol=1e-6)
    assert huge.score(X, y, sample_weight=w * 1e307) == pytest.approx(
        small.score(X, y, sample_weight=w), rel=1e-6)
