"""Smaller input rules and messages (issue 15, items 10 and 11)."""

import errno

import numpy as np
import pytest

import cyrnn
from cyrnn import persistence
from cyrnn.estimators import GRUClassifier, GRURegressor
from cyrnn.language_model import CharLanguageModel, is_poem

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _xy(n=20, T=4, F=2):
    X = np.random.default_rng(0).normal(size=(n, T, F))
    return X, X[:, -1, 0]


# --------------------------------------------------------------- item 10
@pytest.mark.parametrize("lengths", [[True, True, False], np.array([1, 1, 0], bool)])
def test_boolean_lengths_are_refused(backend, lengths):
    layer = cyrnn.GRU(2, 3, backend=backend)
    with pytest.raises(TypeError, match="booleans"):
        layer(np.ones((3, 4, 2)), lengths=lengths)
    model = cyrnn.Sequential([cyrnn.GRU(2, 3, backend=backend), cyrnn.Dense(3, 1)])
    with pytest.raises(TypeError, match="booleans"):
        model.forward(np.ones((3, 4, 2)), lengths=lengths)


@pytest.fixture(scope="module")
def poem_model():
    poems = cyrnn.datasets.load_tang_poems()[:40]
    return CharLanguageModel(hidden_size=8, embedding_dim=4, max_epochs=1,
                             random_state=0).fit(poems)


@pytest.mark.parametrize("head", ["，，，，", "。春夏秋", "春夏秋a"])
def test_poem_head_must_be_characters_a_line_can_start_with(poem_model, head):
    with pytest.raises(ValueError, match="head must be Chinese characters"):
        poem_model.sample_poem(head=head)


def test_a_good_head_still_writes_poems(poem_model):
    head = [ch for ch in poem_model.chars_ if cyrnn.language_model.is_cjk_ideograph(ch)][:4]
    poems = poem_model.sample_poem(2, head="".join(head), random_state=0)
    assert all(is_poem(p, "quatrain", "".join(head)) for p in poems)


@pytest.mark.parametrize("cls,y", [(GRURegressor, None), (GRUClassifier, "labels")])
def test_many_to_one_score_refuses_negative_weights_like_the_per_step_score(cls, y):
    X, target = _xy()
    y = (target > 0).astype(int) if y else target
    est = cls(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    for bad in ([-1.0] + [1.0] * 19, [np.inf] + [1.0] * 19, [1.0] * 19):
        with pytest.raises(ValueError):
            est.score(X, y, sample_weight=bad)
    assert np.isfinite(est.score(X, y, sample_weight=np.ones(20)))


def test_numeric_strings_are_refused_in_arrays_and_lists_alike():
    X, y = _xy()
    est = GRURegressor(hidden_size=4, max_iter=1, random_state=0)
    for bad in (X.astype(str), X[:, :, 0].astype(str), X.astype(str).astype(object),
                [x.astype(str) for x in X], X.astype(str).tolist(),
                [x[: 2 + i % 2].astype(str) for i, x in enumerate(X)]):
        with pytest.raises(TypeError, match="numbers|numeric"):
            est.fit(bad, y)
    est.fit(X.astype(object), y)  # numbers in an object array are numbers
    with pytest.raises(TypeError, match="numbers"):
        est.predict(X.astype(str))
    for bad in ("1.5", b"1.5"):  # a bare string was read as one number by check_array
        with pytest.raises(TypeError, match="numbers"):
            est.predict(bad)


def test_dtype_may_be_a_numpy_dtype(tmp_path):
    X, y = _xy()
    est = GRURegressor(hidden_size=4, max_iter=1, random_state=0, dtype=np.dtype("float64"))
    est.fit(X, y)
    assert est.model_.dtype == np.float64
    loaded = cyrnn.load(est.save(tmp_path / "m.cyrnn"))
    assert loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


# --------------------------------------------------------------- item 11
def test_negative_random_state_names_the_parameter():
    with pytest.raises(ValueError, match="random_state"):
        cyrnn.LSTM(2, 3, random_state=-1)
    with pytest.raises(ValueError, match="random_state"):
        CharLanguageModel(random_state=-1).fit(["ab"])
    with pytest.raises(ValueError, match="random_state"):
        cyrnn.Dense(2, 3, random_state=-1)


@pytest.mark.parametrize("data", [b"abcdef", bytearray(b"abcdef")])
def test_fitting_bytes_says_bytes(data):
    with pytest.raises(TypeError, match="(bytes|bytearray).*decode"):
        CharLanguageModel(max_epochs=1).fit(data)


def test_unsigned_lengths_at_their_maximum_are_reported_as_they_are():
    layer = cyrnn.GRU(2, 3)
    lengths = np.array([np.iinfo(np.uint64).max, 1, 2], np.uint64)
    with pytest.raises(ValueError, match="max 18446744073709551615") as info:
        layer(np.ones((3, 4, 2)), lengths=lengths)
    assert "-1" not in str(info.value)
    with pytest.raises(ValueError, match="max 1e"):
        layer(np.ones((3, 4, 2)), lengths=[1e300, 1.0, 2.0])


def test_save_errors_name_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    X, y = _xy()
    est = GRURegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    target = tmp_path / "missing" / "model.cyrnn"
    with pytest.raises(FileNotFoundError) as info:
        est.save(target)
    assert str(target) in str(info.value) and ".cyrnn-" not in str(info.value)

    def full(*args, **kwargs):
        fh = args[0]
        raise OSError(errno.ENOSPC, "No space left on device", getattr(fh, "name", None))

    monkeypatch.setattr(np, "savez", full)
    target = tmp_path / "model.cyrnn"
    with pytest.raises(OSError) as info:
        persistence.save_archive(target, "k", {}, {"a": np.ones(2)})
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and ".cyrnn-" not in str(info.value)
    assert not target.exists() and not list(tmp_path.glob(".cyrnn-*"))  # cleaned up


# --------------------------------------------------------------- found by the fuzz suite
@pytest.mark.parametrize("state,match", [
    (np.zeros((1, 1, 3), np.float32), r"state h must have shape \(1, 5, 3\)"),
    (np.zeros((1, 5, 3), np.complex64), "numeric"),
    (np.full((1, 5, 3), np.nan, np.float32), "NaN"),
])
def test_step_checks_its_state_before_the_kernels_read_it(backend, state, match):
    """step() handed any state to the kernels, which read (n, H) rows of it: a state
    for one sequence and an input of five read past the array (cython), complex states
    were taken as real."""
    layer = cyrnn.LSTM(2, 3, backend=backend, random_state=0)
    x = np.ones((5, 2), np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        layer.step(x, (state, np.zeros((1, 5, 3), np.float32)))
    with pytest.raises(TypeError, match="pair"):
        layer.step(x, np.zeros((1, 5, 3), np.float32))
    with pytest.raises(ValueError, match="x_t has 3 features"):
        layer.step(np.ones((5, 3)), (np.zeros((1, 5, 3)), np.zeros((1, 5, 3))))
    out, (h, c) = layer.step(x, (np.zeros((1, 5, 3)), np.zeros((1, 5, 3))))
    assert out.shape == (5, 3) and h.dtype == np.float32
    # exact-form states go straight to the fused call, which declines non-finite values:
    # the checks then name them (cell state and a stateless cell's h included)
    bad = np.zeros((1, 5, 3), np.float32)
    bad[0, 4, 2] = np.inf
    with pytest.raises(ValueError, match="inf"):
        layer.step(x, (np.zeros((1, 5, 3), np.float32), bad))
    gru = cyrnn.GRU(2, 3, backend=backend, random_state=0)
    with pytest.raises(ValueError, match="NaN"):
        gru.step(x, np.where(bad == np.inf, np.nan, bad).astype(np.float32))
    # an unaligned (but C-contiguous) state is copied by the checks, as before
    raw = np.zeros(15 * 4 + 1, np.uint8)
    odd = np.frombuffer(raw.data, np.float32, count=15, offset=1).reshape(1, 5, 3)
    assert not odd.flags.aligned and odd.flags.c_contiguous
    h_ref, _ = gru.step(x, np.zeros((1, 5, 3), np.float32))
    np.testing.assert_array_equal(gru.step(x, odd)[0], h_ref)
    # Sequential.step hands exact-form x_t and states over unread too
    model = cyrnn.Sequential([cyrnn.LSTM(2, 3, backend=backend, random_state=0),
                              cyrnn.Dense(3, 1)])
    y, states = model.step(x, None)
    for bad_x, bad_states, match in [
            (np.where(x == x[2, 1], np.nan, x), states, "NaN"),
            (x, [(states[0][0], np.where(states[0][1] == states[0][1][0, 0, 0], np.inf,
                                         states[0][1]))], "inf")]:
        with pytest.raises(ValueError, match=match):
            model.step(bad_x, bad_states)
    # the same values through the checked path (states as lists, x_t as float64)
    checked = [list(s) for s in states]
    np.testing.assert_array_equal(model.step(x, states)[0],
                                  model.step(x.astype(np.float64), checked)[0])


def test_log_probabilities_come_from_the_logits():
    from cyrnn.sequences import class_log_probabilities, class_probabilities

    rng = np.random.default_rng(0)
    for binary, width in ((True, 1), (False, 4)):
        logits = rng.normal(size=(6, width)) * 3
        np.testing.assert_allclose(np.exp(class_log_probabilities(logits, binary)),
                                   class_probabilities(logits, binary), rtol=1e-13, atol=0)
    # where a probability rounds to 0, its logarithm stays finite and exact
    np.testing.assert_array_equal(class_log_probabilities(np.array([[800.0, 0.0, -800.0]]),
                                                          False), [[0.0, -800.0, -1600.0]])
    np.testing.assert_array_equal(class_log_probabilities(np.array([[-800.0]]), True),
                                  [[0.0, -800.0]])
    X, y = _xy()
    clf = cyrnn.GRUClassifier(hidden_size=4, max_iter=1, random_state=0).fit(X, y > 0)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), clf.predict_proba(X),
                               rtol=1e-12)


def test_a_list_of_arrays_is_a_list_of_sequences_even_when_their_lengths_agree():
    # univariate windows of one length, then one sequence at a time at predict: never
    # read as a table whose width fit fixed (the scorer reads input the same way)
    from cyrnn.preprocessing import SequenceStandardScaler
    from cyrnn.scoring import from_estimator

    rng = np.random.default_rng(0)
    train = [rng.normal(size=12) for _ in range(16)]
    y = np.array([s[-1] for s in train])
    est = cyrnn.GRURegressor(hidden_size=3, max_iter=1, random_state=0).fit(train, y)
    assert est.n_features_in_ == 1
    one = rng.normal(size=20)
    np.testing.assert_array_equal(est.predict([one]), est.predict([one[:, None]]))
    np.testing.assert_array_equal(est.predict([one]), est.predict(one[None, :, None]))
    np.testing.assert_array_equal(from_estimator(est).predict([one]), est.predict([one]))
    # a 2-D table fitted on still needs its width back; a list of arrays does not
    table = cyrnn.GRURegressor(hidden_size=3, max_iter=1, random_state=0).fit(
        np.stack(train), y)
    assert table.n_features_in_ == 12
    with pytest.raises(ValueError, match="12 features"):
        table.predict(one[None, :])
    assert table.predict([one]).shape == (1,)
    # such a list runs as the 3-D array it stacks into: the same fit, array outputs
    X3 = rng.normal(size=(16, 6, 2))
    fits = [cyrnn.GRURegressor(hidden_size=3, max_iter=2, random_state=0,
                               return_sequences=True).fit(X, X3[:, :, 0])
            for X in (X3, list(X3))]
    np.testing.assert_array_equal(fits[1].predict(list(X3)), fits[0].predict(X3))
    # nested Python lists stay one array (a table)
    assert cyrnn.GRURegressor(hidden_size=3, max_iter=1, random_state=0).fit(
        [list(s) for s in train], y).n_features_in_ == 12
    # the scaler gives back the kind it got
    scaled = SequenceStandardScaler().fit_transform([np.ones(3), np.zeros(3)])
    assert isinstance(scaled, list) and scaled[0].shape == (3,)


def test_regression_targets_beyond_the_dtype_are_refused_by_name():
    # 1e300 in float32 overflowed in the loss and was reported as divergence
    X, y = _xy()
    for dtype, scale in ((np.float32, 1e300), (np.float32, 1e20), (np.float64, np.inf)):
        est = GRURegressor(hidden_size=3, max_iter=1, random_state=0, dtype=dtype)
        if np.isfinite(scale):
            with pytest.raises(ValueError, match="too large for a float32 model"):
                est.fit(X, y * scale)
        else:
            with pytest.raises(ValueError, match="NaN|infinity"):
                est.fit(X, np.where(y > 0, scale, y))
        assert not hasattr(est, "model_")


def test_odd_containers_and_huge_ids_are_named_as_given():
    X, y = _xy()
    est = GRURegressor(hidden_size=3, max_iter=1, random_state=0).fit(X, y)
    for bad in ((x for x in X), {"a": X}, {1, 2}):
        with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
            est.predict(bad)
    emb = cyrnn.Embedding(10, 3)
    for ids, shown in ((np.array([[1, 2**64 - 1]], np.uint64), "max 18446744073709551615"),
                       (np.array([[1.0, 1e20]]), r"max 1e\+20")):
        with pytest.raises(ValueError, match=shown):
            emb.forward(ids)


def test_a_dataframe_column_of_sequences_is_a_list_of_sequences():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 2)) for n in (3, 5, 4, 6)] * 3
    y = np.array([s[-1, 0] for s in seqs])
    column = pd.DataFrame({"seq": seqs})["seq"]
    est = GRURegressor(hidden_size=3, max_iter=1, random_state=0).fit(column, y)
    np.testing.assert_array_equal(est.predict(column), est.predict(seqs))
    from cyrnn.preprocessing import SequenceStandardScaler
    out = SequenceStandardScaler().fit_transform(column)
    assert len(out) == len(seqs) and out[1].shape == (5, 2)
