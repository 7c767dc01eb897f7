"""Fused inference (``Sequential.forward`` in one backend ``infer`` call).

The reference is the layer-by-layer path on the NumPy backend: a compiled backend's
fused call must give the same outputs (float32 within 1e-5, float64 within 1e-10), and
every input the fused path does not take in its exact form must go through the general
path (same result, same errors).
"""

import pickle
import threading

import numpy as np
import pytest

import cyrnn
from cyrnn.backends import get_backend
from cyrnn.backends import spec as S
spec_layout = S  # the numba tests' name for it

from conftest import BACKENDS
from fused_harness import CELLS, build_model, reference

FUSED = [b for b in BACKENDS if hasattr(get_backend(b), "infer")]
STRICT = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}

pytestmark = pytest.mark.skipif(not FUSED, reason="no backend with fused inference")


@pytest.fixture(params=FUSED)
def fused_backend(request):
    return request.param


def _build(backend, Cls, kw, dtype, *, return_sequences=False, embed=None, **opts):
    vocab, mask_zero = embed if embed is not None else (None, False)
    return build_model(backend, Cls, kw, dtype, seq=return_sequences, embed=vocab,
                       mask_zero=mask_zero, **opts)


_reference = reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,Cls,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("num_layers,return_sequences,stacked,heads", [
    (1, False, 1, (1,)),
    (2, False, 1, (4, 2)),
    (1, True, 1, (3,)),
    (1, True, 2, ()),
    (2, False, 2, (3,)),
])
def test_fused_matches_reference(fused_backend, dtype, name, Cls, kw, num_layers,
                                 return_sequences, stacked, heads, rng):
    model = _build(fused_backend, Cls, kw, dtype, num_layers=num_layers,
                   return_sequences=return_sequences, stacked=stacked, heads=heads)
    assert model._plan() is not None
    ref = _reference(model)
    for N, T in [(1, 1), (1, 12), (1, 40), (6, 9)]:  # (1, 40): one packed row
        x = rng.standard_normal((N, T, 5)).astype(dtype)
        out = model.forward(x)
        expected = ref.forward(x)
        assert out.dtype == dtype and out.shape == expected.shape
        # absolute tolerance in units of the largest output: a linear recurrence's
        # outputs grow along the sequence (to ~100 here), and an output that is a
        # small difference of such terms differs between two orders of summation by
        # the terms' rounding, not its own (against float64, both sides' float32
        # errors are alike: 6e-5 and 1.3e-4 at most over 20 seeds at (1, 40))
        tol = dict(STRICT[dtype])
        tol["atol"] *= max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(out, expected, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_embedding(fused_backend, dtype, rng):
    model = _build(fused_backend, cyrnn.GRU, {}, dtype, embed=(11, False), heads=(2,))
    ref = _reference(model)
    ids = rng.integers(0, 11, size=(4, 8))
    assert model._plan() is not None
    np.testing.assert_allclose(model.forward(ids), ref.forward(ids), **STRICT[dtype])
    # int32 ids, lists: the general path converts them; same result
    np.testing.assert_allclose(model.forward(ids.astype(np.int32)), ref.forward(ids),
                               **STRICT[dtype])
    np.testing.assert_allclose(model.forward(ids.tolist()), ref.forward(ids), **STRICT[dtype])


def test_fused_mask_zero(fused_backend, rng):
    """Padding ids (0) under mask_zero: masked steps, as the layer path."""
    model = _build(fused_backend, cyrnn.LSTM, {}, np.float64, embed=(9, True))
    ref = _reference(model)
    ids = rng.integers(1, 9, size=(3, 6))
    np.testing.assert_allclose(model.forward(ids), ref.forward(ids), **STRICT[np.float64])
    ids[0, :2] = 0  # pre-padding
    ids[2, 4:] = 0  # post-padding
    got = model.forward(ids)
    np.testing.assert_allclose(got, ref.forward(ids), **STRICT[np.float64])
    # the padded rows equal the unpadded sequences run alone
    np.testing.assert_allclose(got[2], model.forward(ids[2:3, :4])[0], **STRICT[np.float64])


@pytest.mark.parametrize("make", [
    lambda x: np.asfortranarray(x),
    lambda x: np.ascontiguousarray(np.repeat(x, 2, axis=2))[:, :, ::2],
    lambda x: x.astype(np.float64),
    lambda x: x.tolist(),
    lambda x: x.astype(x.dtype.newbyteorder()),
    "readonly",
], ids=["fortran", "strided", "float64-input", "list", "byteswapped", "readonly"])
def test_fused_other_layouts(fused_backend, make, rng):
    model = _build(fused_backend, cyrnn.LSTM, {}, np.float32)
    ref = _reference(model)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    expected = ref.forward(x)
    if make == "readonly":
        xv = x.copy()
        xv.setflags(write=False)
    else:
        xv = make(x)
    np.testing.assert_allclose(model.forward(xv), expected, **STRICT[np.float32])


@pytest.mark.parametrize("bad,match", [
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "NaN"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.inf, x), "NaN"),
    (lambda x: x[:, :, :4], "features"),
    (lambda x: x[0], "3-dimensional"),
    (lambda x: x[:, :0], "empty"),
])
def test_fused_bad_input_same_errors(fused_backend, bad, match, rng):
    model = _build(fused_backend, cyrnn.GRU, {}, np.float32)
    ref = _reference(model)
    x = bad(rng.standard_normal((2, 6, 5)).astype(np.float32))
    with pytest.raises(ValueError, match=match):
        model.forward(x)
    with pytest.raises(ValueError, match=match):
        ref.forward(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_finiteness_scan_finds_every_position(fused_backend, dtype):
    """The compiled scan of the features checks them in blocks and vector lanes: a NaN or
    infinity at any lane, block edge or tail position is found; the largest finite values
    and subnormals are not mistaken for one."""
    model = _build(fused_backend, cyrnn.GRU, {}, dtype)
    x = np.linspace(-1, 1, 3 * 700 * 5).astype(dtype).reshape(3, 700, 5)  # 10,500 values
    big = np.finfo(dtype).max
    x.flat[:4] = [big, -big, np.finfo(dtype).smallest_subnormal, -0.0]
    model.forward(x)
    for pos in (0, 1, 15, 16, 8191, 8192, 8193, x.size - 17, x.size - 2, x.size - 1):
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            xb = x.copy()
            xb.flat[pos] = bad
            with pytest.raises(ValueError, match="NaN"):
                model.forward(xb)


def test_fused_bad_ids(fused_backend):
    model = _build(fused_backend, cyrnn.GRU, {}, np.float32, embed=(5, False))
    for ids in (np.array([[1, 5]]), np.array([[-1, 2]])):
        with pytest.raises(ValueError, match="outside"):
            model.forward(ids)


def test_fused_covers_bidirectional_masks_and_states(fused_backend, rng):
    dense_first = cyrnn.Sequential([cyrnn.Dense(5, 5, random_state=1),
                                    cyrnn.LSTM(5, 4, backend=fused_backend, random_state=0)])
    assert dense_first._plan() is None
    # spec v3 covers bidirectional layers: fused, with the layer path's values
    bi = cyrnn.Sequential([cyrnn.LSTM(5, 4, bidirectional=True, return_sequences=False,
                                      backend=fused_backend, random_state=0,
                                      dtype=np.float64),
                           cyrnn.Dense(8, 1, random_state=1, dtype=np.float64)])
    assert bi._plan() is not None
    xb = rng.standard_normal((2, 5, 5))
    np.testing.assert_allclose(bi.forward(xb), _reference(bi).forward(xb), **STRICT[np.float64])
    # masks, lengths and return_states run fused too, with the layer path's results
    model = _build(fused_backend, cyrnn.LSTM, {}, np.float64)
    ref = _reference(model)
    x = rng.standard_normal((2, 5, 5))
    lengths = np.array([5, 3])
    np.testing.assert_allclose(model.forward(x, lengths=lengths),
                               ref.forward(x, lengths=lengths), **STRICT[np.float64])
    out, states = model.forward(x, return_states=True)
    np.testing.assert_allclose(out, ref.forward(x), **STRICT[np.float64])
    assert len(states) == 1


def test_fused_follows_parameter_updates_and_pickle(fused_backend, rng):
    model = _build(fused_backend, cyrnn.LSTM, {}, np.float64)
    x = rng.standard_normal((2, 5, 5))
    before = model.forward(x)
    model.params.data[...] *= 0.5  # optimizers write in place
    after = model.forward(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _reference(model).forward(x), **STRICT[np.float64])
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.forward(x), after)
    assert clone._plan() is not None
    # switching the backend afterwards drops the fused plan
    for layer in clone.recurrent_layers:
        layer.backend = "numpy"
    assert clone._plan() is None
    np.testing.assert_allclose(clone.forward(x), after, **STRICT[np.float64])


def test_fused_concurrent_calls(fused_backend, rng):
    """No shared scratch: threads scoring at once get each their own exact result."""
    model = _build(fused_backend, cyrnn.GRU, {}, np.float32, H=32)
    xs = [rng.standard_normal((1, 20, 5)).astype(np.float32) for _ in range(8)]
    expected = [model.forward(x) for x in xs]
    errors = []

    def work(k):
        try:
            for _ in range(50):
                for j in range(k, k + len(xs)):
                    got = model.forward(xs[j % len(xs)])
                    if not np.array_equal(got, expected[j % len(xs)]):
                        errors.append(j)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_infer_rejects_corrupt_spec(fused_backend):
    """The kernel checks the spec against the buffer: a bad one raises, never reads
    outside the parameters."""
    infer = get_backend(fused_backend).infer
    model = _build(fused_backend, cyrnn.LSTM, {}, np.float32)
    spec = model.inference_spec().copy()
    x = np.zeros((1, 3, 5), np.float32)
    assert infer(spec, model.params.data, x).shape == (1, 3)
    W = S.SPEC_WIDTH
    for field, value in [(S.RNN_W_HH, 10**9), (S.RNN_W_IH, -1), (S.RNN_B_HH, model.params.size),
                         (S.RNN_HIDDEN, 2**62), (S.RNN_IN, 2**62)]:  # huge sizes: no overflow
        bad = spec.copy()
        bad[S.SPEC_HEADER + field] = value
        with pytest.raises(ValueError, match=S.ERRORS["rnn"]):
            infer(bad, model.params.data, x)
    wrapped = spec[:3 + W].copy()
    wrapped[1] = (2**64 + W) // W  # n_ops whose length check would wrap in int64
    for bad in (spec[:5], np.concatenate([spec, np.zeros(W, np.int64)]), wrapped):
        with pytest.raises(ValueError, match="spec"):
            infer(np.ascontiguousarray(bad), model.params.data, x)
    with pytest.raises(TypeError):
        infer(spec, None, x)
    with pytest.raises(ValueError):  # a byte-swapped parameter buffer is refused
        infer(spec, model.params.data.astype(model.params.data.dtype.newbyteorder()), x)
    for field, value in [(S.RNN_CELL, 7), (S.RNN_CELL, -1), (S.RNN_ACT, 99),
                         (S.RNN_RACT, -1)]:  # codes outside the cell table
        bad = spec.copy()
        bad[S.SPEC_HEADER + field] = value
        with pytest.raises(ValueError, match=S.ERRORS["cell"]):
            infer(bad, model.params.data, x)


def test_infer_checks_the_peephole_tensor(fused_backend):
    """A peephole LSTM's (3, H) block must lie inside the parameter buffer."""
    infer = get_backend(fused_backend).infer
    model = _build(fused_backend, cyrnn.LSTM, {"peephole": True}, np.float32)
    spec = model.inference_spec().copy()
    x = np.zeros((1, 3, 5), np.float32)
    assert infer(spec, model.params.data, x).shape == (1, 3)
    H = spec[S.SPEC_HEADER + S.RNN_HIDDEN]
    for value in (-1, model.params.size - 3 * H + 1, 2**62):
        bad = spec.copy()
        bad[S.SPEC_HEADER + S.RNN_PEEP] = value
        with pytest.raises(ValueError, match=S.ERRORS["rnn"]):
            infer(bad, model.params.data, x)


def test_fused_follows_layer_changes(fused_backend, rng):
    """The cached spec is rebuilt when a layer's return_sequences or an embedding's
    mask_zero changes; subclasses of Embedding/Dense never take the fused path."""
    model = _build(fused_backend, cyrnn.GRU, {}, np.float64, embed=(6, False))
    ids = rng.integers(0, 6, size=(2, 5))
    ids[0, 0] = 0
    assert model.forward(ids).shape == (2, 3)
    model.layers[1].return_sequences = True
    assert model.forward(ids).shape == (2, 5, 3)
    model.layers[0].mask_zero = True
    np.testing.assert_allclose(model.forward(ids), _reference(model).forward(ids),
                               **STRICT[np.float64])

    class MyDense(cyrnn.Dense):
        pass

    sub = cyrnn.Sequential([cyrnn.LSTM(3, 4, return_sequences=False, backend=fused_backend),
                            MyDense(4, 1)])
    assert sub.inference_spec() is None and sub._plan() is None


def test_fused_rnn_dense_rnn(fused_backend, rng):
    """[RNN (sequences), Dense per step, RNN]: a Dense between recurrent layers."""
    model = cyrnn.Sequential([
        cyrnn.LSTM(5, 6, return_sequences=True, backend=fused_backend, random_state=0),
        cyrnn.Dense(6, 4, random_state=1),
        cyrnn.GRU(4, 3, return_sequences=False, backend=fused_backend, random_state=2),
        cyrnn.Dense(3, 2, random_state=3)])
    model.params.data[...] = rng.uniform(-0.6, 0.6, model.params.size)
    assert model._plan() is not None
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x), _reference(model).forward(x),
                               **STRICT[np.float32])


def test_spec_constants_agree(fused_backend):
    """The spec layout Sequential writes (cyrnn.backends.spec's) is the one each backend
    reads: another version or record width is refused with the spec's message."""
    infer = get_backend(fused_backend).infer
    model = _build(fused_backend, cyrnn.GRU, {}, np.float32)
    spec = model.inference_spec()
    assert tuple(spec[:S.SPEC_HEADER]) == (S.SPEC_VERSION, 2, S.SPEC_WIDTH)
    x = np.zeros((1, 3, 5), np.float32)
    assert infer(spec, model.params.data, x).shape == (1, 3)
    for field, value in [(0, S.SPEC_VERSION - 1), (0, S.SPEC_VERSION + 1),
                         (2, S.SPEC_WIDTH + 1)]:
        bad = spec.copy()
        bad[field] = value
        with pytest.raises(ValueError, match=S.ERRORS["header"]):
            infer(bad, model.params.data, x)


def test_infer_rejects_bad_codes_and_peepholes(fused_backend):
    """The cell, activation and gate-activation codes lie in the table's ranges, and a
    peephole LSTM's (3, H) weights inside the parameter buffer."""
    from cyrnn.cells import N_ACTIVATIONS, N_CELLS

    infer = get_backend(fused_backend).infer
    model = _build(fused_backend, cyrnn.LSTM, {"peephole": True}, np.float32)
    spec = model.inference_spec()
    data = model.params.data
    x = np.zeros((1, 3, 5), np.float32)
    assert infer(spec, data, x).shape == (1, 3)
    rec = spec_layout.SPEC_HEADER
    for field, value in [(spec_layout.RNN_CELL, N_CELLS), (spec_layout.RNN_CELL, -1),
                         (spec_layout.RNN_ACT, N_ACTIVATIONS), (spec_layout.RNN_ACT, -1),
                         (spec_layout.RNN_RACT, N_ACTIVATIONS), (spec_layout.RNN_RACT, -1)]:
        bad = spec.copy()
        bad[rec + field] = value
        with pytest.raises(ValueError, match="unknown cell"):
            infer(bad, data, x)
    H = spec[rec + spec_layout.RNN_HIDDEN]
    for value in (-1, data.size - 3 * H + 1, 2**62):
        bad = spec.copy()
        bad[rec + spec_layout.RNN_PEEP] = value
        with pytest.raises(ValueError, match="outside the parameter buffer"):
            infer(bad, data, x)
    bad = spec.copy()
    bad[rec + spec_layout.RNN_PEEP] = data.size - 3 * H  # the last values: inside
    assert infer(bad, data, x).shape == (1, 3)


@pytest.mark.parametrize("T", [3, 40])  # the BLAS and the packed path at batch 2
def test_infer_converts_float64_features_of_a_float32_model(fused_backend, T, rng):
    """A backend whose ``infer`` takes float64 features of a float32 model converts them
    as NumPy's ``astype`` does: the same result bit for bit; values beyond float32's
    range become inf and decline; training calls still take the model's dtype only."""
    model = build_model(fused_backend, cyrnn.LSTM, {}, np.float32, heads=(2,))
    plan, data = model._plan(), model.params.data
    if not plan.takes_float64:
        pytest.skip(f"{fused_backend}'s infer takes the model's dtype only")
    x64 = rng.standard_normal((2, T, 5)) * 3
    x64[0, 0, 0] = 1e-42  # a float32 denormal after conversion
    expected = plan.infer(plan.spec, data, x64.astype(np.float32))
    got = plan.infer(plan.spec, data, x64)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    out, h, c = plan.infer(plan.spec, data, x64, None, None, None, True)
    np.testing.assert_array_equal(out, expected)
    x64[1, -1, 4] = 1e39  # inf in float32: declined, as any non-finite input
    assert plan.infer(plan.spec, data, x64) is None
    assert plan.infer(plan.spec, data, np.asfortranarray(x64[:, :, :])) is None
    zeros = np.zeros_like(x64)
    assert plan.train_forward(plan.spec, data, zeros.astype(np.float32)) is not None
    assert plan.train_forward(plan.spec, data, zeros) is None  # exact dtype only
    model64 = build_model(fused_backend, cyrnn.LSTM, {}, np.float64, heads=(2,))
    p64 = model64._plan()
    assert p64.infer(p64.spec, model64.params.data, zeros.astype(np.float32)) is None


@pytest.mark.parametrize("seq", [False, True])
def test_step_form_and_state_shape(fused_backend, seq, rng):
    """``CompiledPlan.step``: one time step, (n, F) features or (n,) ids, states shaped
    as asked; the same values as the (n, 1, F) call. A backend whose ``infer`` takes the
    step form itself declines any other form under ``step=True``."""
    model = build_model(fused_backend, cyrnn.LSTM, {}, np.float32, num_layers=2, seq=seq,
                        heads=(3,))
    plan, data = model._plan(), model.params.data
    x_t = rng.standard_normal((4, 5)).astype(np.float32)
    h = rng.standard_normal((2, 4, 7)).astype(np.float32)
    c = rng.standard_normal((2, 4, 7)).astype(np.float32)
    out, h_n, c_n = plan.infer(plan.spec, data, x_t[:, None], None, h, c, True)
    y, h2, c2 = plan.step(data, x_t, h, c, (2, 4, 7))
    np.testing.assert_array_equal(y, out[:, 0] if seq else out)
    assert y.shape == (4, 3) and h2.shape == c2.shape == (2, 4, 7)
    np.testing.assert_array_equal(h2, h_n.reshape(2, 4, 7))
    np.testing.assert_array_equal(c2, c_n.reshape(2, 4, 7))
    y0, hf, cf = plan.step(data, x_t)  # zero states, flat
    assert hf.shape == cf.shape == (2 * 4 * 7,)
    np.testing.assert_array_equal(y0, plan.step(data, x_t, h * 0, c * 0)[0])
    if plan.takes_steps:
        for bad in [(2, 4, 6), [2, 4, 7], (56, -1), (2.9, 4, 7), (2, 4, 7.0), (True, 56),
                    (2 ** 70, 1), (np.array([56]),)]:
            with pytest.raises(ValueError, match="state_shape"):
                plan.infer(plan.spec, data, x_t, None, h, c, True, None, bad, True)
        y3, h3, _ = plan.infer(plan.spec, data, x_t, None, h, c, True, None,
                               (np.int64(2), 4, 7), True)  # any integer type
        assert h3.shape == (2, 4, 7)
        assert plan.infer(plan.spec, data, x_t[:, None], None, h, c, True, None, None,
                          True) is None  # step=True takes the step form only
        assert plan.infer(plan.spec, data, x_t, None, h, c, True) is None
    emb = build_model(fused_backend, cyrnn.GRU, {}, np.float32, embed=6)
    p2, d2 = emb._plan(), emb.params.data
    ids = np.array([1, 5, 0], np.int64)
    expected = p2.infer(p2.spec, d2, ids[:, None], None, None, None, True)
    got = p2.step(d2, ids, None, None, (1, 3, 7))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1].reshape(1, 3, 7))
    assert got[2] is None
