"""pad_sequences (Keras's behaviour) and SequenceStandardScaler (ragged-aware)."""

import numpy as np
import pytest
from sklearn.base import clone

from cyrnn.preprocessing import SequenceStandardScaler, pad_sequences


# ---------------------------------------------------------------------------
# pad_sequences
# ---------------------------------------------------------------------------
SEQS = [[1], [2, 3], [4, 5, 6]]


def test_pad_defaults_pre_padding_to_longest():
    out = pad_sequences(SEQS)
    np.testing.assert_array_equal(out, [[0, 0, 1], [0, 2, 3], [4, 5, 6]])
    assert out.dtype == np.int32


@pytest.mark.parametrize("padding,truncating,expected", [
    ("pre", "pre", [[0, 1], [2, 3], [5, 6]]),
    ("post", "pre", [[1, 0], [2, 3], [5, 6]]),
    ("pre", "post", [[0, 1], [2, 3], [4, 5]]),
    ("post", "post", [[1, 0], [2, 3], [4, 5]]),
])
def test_pad_and_truncate_modes(padding, truncating, expected):
    out = pad_sequences(SEQS, maxlen=2, padding=padding, truncating=truncating)
    np.testing.assert_array_equal(out, expected)


def test_pad_value_dtype_and_longer_maxlen():
    out = pad_sequences(SEQS, maxlen=4, value=-1, dtype="float32", padding="post")
    np.testing.assert_array_equal(out, [[1, -1, -1, -1], [2, 3, -1, -1], [4, 5, 6, -1]])
    assert out.dtype == np.float32
    floats = pad_sequences([[0.5, 1.5]], dtype="float64")
    np.testing.assert_array_equal(floats, [[0.5, 1.5]])
    np.testing.assert_array_equal(pad_sequences([[0.5, 1.7]]), [[0, 1]])  # int32, as Keras
    strings = pad_sequences([["a"], ["b", "c"]], dtype=object, value="PAD")
    np.testing.assert_array_equal(strings, [["PAD", "a"], ["b", "c"]])


def test_pad_multi_feature_steps_and_empty_sequences():
    seqs = [np.ones((2, 3)), np.zeros((0, 3)), 2 * np.ones((4, 3))]
    out = pad_sequences(seqs, maxlen=3, dtype="float32")
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[0, 0], 0)
    np.testing.assert_array_equal(out[0, 1:], 1)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_array_equal(out[2], 2)
    assert pad_sequences([]).shape == (0, 0)
    assert pad_sequences([[], []], maxlen=2).shape == (2, 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(padding="middle"), "padding"),
    (dict(truncating="middle"), "truncating"),
    (dict(maxlen=0), "maxlen"),
    (dict(value="x"), "string padding value"),
])
def test_pad_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_sequences(SEQS, **kwargs)


def test_pad_bad_sequences():
    with pytest.raises(ValueError, match="non-iterable"):
        pad_sequences([[1, 2], 3])
    with pytest.raises(ValueError, match="list of iterables"):
        pad_sequences(5)
    with pytest.raises(ValueError, match="sequence 1 has steps of shape"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))], dtype="float32")


# ---------------------------------------------------------------------------
# SequenceStandardScaler
# ---------------------------------------------------------------------------
def ragged(seed=0, n=12, F=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc=[1, 50, -3][:F], scale=[1, 10, 0.1][:F],
                       size=(int(rng.integers(1, 9)), F)) for _ in range(n)]


def test_scaler_on_ragged_lists_uses_all_valid_steps():
    X = ragged()
    steps = np.concatenate(X)
    scaler = SequenceStandardScaler().fit(X)
    np.testing.assert_allclose(scaler.mean_, steps.mean(0))
    np.testing.assert_allclose(scaler.scale_, steps.std(0))
    assert scaler.n_steps_seen_ == len(steps) and scaler.n_features_in_ == 3
    Z = scaler.transform(X)
    assert isinstance(Z, list) and [z.shape for z in Z] == [x.shape for x in X]
    flat = np.concatenate(Z)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(flat.std(0), 1)
    back = scaler.inverse_transform(Z)
    for a, b in zip(back, X):
        np.testing.assert_allclose(a, b)


def test_scaler_on_3d_arrays_and_object_arrays():
    rng = np.random.default_rng(1)
    X = rng.normal(3, 2, size=(10, 5, 2)).astype(np.float32)
    Z = SequenceStandardScaler().fit_transform(X)
    assert Z.shape == X.shape and Z.dtype == np.float32
    np.testing.assert_allclose(Z.reshape(-1, 2).mean(0), 0, atol=1e-5)
    obj = np.empty(4, dtype=object)
    obj[:] = ragged(n=4)
    out = SequenceStandardScaler().fit(obj).transform(obj)
    assert isinstance(out, np.ndarray) and out.dtype == object and len(out) == 4


def test_scaler_on_tables_and_univariate_lists():
    table = np.arange(12.0).reshape(3, 4)
    scaler = SequenceStandardScaler().fit(table)
    assert scaler.n_features_in_ == 4 and scaler.mean_.shape == (1,)
    np.testing.assert_allclose(scaler.mean_, [5.5])
    Z = scaler.transform(table)
    assert Z.shape == (3, 4)
    np.testing.assert_allclose(Z, (table - 5.5) / table.std())
    with pytest.raises(ValueError, match="X has 3 features, but SequenceStandardScaler is "
                                         "expecting 4"):
        scaler.transform(table[:, :3])
    uni = [np.arange(3.0), np.arange(5.0)]
    out = SequenceStandardScaler().fit(uni).transform(uni)
    assert [o.shape for o in out] == [(3,), (5,)]


def test_scaler_options_constant_features_and_errors():
    X = [np.column_stack([np.full(4, 7.0), np.arange(4.0)]), np.array([[7.0, 9.0]])]
    scaler = SequenceStandardScaler().fit(X)
    assert scaler.scale_[0] == 1.0 and scaler.var_[0] == 0.0
    np.testing.assert_allclose(np.concatenate(scaler.transform(X))[:, 0], 0)
    no_mean = SequenceStandardScaler(with_mean=False).fit(X)
    assert no_mean.mean_ is None
    np.testing.assert_allclose(no_mean.transform(X)[1], X[1] / no_mean.scale_)
    no_std = SequenceStandardScaler(with_std=False).fit(X)
    assert no_std.scale_ is None and no_std.var_ is None
    np.testing.assert_allclose(no_std.transform(X)[1], X[1] - no_std.mean_)
    with pytest.raises(ValueError, match="features per step"):
        scaler.transform([np.ones((2, 3))])
    with pytest.raises(ValueError, match="NaN"):
        SequenceStandardScaler().fit([np.array([[np.nan, 1.0]])])
    with pytest.raises(ValueError, match="mismatched feature counts"):
        SequenceStandardScaler().fit([np.ones((2, 2)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="with_mean"):
        SequenceStandardScaler(with_mean="yes").fit(X)
    assert clone(scaler).get_params() == {"with_mean": True, "with_std": True}


def test_scaler_keeps_and_checks_dataframe_column_names():
    """A DataFrame's column names: kept as feature_names_in_ and checked by transform
    (a pipeline ending in an estimator refuses reordered columns, as with
    StandardScaler), and the output's names."""
    pd = pytest.importorskip("pandas")
    import warnings

    from sklearn.pipeline import make_pipeline

    import cyrnn

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(30, 5)), columns=[f"t{i}" for i in range(5)])
    scaler = SequenceStandardScaler().fit(df)
    assert list(scaler.feature_names_in_) == list(df.columns)
    assert list(scaler.get_feature_names_out()) == list(df.columns)
    with pytest.raises(ValueError, match="feature names should match"):
        scaler.transform(df[df.columns[::-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_pipeline(SequenceStandardScaler(),
                             cyrnn.GRURegressor(hidden_size=4, max_iter=2, random_state=0))
        pipe.fit(df, df["t4"].to_numpy())
    assert list(pipe.feature_names_in_) == list(df.columns)
    with pytest.raises(ValueError, match="feature names should match"):
        pipe.predict(df[df.columns[::-1]])
    assert not hasattr(SequenceStandardScaler().fit(df.to_numpy()), "feature_names_in_")
    X3 = rng.normal(size=(4, 3, 2))
    assert list(SequenceStandardScaler().fit(X3).get_feature_names_out()) == ["x0", "x1"]


def test_scaler_set_output():
    """set_output as scikit-learn's transformers have it: 'default' in a pipeline,
    DataFrames for tables, a clear error for sequences asked to be DataFrames; the
    global transform_output leaves sequences as they are."""
    pd = pytest.importorskip("pandas")
    import sklearn
    from sklearn.pipeline import make_pipeline

    import cyrnn

    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(20, 4)), columns=list("abcd"),
                      index=np.arange(100, 120))
    make_pipeline(SequenceStandardScaler(), cyrnn.GRURegressor()).set_output(
        transform="default")
    plain = SequenceStandardScaler().fit_transform(df.to_numpy())
    out = SequenceStandardScaler().set_output(transform="pandas").fit_transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list("abcd")
    assert list(out.index) == list(df.index)
    np.testing.assert_array_equal(out.to_numpy(), plain)
    X3 = rng.normal(size=(4, 3, 2))
    with pytest.raises(ValueError, match="no DataFrame form"):
        SequenceStandardScaler().set_output(transform="pandas").fit_transform(X3)
    with pytest.raises(ValueError, match="transform must be"):
        SequenceStandardScaler().set_output(transform="xml")
    with sklearn.config_context(transform_output="pandas"):
        assert isinstance(SequenceStandardScaler().fit_transform(df), pd.DataFrame)
        assert SequenceStandardScaler().fit_transform(X3).shape == (4, 3, 2)
    np.testing.assert_array_equal(
        SequenceStandardScaler().set_output(transform="default").fit_transform(X3),
        SequenceStandardScaler().fit_transform(X3))
