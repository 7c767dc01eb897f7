"""Fused training step (``train_step`` through a backend's ``train_forward`` /
``train_backward``).

The reference is the same step on the NumPy backend's layer path: loss, every parameter
gradient and the updated parameters must agree (float32 within 1e-5 relative to the
gradient's scale, float64 within 1e-10); inputs the fused path does not take go through
the layer path unchanged.
"""

import numpy as np
import pytest

import cyrnn
from cyrnn.backends import get_backend
from cyrnn.optim import SGD, RMSProp
from cyrnn.training import tbptt, train_step

from conftest import BACKENDS
from fused_harness import CELLS, build_model, reference

FUSED = [b for b in BACKENDS if hasattr(get_backend(b), "train_forward")]
pytestmark = pytest.mark.skipif(not FUSED, reason="no backend with a fused training step")


@pytest.fixture(params=FUSED)
def fused_backend(request):
    return request.param


def _model(backend, Cls, kw, dtype, *, heads=(2,), D=4, H=6, **opts):
    return build_model(backend, Cls, kw, dtype, heads=heads, D=D, H=H, **opts)


def _reference(model):
    ref = reference(model)
    assert ref._fused_training() is None
    return ref


def _spy(model):
    """Record whether each train_step call ran the fused forward (True) or it declined
    (False); no entry when the fused path was not tried."""
    calls = []
    plan = model._fused_training()
    real = plan.train_forward

    def spy(*args):
        res = real(*args)
        calls.append(res is not None)
        return res

    plan.train_forward = spy
    return calls


def _check_step(model, x, y, loss="mse", opt_cls=SGD, fused=True, **kw):
    dtype = model.dtype.type
    assert model._fused_training() is not None
    ref = _reference(model)
    calls = _spy(model)
    opt, opt_ref = opt_cls(model, lr=0.05), opt_cls(ref, lr=0.05)
    v = train_step(model, opt, loss, x, y, **kw)
    assert calls == ([True] if fused else calls) and (fused or calls != [True])
    v_ref = train_step(ref, opt_ref, loss, x, y, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v, v_ref, **tol)
    g, g_ref = model.params.grad, ref.params.grad
    assert np.abs(g_ref).max() > 0
    scale = max(1.0, float(np.abs(g_ref).max()))
    for name in model.params.names:  # name the tensor that differs
        np.testing.assert_allclose(model.params.grad_of(name), ref.params.grad_of(name),
                                   rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
    np.testing.assert_allclose(model.params.data, ref.params.data, **tol)
    return model, ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,Cls,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("shape", ["many-to-one", "many-to-many", "2-layers", "stacked",
                                   "truncated", "truncated-seq", "truncated-2-layers"])
def test_fused_step_matches_reference(fused_backend, dtype, name, Cls, kw, shape, rng):
    opts = {"many-to-one": {}, "many-to-many": {"seq": True},
            "2-layers": {"num_layers": 2, "heads": (3, 2)}, "stacked": {"stacked": 2},
            "truncated": {"truncate": 2}, "truncated-seq": {"truncate": 1, "seq": True},
            "truncated-2-layers": {"truncate": 1, "num_layers": 2, "seq": True}}[shape]
    model = _model(fused_backend, Cls, kw, dtype, **opts)
    N, T = 3, 7
    x = rng.standard_normal((N, T, 4)).astype(dtype)
    y = rng.standard_normal((N, T, 2) if opts.get("seq") else (N, 2)).astype(dtype)
    _check_step(model, x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_step_embedding_classifier(fused_backend, dtype, rng):
    model = _model(fused_backend, cyrnn.GRU, {}, dtype, embed=9, heads=(3,))
    ids = rng.integers(0, 9, size=(5, 6))
    y = rng.integers(0, 3, size=5)
    _check_step(model, ids, y, loss="softmax_cross_entropy",
                sample_weight=rng.uniform(0.5, 2, 5))


def test_fused_step_batch_one_rmsprop_several_steps(fused_backend, rng):
    model = _model(fused_backend, cyrnn.LSTM, {}, np.float64, heads=(1,))
    ref = _reference(model)
    opt, opt_ref = RMSProp(model, lr=0.01, clip_norm=1.0), RMSProp(ref, lr=0.01, clip_norm=1.0)
    for _ in range(5):
        x = rng.standard_normal((1, 9, 4))
        y = rng.standard_normal((1, 1))
        v = train_step(model, opt, "mse", x, y)
        v_ref = train_step(ref, opt_ref, "mse", x, y)
        np.testing.assert_allclose(v, v_ref, rtol=1e-10)
    np.testing.assert_allclose(model.params.data, ref.params.data, rtol=1e-10, atol=1e-12)


def test_fused_step_falls_back(fused_backend, rng, monkeypatch):
    """Initial states, returned states, dropout, bad lengths and inputs not in the
    exact form take the layer path (same result, same errors)."""
    model = _model(fused_backend, cyrnn.LSTM, {}, np.float64, seq=True)
    calls = _spy(model)
    x = rng.standard_normal((2, 5, 4))
    y = rng.standard_normal((2, 5, 2))
    train_step(model, SGD(model, lr=1e-9), "mse", x, y, return_states=True)
    h0 = np.zeros((1, 2, 6)), np.zeros((1, 2, 6))
    train_step(model, SGD(model, lr=1e-9), "mse", x, y, initial_states=[h0])
    with pytest.raises(ValueError, match="either lengths or mask"):
        train_step(model, SGD(model, lr=1e-9), "mse", x, y, lengths=[5, 3],
                   mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match="lengths"):
        train_step(model, SGD(model, lr=1e-9), "mse", x, y, lengths=[6, 3])
    assert calls == []
    train_step(model, SGD(model, lr=1e-9), "mse", np.asfortranarray(x), y)
    assert calls == [False]
    train_step(model, SGD(model, lr=1e-9), "mse", x, y)
    assert calls == [False, True]
    _check_step(model, np.asfortranarray(x), y, fused=False, lengths=[5, 3])
    drop = cyrnn.Sequential([cyrnn.LSTM(4, 5, num_layers=2, dropout=0.3, backend=fused_backend,
                                        random_state=0)])
    assert drop._fused_training() is None and drop._fused() is not None


def test_fused_step_bad_input_changes_nothing(fused_backend, rng):
    model = _model(fused_backend, cyrnn.GRU, {}, np.float32)
    before = model.params.data.copy()
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    with pytest.raises(ValueError):
        train_step(model, SGD(model, lr=0.1), "mse", x, np.ones((3, 2), np.float32))
    x[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_step(model, SGD(model, lr=0.1), "mse", x, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(model.params.data, before)


def test_tbptt_on_a_fused_model(fused_backend, rng):
    """tbptt carries states (train_step(return_states=True)): the layer path, unchanged
    for a model that could run fused."""
    model = _model(fused_backend, cyrnn.GRU, {}, np.float64, seq=True)
    ref = _reference(model)
    x = rng.standard_normal((2, 12, 4))
    y = rng.standard_normal((2, 12, 2))
    out = tbptt(model, SGD(model, lr=0.05), "mse", x, y, k1=4, k2=2)
    out_ref = tbptt(ref, SGD(ref, lr=0.05), "mse", x, y, k1=4, k2=2)
    np.testing.assert_allclose(out[0], out_ref[0], rtol=1e-10)
    np.testing.assert_allclose(model.params.data, ref.params.data, rtol=1e-10, atol=1e-12)


def test_train_backward_contract(fused_backend, rng):
    be = get_backend(fused_backend)
    model = _model(fused_backend, cyrnn.LSTM, {}, np.float32)
    spec, data, grad = model.inference_spec(), model.params.data, model.params.grad
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    res = be.train_forward(spec, data, x)
    out, cache = res[0], res[-1]  # spec v3: (out, h_n, c_n, cache)
    tr = model._truncations()
    with pytest.raises(ValueError, match="d_out"):
        be.train_backward(spec, data, grad, cache, np.ones((2, 3), np.float32), tr)
    with pytest.raises(ValueError, match="truncate"):
        be.train_backward(spec, data, grad, cache, np.ones_like(out), np.zeros(3, np.int64))
    be.train_backward(spec, data, grad, cache, np.ones_like(out), tr)
    with pytest.raises(RuntimeError, match="already"):
        be.train_backward(spec, data, grad, cache, np.ones_like(out), tr)


def test_fused_step_per_layer_truncation(fused_backend, rng):
    """Different bptt_truncate per stacked layer: the truncations map to their own ops."""
    model = cyrnn.Sequential([
        cyrnn.GRU(4, 5, num_layers=2, return_sequences=True, bptt_truncate=1,
                  backend=fused_backend, random_state=0, dtype=np.float64),
        cyrnn.LSTM(5, 6, return_sequences=True, bptt_truncate=None, backend=fused_backend,
                   random_state=1, dtype=np.float64),
        cyrnn.SimpleRNN(6, 3, return_sequences=True, bptt_truncate=3, backend=fused_backend,
                        random_state=2, dtype=np.float64),
        cyrnn.Dense(3, 2, random_state=3, dtype=np.float64)])
    model.params.data[...] = rng.uniform(-0.6, 0.6, model.params.size)
    assert list(model._truncations()) == [1, 1, -1, 3]
    x = rng.standard_normal((3, 8, 4))
    _check_step(model, x, rng.standard_normal((3, 8, 2)))


def test_train_backward_adds_into_grad(fused_backend, rng):
    be = get_backend(fused_backend)
    model = _model(fused_backend, cyrnn.LSTM, {}, np.float64, embed=7)
    spec, data = model.inference_spec(), model.params.data
    ids = rng.integers(0, 7, size=(2, 5))
    res = be.train_forward(spec, data, ids)
    out, cache = res[0], res[-1]  # spec v3: (out, h_n, c_n, cache)
    fresh = np.zeros_like(data)
    be.train_backward(spec, data, fresh, cache, np.ones_like(out), model._truncations())
    prefill = rng.standard_normal(data.shape)
    res = be.train_forward(spec, data, ids)
    out, cache = res[0], res[-1]  # spec v3: (out, h_n, c_n, cache)
    grad = prefill.copy()
    be.train_backward(spec, data, grad, cache, np.ones_like(out), model._truncations())
    np.testing.assert_allclose(grad, prefill + fresh, rtol=1e-12, atol=1e-12)
    assert np.abs(fresh).max() > 0


def test_train_backward_refuses_a_changed_spec(fused_backend, rng):
    be = get_backend(fused_backend)
    model = _model(fused_backend, cyrnn.GRU, {}, np.float32)
    spec, data = model.inference_spec().copy(), model.params.data
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    res = be.train_forward(spec, data, x)
    out, cache = res[0], res[-1]  # spec v3: (out, h_n, c_n, cache)
    spec[3 + 5] += 100  # the hidden size, after the forward ran with the old one
    with pytest.raises(ValueError, match="spec"):
        be.train_backward(spec, data, model.params.grad, cache, np.ones_like(out),
                          model._truncations())
    with pytest.raises(ValueError, match="grad"):
        be.train_backward(model.inference_spec(), data, model.params.grad[::-1].copy()[:3],
                          cache, np.ones_like(out), model._truncations())
    with pytest.raises(TypeError):
        be.train_backward(model.inference_spec(), data, None, cache, np.ones_like(out),
                          model._truncations())



@pytest.mark.parametrize("how", ["lengths", "mask", "mask_zero", "mask_zero+lengths"])
@pytest.mark.parametrize("name,Cls,kw", CELLS[:3], ids=[c[0] for c in CELLS[:3]])
def test_fused_step_with_masks(fused_backend, how, name, Cls, kw, rng):
    """Variable lengths, masks with gaps and mask_zero padding run fused, per-step loss
    masked as on the layer path."""
    emb = how.startswith("mask_zero")
    model = _model(fused_backend, Cls, kw, np.float64, seq=True, truncate=2,
                   embed=9 if emb else None)
    if emb:
        model.layers[0].mask_zero = True
        x = rng.integers(1, 9, size=(4, 7))
        x[0, :2] = 0   # pre-padding
        x[3, 5:] = 0   # post-padding
    else:
        x = rng.standard_normal((4, 7, 4))
    y = rng.standard_normal((4, 7, 2))
    kw_step = {}
    if how in ("lengths", "mask_zero+lengths"):
        kw_step["lengths"] = [7, 3, 5, 7]
    elif how == "mask":
        m = rng.random((4, 7)) > 0.3
        m[:, 0] = True
        kw_step["mask"] = m
    _check_step(model, x, y, **kw_step)
    # many-to-one inference with the same masks matches the reference too
    ref = _reference(model)
    np.testing.assert_allclose(model.forward(x, **kw_step), ref.forward(x, **kw_step),
                               rtol=1e-10, atol=1e-12)


def test_fused_frozen_one_hot_embedding(fused_backend, rng):
    """The language model's one-hot input (a frozen identity embedding) runs fused and
    its table gets no gradient."""
    from cyrnn.language_model import _OneHotEmbedding

    model = cyrnn.Sequential([_OneHotEmbedding(6, dtype=np.float64),
                              cyrnn.GRU(6, 5, return_sequences=True, backend=fused_backend,
                                        dtype=np.float64, random_state=0),
                              cyrnn.Dense(5, 6, dtype=np.float64, random_state=1)])
    assert model.inference_spec()[3 + 5] == 1  # frozen flag
    ids = rng.integers(0, 6, size=(3, 8))
    y = rng.integers(0, 6, size=(3, 8))
    model2, ref = _check_step(model, ids, y, loss="softmax_cross_entropy", lengths=[8, 4, 6])
    np.testing.assert_array_equal(model.params["0.weight"], np.eye(6))
    assert not model.params.grad_of("0.weight").any()
