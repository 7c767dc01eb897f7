"""Tests for cyrnn.optim: trajectories against torch.optim, clipping, validation, state."""

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the reference implementation for optim")

from cyrnn.optim import (  # noqa: E402
    SGD,
    Adam,
    Optimizer,
    RMSProp,
    clip_by_global_norm,
    clip_by_value,
    get_optimizer,
)
from cyrnn.params import ParameterBuffer  # noqa: E402

SPECS = [("W", (3, 4)), ("b", (4,)), ("U", (2, 3, 2))]
N_STEPS = 20
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}
DTYPES = [np.float64, np.float32]


def make_buffer(dtype, seed=0):
    buf = ParameterBuffer(SPECS, dtype=dtype)
    rng = np.random.default_rng(seed)
    buf.data[...] = rng.normal(size=buf.size)
    return buf


class Problem:
    """Loss 0.25*sum(p^4) + 0.5*p^T A p + c^T p; gradient p^3 + A p + c, in the given dtype."""

    def __init__(self, size, dtype, seed=1):
        rng = np.random.default_rng(seed)
        b = rng.normal(size=(size, size)) / math.sqrt(size)
        self.A = (0.5 * b @ b.T + 0.1 * np.eye(size)).astype(dtype)
        self.c = rng.normal(size=size).astype(dtype)
        self.dtype = dtype

    def grad(self, p):
        p = np.asarray(p, dtype=self.dtype)
        return p * p * p + self.A @ p + self.c


def torch_params(buf):
    return [torch.tensor(buf[name].copy(), requires_grad=True) for name in buf.names]


def flat(tensors):
    return np.concatenate([t.detach().numpy().ravel() for t in tensors])


def set_torch_grads(tensors, g):
    offset = 0
    for t in tensors:
        n = t.numel()
        t.grad = torch.from_numpy(g[offset:offset + n].reshape(t.shape).copy())
        offset += n


CASES = [
    ("sgd", dict(lr=0.02), dict(lr=0.02)),
    ("sgd-momentum", dict(lr=0.02, momentum=0.9), dict(lr=0.02, momentum=0.9)),
    ("sgd-dampening", dict(lr=0.02, momentum=0.8, dampening=0.3),
     dict(lr=0.02, momentum=0.8, dampening=0.3)),
    ("sgd-nesterov", dict(lr=0.02, momentum=0.9, nesterov=True),
     dict(lr=0.02, momentum=0.9, nesterov=True)),
    ("sgd-wd", dict(lr=0.02, momentum=0.5, weight_decay=0.1),
     dict(lr=0.02, momentum=0.5, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01), dict(lr=0.01, alpha=0.9, eps=1e-6)),
    ("rmsprop-momentum", dict(lr=0.01, decay=0.95, momentum=0.7, eps=1e-5),
     dict(lr=0.01, alpha=0.95, momentum=0.7, eps=1e-5)),
    ("rmsprop-centered", dict(lr=0.01, centered=True, weight_decay=0.05),
     dict(lr=0.01, alpha=0.9, eps=1e-6, centered=True, weight_decay=0.05)),
    ("rmsprop-centered-momentum", dict(lr=0.01, decay=0.95, centered=True, momentum=0.5),
     dict(lr=0.01, alpha=0.95, eps=1e-6, centered=True, momentum=0.5)),
    ("adam", dict(lr=0.01), dict(lr=0.01)),
    ("adam-betas-wd", dict(lr=0.01, betas=(0.3, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=0.01, betas=(0.3, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adam-amsgrad", dict(lr=0.01, amsgrad=True), dict(lr=0.01, amsgrad=True)),
]

TORCH_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam"}


def build(case, dtype):
    name, ours_kw, torch_kw = case
    kind = name.split("-")[0]
    buf = make_buffer(dtype)
    tparams = torch_params(buf)
    opt = get_optimizer(kind, buf, **ours_kw)
    topt = getattr(torch.optim, TORCH_CLASSES[kind])(tparams, foreach=False, **torch_kw)
    return buf, opt, tparams, topt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_torch(case, dtype):
    buf, opt, tparams, topt = build(case, dtype)
    problem = Problem(buf.size, dtype)
    for _ in range(N_STEPS):
        buf.grad[...] = problem.grad(buf.data)
        set_torch_grads(tparams, problem.grad(flat(tparams)))
        opt.step()
        with torch.no_grad():
            topt.step()
        np.testing.assert_allclose(buf.data, flat(tparams), **TOL[dtype])
    assert buf.data.dtype == dtype
    assert all(v.dtype == dtype for v in opt.state_dict().values() if isinstance(v, np.ndarray))
    assert opt.n_steps == N_STEPS


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[9]], ids=lambda c: c[0])
def test_trajectory_with_clipping_matches_torch(case, dtype):
    name, ours_kw, _ = case
    buf, _, tparams, topt = build(case, dtype)
    opt = get_optimizer(name.split("-")[0], buf, clip_value=2.0, clip_norm=3.0, **ours_kw)
    problem = Problem(buf.size, dtype)
    for _ in range(N_STEPS):
        buf.grad[...] = problem.grad(buf.data)
        set_torch_grads(tparams, problem.grad(flat(tparams)))
        opt.step()
        torch.nn.utils.clip_grad_value_(tparams, 2.0)
        torch.nn.utils.clip_grad_norm_(tparams, 3.0)
        with torch.no_grad():
            topt.step()
        np.testing.assert_allclose(buf.data, flat(tparams), **TOL[dtype])


# ---------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_by_global_norm_matches_torch(dtype, max_norm):
    buf = make_buffer(dtype)
    buf.grad[...] = np.random.default_rng(3).normal(size=buf.size)
    tparams = torch_params(buf)
    set_torch_grads(tparams, buf.grad)
    total = clip_by_global_norm(buf.grad, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, float(ttotal), **TOL[dtype])
    np.testing.assert_allclose(buf.grad, flat([t.grad for t in tparams]), **TOL[dtype])
    assert buf.grad.dtype == dtype
    if max_norm < total:
        np.testing.assert_allclose(np.linalg.norm(buf.grad.astype(np.float64)), max_norm,
                                   rtol=1e-5)


def test_clip_by_global_norm_below_threshold_is_untouched():
    g = np.array([3.0, 4.0])
    before = g.copy()
    assert clip_by_global_norm(g, 5.0 + 1e-5) == 5.0
    np.testing.assert_array_equal(g, before)


def test_clip_by_global_norm_float32_norm_accumulated_in_float64():
    g = np.full(10 ** 6, 0.1, dtype=np.float32)
    total = clip_by_global_norm(g, 1e9)
    np.testing.assert_allclose(total, math.sqrt(10 ** 6 * float(np.float32(0.1)) ** 2),
                               rtol=1e-12)


def test_clip_by_global_norm_nonfinite_follows_torch():
    for bad in (np.nan, np.inf):
        g = np.array([1.0, bad, -2.0])
        t = torch.tensor(g.copy(), requires_grad=True)
        t.grad = torch.tensor(g.copy())
        total = clip_by_global_norm(g, 1.0)
        ttotal = torch.nn.utils.clip_grad_norm_([t], 1.0)
        assert not math.isfinite(total)
        np.testing.assert_array_equal(total, float(ttotal))
        np.testing.assert_array_equal(g, t.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_clip_by_value_matches_torch(dtype):
    buf = make_buffer(dtype)
    buf.grad[...] = 2 * np.random.default_rng(4).normal(size=buf.size)
    tparams = torch_params(buf)
    set_torch_grads(tparams, buf.grad)
    out = clip_by_value(buf.grad, 0.7)
    torch.nn.utils.clip_grad_value_(tparams, 0.7)
    assert out is buf.grad
    np.testing.assert_array_equal(buf.grad, flat([t.grad for t in tparams]))
    assert np.abs(buf.grad).max() <= dtype(0.7)


@pytest.mark.parametrize("clip", [dict(clip_norm=1.5), dict(clip_value=0.4),
                                  dict(clip_value=0.4, clip_norm=0.9)])
@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
def test_optimizer_clip_equals_manual_clip_then_step(kind, clip):
    a, b = make_buffer(np.float64), make_buffer(np.float64)
    opt_a = get_optimizer(kind, a, lr=0.01, **clip)
    opt_b = get_optimizer(kind, b, lr=0.01)
    problem = Problem(a.size, np.float64)
    for _ in range(5):
        a.grad[...] = problem.grad(a.data)
        b.grad[...] = problem.grad(b.data)
        opt_a.step()
        if "clip_value" in clip:
            clip_by_value(b.grad, clip["clip_value"])
        if "clip_norm" in clip:
            norm = clip_by_global_norm(b.grad, clip["clip_norm"])
            assert opt_a.last_grad_norm == norm
        opt_b.step()
        np.testing.assert_array_equal(a.grad, b.grad)
        np.testing.assert_array_equal(a.data, b.data)


def test_clip_functions_validate():
    g = np.ones(3)
    with pytest.raises(ValueError, match="clip_value"):
        clip_by_value(g, -1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(g, float("nan"))
    with pytest.raises(TypeError):
        clip_by_value([1.0, 2.0], 1.0)
    with pytest.raises(TypeError):
        clip_by_global_norm(np.ones(3, dtype=np.int64), 1.0)


# ---------------------------------------------------------------------------
# construction and validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, name", [
    (SGD, dict(lr=-1e-9), "lr"),
    (SGD, dict(lr=-1.0), "lr"),
    (SGD, dict(lr=float("inf")), "lr"),
    (SGD, dict(lr=float("nan")), "lr"),
    (SGD, dict(momentum=-0.1), "momentum"),
    (SGD, dict(momentum=0.9, dampening=1.5), "dampening"),
    (SGD, dict(weight_decay=-1e-3), "weight_decay"),
    (SGD, dict(nesterov=True), "nesterov"),
    (SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (SGD, dict(clip_value=0.0), "clip_value"),
    (SGD, dict(clip_norm=-1.0), "clip_norm"),
    (RMSProp, dict(decay=0.0), "decay"),
    (RMSProp, dict(decay=1.0), "decay"),
    (RMSProp, dict(eps=-1e-8), "eps"),
    (RMSProp, dict(momentum=-1.0), "momentum"),
    (RMSProp, dict(weight_decay=float("nan")), "weight_decay"),
    (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (Adam, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (Adam, dict(eps=-1.0), "eps"),
    (Adam, dict(lr=-0.5), "lr"),
    (Adam, dict(weight_decay=-0.5), "weight_decay"),
])
def test_bad_hyperparameters_raise_value_error(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(make_buffer(np.float64), **kwargs)


@pytest.mark.parametrize("cls, kwargs", [
    (SGD, dict(lr="0.1")),
    (SGD, dict(lr=True)),
    (SGD, dict(momentum=0.9, nesterov=1)),
    (RMSProp, dict(centered="yes")),
    (Adam, dict(betas=0.9)),
    (Adam, dict(betas=(0.9, 0.99, 0.999))),
    (Adam, dict(amsgrad=None)),
])
def test_bad_hyperparameter_types_raise_type_error(cls, kwargs):
    with pytest.raises(TypeError):
        cls(make_buffer(np.float64), **kwargs)


def test_lr_assignment_is_validated():
    opt = SGD(make_buffer(np.float64))
    opt.lr = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.5
    opt.lr = 0.0  # as torch.optim: a warm-up schedule may start at 0
    assert opt.lr == 0.0


def test_params_may_be_object_with_params_attribute():
    class Model:
        def __init__(self):
            self.params = make_buffer(np.float32)

    model = Model()
    opt = Adam(model)
    assert opt.params is model.params
    with pytest.raises(TypeError, match="ParameterBuffer"):
        Adam(object())
    with pytest.raises(TypeError, match="ParameterBuffer"):
        Adam(np.zeros(3))


def test_get_optimizer():
    buf = make_buffer(np.float64)
    assert type(get_optimizer("SGD", buf)) is SGD
    assert type(get_optimizer("RmsProp", buf)) is RMSProp
    opt = get_optimizer("adam", buf, lr=0.1, amsgrad=True)
    assert type(opt) is Adam and opt.lr == 0.1 and opt.amsgrad
    assert isinstance(opt, Optimizer)
    with pytest.raises(ValueError, match="adam.*rmsprop.*sgd"):
        get_optimizer("adagrad", buf)


def test_defaults():
    buf = make_buffer(np.float64)
    sgd, rms, adam = SGD(buf), RMSProp(buf), Adam(buf)
    assert (sgd.lr, sgd.momentum, sgd.dampening, sgd.nesterov, sgd.weight_decay) == \
        (0.01, 0.0, 0.0, False, 0.0)
    assert (rms.lr, rms.decay, rms.eps, rms.momentum, rms.centered) == \
        (1e-3, 0.9, 1e-6, 0.0, False)
    assert (adam.lr, adam.betas, adam.eps, adam.amsgrad) == (1e-3, (0.9, 0.999), 1e-8, False)
    assert "RMSProp(" in repr(rms)


def test_zero_grad_and_step_updates_in_place():
    buf = make_buffer(np.float32)
    data, grad = buf.data, buf.grad
    buf.grad[...] = 1.0
    opt = SGD(buf, lr=0.5)
    before = buf.data.copy()
    opt.step()
    np.testing.assert_array_equal(buf.data, before - np.float32(0.5))
    assert buf.data is data and buf.grad is grad
    assert buf["W"].base is not None  # views still alias the buffer
    opt.zero_grad()
    assert not buf.grad.any()


def test_state_is_allocated_at_init_with_buffer_dtype():
    buf = make_buffer(np.float32)
    assert set(SGD(buf).state_dict()) == {"step", "lr"}
    assert set(SGD(buf, momentum=0.9).state_dict()) == {"step", "lr", "momentum_buffer"}
    assert set(RMSProp(buf, centered=True, momentum=0.5).state_dict()) == \
        {"step", "lr", "square_avg", "grad_avg", "momentum_buffer"}
    state = Adam(buf, amsgrad=True).state_dict()
    assert set(state) == {"step", "lr", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert all(state[k].dtype == np.float32 and state[k].shape == (buf.size,)
               for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))


# ---------------------------------------------------------------------------
# state dict
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_state_dict_round_trip_reproduces_next_step(case, dtype):
    name, kwargs, _ = case
    kind = name.split("-")[0]
    problem = Problem(make_buffer(dtype).size, dtype)
    a = make_buffer(dtype)
    opt_a = get_optimizer(kind, a, **kwargs)
    for _ in range(4):
        a.grad[...] = problem.grad(a.data)
        opt_a.step()
    state = opt_a.state_dict()
    for value in state.values():
        assert isinstance(value, (int, float, np.ndarray)) and not isinstance(value, bool)

    # through an npz file without pickle
    f = io.BytesIO()
    np.savez(f, **state)
    f.seek(0)
    with np.load(f, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}

    b = ParameterBuffer(SPECS, dtype=dtype)
    b.load_state_dict(a.state_dict())
    opt_b = get_optimizer(kind, b, **kwargs)
    opt_b.load_state_dict(loaded)
    assert opt_b.n_steps == 4

    # the state dict holds copies
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            v[...] = 123.0

    for _ in range(2):
        a.grad[...] = problem.grad(a.data)
        b.grad[...] = problem.grad(b.data)
        opt_a.step()
        opt_b.step()
        np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_validates():
    buf = make_buffer(np.float64)
    opt = Adam(buf)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        Adam(buf, amsgrad=True).load_state_dict(state)
    with pytest.raises(ValueError, match="exp_avg"):
        SGD(buf).load_state_dict(state)
    bad = dict(state, exp_avg=np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(dict(state, step=-1))
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(dict(state, lr=-1.0))
    opt.load_state_dict(dict(state, lr=0.25, step=7))
    assert opt.lr == 0.25 and opt.n_steps == 7
    # every value checked before any is written (a bad array after lr changed lr)
    opt.load_state_dict(dict(state, lr=0.25, step=7, exp_avg=np.full(buf.size, 0.5)))
    saved = opt.state_dict()
    for key, value, error, match in [
            ("exp_avg", np.array(["a"] * buf.size), TypeError, "'exp_avg'"),
            ("exp_avg", np.full(buf.size, 1 + 2j), TypeError, "complex"),
            ("exp_avg", np.full(buf.size, np.nan), ValueError, "NaN"),
            ("exp_avg_sq", -np.ones(buf.size), ValueError, "negative"),
            ("lr", "0.5", TypeError, "'lr'"), ("lr", np.inf, ValueError, "'lr'")]:
        with pytest.raises(error, match=match):
            opt.load_state_dict({**state, "lr": 0.5, "step": 3, key: value})
        after = opt.state_dict()
        assert after["lr"] == 0.25 and after["step"] == 7
        for name in saved:
            np.testing.assert_array_equal(after[name], saved[name])
    f32 = Adam(make_buffer(np.float32))
    with pytest.raises(ValueError, match="too large for float32"):
        f32.load_state_dict(dict(f32.state_dict(), exp_avg=np.full(buf.size, 1e300)))


def test_update_functions_are_looked_up_at_call_time(monkeypatch):
    import cyrnn.optim as optim

    calls = []
    original = optim._rmsprop_update

    def spy(*args):
        calls.append(len(args))
        return original(*args)

    monkeypatch.setattr(optim, "_rmsprop_update", spy)
    buf = make_buffer(np.float64)
    RMSProp(buf).step()
    assert calls == [12]
