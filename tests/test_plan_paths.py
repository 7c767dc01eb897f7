"""Every public entry point runs its compiled backend's fused calls (a spy counts them)
and equals the NumPy layer path, the specification: layer ``__call__``/``forward``/
``backward``/``step``, ``Sequential.forward``/``backward``/``step``, ``train_step``,
``tbptt``, the estimators, and the character language model."""

import copy

import numpy as np
import pytest

import cyrnn
from cyrnn.optim import SGD
from cyrnn.training import tbptt, train_step

from conftest import BACKENDS, spy_fused_calls

COMPILED = [b for b in BACKENDS if b != "numpy"]
pytestmark = pytest.mark.skipif(not COMPILED, reason="no compiled backend")

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(params=COMPILED)
def backend(request):
    return request.param


@pytest.fixture
def spy(backend, monkeypatch):
    """Counts of the backend's fused calls made from here on."""
    return spy_fused_calls(backend, monkeypatch)


def _numpy_copy(obj):
    ref = copy.deepcopy(obj)
    layers = ref.recurrent_layers if isinstance(ref, cyrnn.Sequential) else [ref]
    for layer in layers:
        layer.backend = "numpy"
    return ref


def _layer(backend, Cls=cyrnn.LSTM, dtype=np.float64, **kw):
    layer = Cls(4, 5, backend=backend, dtype=dtype, random_state=0, **kw)
    layer.params.data[...] = np.random.default_rng(3).uniform(-0.6, 0.6, layer.params.size)
    return layer


@pytest.mark.parametrize("Cls", [cyrnn.LSTM, cyrnn.GRU, cyrnn.SimpleRNN])
@pytest.mark.parametrize("bidirectional,merge", [(False, "concat"), (True, "concat"),
                                                 (True, "sum"), (True, "mul"), (True, "ave")])
@pytest.mark.parametrize("batch_first", [True, False])
def test_layer_call_with_lengths_and_state(backend, spy, Cls, bidirectional, merge,
                                           batch_first, rng):
    layer = _layer(backend, Cls, num_layers=2, bidirectional=bidirectional, merge_mode=merge,
                   batch_first=batch_first)
    layer.eval()
    ref = _numpy_copy(layer)
    n, T = 3, 6
    x = rng.standard_normal((n, T, 4) if batch_first else (T, n, 4))
    lengths = np.array([6, 2, 4])
    shape = (2 * layer.num_directions, n, 5)
    h0 = rng.standard_normal(shape)
    state = (h0, rng.standard_normal(shape)) if Cls is cyrnn.LSTM else h0
    out, st = layer(x, lengths=lengths, initial_state=state)
    assert spy["infer"] == 1
    out_ref, st_ref = ref(x, lengths=lengths, initial_state=state)
    np.testing.assert_allclose(out, out_ref, **TOL[np.float64])
    for a, b in zip(np.atleast_1d(st) if not isinstance(st, tuple) else st,
                    np.atleast_1d(st_ref) if not isinstance(st_ref, tuple) else st_ref):
        np.testing.assert_allclose(a, b, **TOL[np.float64])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("seq", [True, False])
def test_layer_training_forward_backward(backend, spy, dtype, bidirectional, seq, rng):
    layer = _layer(backend, cyrnn.GRU, dtype, num_layers=2, bidirectional=bidirectional,
                   return_sequences=seq, dropout=0.3, bptt_truncate=2)
    ref = _numpy_copy(layer)
    n, T = 3, 7
    x = rng.standard_normal((n, T, 4)).astype(dtype)
    mask = rng.random((n, T)) < 0.7
    mask[:, 0] = True
    out, st = layer.forward(x, mask=mask, training=True)
    out_ref, st_ref = ref.forward(x, mask=mask, training=True)
    np.testing.assert_allclose(out, out_ref, **TOL[dtype])
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_st = rng.standard_normal(st.shape).astype(dtype)
    dx, dh0 = layer.backward(d_out, d_st)
    dx_ref, dh0_ref = ref.backward(d_out, d_st)
    assert spy["train_forward"] == 1 and spy["train_backward"] == 1
    tol = dict(rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dh0, dh0_ref, **tol)
    np.testing.assert_allclose(layer.params.grad, ref.params.grad, **tol)


def test_layer_and_sequential_step(backend, spy, rng):
    layer = _layer(backend, cyrnn.LSTM, num_layers=2)
    ref = _numpy_copy(layer)
    x_t = rng.standard_normal((2, 4))
    state = (rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 5)))
    y, st = layer.step(x_t, state)
    y_ref, st_ref = ref.step(x_t, state)
    assert spy["infer"] == 1
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    np.testing.assert_allclose(st[1], st_ref[1], **TOL[np.float64])
    # None means zeros
    y0, _ = layer.step(x_t, None)
    y0_ref, _ = ref.step(x_t, (np.zeros((2, 2, 5)), np.zeros((2, 2, 5))))
    np.testing.assert_allclose(y0, y0_ref, **TOL[np.float64])
    model = cyrnn.Sequential([cyrnn.Embedding(7, 4, dtype=np.float64, random_state=0),
                              cyrnn.GRU(4, 5, num_layers=2, backend=backend,
                                        dtype=np.float64, random_state=1),
                              cyrnn.Dense(5, 7, dtype=np.float64, random_state=2)])
    ref_m = _numpy_copy(model)
    states = model.initial_states(3)
    ids = np.array([1, 5, 6])
    before = spy["infer"]
    for _ in range(3):
        out, states = model.step(ids, states)
        ids = out.argmax(axis=1)
    assert spy["infer"] == before + 3
    states_r = ref_m.initial_states(3)
    ids = np.array([1, 5, 6])
    for _ in range(3):
        out_r, states_r = ref_m.step(ids, states_r)
        ids = out_r.argmax(axis=1)
    np.testing.assert_allclose(out, out_r, **TOL[np.float64])
    np.testing.assert_allclose(states[0], states_r[0], **TOL[np.float64])


def _seq_model(backend, dtype=np.float64):
    model = cyrnn.Sequential([
        cyrnn.LSTM(4, 5, num_layers=2, bidirectional=True, merge_mode="sum", dropout=0.25,
                   backend=backend, dtype=dtype, random_state=0),
        cyrnn.GRU(5, 6, backend=backend, dtype=dtype, random_state=1, bptt_truncate=3),
        cyrnn.Dense(6, 2, dtype=dtype, random_state=2)])
    model.params.data[...] = np.random.default_rng(5).uniform(-0.5, 0.5, model.params.size)
    return model


def test_sequential_forward_backward_with_states(backend, spy, rng):
    model = _seq_model(backend)
    ref = _numpy_copy(model)
    n, T = 3, 6
    x = rng.standard_normal((n, T, 4))
    init = [(rng.standard_normal((4, n, 5)), rng.standard_normal((4, n, 5))), None]
    out, states = model.forward(x, lengths=[6, 3, 5], initial_states=init, training=True,
                                return_states=True)
    out_r, states_r = ref.forward(x, lengths=[6, 3, 5], initial_states=init, training=True,
                                  return_states=True)
    np.testing.assert_allclose(out, out_r, **TOL[np.float64])
    np.testing.assert_allclose(states[0][1], states_r[0][1], **TOL[np.float64])
    np.testing.assert_allclose(states[1], states_r[1], **TOL[np.float64])
    d = rng.standard_normal(out.shape)
    d_states = [None, rng.standard_normal(states[1].shape)]
    dx = model.backward(d, d_states)
    dx_r = ref.backward(d, d_states)
    assert spy["train_forward"] == 1 and spy["train_backward"] == 1
    np.testing.assert_allclose(dx, dx_r, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(model.params.grad, ref.params.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_train_step_with_dropout_and_states(backend, spy, dtype, rng):
    model = _seq_model(backend, dtype)
    ref = _numpy_copy(model)
    n, T = 4, 6
    x = rng.standard_normal((n, T, 4)).astype(dtype)
    y = rng.standard_normal((n, T, 2)).astype(dtype)
    mask = rng.random((n, T)) < 0.8
    mask[:, 0] = True
    opt, opt_r = SGD(model, lr=0.1), SGD(ref, lr=0.1)
    states = states_r = None
    for _ in range(3):
        v, states = train_step(model, opt, "mse", x, y, mask=mask, initial_states=states,
                               return_states=True)
        v_r, states_r = train_step(ref, opt_r, "mse", x, y, mask=mask,
                                   initial_states=states_r, return_states=True)
        np.testing.assert_allclose(v, v_r, **TOL[dtype])
    assert spy["train_forward"] == 3 and spy["train_backward"] == 3
    np.testing.assert_allclose(model.params.data, ref.params.data,
                               rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


def test_tbptt_compiled_equals_reference_and_full_bptt(backend, spy, rng):
    def make():
        m = cyrnn.Sequential([cyrnn.LSTM(3, 4, backend=backend, dtype=np.float64,
                                         random_state=0),
                              cyrnn.Dense(4, 2, dtype=np.float64, random_state=1)])
        m.params.data[...] = np.random.default_rng(9).uniform(-0.5, 0.5, m.params.size)
        return m
    x = rng.standard_normal((2, 12, 3))
    y = rng.standard_normal((2, 12, 2))
    model, ref = make(), _numpy_copy(make())
    losses, st = tbptt(model, SGD(model, lr=0.05), "mse", x, y, k1=4, k2=3)
    losses_r, st_r = tbptt(ref, SGD(ref, lr=0.05), "mse", x, y, k1=4, k2=3)
    assert spy["train_forward"] == 3
    np.testing.assert_allclose(losses, losses_r, rtol=1e-10)
    np.testing.assert_allclose(model.params.data, ref.params.data, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st[0][0], st_r[0][0], rtol=1e-10, atol=1e-12)
    # one chunk of the whole sequence with k2 = k1 is full BPTT
    full, one = make(), make()
    tbptt(full, SGD(full, lr=0.05), "mse", x, y, k1=12)
    train_step(one, SGD(one, lr=0.05), "mse", x, y)
    np.testing.assert_allclose(full.params.data, one.params.data, rtol=1e-12, atol=1e-14)


def test_estimators_fit_and_predict_compiled(backend, spy, rng):
    X = rng.standard_normal((24, 5, 3)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    est = cyrnn.GRUClassifier(hidden_size=6, bidirectional=True, max_iter=2, batch_size=8,
                              backend=backend, random_state=0).fit(X, y)
    assert spy["train_forward"] > 0 and spy["train_backward"] == spy["train_forward"]
    before = spy["infer"]
    proba = est.predict_proba(X[:1])
    assert spy["infer"] > before
    ref = copy.deepcopy(est)
    for layer in ref.model_.recurrent_layers:
        layer.backend = "numpy"
    np.testing.assert_allclose(proba, ref.predict_proba(X[:1]), rtol=1e-5, atol=1e-6)


def test_language_model_fits_and_samples_compiled(backend, spy):
    lm = cyrnn.CharLanguageModel(hidden_size=8, max_epochs=1, backend=backend, random_state=0)
    lm.fit(["ab", "abc", "bca", "cab"] * 4)
    assert spy["train_forward"] > 0
    before = spy["infer"]
    lm.perplexity(["abc"])
    lm.sample(2, prefix="ab", random_state=0)
    assert spy["infer"] >= before + 2


def test_bad_input_still_raises_the_layer_paths_errors(backend, spy):
    layer = _layer(backend)
    with pytest.raises(ValueError, match="features"):
        layer(np.zeros((1, 3, 7)))
    with pytest.raises(ValueError, match="NaN|finite|inf"):
        layer(np.full((1, 3, 4), np.nan))
    with pytest.raises(ValueError):
        layer(np.zeros((2, 3, 4)), lengths=[0, 9])
    with pytest.raises(ValueError, match="h0"):
        layer(np.zeros((2, 3, 4)), initial_state=(np.zeros((3, 2, 5)), np.zeros((1, 2, 5))))
    assert sum(spy.values()) == 0


def test_layers_without_return_state_give_no_state_and_tbptt_restarts(backend, spy, rng):
    """A layer built with return_state=False reports None in return_states (as the layer
    path), so tbptt restarts it from zeros every chunk on every backend."""
    def make(be):
        m = cyrnn.Sequential([cyrnn.LSTM(3, 4, return_state=False, backend=be,
                                         dtype=np.float64, random_state=0),
                              cyrnn.Dense(4, 2, dtype=np.float64, random_state=1)])
        m.params.data[...] = np.random.default_rng(2).uniform(-0.5, 0.5, m.params.size)
        return m
    model, ref = make(backend), make("numpy")
    x = rng.standard_normal((2, 12, 3))
    y = rng.standard_normal((2, 12, 2))
    _, states = model.forward(x, return_states=True)
    _, states_r = ref.forward(x, return_states=True)
    assert states == [None] and states_r == [None]
    losses, _ = tbptt(model, SGD(model, lr=0.05), "mse", x, y, k1=4)
    losses_r, _ = tbptt(ref, SGD(ref, lr=0.05), "mse", x, y, k1=4)
    np.testing.assert_allclose(losses, losses_r, rtol=1e-10)


def test_rejected_call_keeps_the_training_cache(backend, spy, rng):
    model = _seq_model(backend)
    x = rng.standard_normal((2, 5, 4))
    out = model.forward(x, training=True)
    with pytest.raises(ValueError, match="initial_states"):
        model.forward(x, initial_states=[None], training=True)
    model.backward(np.ones_like(out))  # the first forward's cache is still there
    assert np.abs(model.params.grad).max() > 0


def test_copying_a_layer_after_a_training_call(backend, spy, rng):
    layer = _layer(backend)
    layer.forward(rng.standard_normal((2, 3, 4)))  # training mode: keeps a fused cache
    clone = copy.deepcopy(layer)
    np.testing.assert_array_equal(clone.params.data, layer.params.data)
    with pytest.raises(RuntimeError, match="preceding forward"):
        clone.backward(np.ones((2, 3, 5)))


def test_wrong_state_gradient_shapes_raise(backend, spy, rng):
    layer = _layer(backend, cyrnn.GRU, num_layers=2)
    x = rng.standard_normal((2, 3, 4))
    out, st = layer.forward(x, training=True)
    for bad in (np.ones((1, 2, 5)), np.ones((2, 5))):
        with pytest.raises(ValueError, match="final state"):
            layer.backward(np.ones_like(out), bad)


def test_use_bias_changed_after_a_call_rebuilds_the_plan(backend, spy, rng):
    layer = _layer(backend, cyrnn.GRU)
    x = rng.standard_normal((2, 3, 4))
    layer.forward(x, training=False)
    layer.use_bias = False
    out, _ = layer.forward(x, training=True)
    layer.params.zero_grad()
    layer.backward(np.ones_like(out))
    assert not layer.params.grad_of("bias_ih_l0").any()
    assert not layer.params.grad_of("bias_hh_l0").any()


def test_misaligned_states_are_copied_not_refused(backend, spy, rng):
    layer = _layer(backend, cyrnn.GRU).eval()
    ref = _numpy_copy(layer)
    buf = np.zeros(2 * 5 * 8 + 1, np.uint8)
    h0 = np.frombuffer(buf.data, np.float64, 10, offset=1).reshape(1, 2, 5)
    assert not h0.flags.aligned
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(layer(x, initial_state=h0)[0], ref(x, initial_state=h0)[0],
                               **TOL[np.float64])
    y, _ = layer.step(x[:, 0], h0)
    np.testing.assert_allclose(y, ref.step(x[:, 0], h0)[0], **TOL[np.float64])


def test_sequence_of_padding_only_runs_fused_where_the_backend_takes_it(backend, spy, rng):
    """A batch with a sequence of padding only (mask_zero) beside others, with initial
    states, forward and backward: the backends whose fused calls take such rows
    (FUSED_EMPTY_ROWS: Cython) run it fused, the others on the layer path; both equal
    the NumPy reference (zero outputs, the initial state carried, no gradient from it)."""
    model = cyrnn.Sequential([cyrnn.Embedding(7, 4, mask_zero=True, dtype=np.float64,
                                              random_state=0),
                              cyrnn.GRU(4, 5, backend=backend, dtype=np.float64,
                                        return_sequences=True, random_state=1),
                              cyrnn.Dense(5, 2, dtype=np.float64, random_state=2)])
    ref = _numpy_copy(model)
    ids = rng.integers(1, 7, size=(4, 6))
    ids[1] = 0          # padding only
    ids[2, :2] = 0      # pre-padding
    init = [rng.standard_normal((1, 4, 5))]
    out, states = model.forward(ids, initial_states=init, training=True, return_states=True)
    out_r, states_r = ref.forward(ids, initial_states=init, training=True, return_states=True)
    fused = backend == "cython"  # the backend whose kernels take such rows
    assert getattr(cyrnn.backends.get_backend(backend), "FUSED_EMPTY_ROWS", False) == fused
    assert spy["train_forward"] == (1 if fused else 0)
    np.testing.assert_allclose(out, out_r, **TOL[np.float64])
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(states[0], states_r[0], **TOL[np.float64])
    np.testing.assert_allclose(states[0][:, 1], init[0][:, 1], **TOL[np.float64])
    d = rng.standard_normal(out.shape)
    model.backward(d)
    ref.backward(d)
    np.testing.assert_allclose(model.params.grad, ref.params.grad, rtol=1e-9, atol=1e-11)
    before = spy["infer"]
    np.testing.assert_allclose(model.forward(ids), ref.forward(ids), **TOL[np.float64])
    # one fused call: the model's (Cython), or on the layer path (the others decline
    # the model's call) the recurrent layer's own, which runs there
    assert spy["infer"] == before + 1
