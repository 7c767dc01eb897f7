"""``cyrnn.from_keras`` against Keras 3 (on its torch backend): Sequential models of
Embedding, Masking, SimpleRNN, LSTM, GRU, Bidirectional and Dense give Keras's outputs
on every backend, including masks and all-padding sequences; options cyrnn has no
equivalent of raise, naming the option."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="the test extra installs keras (torch backend)")
if keras.backend.backend() != "torch":  # pragma: no cover
    pytest.skip("these tests run Keras on its torch backend (KERAS_BACKEND=torch)",
                allow_module_level=True)

import cyrnn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras's torch core
L = keras.layers
TOL = dict(rtol=1e-5, atol=1e-5)


def keras_out(model, x):
    return keras.ops.convert_to_numpy(model(x))


def _randomise(model, seed):
    """Nonzero biases (Keras initialises them to zero)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(keras.ops.convert_to_numpy(w) + rng.normal(scale=0.2, size=w.shape))


RECURRENT = [
    lambda rs: L.SimpleRNN(4, return_sequences=rs),
    lambda rs: L.SimpleRNN(4, activation="relu", return_sequences=rs, go_backwards=True),
    lambda rs: L.SimpleRNN(3, activation="linear", use_bias=False, return_sequences=rs),
    lambda rs: L.LSTM(4, return_sequences=rs),
    lambda rs: L.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid",
                      return_sequences=rs, go_backwards=True),
    lambda rs: L.LSTM(4, use_bias=False, return_sequences=rs),
    lambda rs: L.GRU(4, return_sequences=rs),
    lambda rs: L.GRU(3, reset_after=False, activation="sigmoid", return_sequences=rs),
    lambda rs: L.GRU(4, recurrent_activation="hard_sigmoid", go_backwards=True,
                     use_bias=False, return_sequences=rs),
    lambda rs: L.Bidirectional(L.LSTM(3, return_sequences=rs)),
    lambda rs: L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=rs),
                               merge_mode="sum"),
    lambda rs: L.Bidirectional(L.SimpleRNN(3, return_sequences=rs), merge_mode="mul"),
    lambda rs: L.Bidirectional(L.GRU(2, return_sequences=rs), merge_mode="ave"),
]


@pytest.mark.parametrize("make", range(len(RECURRENT)))
@pytest.mark.parametrize("return_sequences", [True, False])
def test_recurrent_models_match_keras(make, return_sequences, backend):
    kmodel = keras.Sequential([keras.Input((6, 3)), RECURRENT[make](return_sequences),
                               L.Dense(2, activation="softmax")])
    _randomise(kmodel, make)
    x = np.random.default_rng(make).normal(size=(4, 6, 3)).astype(np.float32)
    model = cyrnn.from_keras(kmodel, backend=backend)
    np.testing.assert_allclose(model.forward(x), keras_out(kmodel, x), **TOL)


@pytest.mark.parametrize("backend_layer", ["lstm", "gru", "bidirectional"])
def test_embedding_mask_zero_stacked(backend_layer, backend):
    """Pre-padding, padding at the end and a sequence of padding only (zeros in both)."""
    second = {"lstm": L.LSTM(3, go_backwards=True), "gru": L.GRU(3, reset_after=False),
              "bidirectional": L.Bidirectional(L.GRU(3))}[backend_layer]
    kmodel = keras.Sequential([keras.Input((7,), dtype="int32"),
                               L.Embedding(12, 4, mask_zero=True),
                               L.LSTM(5, return_sequences=True), second,
                               L.Dense(1, activation="sigmoid")])
    _randomise(kmodel, 3)
    ids = np.random.default_rng(0).integers(1, 12, size=(5, 7))
    ids[0, :3] = 0
    ids[1, 5:] = 0
    ids[2] = 0
    model = cyrnn.from_keras(kmodel, backend=backend)
    np.testing.assert_allclose(model.forward(ids), keras_out(kmodel, ids), **TOL)


def test_masking_and_valid_steps_of_sequences(backend):
    """At masked steps cyrnn outputs zeros where Keras repeats the last output: valid
    steps agree, and the all-padding sequence is zero in both."""
    kmodel = keras.Sequential([keras.Input((6, 2)), L.Masking(0.0),
                               L.GRU(3, return_sequences=True)])
    _randomise(kmodel, 1)
    x = np.random.default_rng(1).normal(size=(3, 6, 2)).astype(np.float32)
    x[0, 4:] = 0
    x[1] = 0
    model = cyrnn.from_keras(kmodel, backend=backend)
    ours, theirs = model.forward(x), keras_out(kmodel, x)
    valid = np.any(x != 0, axis=-1)
    np.testing.assert_allclose(ours[valid], theirs[valid], **TOL)
    np.testing.assert_array_equal(ours[1], 0)
    np.testing.assert_allclose(theirs[1], 0, atol=1e-7)


def test_single_layers_and_merge_mode_none(backend):
    x = np.random.default_rng(2).normal(size=(2, 5, 3)).astype(np.float32)
    klstm = L.LSTM(4, return_sequences=True)
    klstm.build((None, 5, 3))
    lstm = cyrnn.from_keras(klstm, backend=backend)
    assert isinstance(lstm, cyrnn.LSTM)
    np.testing.assert_allclose(lstm(x), keras_out(klstm, x), **TOL)
    kbi = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=None)
    kbi.build((None, 5, 3))
    bi = cyrnn.from_keras(kbi, backend=backend)
    for ours, theirs in zip(bi(x), kbi(x), strict=True):
        np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(theirs), **TOL)


def test_refusals():
    def model(layer):
        return keras.Sequential([keras.Input((5, 3), batch_size=2), layer])

    with pytest.raises(TypeError, match="LSTM has no stateful=True.*initial_state"):
        cyrnn.from_keras(model(L.LSTM(3, stateful=True)))
    with pytest.raises(TypeError, match="GRU has no recurrent_dropout=0.5.*tbptt"):
        cyrnn.from_keras(model(L.GRU(3, recurrent_dropout=0.5)))
    with pytest.raises(ValueError, match="activation must be one of.*'softsign'"):
        cyrnn.from_keras(model(L.SimpleRNN(3, activation="softsign")))
    with pytest.raises(TypeError, match="not Conv1D"):
        cyrnn.from_keras(model(L.Conv1D(2, 2)))
    with pytest.warns(UserWarning, match="no input dropout"):
        cyrnn.from_keras(model(L.GRU(3, dropout=0.2)))
    # a backward_layer with other options than the forward one was converted with the
    # forward one's options (outputs off by up to 2)
    for backward in (L.GRU(3, activation="relu", go_backwards=True),
                     L.GRU(3, reset_after=False, go_backwards=True),
                     L.GRU(3, recurrent_activation="hard_sigmoid", go_backwards=True)):
        with pytest.raises(ValueError, match="backward layer differs in"):
            cyrnn.from_keras(model(L.Bidirectional(L.GRU(3), backward_layer=backward)))
    # input dropout is dropped with a warning anyway: a difference in it is no reason
    with pytest.warns(UserWarning, match="no input dropout"):
        cyrnn.from_keras(model(L.Bidirectional(
            L.GRU(3), backward_layer=L.GRU(3, dropout=0.2, go_backwards=True))))


def test_bidirectional_with_a_matching_backward_layer(backend):
    x = np.random.default_rng(3).normal(size=(2, 5, 3)).astype(np.float32)
    k = keras.Sequential([keras.Input((5, 3)), L.Bidirectional(
        L.LSTM(4, return_sequences=True), backward_layer=L.LSTM(4, return_sequences=True,
                                                                go_backwards=True)),
        L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode=None)])
    ours = cyrnn.from_keras(k, backend=backend).forward(x)
    for a, b in zip(ours, k(x), strict=True):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), **TOL)


def test_keras_to_cyrnn_to_onnx_runtime():
    """Keras -> cyrnn -> ONNX: ONNX Runtime reproduces Keras (the Dense's softmax is
    an Activation layer, exported as Softmax)."""
    ort = pytest.importorskip("onnxruntime")
    kmodel = keras.Sequential([keras.Input((7,), dtype="int32"),
                               L.Embedding(12, 4, mask_zero=True),
                               L.Bidirectional(L.LSTM(3, return_sequences=True)),
                               L.GRU(3, go_backwards=True), L.Dense(3, activation="softmax")])
    _randomise(kmodel, 5)
    ids = np.random.default_rng(5).integers(0, 12, size=(4, 7))
    ids[0] = 0
    exported = cyrnn.to_onnx(cyrnn.from_keras(kmodel))
    session = ort.InferenceSession(exported.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": ids})[0], keras_out(kmodel, ids), **TOL)


def test_dropout_activation_and_time_distributed_dense_convert(backend):
    """Dropout (identity at inference), Activation and TimeDistributed(Dense) layers were
    refused; they convert to nothing, cyrnn.Activation and Dense."""
    kmodel = keras.Sequential([keras.Input((6, 3)), L.LSTM(4, return_sequences=True),
                               L.Dropout(0.5), L.TimeDistributed(L.Dense(5)),
                               L.Activation("selu"), L.GRU(3), L.Dropout(0.2),
                               L.Dense(2), L.Activation("softmax")])
    _randomise(kmodel, 7)
    x = np.random.default_rng(7).normal(size=(4, 6, 3)).astype(np.float32)
    model = cyrnn.from_keras(kmodel, backend=backend)
    assert [type(layer).__name__ for layer in model.layers] == [
        "LSTM", "Dense", "Activation", "GRU", "Dense", "Activation"]
    np.testing.assert_allclose(model.forward(x), keras_out(kmodel, x), **TOL)


@pytest.mark.no_fused_call  # computes nothing: rejections
def test_non_keras_objects_and_own_activation_functions_are_refused():
    """A cyrnn or torch LSTM raised AttributeError deep inside; a function of one's own
    named like a built-in ('sigmoid') converted as the built-in (0.22 off)."""
    torch = pytest.importorskip("torch")
    for obj in (cyrnn.LSTM(3, 4), cyrnn.Sequential([cyrnn.GRU(3, 4)]), torch.nn.LSTM(3, 4)):
        with pytest.raises(TypeError, match="needs a Keras model or layer, got"):
            cyrnn.from_keras(obj)

    def sigmoid(x):
        return keras.ops.sigmoid(4.0 * x)

    kmodel = keras.Sequential([keras.Input((5, 3)), L.LSTM(4), L.Dense(2, activation=sigmoid)])
    with pytest.raises(TypeError, match="Keras's own activation functions; sigmoid"):
        cyrnn.from_keras(kmodel)
    ops_model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4),
                                  L.Dense(2, activation=keras.ops.sigmoid)])
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(cyrnn.from_keras(ops_model).forward(x),
                               keras_out(ops_model, x), **TOL)

def test_unbuilt_and_quantized_layers_are_refused():
    """An unbuilt layer raised AttributeError ('LSTMCell' has no 'kernel'); a quantized
    Dense gave numbers off by 16 (its int8 kernel read as floats, its scales ignored)."""
    with pytest.raises(ValueError, match="not built"):
        cyrnn.from_keras(keras.layers.LSTM(4))
    with pytest.raises(ValueError, match="not built"):
        cyrnn.from_keras(keras.Sequential([keras.layers.LSTM(4)]))
    k = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    k.quantize("int8")
    with pytest.raises(ValueError, match="quantized .*int8"):
        cyrnn.from_keras(k)
