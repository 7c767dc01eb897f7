"""Keras's layer options on every backend: go_backwards, merge_mode=None, use_bias,
activations, the refused options (stateful, recurrent_dropout) and unknown keywords,
Masking, and all-padding sequences (zero outputs, as Keras) on every path."""

import numpy as np
import pytest

import cyrnn
from cyrnn.optim import SGD
from cyrnn.training import train_step

N, T, D, H = 4, 6, 3, 5
CLASSES = {"rnn": cyrnn.SimpleRNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}


def _layer(kind, backend, **kw):
    return CLASSES[kind](D, H, backend=backend, dtype=np.float64, random_state=0, **kw)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_go_backwards_is_the_reversed_sequence(kind, bidirectional, backend, rng):
    """Keras: the padded sequence and its mask run last step first, outputs in
    processing order; gradients flow back to the input's own order."""
    back = _layer(kind, backend, go_backwards=True, bidirectional=bidirectional)
    plain = _layer(kind, backend, bidirectional=bidirectional)
    x = rng.normal(size=(N, T, D))
    mask = rng.random((N, T)) < 0.7
    mask[:, 0] = True
    out_b, st_b = back.forward(x, mask=mask, training=True)
    out_p, st_p = plain.forward(x[:, ::-1], mask=mask[:, ::-1], training=True)
    np.testing.assert_allclose(out_b, out_p, rtol=1e-12, atol=1e-12)
    d = rng.normal(size=out_b.shape)
    dx_b, _ = back.backward(d)
    dx_p, _ = plain.backward(d)
    np.testing.assert_allclose(dx_b, dx_p[:, ::-1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(back.params.grad, plain.params.grad, rtol=1e-10, atol=1e-12)


def test_go_backwards_in_a_sequential_takes_the_layer_path(backend, rng):
    layer = _layer("gru", backend, go_backwards=True, return_sequences=False)
    model = cyrnn.Sequential([layer, cyrnn.Dense(H, 2, dtype=np.float64, random_state=0)])
    assert model.inference_spec() is None
    x = rng.normal(size=(N, T, D))
    out = model.forward(x)
    ref = _layer("gru", backend, return_sequences=False)
    np.testing.assert_allclose(out, model.layers[1](ref(x[:, ::-1])[0]), rtol=1e-12)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_merge_mode_none_returns_both_directions(return_sequences, backend, rng):
    sep = _layer("lstm", backend, bidirectional=True, merge_mode=None,
                 return_sequences=return_sequences)
    cat = _layer("lstm", backend, bidirectional=True, return_sequences=return_sequences)
    x = rng.normal(size=(N, T, D))
    (fwd, bwd), _ = sep.forward(x, lengths=[6, 3, 1, 5], training=True)
    both, _ = cat.forward(x, lengths=[6, 3, 1, 5], training=True)
    np.testing.assert_allclose(np.concatenate([fwd, bwd], -1), both, rtol=1e-12)
    d = rng.normal(size=both.shape)
    dx_sep, _ = sep.backward([d[..., :H], d[..., H:]])
    dx_cat, _ = cat.backward(d)
    np.testing.assert_allclose(dx_sep, dx_cat, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sep.params.grad, cat.params.grad, rtol=1e-10, atol=1e-12)


def test_merge_mode_none_limits():
    with pytest.raises(ValueError, match="num_layers=1"):
        cyrnn.GRU(D, H, 2, bidirectional=True, merge_mode=None)
    layer = cyrnn.GRU(D, H, bidirectional=True, merge_mode=None)
    with pytest.raises(ValueError, match="last layer"):
        cyrnn.Sequential([layer, cyrnn.Dense(H, 1)])
    with pytest.raises(ValueError, match="merge_mode"):
        cyrnn.GRU(D, H, bidirectional=True, merge_mode="max")


@pytest.mark.parametrize("kind", list(CLASSES))
def test_use_bias_false_holds_biases_at_zero(kind, backend, rng):
    layer = _layer(kind, backend, use_bias=False)
    names = [n for n in layer.params.shapes if n.startswith("bias")]
    assert all(np.all(layer.params[n] == 0) for n in names)
    x = rng.normal(size=(N, T, D))
    out, _ = layer.forward(x, training=True)
    layer.backward(np.ones_like(out))
    assert all(np.all(layer.params.grad_of(n) == 0) for n in names)
    assert np.abs(layer.params.grad_of("weight_ih_l0")).max() > 0
    # a training step of a Sequential (the fused path on compiled backends) leaves the
    # biases at zero too
    model = cyrnn.Sequential([_layer(kind, backend, use_bias=False)])
    train_step(model, SGD(model, lr=0.1), "mse", x, np.ones((N, T, H)))
    assert all(np.all(model.params[f"0.{n}"] == 0) for n in names)
    assert np.abs(model.params.grad_of("0.weight_hh_l0")).max() > 0


@pytest.mark.parametrize("kind,acts", [
    ("rnn", dict(activation="linear")),
    ("lstm", dict(activation="relu", recurrent_activation="hard_sigmoid")),
    ("gru", dict(activation="sigmoid", recurrent_activation="hard_sigmoid")),
])
def test_activations(kind, acts, backend, rng):
    layer = _layer(kind, backend, **acts)
    ref = _layer(kind, "numpy", **acts)
    x = rng.normal(size=(N, T, D))
    np.testing.assert_allclose(layer(x)[0], ref(x)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_option_errors_name_the_public_class(kind):
    cls = CLASSES[kind]
    with pytest.raises(TypeError, match=rf"{cls.__name__} got an unexpected keyword "
                                        r"argument 'unroll'"):
        cls(D, H, unroll=True)
    with pytest.raises(TypeError, match=rf"{cls.__name__} has no stateful=True.*initial_state"
                                        r".*return_state.*tbptt"):
        cls(D, H, stateful=True)
    with pytest.raises(TypeError, match=rf"{cls.__name__} has no recurrent_dropout=0.2.*tbptt"):
        cls(D, H, recurrent_dropout=0.2)
    cls(D, H, stateful=False, recurrent_dropout=0.0)  # Keras's defaults are accepted
    if kind == "rnn":
        with pytest.raises(TypeError, match="SimpleRNN got an unexpected keyword argument "
                                            "'recurrent_activation'"):
            cls(D, H, recurrent_activation="sigmoid")
    else:
        with pytest.raises(ValueError, match="recurrent_activation.*'softsign'"):
            cls(D, H, recurrent_activation="softsign")
    with pytest.raises(ValueError, match="activation.*'selu'"):
        cls(D, H, activation="selu")


def test_masking_layer(backend, rng):
    x = rng.normal(size=(N, T, D))
    x[0, 4:] = 0.0          # post-padding
    x[1, :2] = 0.0          # pre-padding
    x[2] = 0.0              # all padding
    model = cyrnn.Sequential([cyrnn.Masking(0.0, dtype=np.float64),
                              _layer("lstm", backend, return_sequences=False)])
    out = model.forward(x)
    layer = model.layers[1]
    ref, _ = layer(x, mask=np.any(x != 0, axis=-1))
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    np.testing.assert_array_equal(out[2], 0)
    with pytest.raises(ValueError, match="first layer"):
        cyrnn.Sequential([_layer("gru", backend), cyrnn.Masking(dtype=np.float64)])


@pytest.mark.parametrize("return_sequences", [True, False])
def test_all_padding_gives_zeros_on_every_path(return_sequences, backend):
    """A sequence with no valid step: zeros from a layer (mask), a Sequential under
    mask_zero (fused or layer path), and a Sequential with lengths/mask."""
    ids = np.array([[0, 0, 0, 0], [3, 1, 2, 0]])
    emb = cyrnn.Embedding(5, D, mask_zero=True, dtype=np.float64, random_state=0)
    rnn = _layer("gru", backend, return_sequences=return_sequences)
    model = cyrnn.Sequential([emb, rnn])
    out = model.forward(ids)
    np.testing.assert_array_equal(out[0], 0)
    assert np.abs(out[1]).max() > 0
    np.testing.assert_allclose(out, model._forward_checked(ids, ids != 0, None, False, False))
    x = emb.params["weight"][ids]
    np.testing.assert_allclose(rnn(x, mask=ids != 0)[0], out, rtol=1e-12)
    out2 = model.forward(np.where(ids == 0, 1, ids), mask=ids != 0)
    np.testing.assert_allclose(out2, out, rtol=1e-12)


def test_use_bias_round_trips_through_torch():
    torch = pytest.importorskip("torch")
    module = torch.nn.GRU(D, H, bias=False, batch_first=True)
    layer = cyrnn.from_torch(module)
    assert not layer.use_bias
    module2 = torch.nn.GRU(D, H, bias=False, batch_first=True)
    module2.load_state_dict(layer.to_torch_state_dict())
    x = np.random.default_rng(0).normal(size=(N, T, D)).astype(np.float32)
    np.testing.assert_allclose(layer(x)[0], module2(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)


ACTIVATION_NAMES = ["linear", "tanh", "relu", "sigmoid", "softmax", "hard_sigmoid", "softplus",
                    "softsign", "elu", "selu", "silu", "hard_silu", "relu6", "leaky_relu",
                    "exponential", "log_softmax"]


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_layer_gradient(name, rng):
    """The Activation layer (Keras's Dense(activation=...)) against finite differences
    (inputs kept off the kinks of relu, relu6, hard_sigmoid, hard_silu)."""
    layer = cyrnn.Activation(name, dtype=np.float64)
    x = rng.normal(size=(2, 3, 4)) * (1 if name == "exponential" else 4)
    x[np.abs(x) < 0.01] += 0.1
    for kink in (-3.0, 3.0, 6.0):
        x[np.abs(x - kink) < 0.01] += 0.1
    w = rng.normal(size=x.shape)
    layer.forward(x, training=True)
    grad = layer.backward(w)
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = ((layer.forward(xp) * w).sum() - (layer.forward(xm) * w).sum()) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="activation must be one of"):
        cyrnn.Activation("gelu")


@pytest.mark.parametrize("name", ACTIVATION_NAMES + ["swish", "hard_swish"])
def test_activation_layer_matches_keras_and_onnx_runtime(name, rng):
    """Every Activation layer function is Keras 3's ``keras.activations.<name>`` (its
    names for Dense(activation=...)), forward, and exports to an ONNX graph that ONNX
    Runtime runs to the same values; it survives save/load."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = (rng.normal(size=(3, 5, 4)) * 4).astype(np.float32)
    layer = cyrnn.Activation(name)
    want = keras.ops.convert_to_numpy(getattr(keras.activations, name)(x))
    np.testing.assert_allclose(layer(x), want, rtol=2e-6, atol=2e-6)
    ort = pytest.importorskip("onnxruntime")
    model = cyrnn.Sequential([cyrnn.LSTM(4, 4, random_state=0), layer])
    sess = ort.InferenceSession(cyrnn.to_onnx(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], model.forward(x), rtol=1e-5,
                               atol=1e-5)
