"""The compiled plan's kernel calls (spec v3: ``infer``, ``train_forward``,
``train_backward``) against the NumPy layer path, their specification.

Every compiled backend runs lone layers and Sequentials with bidirectional ops (every
merge mode), states in and out, masks with gaps, dropout with a fixed mask, truncation
and input gradients; outputs, final states, every parameter gradient, the gradients on
the initial states and on the input must equal the layer path's.
"""

import copy

import numpy as np
import pytest

import cyrnn
from cyrnn.backends import get_backend
from cyrnn.plan import build_spec, draw_dropout

from conftest import BACKENDS
from fused_harness import CELLS

COMPILED = [b for b in BACKENDS if b != "numpy"]
pytestmark = pytest.mark.skipif(not COMPILED, reason="no compiled backend")

CELLS_SMALL = [c for c in CELLS if c[0] in ("lstm", "gru", "gru_cho", "rnn_tanh",
                                            "lstm_peephole_relu_hard", "gru_linear_hard")]
CELLS_SMALL = list({c[0]: c for c in CELLS_SMALL}.values())


# A batch the Cython backend cuts into row chunks that threads run concurrently
# (packed weights; forwards from 4 rows, backwards from 4 rows and 32 row-steps,
# chunks of 8 rows): several
# chunks and a short last one.
ROWS_CHUNKED = 37


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def _layer(backend, Cls, kw, dtype, *, D=4, H=5, num_layers=1, bidirectional=False,
           merge_mode="concat", return_sequences=True, dropout=0.0, truncate=None, seed=0):
    layer = Cls(D, H, num_layers=num_layers, bidirectional=bidirectional,
                merge_mode=merge_mode, return_sequences=return_sequences, dropout=dropout,
                bptt_truncate=truncate, backend=backend, dtype=dtype, random_state=seed, **kw)
    layer.params.data[...] = np.random.default_rng(seed + 7).uniform(-0.6, 0.6,
                                                                     layer.params.size)
    return layer


def _flat(state, has_c):
    """(h, c) flat arrays of a layer's state value."""
    if has_c:
        return np.ascontiguousarray(state[0]).ravel(), np.ascontiguousarray(state[1]).ravel()
    return np.ascontiguousarray(state).ravel(), None


def _lone_spec(layer):
    spec = build_spec([layer], layer.params.offsets, lambda i: "")
    assert spec is not None
    return spec


def _random_mask(rng, n, T, kind):
    if kind is None:
        return None
    if kind == "post":
        lengths = rng.integers(1, T + 1, n)
        lengths[0] = T
        return np.arange(T)[None, :] < lengths[:, None]
    if kind == "pre":
        lengths = rng.integers(1, T + 1, n)
        return np.arange(T)[None, :] >= (T - lengths)[:, None]
    m = rng.random((n, T)) < 0.7  # gaps anywhere
    m[:, 0] = True
    return m


def _reference_layer(layer):
    ref = copy.deepcopy(layer)
    ref.backend = "numpy"
    return ref


def _run_lone(backend, layer, x, mask, state, rng, training, d_state=True, input_grad=True):
    """The kernel calls on a lone layer and the layer path on a NumPy copy; compare."""
    be = get_backend(backend)
    dtype = layer.dtype.type
    tol = _tol(dtype)
    has_c = layer.cell.has_cell_state
    spec = _lone_spec(layer)
    ref = _reference_layer(layer)  # same parameters, same generator state
    h0, c0 = (None, None) if state is None else _flat(state, has_c)
    n, T = x.shape[:2]
    mask_c = None if mask is None else np.ascontiguousarray(mask)
    if not training:
        res = be.infer(spec, layer.params.data, x, mask_c, h0, c0, True)
        assert res is not None
        out, h_n, c_n = res
        out_ref, st_ref = ref.forward(x, mask=mask, initial_state=state, training=False)
        np.testing.assert_allclose(out, out_ref, **tol)
        h_ref, c_ref = _flat(st_ref, has_c)
        np.testing.assert_allclose(h_n, h_ref, **tol)
        if has_c:
            np.testing.assert_allclose(c_n, c_ref, **tol)
        else:
            assert c_n is None
        # without states out: the output alone, the same values
        out2 = be.infer(spec, layer.params.data, x, mask_c, h0, c0)
        np.testing.assert_allclose(out2, out_ref, **tol)
        return
    drops = draw_dropout([layer], T, n, dtype)
    dropout = np.concatenate([d.ravel() for d in drops]) if drops else None
    res = be.train_forward(spec, layer.params.data, x, mask_c, h0, c0, dropout)
    assert res is not None
    out, h_n, c_n, cache = res
    out_ref, st_ref = ref.forward(x, mask=mask, initial_state=state, training=True)
    np.testing.assert_allclose(out, out_ref, **tol)
    h_ref, c_ref = _flat(st_ref, has_c)
    np.testing.assert_allclose(h_n, h_ref, **tol)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    dh_n = rng.standard_normal(h_ref.shape).astype(dtype) if d_state else None
    dc_n = rng.standard_normal(h_ref.shape).astype(dtype) if d_state and has_c else None
    truncate = np.full(layer.num_layers, -1 if layer.bptt_truncate is None
                       else layer.bptt_truncate, np.int64)
    layer.params.zero_grad()
    ref.params.zero_grad()
    dx, dh0, dc0 = be.train_backward(spec, layer.params.data, layer.params.grad, cache,
                                     d_out, truncate, dh_n, dc_n, input_grad)
    shape = (layer.num_layers * layer.num_directions, n, layer.hidden_size)
    d_state_ref = None
    if d_state:
        d_state_ref = ((dh_n.reshape(shape), dc_n.reshape(shape)) if has_c
                       else dh_n.reshape(shape))
    dx_ref, dst_ref = ref.backward(d_out, d_state_ref)
    g_ref = ref.params.grad
    scale = max(1.0, float(np.abs(g_ref).max()))
    for name in layer.params.names:
        np.testing.assert_allclose(layer.params.grad_of(name), ref.params.grad_of(name),
                                   rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
    dh0_ref, dc0_ref = _flat(dst_ref, has_c)
    np.testing.assert_allclose(dh0, dh0_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    if has_c:
        np.testing.assert_allclose(dc0, dc0_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    else:
        assert dc0 is None
    if input_grad:
        np.testing.assert_allclose(dx, dx_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    else:
        assert dx is None


@pytest.fixture(params=COMPILED)
def backend(request):
    return request.param


@pytest.fixture(autouse=True, params=["rows", "team"])
def threaded_row_chunks(request):
    """The Cython backend runs small problems on the calling thread; here every
    chunked batch goes to the threads, as large ones do: each thread on its own rows
    ("rows"), or, as ops with a W_hh of 2 MiB or more, with the recurrent products
    shared by columns and a barrier per step ("team", every op but Cho's GRU)."""
    try:
        from cyrnn import _cython_kernels as kernels
    except ImportError:
        yield request.param
        return
    previous = kernels._set_parallel_min_macs(0)
    team = kernels._set_team_min_bytes(0 if request.param == "team" else 1e18)
    share = kernels._set_team_share(0)  # a busy machine must not turn the team mode off
    yield request.param
    kernels._set_parallel_min_macs(previous)
    kernels._set_team_min_bytes(team)
    kernels._set_team_share(share)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,Cls,kw", CELLS_SMALL, ids=[c[0] for c in CELLS_SMALL])
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("n", [3, ROWS_CHUNKED])
def test_bidirectional_every_merge(backend, dtype, name, Cls, kw, merge, training, n, rng):
    layer = _layer(backend, Cls, kw, dtype, num_layers=2, bidirectional=True,
                   merge_mode=merge)
    x = rng.standard_normal((n, 6, 4)).astype(dtype)
    _run_lone(backend, layer, x, None, None, rng, training)


@pytest.mark.parametrize("name,Cls,kw", CELLS_SMALL, ids=[c[0] for c in CELLS_SMALL])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("seq", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("mask_kind", [None, "post", "pre", "gaps"])
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("n", [4, ROWS_CHUNKED])
def test_states_in_and_out_with_masks(backend, name, Cls, kw, bidirectional, seq, mask_kind,
                                      training, n, rng):
    dtype = np.float64
    layer = _layer(backend, Cls, kw, dtype, num_layers=2, bidirectional=bidirectional,
                   return_sequences=seq)
    T = 7
    x = rng.standard_normal((n, T, 4)).astype(dtype)
    shape = (2 * layer.num_directions, n, layer.hidden_size)
    h0 = rng.standard_normal(shape)
    state = (h0, rng.standard_normal(shape)) if layer.cell.has_cell_state else h0
    mask = _random_mask(rng, n, T, mask_kind)
    _run_lone(backend, layer, x, mask, state, rng, training)


@pytest.mark.parametrize("name,Cls,kw", CELLS_SMALL, ids=[c[0] for c in CELLS_SMALL])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [3, ROWS_CHUNKED])
def test_dropout_with_a_fixed_mask(backend, name, Cls, kw, bidirectional, dtype, n, rng):
    layer = _layer(backend, Cls, kw, dtype, num_layers=3, bidirectional=bidirectional,
                   dropout=0.4)
    x = rng.standard_normal((n, 5, 4)).astype(dtype)
    _run_lone(backend, layer, x, _random_mask(rng, n, 5, "gaps"), None, rng, True)


@pytest.mark.parametrize("name,Cls,kw", CELLS_SMALL, ids=[c[0] for c in CELLS_SMALL])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("truncate", [0, 2, 50])
@pytest.mark.parametrize("n", [3, ROWS_CHUNKED])
def test_truncation_with_states(backend, name, Cls, kw, bidirectional, truncate, n, rng):
    layer = _layer(backend, Cls, kw, np.float64, num_layers=2, bidirectional=bidirectional,
                   truncate=truncate)
    T = 8
    x = rng.standard_normal((n, T, 4))
    shape = (2 * layer.num_directions, n, layer.hidden_size)
    state = ((rng.standard_normal(shape), rng.standard_normal(shape))
             if layer.cell.has_cell_state else rng.standard_normal(shape))
    _run_lone(backend, layer, x, _random_mask(rng, n, T, "gaps"), state, rng, True)


@pytest.mark.parametrize("input_grad", [False, True])
def test_no_state_gradients_and_input_grad_flag(backend, input_grad, rng):
    layer = _layer(backend, cyrnn.LSTM, {}, np.float64, num_layers=2, bidirectional=True)
    x = rng.standard_normal((2, 5, 4))
    _run_lone(backend, layer, x, None, None, rng, True, d_state=False, input_grad=input_grad)


def _sequential(backend, dtype, *, embed=False, mask_zero=False):
    layers = []
    if embed:
        layers.append(cyrnn.Embedding(9, 4, mask_zero=mask_zero, dtype=dtype, random_state=1))
    layers += [
        cyrnn.GRU(4, 5, num_layers=2, bidirectional=True, merge_mode="ave", dropout=0.3,
                  backend=backend, dtype=dtype, random_state=2, bptt_truncate=2),
        cyrnn.LSTM(5, 3, bidirectional=True, backend=backend, dtype=dtype,
                   random_state=3),
        cyrnn.Dense(6, 2, dtype=dtype, random_state=4),
        cyrnn.SimpleRNN(2, 3, return_sequences=False, backend=backend, dtype=dtype,
                        random_state=5),
        cyrnn.Dense(3, 2, dtype=dtype, random_state=6)]
    model = cyrnn.Sequential(layers)
    model.params.data[...] = np.random.default_rng(11).uniform(-0.6, 0.6, model.params.size)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("embed", [False, True], ids=["features", "embedding"])
@pytest.mark.parametrize("n", [3, ROWS_CHUNKED])
def test_sequential_states_dropout_and_gradients(backend, dtype, embed, n, rng):
    """A whole Sequential with mixed cells, bidirectional layers, dropout, a Dense between
    recurrent layers and a many-to-one top: output, final states, parameter gradients
    and the input gradient."""
    be = get_backend(backend)
    tol = _tol(dtype)
    model = _sequential(backend, dtype, embed=embed, mask_zero=embed)
    ref = copy.deepcopy(model)
    for layer in ref.recurrent_layers:
        layer.backend = "numpy"
    spec = model.inference_spec()
    assert spec is not None
    T = 6
    if embed:
        x = rng.integers(1, 9, (n, T)).astype(np.int64)
        x[1, 4:] = 0
        mask = None
    else:
        x = rng.standard_normal((n, T, 4)).astype(dtype)
        mask = _random_mask(rng, n, T, "gaps")
    states = []
    for layer in model.recurrent_layers:
        shape = (layer.num_layers * layer.num_directions, n, layer.hidden_size)
        h = rng.standard_normal(shape).astype(dtype)
        states.append((h, rng.standard_normal(shape).astype(dtype))
                      if layer.cell.has_cell_state else h)
    h0 = np.concatenate([(s[0] if isinstance(s, tuple) else s).ravel() for s in states])
    c0 = np.concatenate([(s[1] if isinstance(s, tuple) else np.zeros_like(s)).ravel()
                         for s in states])
    drops = draw_dropout(model.recurrent_layers, T, n, dtype)
    dropout = np.concatenate([d.ravel() for d in drops])
    out, h_n, c_n, cache = be.train_forward(spec, model.params.data, x, mask, h0, c0, dropout)
    out_ref, st_ref = ref.forward(x, mask=mask, initial_states=states, training=True,
                                  return_states=True)
    np.testing.assert_allclose(out, out_ref, **tol)
    h_ref = np.concatenate([(s[0] if isinstance(s, tuple) else s).ravel() for s in st_ref])
    c_ref = np.concatenate([(s[1] if isinstance(s, tuple) else np.zeros_like(s)).ravel()
                            for s in st_ref])
    np.testing.assert_allclose(h_n, h_ref, **tol)
    np.testing.assert_allclose(c_n, c_ref, **tol)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    model.zero_grad()
    ref.zero_grad()
    dx, dh0, dc0 = be.train_backward(spec, model.params.data, model.params.grad, cache,
                                     d_out, model._truncations(), None, None, True)
    dx_ref = ref.backward(d_out)
    scale = max(1.0, float(np.abs(ref.params.grad).max()))
    for name in model.params.names:
        np.testing.assert_allclose(model.params.grad_of(name), ref.params.grad_of(name),
                                   rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
    # the initial-state gradients are compared layer by layer in the lone-layer tests
    # (Sequential.backward of the layer path returns only dx)
    assert dh0.shape == h0.shape and dc0.shape == c0.shape
    if embed:
        assert dx is None
    else:
        np.testing.assert_allclose(dx, dx_ref, rtol=tol["rtol"], atol=tol["atol"] * scale)
    # inference with states out: same values as the layer path
    out_i, h_i, c_i = be.infer(spec, model.params.data, x, mask, h0, c0, True)
    out_iref, st_iref = ref.forward(x, mask=mask, initial_states=states, training=False,
                                    return_states=True)
    np.testing.assert_allclose(out_i, out_iref, **tol)
    np.testing.assert_allclose(
        h_i, np.concatenate([(s[0] if isinstance(s, tuple) else s).ravel() for s in st_iref]),
        **tol)


def test_single_step_is_infer_with_one_step(backend, rng):
    layer = _layer(backend, cyrnn.LSTM, {}, np.float64, num_layers=2)
    be = get_backend(backend)
    spec = _lone_spec(layer)
    x_t = rng.standard_normal((2, 4))
    h = rng.standard_normal((2, 2, 5))
    c = rng.standard_normal((2, 2, 5))
    out, h_n, c_n = be.infer(spec, layer.params.data, x_t[:, None, :], None, h, c, True)
    ref = _reference_layer(layer)
    y_ref, (h_ref, c_ref) = ref.step(x_t, (h, c))
    np.testing.assert_allclose(out[:, 0], y_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_n, h_ref.ravel(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c_n, c_ref.ravel(), rtol=1e-12, atol=1e-13)


def test_bad_state_and_dropout_arguments_raise(backend, rng):
    layer = _layer(backend, cyrnn.GRU, {}, np.float32, num_layers=2, dropout=0.5)
    be = get_backend(backend)
    spec = _lone_spec(layer)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    data = layer.params.data
    with pytest.raises(ValueError):
        be.infer(spec, data, x, None, np.zeros(7, np.float32))
    with pytest.raises(ValueError):
        be.infer(spec, data, x, None, np.zeros(20, np.float64))
    with pytest.raises(ValueError):
        be.train_forward(spec, data, x, None, None, None, np.ones(5, np.float32))
    out, h_n, c_n, cache = be.train_forward(spec, data, x)
    assert c_n is None and h_n.shape == (2 * 2 * 5,)
    with pytest.raises(ValueError):
        be.train_backward(spec, data, layer.params.grad, cache, np.ones_like(out),
                          np.full(2, -1, np.int64), np.zeros(3, np.float32))
    # an error leaves the cache usable
    be.train_backward(spec, data, layer.params.grad, cache, np.ones_like(out),
                      np.full(2, -1, np.int64))


def test_spec_checks_of_the_v3_fields(backend, rng):
    """directions, merge codes and the reverse direction's tensors are checked before the
    kernel touches memory (spec.ERRORS messages)."""
    from cyrnn.backends import spec as S
    layer = _layer(backend, cyrnn.LSTM, {"peephole": True}, np.float64, bidirectional=True)
    be = get_backend(backend)
    spec = _lone_spec(layer)
    data = layer.params.data
    x = rng.standard_normal((2, 3, 4))
    cases = [(S.RNN_DIRS, 0, "dirs"), (S.RNN_DIRS, 3, "dirs"), (S.RNN_MERGE, -1, "dirs"),
             (S.RNN_MERGE, 4, "dirs")]
    for field in (S.RNN_W_IH_R, S.RNN_W_HH_R, S.RNN_B_IH_R, S.RNN_B_HH_R, S.RNN_PEEP_R):
        cases += [(field, data.size, "rnn"), (field, -1, "rnn"), (field, 2 ** 62, "rnn")]
    for field, value, key in cases:
        bad = spec.copy()
        bad[S.SPEC_HEADER + field] = value
        for call in (be.infer, be.train_forward):
            with pytest.raises(ValueError, match=S.ERRORS[key]):
                call(bad, data, x)


@pytest.mark.parametrize("seq", [True, False], ids=["seq", "last"])
def test_backward_without_output_gradient(backend, seq, rng):
    """d_out None: only the final-state gradients flow (the layer path's d_output=None)."""
    layer = _layer(backend, cyrnn.GRU, {}, np.float64, num_layers=2, bidirectional=True,
                   merge_mode="mul", return_sequences=seq)
    be = get_backend(backend)
    spec = _lone_spec(layer)
    ref = _reference_layer(layer)
    x = rng.standard_normal((3, 5, 4))
    out, h_n, c_n, cache = be.train_forward(spec, layer.params.data, x)
    ref.forward(x, training=True)
    dh_n = rng.standard_normal(h_n.shape)
    layer.params.zero_grad()
    ref.params.zero_grad()
    dx, dh0, dc0 = be.train_backward(spec, layer.params.data, layer.params.grad, cache, None,
                                     np.full(2, -1, np.int64), dh_n, None, True)
    dx_ref, dh0_ref = ref.backward(None, dh_n.reshape(4, 3, 5))
    np.testing.assert_allclose(layer.params.grad, ref.params.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, dh0_ref.ravel(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    assert dc0 is None


def test_chunked_batches_take_the_packed_threaded_path(rng, threaded_row_chunks):
    """The cases above compare results; this checks that the Cython backend's row-chunked
    path (packed weights, row chunks on several threads) is what ran for the chunked
    batch, and the plain path for the small one."""
    kernels = pytest.importorskip("cyrnn._cython_kernels")
    if "cython" not in COMPILED:
        pytest.skip("no Cython backend")
    before_threads = kernels.set_num_threads(2)
    before_hold = kernels.set_contention_hold(0)  # a busy machine must not make it serial
    try:
        counts = []
        for n in (3, ROWS_CHUNKED):
            start = kernels._path_counts()
            layer = _layer("cython", cyrnn.LSTM, {}, np.float32, num_layers=2,
                           bidirectional=True)
            x = rng.standard_normal((n, 6, 4)).astype(np.float32)
            _run_lone("cython", layer, x, None, None, rng, True)
            _run_lone("cython", layer, x, None, None, rng, False)
            end = kernels._path_counts()
            counts.append({k: end[k] - start[k] for k in end})
    finally:
        kernels.set_num_threads(before_threads)
        kernels.set_contention_hold(before_hold)
    small, chunked = counts
    assert small == {"packed_forward": 0, "packed_backward": 0, "threaded_regions": 0,
                     "raw_forward": 0, "wgrad_strips": 0, "wgrad_pair": 0,
                     "team_forward": 0, "small_team_forward": 0}
    # a training forward and two inference calls; one backward; every op's forward and
    # backward sweep on several threads
    assert chunked["packed_forward"] == 3 and chunked["packed_backward"] == 1
    assert chunked["threaded_regions"] >= 2 * 2 + 2 * 2
    # the team mode: each of the 3 forward calls' 2 ops
    assert chunked["team_forward"] == (6 if threaded_row_chunks == "team" else 0)


def test_contention_governor_holds_regions_serial(rng):
    """Three regions in a row whose team did not get its cores (chunk CPU time under
    the wall time: slower than one thread; judged from 1 ms) make the regions serial
    for the hold; the results stay the same (they never depend on the thread count)."""
    kernels = pytest.importorskip("cyrnn._cython_kernels")
    if "cython" not in COMPILED:
        pytest.skip("no Cython backend")
    before_threads = kernels.set_num_threads(2)
    before_hold = kernels.set_contention_hold(60.0)
    try:
        layer = _layer("cython", cyrnn.LSTM, {}, np.float32, num_layers=2)
        x = rng.standard_normal((ROWS_CHUNKED, 6, 4)).astype(np.float32)
        plan = layer._plan()
        start = kernels._path_counts()
        threaded = plan.infer(plan.spec, layer.params.data, x)
        mid = kernels._path_counts()
        kernels.set_contention_hold(60.0)  # a clean count: the real call was judged too
        assert kernels._contention_judge(0.010, 0.009) == 2  # slower than one thread
        assert kernels.contention_state()["strikes"] == 1
        assert kernels._contention_judge(0.0005, 0.0001) == 2  # too short: not judged
        assert kernels.contention_state()["strikes"] == 1
        assert kernels._contention_judge(0.010, 0.009) == 2
        assert kernels._contention_judge(0.010, 0.009) == 1  # three in a row: held
        held = plan.infer(plan.spec, layer.params.data, x)
        end = kernels._path_counts()
        assert mid["threaded_regions"] > start["threaded_regions"]
        assert end["threaded_regions"] == mid["threaded_regions"]
        assert end["packed_forward"] == mid["packed_forward"] + 1  # same path, one thread
        np.testing.assert_array_equal(held, threaded)
        kernels.set_contention_hold(60.0)  # ends the hold
        assert kernels._contention_judge(0.010, 0.009) == 2
        assert kernels._contention_judge(0.010, 0.009) == 2
        assert kernels._contention_judge(0.010, 0.011) == 2  # a good one clears the count
        assert kernels._contention_judge(0.010, 0.009) == 2
        assert kernels._contention_judge(0.010, 0.009) == 2
        state = kernels.contention_state()
        assert state["strikes"] == 2 and state["held"] == 0 and state["hold"] == 60.0
        assert kernels.set_contention_hold(0) == 60.0
        assert kernels._contention_judge(0.010, 0.001) == 2  # 0: never held
        with pytest.raises(ValueError, match=">= 0"):
            kernels.set_contention_hold(-1.0)
    finally:
        kernels.set_num_threads(before_threads)
        kernels.set_contention_hold(before_hold)
