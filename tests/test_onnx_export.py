"""``cyrnn.to_onnx`` against ONNX Runtime: random configurations of every cell and
option (float32, |cyrnn - ORT| <= 1e-5 + 1e-5 |ORT| elementwise), Sequential models
with embeddings, masks from the data (pre-padding, gaps, all padding), the six
estimators, dynamic batch and time axes, and the refusals."""

import numpy as np
import pytest

import cyrnn

onnx = pytest.importorskip("onnx", reason="the onnx extra installs onnx")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")

CLASSES = {"rnn": cyrnn.SimpleRNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}


def ort_run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(got, expected):
    """The issue's bound: |cyrnn - ORT| <= 1e-5 + 1e-5 |ORT| elementwise."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    bound = 1e-5 + 1e-5 * np.abs(expected)
    excess = np.abs(got - expected) - bound
    assert excess.max(initial=-1) <= 0, f"max |diff| {np.abs(got - expected).max()}"


def random_layer_config(rng):
    kind = str(rng.choice(list(CLASSES)))
    row_acts = ("tanh", "relu", "sigmoid", "linear")
    kw = dict(num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.random() < 0.5),
              return_sequences=bool(rng.random() < 0.7), go_backwards=bool(rng.random() < 0.3),
              use_bias=bool(rng.random() < 0.8), batch_first=bool(rng.random() < 0.8),
              activation=str(rng.choice(row_acts)))
    if kw["bidirectional"]:
        modes = ["concat", "sum", "mul", "ave"] + ([None] if kw["num_layers"] == 1 else [])
        kw["merge_mode"] = modes[int(rng.integers(len(modes)))]
    if kind != "rnn":
        kw["recurrent_activation"] = str(rng.choice(["sigmoid", "hard_sigmoid"]))
    if kind == "lstm":
        kw["peephole"] = bool(rng.random() < 0.5)
    if kind == "gru":
        kw["reset_after"] = bool(rng.random() < 0.5)
    return kind, kw


@pytest.mark.parametrize("seed", range(40))
def test_random_layers_match_onnx_runtime(seed, backend):
    rng = np.random.default_rng(seed)
    kind, kw = random_layer_config(rng)
    D, H = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    layer = CLASSES[kind](D, H, backend=backend, random_state=seed, **kw)
    layer.params.data[...] += rng.normal(scale=0.3, size=layer.params.size)  # biases, peepholes
    if not layer.use_bias:
        layer.reset_parameters(seed)
    N, T = int(rng.integers(1, 5)), int(rng.integers(1, 8))
    x = rng.normal(size=(N, T, D)).astype(np.float32)
    with_lengths = rng.random() < 0.5
    lengths = rng.integers(1, T + 1, size=N)
    if not layer.batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    out, state = layer(x, lengths=lengths if with_lengths else None)
    feeds = {"x": x} | ({"lengths": lengths.astype(np.int64)} if with_lengths else {})
    got = ort_run(cyrnn.to_onnx(layer, lengths=with_lengths), feeds)
    outs = list(out) if isinstance(out, list) else [out]
    states = list(state) if isinstance(state, tuple) else [state]
    assert len(got) == len(outs) + len(states), (kind, kw)
    for ours, theirs in zip(outs + states, got):
        assert_close(ours, theirs)


@pytest.mark.parametrize("first", ["embedding", "masking", "none"])
@pytest.mark.parametrize("seed", range(6))
def test_sequential_with_masks_matches_onnx_runtime(first, seed, backend):
    """Masks from the data may be pre-padding, have gaps or mark no step at all: the
    graph moves valid steps to the front and back (cyrnn's masking rule)."""
    rng = np.random.default_rng(100 + seed)
    N, T, E = 5, 7, 3
    layers = []
    if first == "embedding":
        layers.append(cyrnn.Embedding(9, E, mask_zero=True, random_state=seed))
        x = rng.integers(1, 9, size=(N, T))
        x[rng.random((N, T)) < 0.3] = 0
        x[0] = 0                                  # all padding
        x[1, :3] = 0                              # pre-padding
    else:
        x = rng.normal(size=(N, T, E)).astype(np.float32)
        if first == "masking":
            layers.append(cyrnn.Masking(0.0))
            x[rng.random((N, T)) < 0.3] = 0.0
            x[0] = 0.0
    for i in range(int(rng.integers(1, 3))):
        kind, kw = random_layer_config(rng)
        kw.update(batch_first=True, return_sequences=True)
        if kw.get("merge_mode", "concat") is None:
            kw["merge_mode"] = "concat"
        width = layers[-1].output_size if layers and not isinstance(layers[-1], cyrnn.Masking) \
            else E
        layer = CLASSES[kind](width, 4, backend=backend, random_state=seed + i, **kw)
        layers.append(layer)
        if rng.random() < 0.5:
            layers.append(cyrnn.Dense(layer.output_size, 3, random_state=i))
    last = next(layer for layer in reversed(layers)
                if isinstance(layer, cyrnn.layers.RecurrentLayer))
    last.return_sequences = bool(rng.random() < 0.5)
    if not last.return_sequences:
        layers = layers[:layers.index(last) + 1]
    layers.append(cyrnn.Dense(layers[-1].output_size, 2, random_state=seed))
    model = cyrnn.Sequential(layers)
    lengths = rng.integers(1, T + 1, size=N)
    for with_lengths in (False, True):
        expected = model.forward(x, lengths=lengths if with_lengths else None)
        feeds = {"x": x} | ({"lengths": lengths.astype(np.int64)} if with_lengths else {})
        got = ort_run(cyrnn.to_onnx(model, lengths=with_lengths), feeds)
        assert_close(expected, got[0])


def test_dynamic_batch_and_time_axes(backend):
    model = cyrnn.Sequential([cyrnn.LSTM(3, 5, bidirectional=True, backend=backend,
                                         random_state=0),
                              cyrnn.Dense(10, 2, random_state=0)])
    exported = cyrnn.to_onnx(model)
    rng = np.random.default_rng(0)
    for N, T in [(1, 1), (4, 9), (2, 30)]:
        x = rng.normal(size=(N, T, 3)).astype(np.float32)
        assert_close(model.forward(x), ort_run(exported, {"x": x})[0])


ESTIMATORS = [cyrnn.LSTMRegressor, cyrnn.GRURegressor, cyrnn.SimpleRNNRegressor,
              cyrnn.LSTMClassifier, cyrnn.GRUClassifier, cyrnn.SimpleRNNClassifier]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", ["features", "tokens", "sequences"])
def test_estimators_match_onnx_runtime(cls, variant, tmp_path):
    rng = np.random.default_rng(7)
    classifier = cls.__name__.endswith("Classifier")
    kw = dict(max_iter=2, hidden_size=5, random_state=0)
    if variant == "tokens":
        X = rng.integers(1, 12, size=(40, 8))
        X[:, :2] = 0                                 # pre-padded token table
        kw.update(vocab_size=12, embedding_dim=3)
        signal = (X[:, -1] % 3).astype(float)
    else:
        X = rng.normal(size=(40, 8, 2)).astype(np.float32)
        signal = X[:, :, 0].sum(axis=1)
    if variant == "sequences":
        kw["return_sequences"] = True
        signal = np.cumsum(X[:, :, 0], axis=1)
    if classifier:
        labels = np.array(["low", "mid", "high"]) if variant != "sequences" else np.array([3, 7])
        y = labels[np.digitize(signal, np.quantile(signal, [0.5, 0.8])[:len(labels) - 1])]
    else:
        y = signal
    est = cls(**kw).fit(X, y)
    path = tmp_path / "model.onnx"
    exported = cyrnn.to_onnx(est, path)
    assert onnx.load(path) == exported
    got = ort_run(exported, {"x": X})
    if classifier:
        np.testing.assert_array_equal(got[0], est.predict(X))
        assert_close(est.predict_proba(X), got[1])
    else:
        assert_close(est.predict(X), got[0])


def test_estimator_with_lengths_input():
    rng = np.random.default_rng(1)
    X = [rng.normal(size=(int(t), 2)) for t in rng.integers(2, 9, size=30)]
    y = np.array([x[:, 0].sum() for x in X])
    est = cyrnn.GRURegressor(max_iter=2, random_state=0).fit(X, y)
    T = max(len(x) for x in X)
    padded = np.zeros((len(X), T, 2), np.float32)
    for i, x in enumerate(X):
        padded[i, :len(x)] = x
    lengths = np.array([len(x) for x in X], np.int64)
    got = ort_run(cyrnn.to_onnx(est, lengths=True), {"x": padded, "lengths": lengths})
    assert_close(est.predict(X), got[0])


def test_checker_passes_and_operators_are_standard():
    model = cyrnn.Sequential([cyrnn.Embedding(5, 3, mask_zero=True),
                              cyrnn.LSTM(3, 4, peephole=True, recurrent_activation="hard_sigmoid"),
                              cyrnn.GRU(4, 4, reset_after=False, go_backwards=True,
                                        return_sequences=False),
                              cyrnn.Dense(4, 1)])
    exported = cyrnn.to_onnx(model)
    onnx.checker.check_model(exported, full_check=True)
    assert {op.domain for op in exported.opset_import} == {""}
    ops = {n.op_type: n for n in exported.graph.node}
    lstm, gru = ops["LSTM"], ops["GRU"]
    assert len(lstm.input) == 8 and lstm.input[7]           # P
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lstm.attribute}
    assert attrs["activations"] == [b"HardSigmoid", b"Tanh", b"Tanh"]
    assert attrs["activation_alpha"] == pytest.approx([1 / 6])
    gattrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
    assert gattrs["linear_before_reset"] == 0 and gattrs["direction"] == b"reverse"


def test_float64_models_export():
    """The graph is valid ONNX in float64 (ONNX Runtime's CPU recurrent kernels are
    float32 only; cyrnn.onnx_backend and onnx.reference run it)."""
    layer = cyrnn.GRU(3, 4, dtype=np.float64, random_state=0)
    exported = cyrnn.to_onnx(layer)
    assert exported.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


def test_refusals():
    with pytest.raises(TypeError, match="to_onnx exports"):
        cyrnn.to_onnx(object())

    class Odd(cyrnn.layers.Layer):
        dtype = np.dtype(np.float32)

        def param_specs(self):
            return []

    odd = Odd()
    odd._build_params()
    model = cyrnn.Sequential([cyrnn.GRU(2, 3), odd])
    with pytest.raises(ValueError, match="cannot export a Odd layer"):
        cyrnn.to_onnx(model)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        cyrnn.to_onnx(cyrnn.GRURegressor())
