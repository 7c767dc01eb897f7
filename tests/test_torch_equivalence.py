"""cyrnn against PyTorch: forward values, final states and every gradient.

``torch.nn.RNN`` (tanh, relu), ``torch.nn.LSTM`` and ``torch.nn.GRU`` are the
oracle. Each test runs once per available backend (the ``backend`` fixture of
``conftest.py``). Modules are built under ``torch.manual_seed`` and converted with
``cyrnn.from_torch``; float64 runs use ``.double()`` modules and tensors (the
global torch default dtype is never changed).
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is the comparison oracle; pip install torch==2.13.0")

import cyrnn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# Same tolerances as conftest.TOL (the brief's contract with PyTorch).
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-9)}
DTYPES = [np.float32, np.float64]
N, T, D, H = 3, 6, 4, 5
LENGTHS = np.array([4, 6, 1])  # unsorted, includes a full and a length-1 sequence

# kind id -> (torch constructor, cyrnn class, cyrnn options)
KINDS = {
    "rnn_tanh": (lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
                 cyrnn.SimpleRNN, {"activation": "tanh"}),
    "rnn_relu": (lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
                 cyrnn.SimpleRNN, {"activation": "relu"}),
    "lstm": (torch.nn.LSTM, cyrnn.LSTM, {}),
    "gru": (torch.nn.GRU, cyrnn.GRU, {}),
}
KIND_IDS = list(KINDS)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _through_the_compiled_plan(compiled_plan_ran):
    """On compiled backends every test here must run the compiled plan (a spy counts)."""
    return compiled_plan_ran


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch():
    """Tiny shapes: torch's thread pool only adds overhead (and noise on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_module(kind, dtype, num_layers=1, bidirectional=False, batch_first=True, seed=0,
                input_size=D):
    torch.manual_seed(seed)
    module = KINDS[kind][0](input_size, H, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=batch_first)
    return module.double() if dtype == np.float64 else module.float()


def is_lstm(kind):
    return kind == "lstm"


def t(a, requires_grad=False):
    """A torch tensor holding a copy of ``a`` (same dtype)."""
    return torch.from_numpy(np.array(a, copy=True)).requires_grad_(requires_grad)


def npy(tensor):
    return tensor.detach().cpu().numpy()


def assert_close(actual, expected, dtype, what):
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


def random_inputs(kind, dtype, num_layers, bidirectional, batch_first, with_state, seed=1):
    """x, initial state (or None) and upstream gradients G1 (output), G2 (h_n), G3 (c_n)."""
    rng = np.random.default_rng(seed)
    LD = num_layers * (2 if bidirectional else 1)
    x_shape = (N, T, D) if batch_first else (T, N, D)
    x = rng.standard_normal(x_shape).astype(dtype)
    out_shape = x_shape[:2] + ((2 if bidirectional else 1) * H,)
    h0 = rng.standard_normal((LD, N, H)).astype(dtype) * 0.5
    c0 = rng.standard_normal((LD, N, H)).astype(dtype) * 0.5
    g1 = rng.standard_normal(out_shape).astype(dtype)
    g2 = rng.standard_normal((LD, N, H)).astype(dtype)
    g3 = rng.standard_normal((LD, N, H)).astype(dtype)
    state = None
    if with_state:
        state = (h0, c0) if is_lstm(kind) else h0
    return x, state, g1, g2, g3


def torch_forward(module, x_t, state_t, lengths, batch_first):
    """Run ``module`` on padded ``x_t`` (packing when ``lengths`` is given)."""
    if lengths is None:
        return module(x_t, state_t)
    packed = pack_padded_sequence(x_t, torch.as_tensor(lengths, dtype=torch.int64),
                                  batch_first=batch_first, enforce_sorted=False)
    out_p, state = module(packed, state_t)
    steps = x_t.shape[1 if batch_first else 0]
    out, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=steps)
    return out, state


def torch_run(kind, module, x, state, lengths, batch_first, g1, g2, g3):
    """Forward + backward of loss = sum(out*G1) + sum(h_n*G2) [+ sum(c_n*G3)] in torch."""
    x_t = t(x, True)
    state_t = None
    if state is not None:
        state_t = (t(state[0], True), t(state[1], True)) if is_lstm(kind) else t(state, True)
    module.zero_grad()
    out, st = torch_forward(module, x_t, state_t, lengths, batch_first)
    h_n, c_n = st if is_lstm(kind) else (st, None)
    loss = (out * t(g1)).sum() + (h_n * t(g2)).sum()
    if c_n is not None:
        loss = loss + (c_n * t(g3)).sum()
    loss.backward()
    res = {"out": npy(out), "h_n": npy(h_n), "dx": npy(x_t.grad),
           "params": {name: npy(p.grad) for name, p in module.named_parameters()}}
    if c_n is not None:
        res["c_n"] = npy(c_n)
    if state_t is not None:
        if is_lstm(kind):
            res["dh0"], res["dc0"] = npy(state_t[0].grad), npy(state_t[1].grad)
        else:
            res["dh0"] = npy(state_t.grad)
    return res


def cyrnn_run(kind, layer, x, state, lengths, g1, g2, g3):
    layer.zero_grad()
    out, st = layer.forward(x, lengths=lengths, initial_state=state, training=True)
    h_n, c_n = st if is_lstm(kind) else (st, None)
    dx, dstate = layer.backward(g1, (g2, g3) if is_lstm(kind) else g2)
    res = {"out": out, "h_n": h_n, "dx": dx,
           "params": {name: layer.params.grad_of(name).copy() for name in layer.params.names}}
    if is_lstm(kind):
        res["c_n"] = c_n
        res["dh0"], res["dc0"] = dstate
    else:
        res["dh0"] = dstate
    return res


def assert_param_grads_match(cy_grads, torch_grads, dtype):
    assert set(cy_grads) == set(torch_grads)
    for name, expected in torch_grads.items():
        assert_close(cy_grads[name], expected, dtype, f"gradient of {name}")


# ----------------------------------------------------------------------------- 1. full equivalence

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_forward_states_and_all_gradients_match_torch(backend, kind, num_layers, bidirectional,
                                                       batch_first, with_state, padded, dtype):
    module = make_module(kind, dtype, num_layers, bidirectional, batch_first)
    layer = cyrnn.from_torch(module, backend=backend)
    assert layer.dtype == np.dtype(dtype)
    x, state, g1, g2, g3 = random_inputs(kind, dtype, num_layers, bidirectional, batch_first,
                                         with_state)
    lengths = LENGTHS if padded else None

    ref = torch_run(kind, module, x, state, lengths, batch_first, g1, g2, g3)
    got = cyrnn_run(kind, layer, x, state, lengths, g1, g2, g3)

    assert got["out"].shape == ref["out"].shape
    assert_close(got["out"], ref["out"], dtype, "output")
    assert_close(got["h_n"], ref["h_n"], dtype, "h_n")
    if is_lstm(kind):
        assert_close(got["c_n"], ref["c_n"], dtype, "c_n")
    if padded:  # post-padding: both libraries output exact zeros there
        pad = np.arange(T)[None, :] >= LENGTHS[:, None]
        out_bt = got["out"] if batch_first else got["out"].transpose(1, 0, 2)
        assert (out_bt[pad] == 0).all()
    assert_close(got["dx"], ref["dx"], dtype, "gradient of x")
    assert_param_grads_match(got["params"], ref["params"], dtype)
    if with_state:
        assert_close(got["dh0"], ref["dh0"], dtype, "gradient of h0")
        if is_lstm(kind):
            assert_close(got["dc0"], ref["dc0"], dtype, "gradient of c0")


# ----------------------------------------------------------------------------- 2. many-to-one

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_many_to_one_output_and_gradients_match_torch(backend, kind, num_layers, bidirectional,
                                                      batch_first, padded, dtype):
    module = make_module(kind, dtype, num_layers, bidirectional, batch_first, seed=3)
    cls, options = KINDS[kind][1], KINDS[kind][2]
    layer = cls(D, H, num_layers, bidirectional=bidirectional, batch_first=batch_first,
                return_sequences=False, backend=backend, dtype=dtype, **options)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})

    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(dtype)
    nd = 2 if bidirectional else 1
    g = rng.standard_normal((N, nd * H)).astype(dtype)
    lengths = LENGTHS if padded else np.full(N, T)

    # torch: the last valid step's output (uni) or concat of the top layer's h_n (bi)
    x_t = t(x, True)
    module.zero_grad()
    out, st = torch_forward(module, x_t, None, lengths if padded else None, batch_first)
    h_n = st[0] if is_lstm(kind) else st
    if bidirectional:
        y = torch.cat([h_n[-2], h_n[-1]], dim=1)
    else:
        out_bt = out if batch_first else out.transpose(0, 1)
        y = out_bt[torch.arange(N), torch.as_tensor(lengths - 1)]
        assert torch.allclose(y, h_n[-1])  # sanity: torch agrees with itself
    (y * t(g)).sum().backward()

    layer.zero_grad()
    got, _ = layer.forward(x, lengths=lengths if padded else None, training=True)
    assert got.shape == (N, nd * H)
    assert_close(got, npy(y), dtype, "many-to-one output")
    dx, _ = layer.backward(g)
    assert_close(dx, npy(x_t.grad), dtype, "gradient of x")
    assert_param_grads_match({n: layer.params.grad_of(n) for n in layer.params.names},
                             {n: npy(p.grad) for n, p in module.named_parameters()}, dtype)


# ----------------------------------------------------------------------------- 3. round trip

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_to_torch_state_dict_round_trip_reproduces_outputs(backend, kind, bidirectional, dtype):
    cls, options = KINDS[kind][1], KINDS[kind][2]
    layer = cls(D, H, 2, bidirectional=bidirectional, backend=backend, dtype=dtype,
                random_state=0, **options)
    # random values everywhere (biases included) so a misplaced tensor cannot go unnoticed
    layer.params.data[...] = np.random.default_rng(1).uniform(-0.5, 0.5, layer.params.size)

    sd = layer.to_torch_state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    module = make_module(kind, dtype, 2, bidirectional, batch_first=True, seed=99)
    assert set(sd) == set(module.state_dict())
    module.load_state_dict(sd)
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(npy(value), layer.params[name], err_msg=name)

    x = np.random.default_rng(2).standard_normal((N, T, D)).astype(dtype)
    out, st = layer.forward(x, lengths=LENGTHS)
    with torch.no_grad():
        ref_out, ref_st = torch_forward(module, t(x), None, LENGTHS, batch_first=True)
    assert_close(out, npy(ref_out), dtype, "output after round trip")
    if is_lstm(kind):
        assert_close(st[0], npy(ref_st[0]), dtype, "h_n after round trip")
        assert_close(st[1], npy(ref_st[1]), dtype, "c_n after round trip")
    else:
        assert_close(st, npy(ref_st), dtype, "h_n after round trip")

    # and back again: from_torch of the loaded module gives the same parameters
    again = cyrnn.from_torch(module, backend=backend)
    np.testing.assert_array_equal(again.params.data, layer.params.data)


@pytest.mark.no_fused_call  # computes nothing: a rejection
@pytest.mark.parametrize("make_layer, match", [
    (lambda b: cyrnn.LSTM(D, H, bidirectional=True, merge_mode="sum", backend=b), "merge_mode"),
    (lambda b: cyrnn.SimpleRNN(D, H, activation="sigmoid", backend=b), "sigmoid"),
    (lambda b: cyrnn.GRU(D, H, reset_after=False, backend=b), "reset_after"),
], ids=["merge_mode_sum", "sigmoid_rnn", "gru_reset_before"])
def test_to_torch_state_dict_rejects_layers_torch_cannot_express(backend, make_layer, match):
    with pytest.raises(ValueError, match=match):
        make_layer(backend).to_torch_state_dict()


@pytest.mark.no_fused_call  # computes nothing: a rejection
def test_from_torch_rejects_non_recurrent_module(backend):
    with pytest.raises(TypeError):
        cyrnn.from_torch(torch.nn.Linear(D, H), backend=backend)


def test_from_torch_widens_half_precision_weights(backend):
    # numpy has no bfloat16: .numpy() raised torch's 'unsupported ScalarType BFloat16'
    for dtype in (torch.bfloat16, torch.float16):
        module = torch.nn.GRU(D, H, batch_first=True).to(dtype)
        layer = cyrnn.from_torch(module, backend=backend)
        assert layer.dtype == np.float32
        x = torch.randn(2, 5, D)
        expected = module.float()(x)[0].detach().numpy()
        np.testing.assert_allclose(layer(x.numpy())[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.no_fused_call  # computes nothing: a rejection
def test_from_torch_rejects_lstm_with_projection(backend):
    with pytest.raises(ValueError, match="proj_size"):
        cyrnn.from_torch(torch.nn.LSTM(D, H, proj_size=2), backend=backend)



def test_from_torch_reads_the_weights_forward_uses(backend):
    """A pruned or weight-normed module's forward uses computed weights; from_torch
    read the stored factors (weight_hh_l0_orig, parametrizations...) and failed with
    'state dict mismatch'. bias=False modules have no bias names to read."""
    from torch.nn.utils import prune
    torch.manual_seed(3)
    pruned = torch.nn.LSTM(D, H, num_layers=2, batch_first=True)
    prune.l1_unstructured(pruned, "weight_hh_l1", amount=0.5)
    normed = torch.nn.utils.parametrizations.weight_norm(
        torch.nn.GRU(D, H, batch_first=True, bias=False), "weight_ih_l0")
    x = torch.randn(2, 5, D)
    for module in (pruned, normed):
        layer = cyrnn.from_torch(module, backend=backend)
        np.testing.assert_allclose(layer(x.numpy())[0], module(x)[0].detach().numpy(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.no_fused_call  # computes nothing: rejections
def test_from_torch_refuses_what_it_would_convert_wrongly(backend):
    """A subclass overriding forward converted silently to the plain computation (0.2
    off); mixed weight dtypes were rounded to the first one's (torch refuses them)."""
    class Doubled(torch.nn.LSTM):
        def forward(self, x, hx=None):
            out, state = super().forward(x, hx)
            return 2 * out, state

    class Plain(torch.nn.GRU):  # a subclass that keeps forward converts
        pass

    with pytest.raises(ValueError, match="Doubled overrides LSTM.forward"):
        cyrnn.from_torch(Doubled(D, H), backend=backend)
    assert isinstance(cyrnn.from_torch(Plain(D, H), backend=backend), cyrnn.GRU)
    mixed = torch.nn.LSTM(D, H)
    mixed.weight_hh_l0.data = mixed.weight_hh_l0.data.double()
    with pytest.raises(ValueError, match=r"mixed dtypes \(float32, float64\)"):
        cyrnn.from_torch(mixed, backend=backend)

# ----------------------------------------------------------------------------- 4. embedding model

@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "many_to_one"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
def test_masked_embedding_gru_dense_matches_torch_on_unpadded_sequences(
        backend, num_layers, bidirectional, return_sequences):
    dtype, vocab, E, out_dim = np.float64, 11, 4, 2
    nd = 2 if bidirectional else 1
    torch.manual_seed(5)
    t_emb = torch.nn.Embedding(vocab, E).double()
    t_gru = torch.nn.GRU(E, H, num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=True).double()
    t_dense = torch.nn.Linear(nd * H, out_dim).double()

    emb = cyrnn.Embedding(vocab, E, mask_zero=True, dtype=dtype)
    gru = cyrnn.GRU(E, H, num_layers, bidirectional=bidirectional,
                    return_sequences=return_sequences, backend=backend, dtype=dtype)
    dense = cyrnn.Dense(nd * H, out_dim, dtype=dtype)
    model = cyrnn.Sequential([emb, gru, dense])
    for cy, tm in ((emb, t_emb), (gru, t_gru), (dense, t_dense)):
        cy.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})

    # pre-padded token ids: zeros at the start, real tokens are 1..vocab-1
    rng = np.random.default_rng(11)
    lengths = [T, 3, 1, 5]
    ids = np.zeros((len(lengths), T), np.int64)
    for i, L in enumerate(lengths):
        ids[i, T - L:] = rng.integers(1, vocab, L)
    g = rng.standard_normal((len(lengths), out_dim))

    # torch: each sequence on its own, padding removed
    expected = []
    for i, L in enumerate(lengths):
        seq_out, h_n = t_gru(t_emb(torch.from_numpy(ids[i:i + 1, T - L:])))
        if return_sequences:
            last = seq_out[:, -1]
        else:
            last = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
        y = t_dense(last)
        (y * t(g[i:i + 1])).sum().backward()
        expected.append(npy(y)[0])
    expected = np.stack(expected)

    model.zero_grad()
    out = model.forward(ids, training=True)
    if return_sequences:
        assert out.shape == (len(lengths), T, out_dim)
        last, d_out = out[:, -1], np.zeros_like(out)
        d_out[:, -1] = g
    else:
        assert out.shape == (len(lengths), out_dim)
        last, d_out = out, g
    assert_close(last, expected, dtype, "last-step output")

    model.backward(d_out)
    for cy, tm in ((emb, t_emb), (gru, t_gru), (dense, t_dense)):
        assert_param_grads_match({n: cy.params.grad_of(n) for n in cy.params.names},
                                 {n: npy(p.grad) for n, p in tm.named_parameters()}, dtype)


def test_quantized_modules_are_refused_by_name():
    """torch.ao's dynamically quantized LSTM has no named parameters: from_torch raised
    a bare StopIteration."""
    float_lstm = torch.nn.Sequential(torch.nn.LSTM(3, 4))
    q = torch.ao.quantization.quantize_dynamic(float_lstm, {torch.nn.LSTM},
                                               dtype=torch.qint8)[0]
    with pytest.raises(TypeError, match="no float parameters"):
        cyrnn.from_torch(q)
