"""Finite-difference gradient checks (float64) for every cell and layer configuration.

Full BPTT is checked against the loss itself. Truncated BPTT is checked against
the loss of a *surrogate* forward whose value equals the real one but in which
the state entering each truncation window is a constant (frozen at the
unperturbed parameters): the truncated gradient is exactly that surrogate's true
gradient, so finite differences of the surrogate must match it.

Each tensor is checked along three random directions (central differences), so
a wrong entry anywhere in any tensor is caught.
"""

import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn.backends import numpy_backend as ref
from cyrnn.layers import recurrent as recurrent_module


@pytest.fixture(autouse=True)
def _through_the_compiled_plan(compiled_plan_ran):
    """On compiled backends every test here must take its analytic gradients through the
    compiled plan: a spy counts the fused backward calls that ran."""
    yield
    if compiled_plan_ran is not None:
        assert compiled_plan_ran["train_backward"] > 0, "no fused backward ran"

CELLS = [
    ("SimpleRNN", {"activation": "tanh"}),
    ("SimpleRNN", {"activation": "sigmoid"}),
    ("SimpleRNN", {"activation": "relu"}),
    ("LSTM", {}),
    ("GRU", {"reset_after": True}),
    ("GRU", {"reset_after": False}),
    ("LSTM", {"peephole": True}),
    ("LSTM", {"activation": "relu", "recurrent_activation": "hard_sigmoid", "peephole": True}),
    ("GRU", {"reset_after": False, "activation": "sigmoid",
             "recurrent_activation": "hard_sigmoid"}),
    ("GRU", {"activation": "linear"}),
]
N, T, D, H = 3, 6, 3, 3
EPS = 1e-6


class WindowedBackend:
    """A backend whose forward is the truncation surrogate.

    The first call of each kernel (``record``) runs the real forward and keeps its
    states; later calls recompute every output from the frozen state entering its
    window of ``k + 1`` valid cells (or from the live initial state when the window
    reaches step 0 with budget left).
    """

    def __init__(self, k):
        self.k = k
        self.frozen = []
        self.calls = 0
        self.record = True

    def forward(self, cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False,
                peep=None):
        if self.record:
            _, _, _, cache = ref.forward(cell, xp, w_hh, b_hh, h0, c0, mask, keep_cache=True,
                                         peep=peep)
            self.frozen.append(cache)
        cache = self.frozen[self.calls]
        self.calls += 1
        T_, n, _ = xp.shape
        valid = np.ones((T_, n), bool) if mask is None else mask
        h_seq = np.zeros((T_, n, w_hh.shape[1]))
        h_T = np.zeros((n, w_hh.shape[1]))
        c_T = np.zeros_like(h_T) if c0 is not None else None
        for i in range(n):
            for t in range(T_):
                if valid[t, i] or t == T_ - 1:
                    h, c = self._window(cell, xp, w_hh, b_hh, h0, c0, valid, cache, t, i,
                                        peep)
                    if valid[t, i]:
                        h_seq[t, i] = h
                    if t == T_ - 1:
                        h_T[i] = h
                        if c_T is not None:
                            c_T[i] = c
        return h_seq, h_T, c_T, None

    def _window(self, cell, xp, w_hh, b_hh, h0, c0, valid, cache, t, i, peep):
        budget, s = self.k + 1, t
        while True:  # walk back over k + 1 valid cells (masked ones are free)
            budget -= int(valid[s, i])
            if budget == 0 or s == 0:
                break
            s -= 1
        if budget == 0:  # window full: the state entering step s is a constant
            h = cache["h"][s, i:i + 1].copy()
            c = cache["c"][s, i:i + 1].copy() if c0 is not None else None
        else:            # window reached step 0: the initial state is live
            h = h0[i:i + 1]
            c = c0[i:i + 1] if c0 is not None else None
        for u in range(s, t + 1):
            if valid[u, i]:
                h, c, _, _ = ref.cell_forward(cell, xp[u, i:i + 1], h, c, w_hh, b_hh, peep)
        return h[0], (c[0] if c is not None else None)


def make_layer(name, options, num_layers, bidirectional, merge_mode, truncate, backend):
    cls = getattr(cyrnn, name)
    return cls(D, H, num_layers, bidirectional=bidirectional, merge_mode=merge_mode,
               bptt_truncate=truncate, backend=backend, dtype=np.float64, random_state=0,
               **options)


def perturb_params(layer, rng):
    # Nonzero biases and stronger weights make every term of the gradient visible.
    layer.params.data[...] += rng.normal(scale=0.3, size=layer.params.size)


def check_layer(layer, rng, lengths=None, mask=None, truncate=None, monkeypatch=None):
    LD = layer.num_layers * layer.num_directions
    x = rng.normal(size=(N, T, D))
    h0 = rng.normal(size=(LD, N, H))
    c0 = rng.normal(size=(LD, N, H)) if layer.cell.has_cell_state else None
    state0 = (h0, c0) if c0 is not None else h0
    out, state = layer.forward(x, lengths=lengths, mask=mask, initial_state=state0,
                               training=True)
    g_out = rng.normal(size=out.shape)
    g_h = rng.normal(size=(LD, N, H))
    g_c = rng.normal(size=(LD, N, H)) if c0 is not None else None
    layer.zero_grad()
    dx, dstate = layer.backward(g_out, (g_h, g_c) if c0 is not None else g_h)
    dh0, dc0 = dstate if c0 is not None else (dstate, None)

    surrogate = None
    if truncate is not None:
        surrogate = WindowedBackend(truncate)
        monkeypatch.setattr(recurrent_module, "get_backend", lambda name: surrogate)

    def loss():
        if surrogate is not None:
            surrogate.calls = 0
        o, s = layer.forward(x, lengths=lengths, mask=mask, initial_state=state0, training=False)
        hs, cs = s if c0 is not None else (s, None)
        if surrogate is not None:
            surrogate.record = False
        value = (o * g_out).sum() + (hs * g_h).sum()
        return value + ((cs * g_c).sum() if cs is not None else 0.0)

    base = loss()  # records the frozen states for the surrogate
    tensors = [("x", x, dx), ("h0", h0, dh0)]
    if c0 is not None:
        tensors.append(("c0", c0, dc0))
    tensors += [(name, layer.params[name], layer.params.grad_of(name).copy())
                for name in layer.params.names]
    for name, value, grad in tensors:
        for _ in range(3):
            v = rng.normal(size=value.shape)
            value += EPS * v
            plus = loss()
            value -= 2 * EPS * v
            minus = loss()
            value += EPS * v
            numeric = (plus - minus) / (2 * EPS)
            analytic = (grad * v).sum()
            assert np.isclose(analytic, numeric, rtol=1e-6, atol=1e-7), (
                f"{name}: analytic {analytic} vs numeric {numeric}")
    assert np.isclose(loss(), base)


CONFIGS = list(itertools.product(range(len(CELLS)), (1, 2), (False, True), (False, True),
                                 (None, 1)))


@pytest.mark.parametrize("cell_index,num_layers,bidirectional,with_lengths,truncate", CONFIGS)
def test_finite_differences(cell_index, num_layers, bidirectional, with_lengths, truncate,
                            backend, monkeypatch):
    name, options = CELLS[cell_index]
    rng = np.random.default_rng(cell_index * 100 + num_layers * 10 + bidirectional)
    merge = ("concat", "sum", "mul", "ave")[cell_index % 4] if bidirectional else "concat"
    layer = make_layer(name, options, num_layers, bidirectional, merge, truncate, backend)
    perturb_params(layer, rng)
    lengths = np.array([T, 2, 4]) if with_lengths else None
    if truncate is not None:
        # the surrogate replaces the backend only for the finite-difference forwards
        check_layer(layer, rng, lengths=lengths, truncate=truncate, monkeypatch=monkeypatch)
    else:
        check_layer(layer, rng, lengths=lengths)


@pytest.mark.parametrize("cell_index", range(len(CELLS)))
@pytest.mark.parametrize("truncate", [None, 0, 2])
def test_finite_differences_mask_in_the_middle(cell_index, truncate, backend, monkeypatch):
    """Masks with gaps and pre-padding, both directions."""
    name, options = CELLS[cell_index]
    rng = np.random.default_rng(7 + cell_index)
    layer = make_layer(name, options, 1, True, "concat", truncate, backend)
    perturb_params(layer, rng)
    mask = np.array([[1, 1, 0, 1, 0, 1],
                     [0, 0, 1, 1, 1, 1],
                     [1, 0, 0, 0, 0, 0]], bool)
    check_layer(layer, rng, mask=mask, truncate=truncate,
                monkeypatch=monkeypatch if truncate is not None else None)


@pytest.mark.parametrize("cell_index", [0, 3, 4])
def test_many_to_one_and_model_gradients(cell_index, backend):
    """A Sequential (Embedding -> RNN(return_sequences=False) -> Dense) end to end."""
    name, options = CELLS[cell_index]
    rng = np.random.default_rng(3)
    vocab = 7
    model = cyrnn.Sequential([
        cyrnn.Embedding(vocab, 4, mask_zero=True, dtype=np.float64, random_state=1),
        getattr(cyrnn, name)(4, H, 2, bidirectional=True, return_sequences=False,
                             backend=backend, dtype=np.float64, random_state=2, **options),
        cyrnn.Dense(2 * H, 2, dtype=np.float64, random_state=3),
    ])
    model.params.data[...] += rng.normal(scale=0.3, size=model.params.size)
    ids = rng.integers(1, vocab, size=(N, T))
    ids[1, :3] = 0  # pre-padding
    y = rng.normal(size=(N, 2))

    def loss():
        return cyrnn.losses.mse(model.forward(ids), y)[0]

    model.zero_grad()
    value, grad = cyrnn.losses.mse(model.forward(ids, training=True), y)
    model.backward(grad)
    analytic = model.params.grad.copy()
    for _ in range(5):
        v = rng.normal(size=model.params.size)
        model.params.data[...] += EPS * v
        plus = loss()
        model.params.data[...] -= 2 * EPS * v
        minus = loss()
        model.params.data[...] += EPS * v
        assert np.isclose((analytic * v).sum(), (plus - minus) / (2 * EPS), rtol=1e-6, atol=1e-9)
    # padded embedding rows receive no gradient
    assert np.all(model.layers[0].params.grad_of("weight")[0] == 0)


@pytest.mark.parametrize("cell_index", [0, 3, 4])
def test_dropout_between_layers(cell_index, backend):
    """Dropout acts in training only, and its gradient is exact for a fixed mask."""
    name, options = CELLS[cell_index]
    rng = np.random.default_rng(11)
    layer = getattr(cyrnn, name)(D, H, 3, bidirectional=True, dropout=0.4, backend=backend,
                                 dtype=np.float64, random_state=5, **options)
    x = rng.normal(size=(N, T, D))
    out_a, _ = layer.forward(x, training=False)
    out_b, _ = layer.forward(x, training=False)
    np.testing.assert_array_equal(out_a, out_b)
    out_train, _ = layer.forward(x, training=True)
    assert not np.allclose(out_train, out_a)

    g = rng.normal(size=out_a.shape)
    seed_state = layer._rng.bit_generator.state

    def loss():
        layer._rng.bit_generator.state = seed_state  # the same dropout masks every time
        return (layer.forward(x, training=True)[0] * g).sum()

    loss()
    layer.zero_grad()
    dx, _ = layer.backward(g)
    for value, grad in [(x, dx)] + [(layer.params[n], layer.params.grad_of(n).copy())
                                    for n in ("weight_ih_l0", "weight_hh_l1_reverse")]:
        v = rng.normal(size=value.shape)
        value += EPS * v
        plus = loss()
        value -= 2 * EPS * v
        minus = loss()
        value += EPS * v
        assert np.isclose((grad * v).sum(), (plus - minus) / (2 * EPS), rtol=1e-6, atol=1e-8)
