"""Bad input raises ValueError/TypeError naming the problem, and mutates nothing."""

import numpy as np
import pytest

import cyrnn
from cyrnn.optim import SGD
from cyrnn.training import train_step

N, T, D, H = 3, 5, 4, 6


@pytest.fixture(params=["SimpleRNN", "LSTM", "GRU"])
def trained_layer(request, backend):
    layer = getattr(cyrnn, request.param)(D, H, bidirectional=True, backend=backend,
                                          random_state=0)
    layer.forward(np.ones((N, T, D), np.float32), training=True)
    return layer


def _bad(shape=(N, T, D), fill=0.5):
    return np.full(shape, fill)


BAD_CASES = [
    (dict(x=_bad((N, T))), ValueError, "3-dimensional"),
    (dict(x=_bad((1, N, T, D))), ValueError, "3-dimensional"),
    (dict(x=_bad((N, T, D + 1))), ValueError, "features"),
    (dict(x=_bad(fill=np.nan)), ValueError, "NaN"),
    (dict(x=_bad(fill=np.inf)), ValueError, "NaN or infinity"),
    (dict(x=_bad((0, T, D))), ValueError, "empty"),
    (dict(x=_bad((N, 0, D))), ValueError, "empty"),
    (dict(x=np.full((N, T, D), "a")), TypeError, "numeric"),
    (dict(x=np.full((N, T, D), 1 + 2j)), TypeError, "numeric"),
    (dict(x="not an array"), TypeError, "string"),
    (dict(lengths=[0, 2, 3]), ValueError, "lengths must be between 1 and 5"),
    (dict(lengths=[6, 2, 3]), ValueError, "lengths must be between 1 and 5"),
    (dict(lengths=[2, 3]), ValueError, "lengths must have shape"),
    (dict(lengths=[1.5, 2, 3]), ValueError, "whole numbers"),
    (dict(lengths=["a", "b", "c"]), TypeError, "numeric"),
    (dict(mask=np.ones((N, T + 1))), ValueError, "mask must have shape"),
    (dict(mask=np.full((N, T), 2)), ValueError, "0/1"),
    (dict(lengths=[1, 2, 3], mask=np.ones((N, T))), ValueError, "either lengths or mask"),
    (dict(initial_state=np.zeros((1, N, H))), ValueError, "initial_state"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD_CASES)
def test_bad_input_raises_and_mutates_nothing(trained_layer, kwargs, exc, message):
    layer = trained_layer
    if layer.cell.has_cell_state and "initial_state" in kwargs:
        kwargs = dict(initial_state=(kwargs["initial_state"], kwargs["initial_state"]))
        message = "initial_state h0"
    params_before = layer.params.data.copy()
    grads_before = layer.params.grad.copy()
    cache_before = layer._cache
    args = {"x": np.ones((N, T, D), np.float32), **kwargs}
    with pytest.raises(exc, match=message):
        layer.forward(args.pop("x"), training=True, **args)
    assert np.array_equal(layer.params.data, params_before)
    assert np.array_equal(layer.params.grad, grads_before)
    assert layer._cache is cache_before


@pytest.mark.parametrize("options", [{}, {"go_backwards": True}])
def test_lstm_state_must_be_a_pair(backend, options):
    layer = cyrnn.LSTM(D, H, backend=backend, **options)
    x, h0 = np.ones((N, T, D)), np.zeros((1, N, H))
    with pytest.raises(TypeError, match=r"\(h0, c0\)"):
        layer.forward(x, initial_state=h0)
    # a None entry: the layer path's kernels used to return NaN (go_backwards), the
    # NumPy reference a TypeError from inside, the fused path took zeros
    model = cyrnn.Sequential([cyrnn.LSTM(D, H, backend=backend, **options), cyrnn.Dense(H, 1)])
    for state in ((h0, None), (None, h0)):
        with pytest.raises(TypeError, match=r"pair of arrays \(h0, c0\), got None"):
            layer.forward(x, initial_state=state)
        with pytest.raises(TypeError, match=r"pair of arrays \(h0, c0\), got None"):
            model.forward(x, initial_states=[state])
    if not options:  # (step: the same rule, its names)
        for state in ((h0, None), (None, h0)):
            with pytest.raises(TypeError, match=r"pair of arrays \(h, c\), got None"):
                layer.step(x[:, 0], state)
            with pytest.raises(TypeError, match=r"pair of arrays \(h, c\), got None"):
                model.step(x[:, 0], [state])


def test_backward_checks_gradient_shape_and_needs_training_forward(backend):
    layer = cyrnn.GRU(D, H, backend=backend)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones((N, T, H)))
    layer.forward(np.ones((N, T, D)), training=True)
    with pytest.raises(ValueError, match="d_output must have shape"):
        layer.backward(np.ones((N, T, H + 1)))


# go_backwards and merge_mode=None take the layer path on every backend; the default
# options take the fused call on the compiled ones
@pytest.mark.parametrize("options", [{}, {"go_backwards": True},
                                     {"bidirectional": True, "merge_mode": None}])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_backward_checks_state_gradients_before_anything_runs(backend, cell, options):
    # a wrongly shaped final-state gradient was read by the kernels past its end
    layer = getattr(cyrnn, cell)(D, H, backend=backend, random_state=0, **options)
    out, _ = layer.forward(np.ones((N, T, D), np.float32), training=True)
    rows = 2 if options.get("bidirectional") else 1
    good = np.ones((rows, N, H), np.float32)
    bad = [np.ones((1, 1, H)), np.ones((rows, N, H + 1)), np.ones((rows + 1, N, H))]
    cases = [(b, "final state h") for b in bad]
    if cell == "LSTM":
        cases += [((good, b), "final state c") for b in bad]
    else:
        cases += [((good, good), "no cell state")]
    cases += [((good, good, good), "pair")]
    for d_state, message in cases:
        with pytest.raises(ValueError, match=message):
            layer.backward(out, d_state)
        assert not layer.params.grad.any()
    layer.backward(out, (good, good) if cell == "LSTM" else good)  # the cache is intact
    assert layer.params.grad.any()


@pytest.mark.parametrize("options", [{}, {"go_backwards": True}])
def test_sequential_backward_checks_everything_before_any_layer_runs(backend, options):
    model = cyrnn.Sequential([cyrnn.GRU(D, H, backend=backend, random_state=0, **options),
                              cyrnn.Activation("tanh"), cyrnn.Dense(H, 2, random_state=0)])
    out = model.forward(np.ones((N, T, D), np.float32), training=True)
    for d_output, d_states, message in [
            # the same message on the fused path as on the layer path
            (np.ones((T, N, 2)), None, r"Dense.backward: d_output must have the forward "
                                       r"output's shape \(3, 5, 2\), got \(5, 3, 2\)"),
            (np.ones((1, T, 2)), None, "forward output's shape"),  # broadcastable
            (np.ones(out.shape), [np.ones((1, 1, H))], "final state h"),
            (np.ones(out.shape), [None, None], r"d_states needs one entry per recurrent layer \(1\)")]:
        with pytest.raises(ValueError, match=message):
            model.backward(d_output, d_states)
        assert not model.params.grad.any()
    model.backward(np.ones(out.shape))
    assert model.params.grad.any()


@pytest.mark.parametrize("layer,x,d_shape", [
    (cyrnn.Dense(D, 2), np.ones((N, T, D)), (N, T, 3)),
    (cyrnn.Activation("relu"), np.ones((N, T, D)), (N, 1, D)),
    (cyrnn.Masking(), np.ones((N, T, D)), (N, T + 1, D)),
    (cyrnn.Masking(), np.ones((N, T, D)), (N, T, 1)),  # broadcast before
    (cyrnn.Embedding(9, 4), np.ones((N, T), np.int64), (N, T)),
])
def test_other_layers_check_d_output_before_changing_anything(layer, x, d_shape):
    layer.forward(x, training=True)
    with pytest.raises(ValueError, match="d_output must have the forward output's shape"):
        layer.backward(np.ones(d_shape))
    if layer.params.size:
        assert not layer.params.grad.any()
    layer.backward(np.ones(layer.forward(x, training=True).shape))  # still usable


@pytest.mark.parametrize("kwargs,exc", [
    (dict(hidden_size=0), ValueError), (dict(hidden_size=2.5), TypeError),
    (dict(num_layers=0), ValueError), (dict(dropout=1.0), ValueError),
    (dict(merge_mode="max"), ValueError), (dict(backend="cuda-magic"), ValueError),
    (dict(dtype=np.int32), ValueError), (dict(dtype="float16"), ValueError),
    (dict(bptt_truncate=-1), ValueError), (dict(random_state="seed"), TypeError),
])
def test_bad_constructor_arguments(kwargs, exc):
    args = dict(input_size=D, hidden_size=H)
    args.update(kwargs)
    with pytest.raises(exc):
        cyrnn.GRU(**args)


def test_bad_activation_and_token_ids():
    with pytest.raises(ValueError, match="activation"):
        cyrnn.SimpleRNN(D, H, activation="softplus")
    emb = cyrnn.Embedding(10, 4)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        emb(np.array([[1, 10]]))
    with pytest.raises(ValueError, match="integer token ids"):
        emb(np.array([[1.5, 2.0]]))


def test_object_arrays_of_numbers_are_accepted(backend):
    layer = cyrnn.SimpleRNN(D, H, backend=backend, random_state=0)
    x = np.ones((N, T, D))
    out_obj, _ = layer(x.astype(object))
    out, _ = layer(x)
    np.testing.assert_array_equal(out_obj, out)


def test_sequential_all_padding_sequence_gives_zeros():
    """As Keras: a sequence of padding only keeps its zero state (tests/test_keras_options.py
    covers every backend and path)."""
    model = cyrnn.Sequential([cyrnn.Embedding(5, 3, mask_zero=True),
                              cyrnn.GRU(3, 4, return_sequences=False)])
    out = model.forward(np.array([[0, 0, 0], [1, 2, 0]]))
    np.testing.assert_array_equal(out[0], 0)
    assert np.abs(out[1]).max() > 0


def test_sequential_refuses_a_recurrent_layer_after_a_many_to_one_layer():
    # it had no sequence to read: forward failed with numpy's 'axes don't match array'
    with pytest.raises(ValueError, match="layer 2: a recurrent layer needs sequences, but "
                                         r"layer 0 \(return_sequences=False\)"):
        cyrnn.Sequential([cyrnn.LSTM(D, H, return_sequences=False), cyrnn.Dense(H, H),
                          cyrnn.GRU(H, H)])
    cyrnn.Sequential([cyrnn.LSTM(D, H), cyrnn.GRU(H, H, return_sequences=False),
                      cyrnn.Dense(H, 1)])  # many-to-one last: fine


def test_sequential_refuses_layers_whose_sizes_do_not_chain():
    # built, saved and loaded before; every call then raised
    with pytest.raises(ValueError, match=r"layer 1 \(Dense\) expects 5 input features per "
                                         "step, but the layers before it give 8"):
        cyrnn.Sequential([cyrnn.LSTM(3, 8), cyrnn.Dense(5, 1)])
    with pytest.raises(ValueError, match=r"layer 1 \(LSTM\) expects 8 .* give 16"):
        cyrnn.Sequential([cyrnn.LSTM(3, 8, bidirectional=True), cyrnn.LSTM(8, 4)])
    with pytest.raises(ValueError, match=r"layer 2 \(GRU\) expects 4 .* give 3"):
        cyrnn.Sequential([cyrnn.Embedding(10, 3), cyrnn.Activation("tanh"), cyrnn.GRU(4, 2)])
    # widths that chain, through Masking, Activation and a summing merge: fine
    cyrnn.Sequential([cyrnn.Masking(), cyrnn.LSTM(3, 8, bidirectional=True, merge_mode="sum"),
                      cyrnn.Activation("relu"), cyrnn.Dense(8, 2)])

    class Doubler(cyrnn.layers.Layer):  # a custom layer: its width is not followed
        def __init__(self):
            self.dtype = np.dtype(np.float32)
            self._build_params()

        def param_specs(self):
            return []

        def forward(self, x, training=None):
            return np.concatenate([x, x], -1)

    model = cyrnn.Sequential([cyrnn.LSTM(3, 4), Doubler(), cyrnn.Dense(8, 1)])
    assert model.forward(np.ones((2, 5, 3), np.float32)).shape == (2, 5, 1)


def test_sequential_ending_in_merge_mode_none_runs_and_checks_its_gradient(backend):
    # the output is one array per direction: the shape kept for backward's check
    # failed on the list (AttributeError, in forward)
    model = cyrnn.Sequential([cyrnn.GRU(D, H, bidirectional=True, merge_mode=None,
                                        backend=backend, random_state=0)])
    out = model.forward(np.ones((N, T, D), np.float32), training=True)
    assert len(out) == 2 and out[0].shape == (N, T, H)
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones((N, T, H)))
    model.backward(np.ones((2, N, T, H)))
    assert model.params.grad.any()


def test_sequential_backward_without_output_gradient(backend):
    # d_output None (only final-state gradients): the fused call took it, the layer path
    # (NumPy's) failed in Dense.backward
    model = cyrnn.Sequential([cyrnn.LSTM(D, H, backend=backend, random_state=0),
                              cyrnn.Dense(H, 2, random_state=1)])
    ref = cyrnn.Sequential([cyrnn.LSTM(D, H, backend="numpy", random_state=0),
                            cyrnn.Dense(H, 2, random_state=1)])
    d_state = (np.ones((1, N, H)), None)
    for m in (model, ref):
        m.forward(np.ones((N, T, D), np.float32), training=True)
        m.backward(None, [d_state])
    np.testing.assert_allclose(model.params.grad, ref.params.grad, rtol=1e-5, atol=1e-6)
    assert model.params.grad.any() and not model.params.grad[-2 * H - 2:].any()  # Dense: 0


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_changing_inputs_or_outputs_after_a_training_forward_leaves_the_gradients(backend):
    # backward reads what forward saw: the layer path, Dense, Embedding and Activation
    # keep their own copy where the caller's array (or the returned output) could
    # change in between, as the fused calls always did
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 3)).astype(np.float32)
    ids = rng.integers(1, 6, size=(2, 5))
    builds = [
        (lambda: cyrnn.LSTM(3, 4, backend=backend, random_state=0), x),
        (lambda: cyrnn.GRU(3, 4, backend=backend, go_backwards=True, random_state=0), x),
        (lambda: cyrnn.LSTM(3, 4, backend=backend, batch_first=False, random_state=0),
         x.transpose(1, 0, 2).copy()),
        (lambda: cyrnn.Dense(3, 2, random_state=0), x),
        (lambda: cyrnn.Sequential([cyrnn.Embedding(6, 3, random_state=0),
                                   cyrnn.GRU(3, 4, backend=backend, random_state=0)]), ids),
    ]
    for build, given in builds:
        grads = []
        for change in (False, True):
            layer, inp = build(), given.copy()
            out = layer.forward(inp, training=True)
            out = out[0] if isinstance(out, tuple) else out
            if change:
                inp[...] = 5 if inp.dtype.kind == "f" else 1
            layer.backward(np.ones_like(out))
            grads.append(layer.params.grad.copy())
        np.testing.assert_array_equal(grads[0], grads[1])
    act = cyrnn.Activation("sigmoid")
    y = act.forward(x, training=True)
    expected = y * (1 - y)
    y -= 1.0  # a custom loss working in place on the prediction
    np.testing.assert_allclose(act.backward(np.ones_like(x)), expected, rtol=1e-6)


def test_train_step_takes_a_model_ending_in_activation_and_refuses_two_outputs():
    from cyrnn.optim import SGD
    from cyrnn.training import tbptt, train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    y = rng.uniform(size=(2, 2)).astype(np.float32)
    # what from_keras makes of Dense(activation=...)
    m = cyrnn.Sequential([cyrnn.LSTM(3, 4, return_sequences=False, random_state=0),
                          cyrnn.Dense(4, 2, random_state=0),
                          cyrnn.Activation("sigmoid")])
    assert np.isfinite(train_step(m, SGD(m, lr=0.1), "mse", x, y))
    seq = cyrnn.Sequential([cyrnn.GRU(3, 4, return_sequences=True, random_state=0),
                            cyrnn.Activation("tanh")])
    losses, _ = tbptt(seq, SGD(seq, lr=0.1), "mse", x, np.zeros((2, 4, 4)), k1=2)
    assert len(losses) == 2 and np.isfinite(losses).all()
    two = cyrnn.Sequential([cyrnn.GRU(3, 4, bidirectional=True, merge_mode=None,
                                      random_state=0)])
    two.params.grad[...] = 7.0
    before = two.params.data.copy()
    with pytest.raises(ValueError, match="merge_mode=None"):
        train_step(two, SGD(two, lr=0.1), "mse", x, np.zeros((2, 4)))
    np.testing.assert_array_equal(two.params.data, before)
    assert (two.params.grad == 7.0).all()


def test_load_state_dict_checks_every_tensor_before_writing_any():
    m = cyrnn.Sequential([cyrnn.LSTM(3, 4, random_state=0), cyrnn.Dense(4, 2, random_state=0)])
    before = m.params.data.copy()
    good = {k: v + 1 for k, v in m.state_dict().items()}
    for value, error, match in [
            (np.array(["a", "b"]), TypeError, "'1.bias'"),
            (np.array([1 + 2j, 0]), TypeError, "'1.bias'.*complex"),
            (np.array([None, 1.0], dtype=object), ValueError, "'1.bias' holds NaN"),
            (np.array([1e300, 0.0]), ValueError, "too large for float32"),
            (np.array([True, False]), TypeError, "booleans"),
            (np.zeros(3), ValueError, r"'1.bias': expected shape \(2,\)")]:
        with pytest.raises(error, match=match):
            m.load_state_dict(dict(good, **{"1.bias": value}))
        np.testing.assert_array_equal(m.params.data, before)
    m.load_state_dict(good)  # float64 values into a float32 model
    np.testing.assert_allclose(m.params.data, before + 1, rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_state_arguments_and_loss_gradients_are_checked_alike_on_every_path(backend):
    from cyrnn.optim import SGD
    from cyrnn.training import train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    layer = cyrnn.LSTM(3, 4, backend=backend, return_state=True, random_state=0)
    out, (h, c) = layer.forward(x, training=True)
    for bad, error in [(np.ones(h.shape, complex), TypeError),
                       (np.full(h.shape, "a"), TypeError)]:
        with pytest.raises(error, match="final state h"):
            layer.backward(np.ones_like(out), (bad, None))
    m = cyrnn.Sequential([cyrnn.LSTM(3, 4, backend=backend, random_state=0),
                          cyrnn.Dense(4, 2, random_state=0)])
    states = m.initial_states(2)
    for bad, error, match in [([], ValueError, "one entry per recurrent layer"),
                              (states * 3, ValueError, "one entry per recurrent layer"),
                              ({}, TypeError, "got dict"), (3, TypeError, "got int"),
                              ("ab", TypeError, "got str")]:
        with pytest.raises(error, match=match):
            m.step(x[:, 0], bad)
        with pytest.raises(error, match=match):
            m.forward(x, initial_states=bad)
    # an array with one entry per layer works as a list does, on every backend
    gru = cyrnn.Sequential([cyrnn.GRU(3, 4, backend=backend, random_state=0)])
    h = [np.full((1, 2, 4), 0.5, np.float32)]
    np.testing.assert_array_equal(gru.forward(x, initial_states=np.stack(h)),
                                  gru.forward(x, initial_states=h))
    np.testing.assert_array_equal(gru.step(x[:, 0], np.stack(h))[0], gru.step(x[:, 0], h)[0])
    m.forward(x, training=True)
    with pytest.raises(TypeError, match="d_states must be a list \\(or tuple"):
        m.backward(np.ones((2, 4, 2)), d_states="ab")
    # a custom loss's gradient: numbers of the output's shape, or None for none
    before = m.params.data.copy()
    for grad, error in [(lambda p: (p - 1).astype(complex), TypeError),
                        (lambda p: "abc", TypeError),
                        (lambda p: np.ones(3), ValueError)]:
        def loss(pred, target, sample_weight=None, mask=None, grad=grad):
            return 0.0, grad(pred)
        with pytest.raises(error, match="d_output"):
            train_step(m, SGD(m, lr=0.1), loss, x, np.zeros((2, 4, 2)))
        np.testing.assert_array_equal(m.params.data, before)
    train_step(m, SGD(m, lr=0.1), lambda p, t, sample_weight=None, mask=None: (0.0, None),
               x, np.zeros((2, 4, 2)))
    np.testing.assert_array_equal(m.params.data, before)  # no gradient: nothing moves
    # bad initial states are refused before the gradients are zeroed
    m.params.grad[...] = 7.0
    for bad in (3, {}, "ab", [], [np.zeros((1, 3, 4))]):
        with pytest.raises((TypeError, ValueError)):
            train_step(m, SGD(m, lr=0.1), "mse", x, np.zeros((2, 4, 2)), initial_states=bad)
        assert (m.params.grad == 7.0).all() and (m.params.data == before).all()


def test_huge_n_jobs_and_truncation_depths_behave_as_large_ones():
    # n_jobs=10**30 reached threadpoolctl's ctypes call and bptt_truncate=2**63 an int64
    # array: both are now capped (more threads than CPUs, or steps than T, change nothing)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 4, 2))
    y = X[:, -1, 0]
    preds = []
    for n_jobs, k in ((None, None), (10**30, 2**63), (1, 4)):
        est = cyrnn.GRURegressor(hidden_size=3, max_iter=2, random_state=0, n_jobs=n_jobs,
                                 bptt_truncate=k).fit(X, y)
        preds.append(est.predict(X))
    np.testing.assert_allclose(preds[1], preds[0], rtol=1e-6)
    np.testing.assert_allclose(preds[2], preds[0], rtol=1e-6)


def test_a_layer_belongs_to_one_sequential():
    """Each Sequential moves its layers' weights into its own buffer: a layer put in a
    second model left the first reading a stale copy on the compiled backends, and
    never training on the NumPy one."""
    import copy

    rnn = cyrnn.GRU(D, H, return_sequences=False, random_state=0)
    first = cyrnn.Sequential([rnn, cyrnn.Dense(H, 1, random_state=1)])
    with pytest.raises(ValueError, match="already belongs to another Sequential"):
        cyrnn.Sequential([rnn, cyrnn.Dense(H, 1, random_state=2)])
    with pytest.raises(ValueError, match="appears twice"):
        d = cyrnn.Dense(H, H)
        cyrnn.Sequential([cyrnn.GRU(D, H), d, d])
    second = cyrnn.Sequential([copy.deepcopy(rnn), cyrnn.Dense(H, 1, random_state=2)])
    np.testing.assert_array_equal(second.layers[0].params.data, rnn.params.data)
    copy.deepcopy(first)  # a copied model owns copied layers
    shallow = copy.copy(first)  # shares the layers and their buffer
    del first
    with pytest.raises(ValueError, match="already belongs"):  # the copy still holds them
        cyrnn.Sequential([rnn, cyrnn.Dense(H, 1)])
    first = shallow
    del shallow
    act = cyrnn.Activation("tanh")  # no parameters: may serve several models
    cyrnn.Sequential([cyrnn.GRU(D, H), act, act, cyrnn.Dense(H, 1)])
    cyrnn.Sequential([cyrnn.GRU(D, H), act])
    del first
    cyrnn.Sequential([rnn, cyrnn.Dense(H, 1)])  # its model is gone: it may join another


def test_an_optimizer_built_on_a_layer_follows_it_into_a_sequential():
    """The layer's parameter buffer was replaced when it joined a model: an optimizer
    made on the layer before then updated a detached copy (the loss never moved)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 5, D)), rng.normal(size=(3, 1))
    rnn = cyrnn.GRU(D, H, return_sequences=False, dtype=np.float64, random_state=0)
    opt = cyrnn.optim.Adam(rnn, lr=0.1)
    model = cyrnn.Sequential([rnn, cyrnn.Dense(H, 1, dtype=np.float64, random_state=1)])
    losses = [train_step(model, opt, "mse", x, y) for _ in range(4)]
    assert losses[-1] < losses[0]
    assert np.shares_memory(rnn.params.data, model.params.data)


def test_a_rejected_training_step_draws_no_dropout_mask():
    """A bad initial state of a later layer raised after the first layer had run (and
    drawn its dropout masks): the seeded run then differed from one without the call."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 1))

    def make():
        m = cyrnn.Sequential([cyrnn.GRU(3, 4, 2, dropout=0.5, dtype=np.float64,
                                        random_state=0),
                              cyrnn.LSTM(4, 3, dtype=np.float64, random_state=1),
                              cyrnn.Dense(3, 1, dtype=np.float64, random_state=2)])
        return m, SGD(m, lr=0.1)

    a, oa = make()
    b, ob = make()
    for bad in (np.zeros((1, 2, 3)), (np.zeros((1, 2, 3)), np.full((1, 2, 3), np.nan))):
        with pytest.raises((TypeError, ValueError)):
            train_step(a, oa, "mse", x, y, initial_states=[None, bad])
    assert train_step(a, oa, "mse", x, y) == train_step(b, ob, "mse", x, y)
    np.testing.assert_array_equal(a.params.data, b.params.data)


def test_huge_finite_sample_weights_keep_their_ratios():
    """Weights of 1e308 each overflowed their sum to inf: every normalised weight became
    0, a loss of 0 and no update."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 4, D)).astype(np.float32), rng.normal(size=(3, 1))
    m = cyrnn.Sequential([cyrnn.GRU(D, H, return_sequences=False, random_state=0),
                          cyrnn.Dense(H, 1, random_state=1)])
    out = m.forward(x)
    for name in ("mse", "sigmoid_binary_cross_entropy"):
        loss = cyrnn.losses.get_loss(name)
        target = (y > 0).astype(np.float32) if "binary" in name else y
        ones = loss(out, target, sample_weight=np.ones(3))
        with np.errstate(over="raise"):
            huge = loss(out, target, sample_weight=np.full(3, 1e308))
        assert huge[0] == pytest.approx(ones[0], rel=1e-6) and huge[0] > 0
        np.testing.assert_allclose(huge[1], ones[1], rtol=1e-6)


def test_forget_bias_must_be_finite_in_the_layers_dtype():
    # 1e39 is finite as a Python float but inf in float32: the model ran, saved, and
    # its file was refused by both loaders (parameters not finite)
    with pytest.raises(ValueError, match="forget_bias holds values too large for float32"):
        cyrnn.LSTM(D, H, forget_bias=1e39)
    assert np.isfinite(cyrnn.LSTM(D, H, forget_bias=1e39, dtype=np.float64).params.data).all()
    layer = cyrnn.LSTM(D, H, random_state=0)
    before = layer.params.data.copy()
    with pytest.raises(ValueError, match="forget_bias holds values too large"):
        layer.reset_parameters(random_state=1, forget_bias=-1e39)
    np.testing.assert_array_equal(layer.params.data, before)


def test_dense_checks_its_input_as_the_recurrent_layers_do():
    # a scalar raised IndexError, strings were parsed, float32 overflow passed
    dense = cyrnn.Dense(3, 2)
    for x, exc, message in [
            (np.float32(1.0), ValueError, r"3 input features on the last axis, got shape \(\)"),
            (np.ones((2, 4)), ValueError, r"got shape \(2, 4\)"),
            (np.array([["1", "2", "3"]]), TypeError, "real numeric"),
            (np.ones((2, 3), complex), TypeError, "real numeric"),
            (np.array([[1e300, 2, 3]]), ValueError, "too large for float32"),
            (np.array([[1e300, np.inf, 3]]), ValueError, "too large for float32"),
    ]:
        with pytest.raises(exc, match=message):
            dense.forward(x, training=True)
        assert dense._cache is None
    assert dense.forward(np.ones((0, 3))).shape == (0, 2)  # an empty batch, as in torch
    # NaN and inf pass through (inside a model they come from a layer before it, and
    # the fit loop's checks report them as divergence), as in torch
    out = dense.forward(np.array([[np.nan, 2, 3], [1, 2, 3]]))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    for layer in (cyrnn.Activation("tanh"), cyrnn.Masking()):  # strings were parsed
        for bad in (np.full((2, 3, 3), "1"), np.ones((2, 3, 3), complex)):
            with pytest.raises(TypeError, match="x must be a real numeric array"):
                layer.forward(bad)


@pytest.mark.parametrize("options", [{}, {"go_backwards": True}])
def test_backward_refuses_gradients_that_are_not_real_numbers(backend, options):
    # they were converted: the imaginary part dropped, strings parsed
    layer = cyrnn.GRU(D, H, backend=backend, **options)
    out, _ = layer.forward(np.ones((N, T, D)), training=True)
    for bad in (np.ones(out.shape, complex), np.ones(out.shape).astype(str)):
        with pytest.raises(TypeError, match="d_output must be a real numeric array"):
            layer.backward(bad)
    layer.backward(np.ones(out.shape))  # the training cache was kept for this


def test_float64_input_that_rounds_to_the_largest_float32_is_accepted_on_every_path(backend):
    # the compiled conversion rounds it to FLT_MAX (as astype does) and took it, the
    # validators compared before converting and refused it: one verdict per value now
    v = float(np.finfo(np.float32).max) * (1 + 2.0 ** -26)
    x = np.full((2, 3, D), v)
    layer = cyrnn.LSTM(D, H, backend=backend)
    model = cyrnn.Sequential([cyrnn.LSTM(D, H, backend=backend), cyrnn.Dense(H, 1)])
    for call in (lambda: layer.forward(x), lambda: layer.forward(x, lengths=[3, 2]),
                 lambda: model.forward(x), lambda: model.forward(x, lengths=[3, 2])):
        out = call()
        assert np.isfinite(out[0] if isinstance(out, tuple) else out).all()
    with pytest.raises(ValueError, match="too large for float32"):
        layer.forward(np.full((2, 3, D), 2 * v))
