"""Truncated BPTT: the hand-computed truncated sum, and chunked TBPTT(k1, k2)."""

import numpy as np
import pytest

import cyrnn
from cyrnn.training import tbptt, train_step


@pytest.fixture(autouse=True)
def _through_the_compiled_plan(compiled_plan_ran):
    """On compiled backends every test here must take its analytic gradients through the
    compiled plan: a spy counts the fused backward calls that ran."""
    yield
    if compiled_plan_ran is not None:
        assert compiled_plan_ran["train_backward"] > 0, "no fused backward ran"


def tutorial_truncated_grads(layer, x, h0, g, k):
    """The classic tutorial's double loop for a tanh RNN with a loss at every step:
    the loss at step t sends gradient back through steps t, t-1, ..., t-k."""
    p = layer.params
    W_ih, W_hh, b = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]
    T = x.shape[0]
    hs = {-1: h0}
    for t in range(T):
        hs[t] = np.tanh(W_ih @ x[t] + W_hh @ hs[t - 1] + b)
    dW_ih, dW_hh, db = np.zeros_like(W_ih), np.zeros_like(W_hh), np.zeros_like(b)
    for t in reversed(range(T)):
        delta = g[t] * (1 - hs[t] ** 2)
        for s in range(t, max(-1, t - k - 1), -1):
            dW_hh += np.outer(delta, hs[s - 1])
            dW_ih += np.outer(delta, x[s])
            db += delta
            delta = (W_hh.T @ delta) * (1 - hs[s - 1] ** 2)
    return dW_ih, dW_hh, db


@pytest.mark.parametrize("k", [0, 1, 3, 10])
@pytest.mark.parametrize("last_step_only", [False, True])
def test_truncated_gradient_equals_hand_computed_sum(k, last_step_only, backend, rng):
    T, D, H = 7, 3, 4
    layer = cyrnn.SimpleRNN(D, H, bptt_truncate=k, backend=backend, dtype=np.float64,
                            random_state=0)
    layer.params.data[...] += rng.normal(scale=0.3, size=layer.params.size)
    x = rng.normal(size=(1, T, D))
    h0 = rng.normal(size=(1, 1, H))
    g = rng.normal(size=(1, T, H))
    if last_step_only:
        g[:, :-1] = 0
    layer.forward(x, initial_state=h0, training=True)
    layer.zero_grad()
    layer.backward(g)
    dW_ih, dW_hh, db = tutorial_truncated_grads(layer, x[0], h0[0, 0], g[0], k)
    grad = layer.params.grad_of
    np.testing.assert_allclose(grad("weight_ih_l0"), dW_ih, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad("weight_hh_l0"), dW_hh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad("bias_ih_l0"), db, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad("bias_hh_l0"), db, rtol=1e-10, atol=1e-12)


def test_truncation_at_or_beyond_length_is_full_bptt(backend, rng):
    x = rng.normal(size=(2, 5, 3))
    grads = []
    for k in (None, 5, 50):
        layer = cyrnn.LSTM(3, 4, bptt_truncate=k, backend=backend, dtype=np.float64,
                           random_state=1)
        out, _ = layer.forward(x, training=True)
        layer.backward(np.ones_like(out))
        grads.append(layer.params.grad.copy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-12)


def make_model(backend, cell="GRU"):
    return cyrnn.Sequential([
        getattr(cyrnn, cell)(2, 5, backend=backend, dtype=np.float64, random_state=0),
        cyrnn.Dense(5, 1, dtype=np.float64, random_state=1),
    ])


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_chunk_covering_sequence_equals_full_bptt(cell, backend, rng):
    x, y = rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 8, 1))
    a, b = make_model(backend, cell), make_model(backend, cell)
    opt_a = cyrnn.optim.SGD(a, lr=0.1)
    opt_b = cyrnn.optim.SGD(b, lr=0.1)
    losses, _ = tbptt(a, opt_a, "mse", x, y, k1=8)
    full = train_step(b, opt_b, "mse", x, y)
    assert losses == [pytest.approx(full, rel=1e-12)]
    np.testing.assert_allclose(a.params.data, b.params.data, rtol=1e-12, atol=1e-14)


def test_chunks_carry_state_and_update_between_chunks(backend, rng):
    x, y = rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 8, 1))
    a, b = make_model(backend), make_model(backend)
    opt_a, opt_b = cyrnn.optim.SGD(a, lr=0.1), cyrnn.optim.SGD(b, lr=0.1)
    losses, states = tbptt(a, opt_a, "mse", x, y, k1=3)
    assert len(losses) == 3  # chunks of 3, 3, 2 steps
    carried = None
    for start in (0, 3, 6):
        value, carried = train_step(b, opt_b, "mse", x[:, start:start + 3], y[:, start:start + 3],
                                    initial_states=carried, return_states=True)
    np.testing.assert_allclose(a.params.data, b.params.data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(states[0], carried[0], rtol=1e-12)


def test_k2_shorter_than_chunk_truncates_inside_the_chunk(backend, rng):
    x, y = rng.normal(size=(2, 6, 2)), rng.normal(size=(2, 6, 1))
    a, b = make_model(backend), make_model(backend)
    tbptt(a, cyrnn.optim.SGD(a, lr=0.1), "mse", x, y, k1=6, k2=2)
    b.layers[0].bptt_truncate = 1
    train_step(b, cyrnn.optim.SGD(b, lr=0.1), "mse", x, y)
    np.testing.assert_allclose(a.params.data, b.params.data, rtol=1e-12, atol=1e-14)
    assert a.layers[0].bptt_truncate is None  # restored


@pytest.mark.no_fused_call  # computes nothing: a rejection
def test_tbptt_rejects_k2_beyond_chunk(backend, rng):
    model = make_model(backend)
    with pytest.raises(ValueError, match="k2"):
        tbptt(model, cyrnn.optim.SGD(model, lr=0.1), "mse", np.zeros((1, 4, 2)),
              np.zeros((1, 4, 1)), k1=2, k2=3)


@pytest.mark.no_fused_call  # computes nothing: rejections
def test_tbptt_checks_the_whole_sequence_before_the_first_chunk_trains(backend, rng):
    # a bad late chunk used to be found after the earlier chunks had updated the model
    model = make_model(backend)
    opt = cyrnn.optim.Adam(model, lr=0.1)
    x, y = rng.normal(size=(2, 9, 2)), rng.normal(size=(2, 9, 1))
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[1, 8, 0] = np.nan
    y_nan[0, 7, 0] = np.inf
    before = model.params.data.copy()
    for xb, yb, message in [(x_nan, y, "NaN"), (x, y_nan, "y contains NaN"),
                            (x, np.concatenate([y, y], axis=1), r"\(2, 9, 1\)"),
                            (x, y[:, :5], r"\(2, 9, 1\)")]:
        with pytest.raises(ValueError, match=message):
            tbptt(model, opt, "mse", xb, yb, k1=3)
        np.testing.assert_array_equal(model.params.data, before)
        assert opt.state_dict()["step"] == 0


@pytest.mark.parametrize("num_layers, reach", [(1, [7, 8, 9]), (2, [5, 6, 7, 8, 9]),
                                               (3, [3, 4, 5, 6, 7, 8, 9])])
def test_truncation_is_per_layer_in_stacks(num_layers, reach, backend, rng):
    # the documented rule: a gradient a layer receives at step t goes back k of its steps,
    # so a loss at the last step reaches num_layers * k steps back in the bottom layer
    layer = cyrnn.LSTM(2, 3, num_layers=num_layers, bptt_truncate=2, dtype=np.float64,
                       backend=backend, random_state=0)
    out, _ = layer.forward(rng.normal(size=(1, 10, 2)), training=True)
    d_out = np.zeros_like(out)
    d_out[:, -1] = 1
    dx, _ = layer.backward(d_out)
    assert list(np.nonzero(np.abs(dx[0]).sum(axis=1))[0]) == reach


def test_tbptt_skips_chunks_of_padding_only(backend, rng):
    # the chunk's train_step refused it ('no valid item') after earlier chunks had trained
    def model():
        return cyrnn.Sequential([cyrnn.Embedding(6, 3, mask_zero=True, random_state=0),
                                 cyrnn.GRU(3, 4, backend=backend, random_state=1),
                                 cyrnn.Dense(4, 2, random_state=2)])
    ids = rng.integers(1, 6, size=(2, 9))
    ids[:, 3:] = 0  # padding after the first chunk
    y = rng.normal(size=(2, 9, 2))
    a, b = model(), model()
    losses, states = tbptt(a, cyrnn.optim.SGD(a, lr=0.1), "mse", ids, y, k1=3,
                           sample_weight=np.ones(2))
    ref, ref_states = tbptt(b, cyrnn.optim.SGD(b, lr=0.1), "mse", ids[:, :3], y[:, :3], k1=3,
                            sample_weight=np.ones(2))
    assert len(losses) == 1 and losses == ref
    np.testing.assert_array_equal(a.params.data, b.params.data)
    np.testing.assert_array_equal(states[0], ref_states[0])


@pytest.mark.no_fused_call  # computes nothing: a rejection
def test_tbptt_refuses_a_chunk_without_weight_before_training(backend, rng):
    model = make_model(backend)
    x, y = rng.normal(size=(2, 6, 2)), rng.normal(size=(2, 6, 1))
    weights = np.ones((2, 6))
    weights[:, 3:] = 0
    before = model.params.data.copy()
    with pytest.raises(ValueError, match="steps 3 to 5 .* no valid step with a positive"):
        tbptt(model, cyrnn.optim.SGD(model, lr=0.1), "mse", x, y, k1=3, sample_weight=weights)
    np.testing.assert_array_equal(model.params.data, before)


def test_tbptt_takes_per_step_weights_chunk_by_chunk(backend, rng):
    # an (n, T) sample_weight was passed whole to every chunk's train_step, which
    # refused it for the chunk's (n, k1) output
    x, y = rng.normal(size=(2, 6, 2)), rng.normal(size=(2, 6, 1))
    w = rng.uniform(0.5, 2.0, size=(2, 6))
    a, b = make_model(backend), make_model(backend)
    tbptt(a, cyrnn.optim.SGD(a, lr=0.1), "mse", x, y, k1=3, sample_weight=w)
    carried, opt = None, cyrnn.optim.SGD(b, lr=0.1)
    for start in (0, 3):
        _, carried = train_step(b, opt, "mse", x[:, start:start + 3], y[:, start:start + 3],
                                initial_states=carried, sample_weight=w[:, start:start + 3],
                                return_states=True)
    np.testing.assert_allclose(a.params.data, b.params.data, rtol=1e-12, atol=1e-14)
