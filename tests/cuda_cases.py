"""The CUDA backend's conformance cases (run by tests/test_cuda_backend.py).

Not collected by a plain ``pytest tests`` (the file name does not start with
``test_``): ``test_cuda_backend.py`` runs this module in a subprocess, under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` must be set before Numba is imported) on
tiny shapes, and, with ``pytest -m gpu`` on a machine with an NVIDIA GPU, on the
device at realistic shapes (``CYRNN_CUDA_SHAPES=realistic``).

The simulator runs a cooperative grid as one block (``max_cooperative_grid_blocks``
is 1 there and its grid sync is a block barrier), so the multi-block persistent path
is exercised only on a real GPU.
"""

import os
import sys

import numpy as np
import pytest

import cyrnn
from cyrnn.backends import available, get_backend
from cyrnn.backends import numpy_backend as ref
from kernel_harness import CELLS, KernelHarness, make_problem, run_forward

if "cuda" not in available():
    pytest.skip("no CUDA device or simulator", allow_module_level=True)

from cyrnn.backends.cuda import config  # noqa: E402

if config.SIMULATOR:
    # The simulator runs each block's threads as Python threads, and its block manager
    # polls them holding the GIL: at Python's default switch interval (5 ms) every
    # barrier waits that long for the GIL to come round. At 0.2 ms this module ran in
    # 130 instead of 224 s on 2 cores (2026-12-03); results do not depend on it.
    sys.setswitchinterval(2e-4)

cu = get_backend("cuda")
REALISTIC = os.environ.get("CYRNN_CUDA_SHAPES") == "realistic"
# (N, T, H) of the kernel comparisons
SHAPE = (32, 50, 128) if REALISTIC else (3, 4, 3)
harness = KernelHarness(cu, 1e-4 if REALISTIC else 2e-5)


def _problem(cell, dtype, masked, seed=0):
    N, T, H = SHAPE
    return make_problem(cell, dtype, N, masked, seed=seed, T=T, H=H)


def _check(cell, dtype, masked, truncations):
    p = _problem(cell, dtype, masked)
    cache, cache_ref = harness.compare_forward(cell, dtype, p)
    for k in truncations:
        harness.compare_backward(cell, dtype, p, cache, cache_ref, k)
    harness.compare_step(cell, dtype, p)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_float64_masked_full_and_truncated(cell_name):
    """forward (outputs, states, the whole cache, inference), backward with full BPTT
    and truncation 1, step: equal to the reference, masks with pre-/post-padding, a
    step masked in every row and a fully masked row."""
    _check(CELLS[cell_name], np.float64, True, (None, 1))


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_float32_unmasked(cell_name):
    _check(CELLS[cell_name], np.float32, False, (None, 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell_name", ["lstm_peephole", "gru-cho", "gru-reset-after",
                                       "rnn-relu"])
def test_per_step_path(cell_name, dtype, monkeypatch):
    """With no shared memory allowed, layers take the per-step path (a tiled GEMM and a
    cell launch per step): the same results."""
    monkeypatch.setattr(config, "SHARED_BYTES", 0)
    assert config.launch_plan(None, (), 4, SHAPE[2], 8) is None
    _check(CELLS[cell_name], dtype, dtype == np.float64, (None, 1))


def test_mask_dtypes_empty_batch_and_no_steps():
    p = harness.check_mask_dtypes_and_empty_batch()
    cell = CELLS["gru-reset-after"]
    h_seq, h_T, _, _ = run_forward(cu, cell, dict(p, xp=p["xp"][:0], mask=None))
    assert h_seq.shape[0] == 0
    np.testing.assert_array_equal(h_T, p["h0"])


def test_missing_gradients_and_peepholes():
    """None for dh_seq, dh_T, dc_T, and a peephole cell without its weights."""
    cell = CELLS["lstm_peephole"]
    p = _problem(cell, np.float64, True, seed=3)
    q = dict(p, peep=None)
    cache, cache_ref = harness.compare_forward(cell, np.float64, q)
    harness.compare_backward(cell, np.float64, q, cache, cache_ref, None, dh_seq=None,
                             dc_T=None)
    harness.compare_backward(cell, np.float64, q, cache, cache_ref, 1, dh_T=None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul_hook(dtype):
    """``matmul(a, trans_a, b, trans_b, out, beta)``, the layer path's GEMM hook (input
    projection, dW_ih, dx), on the device's tiled GEMM: every transpose, beta 0 and 1."""
    rng = np.random.default_rng(4)
    M, K, P = (37, 19, 23) if REALISTIC else (5, 6, 7)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for trans_a in (False, True):
        for trans_b in (False, True):
            for beta in (0.0, 1.0):
                a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
                b = rng.standard_normal((P, K) if trans_b else (K, P)).astype(dtype)
                out = rng.standard_normal((M, P)).astype(dtype)
                expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * out
                cu.matmul(a, trans_a, b, trans_b, out, beta)
                np.testing.assert_allclose(out, expected, **tol)


def _loss(cell, p, R):
    h_seq, h_T, c_T, _ = run_forward(cu, cell, p, keep_cache=False)
    val = (R["dh_seq"] * h_seq).sum() + (R["dh_T"] * h_T).sum()
    return val + ((R["dc_T"] * c_T).sum() if c_T is not None else 0.0)


@pytest.mark.parametrize("cell_name", ["lstm_peephole", "gru-cho", "gru-reset-after",
                                       "rnn-tanh"])
def test_finite_differences(cell_name):
    """The analytic gradients of the device backward against central differences of
    the device forward along a random direction per tensor (float64, masked)."""
    cell = CELLS[cell_name]
    N, T, H = (3, 4, 3) if not REALISTIC else (4, 6, 5)
    p = make_problem(cell, np.float64, N, True, seed=5, T=T, H=H)
    R = {k: p[k] for k in ("dh_seq", "dh_T", "dc_T")}
    _, _, _, cache = run_forward(cu, cell, p)
    dxp, dh0, dc0, dw, db, dpeep = cu.backward(cell, cache, p["w_hh"], p["mask"],
                                               truncate=None, peep=p["peep"], **R)
    grads = {"xp": dxp, "h0": dh0, "c0": dc0, "w_hh": dw, "b_hh": db, "peep": dpeep}
    rng = np.random.default_rng(11)
    eps = 1e-6
    for name, g in grads.items():
        if p[name] is None:
            assert g is None, name
            continue
        v = rng.standard_normal(p[name].shape)
        up = _loss(cell, dict(p, **{name: p[name] + eps * v}), R)
        down = _loss(cell, dict(p, **{name: p[name] - eps * v}), R)
        np.testing.assert_allclose((g * v).sum(), (up - down) / (2 * eps), rtol=1e-5,
                                   atol=1e-7, err_msg=name)


def test_cooperative_grid_size():
    """The grid comes from max_cooperative_grid_blocks: one block in the simulator
    (its grid sync is a block barrier), several blocks on a GPU for a large layer."""
    from cyrnn.backends.cuda.loops import KERNELS

    N, T, H = SHAPE
    kernel = KERNELS["float32"][0]
    f32 = np.float32
    args = ((0,) * 7 + (np.zeros((T, N, 4 * H), f32), np.zeros((4 * H, H), f32),
                        np.zeros(4 * H, f32), np.zeros((3, 1), f32), np.ones((1, 1), np.uint8))
            + tuple(np.zeros(s, f32) for s in ((2, N, H), (2, N, H), (T, N, H), (1, N, 4 * H),
                                               (1, N, H), (N, 4 * H))))
    blocks, U, shared = config.launch_plan(kernel, args, 4, H, 4)
    assert blocks * U >= H and (blocks - 1) * U < H
    assert shared == 4 * U * H * 4 <= config.SHARED_BYTES
    if config.SIMULATOR:
        assert blocks == 1
    else:
        assert blocks > 1


def _layers(backend, dtype):
    return [cyrnn.Embedding(9, 4, mask_zero=True, dtype=dtype, random_state=0),
            cyrnn.LSTM(4, 3, num_layers=2, bidirectional=True, merge_mode="sum",
                       return_sequences=True, backend=backend, dtype=dtype, random_state=1),
            cyrnn.GRU(3, 3, reset_after=False, return_sequences=False, backend=backend, dtype=dtype, random_state=2),
            cyrnn.Dense(3, 2, dtype=dtype, random_state=3)]


@pytest.fixture
def spy(monkeypatch):
    """Counts of the CUDA backend's fused calls that ran (did not decline)."""
    from conftest import spy_fused_calls
    return spy_fused_calls("cuda", monkeypatch)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sequential_training_step_matches_reference(dtype, spy):
    """A Sequential on backend="cuda" (embedding with mask_zero, stacked bidirectional
    LSTM, Cho GRU, Dense): one training step (forward, loss, backward, Adam) equals
    the NumPy backend's, through the fused calls (plan path: every op on the device in
    one call), and so does inference afterwards."""
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, size=(2, 4))
    x[0, 2:] = 0
    y = rng.standard_normal((2, 2)).astype(dtype)
    models = [cyrnn.Sequential(_layers(b, dtype)) for b in ("cuda", "numpy")]
    models[1].load_state_dict(models[0].state_dict())
    assert models[0]._plan()._mod is cu and models[1]._plan() is None
    losses = []
    for m in models:
        opt = cyrnn.optim.Adam(m.params, lr=0.01)
        losses.append(cyrnn.training.train_step(m, opt, "mse", x, y))
    assert spy["train_forward"] == 1 and spy["train_backward"] == 1
    np.testing.assert_allclose(losses[0], losses[1], **tol)
    np.testing.assert_allclose(models[0].params.grad, models[1].params.grad, **tol)
    np.testing.assert_allclose(models[0].params.data, models[1].params.data, **tol)
    out = [m.forward(x) for m in models]
    assert spy["infer"] == 1
    np.testing.assert_allclose(out[0], out[1], **tol)


def _fused_model(backend):
    model = cyrnn.Sequential([
        cyrnn.LSTM(2, 3, num_layers=2, bidirectional=True, peephole=True, dropout=0.25,
                   bptt_truncate=1, backend=backend, dtype=np.float64, random_state=0),
        cyrnn.GRU(6, 2, bidirectional=True, merge_mode="mul", return_sequences=False,
                  backend=backend, dtype=np.float64, random_state=1),
        cyrnn.Dense(2, 2, dtype=np.float64, random_state=2)])
    model.params.data[...] = np.random.default_rng(5).uniform(-0.6, 0.6, model.params.size)
    return model


def test_fused_calls_states_dropout_truncation(spy):
    """The fused calls against the NumPy layer path on what the first test leaves out:
    float input with lengths, initial states and their gradients, dropout between
    stacked layers, truncated BPTT, peepholes, a concat and a mul merge (the latter
    many-to-one), the input gradient; then inference with states."""
    tol = dict(rtol=1e-9, atol=1e-11)
    model, ref = _fused_model("cuda"), _fused_model("numpy")
    rng = np.random.default_rng(3)
    n, T = 2, 4
    x = rng.standard_normal((n, T, 2))
    init = [(rng.standard_normal((4, n, 3)), rng.standard_normal((4, n, 3))),
            rng.standard_normal((2, n, 2))]
    kw = dict(lengths=[4, 2], initial_states=init, return_states=True)
    res = [m.forward(x, training=True, **kw) for m in (model, ref)]
    np.testing.assert_allclose(res[0][0], res[1][0], **tol)
    for a, b in zip(res[0][1][0] + (res[0][1][1],), res[1][1][0] + (res[1][1][1],)):
        np.testing.assert_allclose(a, b, **tol)
    d_out = rng.standard_normal(res[0][0].shape)
    d_states = [(rng.standard_normal((4, n, 3)), None), rng.standard_normal((2, n, 2))]
    dx = [m.backward(d_out, d_states) for m in (model, ref)]
    assert spy["train_forward"] == 1 and spy["train_backward"] == 1
    np.testing.assert_allclose(dx[0], dx[1], **tol)
    np.testing.assert_allclose(model.params.grad, ref.params.grad, **tol)
    res = [m.forward(x, **kw) for m in (model, ref)]
    np.testing.assert_allclose(res[0][0], res[1][0], **tol)
    np.testing.assert_allclose(res[0][1][1], res[1][1][1], **tol)
    assert spy["infer"] == 1


def test_fused_calls_decline_and_raise_as_numba():
    """Declines (ids out of range, non-finite states) and errors (a corrupt spec, a wrong
    state size, a wrong dtype, a bad output gradient, a spent cache) follow the Numba
    backend's checks (shared code), before any device work."""
    model = cyrnn.Sequential(_layers("cuda", np.float64))
    plan = model._plan()
    data = model.params.data
    ids = np.array([[1, 2, 3]])
    assert cu.infer(plan.spec, data, np.array([[1, 9, 3]])) is None
    assert cu.train_forward(plan.spec, data, np.array([[-1, 2, 3]])) is None
    n_state = 1 * (4 * 3 + 3)
    assert cu.infer(plan.spec, data, ids, None, np.full(n_state, np.nan)) is None
    with pytest.raises(ValueError, match="unsupported inference spec"):
        cu.infer(plan.spec[:-1], data, ids)
    with pytest.raises(ValueError, match="initial states"):
        cu.infer(plan.spec, data, ids, None, np.zeros(5))
    with pytest.raises(TypeError, match="float32 or float64"):
        cu.infer(plan.spec, data.astype(np.float16), ids)
    _, _, _, cache = cu.train_forward(plan.spec, data, ids)
    grad = np.zeros_like(data)
    with pytest.raises(ValueError, match="d_out must be"):
        cu.train_backward(plan.spec, data, grad, cache, np.zeros((1, 3)), plan.truncations())
    cu.train_backward(plan.spec, data, grad, cache, np.ones((1, 2)), plan.truncations())
    assert np.abs(grad).sum() > 0
    with pytest.raises(RuntimeError, match="already backpropagated"):
        cu.train_backward(plan.spec, data, grad, cache, np.ones((1, 2)), plan.truncations())


def _resident_model(backend, dtype):
    return cyrnn.Sequential([
        cyrnn.GRU(2, 3, return_sequences=True, backend=backend, dtype=dtype, random_state=0),
        cyrnn.Dense(3, 2, dtype=dtype, random_state=1)])


@pytest.mark.parametrize("name,kw,dtype", [
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clip_value=0.5),
     np.float64),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5, clip_norm=0.1), np.float32),
    ("adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, clip_norm=0.3), np.float64)])
def test_device_resident_training_matches_reference(name, kw, dtype):
    """Inside ``device_training`` the parameters, gradients and optimizer state stay on
    the device (the host arrays do not change until it ends) and clipping and the
    update run there; the losses, parameters, optimizer state and gradient norm equal
    the NumPy backend's."""
    from cyrnn.fitting import device_training

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 2)).astype(dtype)
    y = rng.standard_normal((2, 3, 2)).astype(dtype)
    # float32: the centered RMSProp's sqrt(v - m^2) magnifies the gradients' round-off
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    res = []
    for backend in ("cuda", "numpy"):
        model = _resident_model(backend, dtype)
        start = model.params.data.copy()
        opt = cyrnn.optim.get_optimizer(name, model.params, **kw)
        with device_training(model) as device:
            losses = [cyrnn.training.train_step(model, opt, "mse", x, y) for _ in range(2)]
            if backend == "cuda":
                assert device is not None and model.params.device is device
                np.testing.assert_array_equal(model.params.data, start)  # still on the device
            else:
                assert device is None
        assert model.params.device is None
        res.append((losses, model.params.data, opt.state_dict(), opt.last_grad_norm))
    np.testing.assert_allclose(res[0][0], res[1][0], **tol)
    np.testing.assert_allclose(res[0][1], res[1][1], **tol)
    for key, value in res[1][2].items():
        np.testing.assert_allclose(res[0][2][key], value, **tol)
    if "clip_norm" in kw:
        np.testing.assert_allclose(res[0][3], res[1][3], rtol=1e-6)


def test_a_layers_own_calls_and_optimizer_end_residency():
    """Inside ``device_training``, an optimizer over one layer's buffer, and a layer's
    own call (its buffer a view of the model's), and reading or loading a state dict
    (the model's, a layer's, the optimizer's) first bring the device's values back and
    end the session: the optimizer updated the stale host arrays with zero host
    gradients (nothing trained), the layer's step read the stale host weights."""
    from cyrnn.fitting import device_training

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    res = []
    for backend in ("cuda", "numpy"):
        model = _resident_model(backend, np.float64)
        layer_opt = cyrnn.optim.SGD(model.layers[0], lr=0.1)
        opt = cyrnn.optim.SGD(model, lr=0.1, momentum=0.9)
        with device_training(model):
            cyrnn.training.train_step(model, layer_opt, "mse", x, y)
            assert model.params.device is None  # ended by the layer's optimizer
        with device_training(model):
            cyrnn.training.train_step(model, opt, "mse", x, y)
            step = model.layers[0].step(x[:, 0], None)[0]
            assert model.params.device is None  # ended by the layer's own call
            cyrnn.training.train_step(model, opt, "mse", x, y)
        with device_training(model):  # a layer's own zero_grad ends it too
            model.forward(x, training=True)
            model.backward(np.ones((2, 3, 2)))
            model.layers[0].zero_grad()
            assert model.params.device is None and not model.layers[0].params.grad.any()
        with device_training(model):  # a state dict reads the trained values
            cyrnn.training.train_step(model, opt, "mse", x, y)
            saved = model.layers[0].state_dict()
            assert model.params.device is None
        with device_training(model):  # and one loaded is what training goes on from
            cyrnn.training.train_step(model, opt, "mse", x, y)
            model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
            cyrnn.training.train_step(model, opt, "mse", x, y)
        with device_training(model):  # the optimizer's state dicts alike
            cyrnn.training.train_step(model, opt, "mse", x, y)
            moments = opt.state_dict()
            assert model.params.device is None
        with device_training(model):
            cyrnn.training.train_step(model, opt, "mse", x, y)
            opt.load_state_dict({k: (v * 0.5 if k != "step" else v)
                                 for k, v in opt.state_dict().items()})
            cyrnn.training.train_step(model, opt, "mse", x, y)
        saved.update({f"opt.{k}": v for k, v in moments.items()})
        res.append((model.params.data.copy(), step, saved))
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-10, atol=1e-12)
    for key, value in res[1][2].items():
        np.testing.assert_allclose(res[0][2][key], value, rtol=1e-10, atol=1e-12)


def test_declined_call_ends_residency(spy):
    """A batch the plan path does not take (a row of padding ids only under mask_zero:
    the layer path runs) first brings the device's values back to the host; training
    goes on there and equals the NumPy backend's."""
    from cyrnn.fitting import device_training

    x = np.array([[1, 2, 3], [4, 5, 0]])
    pad = np.array([[1, 2, 3], [0, 0, 0]])
    y = np.ones((2, 2))
    models = []
    for backend in ("cuda", "numpy"):
        model = cyrnn.Sequential([
            cyrnn.Embedding(6, 2, mask_zero=True, dtype=np.float64, random_state=0),
            cyrnn.GRU(2, 2, return_sequences=False, backend=backend, dtype=np.float64,
                      random_state=1),
            cyrnn.Dense(2, 2, dtype=np.float64, random_state=2)])
        opt = cyrnn.optim.Adam(model.params, lr=0.05)
        with device_training(model):
            cyrnn.training.train_step(model, opt, "mse", x, y)
            if backend == "cuda":  # a declined fused call ends residency too
                before = model.params.data.copy()
                plan = model._plan()
                assert plan.infer(plan.spec, model.params.data, np.array([[9, 1, 1]])) is None
                assert model.params.device is None
                assert not np.array_equal(model.params.data, before)  # the device's values
                plan.device_session(model.params)  # resident again
            for batch in (pad, x):
                cyrnn.training.train_step(model, opt, "mse", batch, y)
            assert model.params.device is None  # ended by the padding-only batch
        models.append(model)
    assert spy["train_forward"] == 2
    np.testing.assert_allclose(models[0].params.data, models[1].params.data, rtol=1e-10,
                               atol=1e-12)


def test_layer_step_and_states(spy):
    """layer.step and initial states through the fused inference (one step)."""
    kw = dict(num_layers=2, dtype=np.float64, random_state=4, peephole=True)
    lstm = cyrnn.LSTM(3, 4, backend="cuda", **kw)
    ref_lstm = cyrnn.LSTM(3, 4, backend="numpy", **kw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3))
    state = (rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 2, 4)))
    out, (h, c) = lstm.step(x, state)
    out_r, (h_r, c_r) = ref_lstm.step(x, state)
    assert spy["infer"] == 1
    for a, b in ((out, out_r), (h, h_r), (c, c_r)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_estimator_fits_on_cuda(tmp_path, spy, monkeypatch):
    """An estimator fits (device-resident) and predicts with backend="cuda", as with the
    NumPy backend, and its saved file scores on the CPU (``scoring.load(path,
    backend=...)``: the file names the backend it was fitted with)."""
    from cyrnn.estimators import GRURegressor

    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 4, 2))
    y = X.sum(axis=(1, 2))
    kw = dict(hidden_size=3, max_iter=2, batch_size=3, random_state=0, dtype=np.float64)
    from cyrnn.backends.cuda.resident import Session

    steps = []
    real_step = Session.step
    monkeypatch.setattr(Session, "step", lambda self, opt: steps.append(1) or real_step(self, opt))
    fits = [GRURegressor(backend=b, **kw).fit(X, y) for b in ("cuda", "numpy")]
    # 2 epochs of 2 batches, fused and device-resident (the Adam steps ran on the device)
    assert spy["train_forward"] == spy["train_backward"] == 4 and len(steps) == 4
    np.testing.assert_allclose(fits[0].loss_curve_, fits[1].loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(fits[0].model_.params.data, fits[1].model_.params.data,
                               rtol=1e-9, atol=1e-12)
    assert fits[0].model_.params.device is None  # back on the host
    np.testing.assert_allclose(fits[0].predict(X), fits[1].predict(X), rtol=1e-9, atol=1e-12)
    # an ordinary cyrnn model afterwards: saved, then scored on the CPU
    import cyrnn.scoring

    path = tmp_path / "gru.cyrnn"
    fits[0].save(path)
    scorer = cyrnn.scoring.load(path, backend="numpy")
    np.testing.assert_allclose(scorer.predict(X), fits[0].predict(X), rtol=1e-9, atol=1e-12)


def test_reference_used_for_other_dtypes():
    """float16 input goes to the reference, as in the other compiled backends."""
    cell = CELLS["rnn-tanh"]
    p = {k: (v.astype(np.float16) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
         for k, v in _problem(cell, np.float64, False).items()}
    a = run_forward(cu, cell, p)
    e = run_forward(ref, cell, p)
    np.testing.assert_array_equal(a[0], e[0])


def test_language_model_on_cuda(spy):
    """CharLanguageModel fits, scores and samples with backend="cuda" (sampling through
    the device's generate), as on the NumPy backend."""
    from cyrnn.language_model import CharLanguageModel

    names = ["abc", "bca", "cab", "ab"]
    kw = dict(cell="gru", hidden_size=3, embedding_dim=2, batch_size=2, max_epochs=1,
              dtype=np.float64, random_state=0)
    lms = [CharLanguageModel(backend=b, **kw).fit(names) for b in ("cuda", "numpy")]
    assert spy["train_forward"] > 0 and spy["train_forward"] == spy["train_backward"]
    np.testing.assert_allclose(lms[0].loss_curve_, lms[1].loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(lms[0].perplexity(names), lms[1].perplexity(names), rtol=1e-9)
    assert lms[0].sample(2, max_length=4, random_state=1) == lms[1].sample(
        2, max_length=4, random_state=1)


@pytest.mark.parametrize("cell_name", ["lstm_peephole", "gru-cho"])
def test_generate_matches_reference(cell_name, monkeypatch):
    """``generate`` on the device: two stacked layers, forced and banned tokens, top-k and
    temperature, rows ending early; token for token the reference's (same uniforms)."""
    from test_generate_kernel import make_problem as generate_problem

    cell = CELLS[cell_name]
    for top_k, temperature in [(0, 1.0), (3, 0.7)]:
        w, s = generate_problem(cell, L=2, n=2, H=3, T=11, seed=1)
        s["forced"], s["uniforms"] = s["forced"][:, :6].copy(), s["uniforms"][:, :6].copy()
        s["forced"][0, 5] = 2  # row 0 ends at step 5
        with monkeypatch.context() as m:
            m.setattr(ref, "generate", None)  # the device loop ran, not the reference's
            got = cu.generate(cell, **w, **s, temperature=temperature, top_k=top_k,
                              end_token=2)
        expected = ref.generate(cell, **w, **s, temperature=temperature, top_k=top_k,
                                end_token=2)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1].tolist() == [5, 6] and len(set(got[0][1].tolist())) > 2


@pytest.mark.parametrize("bad", ["nan", "ndim", "features", "lengths"])
def test_bad_input_errors_as_the_reference(bad):
    """Invalid input raises the layer path's error before any device work, as on the
    NumPy backend, and changes no parameter."""
    layers = {b: cyrnn.LSTM(3, 2, backend=b, dtype=np.float64, random_state=0)
              for b in ("cuda", "numpy")}
    x = np.zeros((2, 4, 3))
    kw = {}
    if bad == "nan":
        x[0, 1, 2] = np.nan
    elif bad == "ndim":
        x = x[0, 0]
    elif bad == "features":
        x = np.zeros((2, 4, 5))
    else:
        kw = {"lengths": np.array([5, 1])}
    errors = []
    for b, layer in layers.items():
        before = layer.params.data.copy()
        with pytest.raises((ValueError, TypeError)) as info:
            layer.forward(x, training=True, **kw)
        errors.append((info.type, str(info.value)))
        np.testing.assert_array_equal(layer.params.data, before)
    assert errors[0] == errors[1]
