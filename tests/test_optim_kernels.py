"""The compiled optimizer/clipping kernels (the Cython extension's and Numba's)
against the NumPy reference of cyrnn.optim.

Every optimizer configuration runs 20 steps twice from the same state, once with
the reference update function and once with the compiled kernel (float64 within
rtol 1e-12, float32 within 1e-6; the kernels aim at bit-for-bit equality). NaN
gradients must propagate. Clipping kernels match the NumPy passes, non-finite
norms included, and the optimizers dispatch to the kernels (the extension's first,
so a Cython training loop never imports Numba).
"""

import importlib
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cyrnn import optim
from cyrnn.params import ParameterBuffer

MODULES = {"cython": "cyrnn.backends.cython_backend", "numba": "cyrnn._optim_kernels"}


@pytest.fixture(params=list(MODULES))
def kernels(request):
    """The module holding one implementation's five kernels (skipped where absent)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    try:
        return importlib.import_module(MODULES[request.param])
    except ImportError as exc:
        pytest.skip(f"{request.param} kernels unavailable: {exc}")

N_STEPS = 20
RTOL = {np.float64: 1e-12, np.float32: 1e-6}
DTYPES = [np.float64, np.float32]
SIZE = 257  # odd, not a multiple of any vector width

# (kind, hyperparameters of the update function) -- every branch of each rule.
CONFIGS = [
    ("sgd", dict(lr=0.02, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)),
    ("sgd", dict(lr=0.02, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.1)),
    ("sgd", dict(lr=0.02, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)),
    ("sgd", dict(lr=0.02, momentum=0.8, dampening=0.3, nesterov=False, weight_decay=0.05)),
    ("sgd", dict(lr=0.02, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0)),
    ("sgd", dict(lr=0.02, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.0, centered=False,
                     weight_decay=0.0)),
    ("rmsprop", dict(lr=0.01, alpha=0.95, eps=1e-5, momentum=0.7, centered=False,
                     weight_decay=0.0)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.0, centered=True,
                     weight_decay=0.05)),
    ("rmsprop", dict(lr=0.01, alpha=0.95, eps=1e-6, momentum=0.5, centered=True,
                     weight_decay=0.0)),
    ("rmsprop", dict(lr=0.01, alpha=0.3, eps=1e-6, momentum=0.5, centered=True,
                     weight_decay=0.1)),  # 1 - alpha >= 0.5: lerp's other branch
    ("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  amsgrad=False)),
    ("adam", dict(lr=0.01, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.1,
                  amsgrad=False)),  # 1 - beta1 >= 0.5: lerp's other branch
    ("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  amsgrad=True)),
    ("adam", dict(lr=0.01, beta1=0.8, beta2=0.9, eps=0.0, weight_decay=0.02, amsgrad=True)),
]
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(CONFIGS)]


def _state_names(kind, hp):
    if kind == "sgd":
        return ["momentum_buf"]
    if kind == "rmsprop":
        return ["square_avg", "grad_avg", "momentum_buf"]
    return ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]


def _used(kind, name, hp):
    """Whether a state array is used (else it is passed empty, as the classes do)."""
    if name == "momentum_buf":
        return hp["momentum"] != 0.0
    if name == "grad_avg":
        return hp["centered"]
    if name == "max_exp_avg_sq":
        return hp["amsgrad"]
    return True


class Run:
    """Parameters, state and a deterministic gradient field, for one update function."""

    def __init__(self, kind, hp, dtype, seed=0):
        rng = np.random.default_rng(seed)
        self.kind, self.hp, self.dtype = kind, hp, dtype
        self.param = rng.normal(size=SIZE).astype(dtype)
        self.A = (rng.normal(size=SIZE) * 0.5).astype(dtype)
        self.c = rng.normal(size=SIZE).astype(dtype)
        self.state = {name: np.zeros(SIZE if _used(kind, name, hp) else 0, dtype)
                      for name in _state_names(kind, hp)}
        self.work = np.zeros((2, SIZE), dtype)
        self.n = 0

    def grad(self):
        p = self.param
        return p * p * p + self.A * p + self.c

    def step(self, fn, grad=None):
        g = self.grad() if grad is None else grad
        st, hp = self.state, self.hp
        if self.kind == "sgd":
            fn(self.param, g, st["momentum_buf"], self.work, hp["lr"], hp["momentum"],
               hp["dampening"], hp["nesterov"], hp["weight_decay"], self.n == 0)
        elif self.kind == "rmsprop":
            fn(self.param, g, st["square_avg"], st["grad_avg"], st["momentum_buf"], self.work,
               hp["lr"], hp["alpha"], hp["eps"], hp["momentum"], hp["centered"],
               hp["weight_decay"])
        else:
            fn(self.param, g, st["exp_avg"], st["exp_avg_sq"], st["max_exp_avg_sq"], self.work,
               self.n + 1, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"],
               hp["amsgrad"])
        self.n += 1


def _functions(kernels, kind):
    reference = optim._REFERENCE[f"_{kind}_update"]
    compiled = getattr(kernels, f"{kind}_update")
    return reference, compiled


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind, hp", CONFIGS, ids=IDS)
def test_update_matches_reference_over_20_steps(kernels, kind, hp, dtype):
    reference, compiled = _functions(kernels, kind)
    ref, got = Run(kind, hp, dtype), Run(kind, hp, dtype)
    for _ in range(N_STEPS):
        ref.step(reference)
        got.step(compiled)
        np.testing.assert_allclose(got.param, ref.param, rtol=RTOL[dtype], atol=0)
        for name in ref.state:
            np.testing.assert_allclose(got.state[name], ref.state[name], rtol=RTOL[dtype],
                                       atol=0, err_msg=name)
    assert got.param.dtype == dtype
    assert all(v.dtype == dtype for v in got.state.values())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind, hp", [c for c in CONFIGS if c[0] != "sgd"],
                         ids=[i for i, c in zip(IDS, CONFIGS) if c[0] != "sgd"])
def test_cython_rmsprop_and_adam_equal_reference_bit_for_bit(kind, hp, dtype):
    """The extension's RMSProp and Adam loops are C with target clones, multiply-add
    contraction off: the vector code of every instruction set rounds as NumPy's passes."""
    kernels = importlib.import_module(MODULES["cython"])
    reference, compiled = _functions(kernels, kind)
    ref, got = Run(kind, hp, dtype), Run(kind, hp, dtype)
    for _ in range(N_STEPS):
        ref.step(reference)
        got.step(compiled)
    np.testing.assert_array_equal(got.param, ref.param)
    for name in ref.state:
        np.testing.assert_array_equal(got.state[name], ref.state[name], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind, hp", CONFIGS, ids=IDS)
def test_nan_gradient_propagates(kernels, kind, hp, dtype):
    """A NaN gradient entry makes that parameter NaN, as in the reference; the
    other entries are unaffected."""
    reference, compiled = _functions(kernels, kind)
    ref, got = Run(kind, hp, dtype), Run(kind, hp, dtype)
    for run, fn in ((ref, reference), (got, compiled)):
        run.step(fn)
        g = run.grad()
        g[[3, 100]] = np.nan
        with np.errstate(invalid="ignore"):
            run.step(fn, g)
            run.step(fn)
    assert np.isnan(got.param[[3, 100]]).all()
    np.testing.assert_array_equal(np.isnan(got.param), np.isnan(ref.param))
    ok = ~np.isnan(ref.param)
    np.testing.assert_allclose(got.param[ok], ref.param[ok], rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_clip_by_value_kernel(kernels, dtype):
    rng = np.random.default_rng(1)
    g = (3 * rng.normal(size=1001)).astype(dtype)
    g[[5, 17]] = [np.nan, np.inf]
    g[18] = -np.inf
    expected = np.clip(g, -0.7, 0.7)
    kernels.clip_by_value_flat(g, 0.7)
    np.testing.assert_array_equal(g, expected)
    assert np.isnan(g[5]) and g[17] == dtype(0.7) and g[18] == -dtype(0.7)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e9])
def test_clip_by_global_norm_kernel(kernels, dtype, max_norm):
    rng = np.random.default_rng(2)
    g = rng.normal(size=5000).astype(dtype)
    expected = g.copy()
    norm = math.sqrt(float(np.einsum("i,i->", expected, expected, dtype=np.float64)))
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        expected *= coef
    total = kernels.clip_by_global_norm_flat(g, max_norm)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, norm, rtol=1e-13)
    np.testing.assert_allclose(g, expected, rtol=RTOL[dtype], atol=0)


def test_clip_by_global_norm_kernel_accumulates_in_float64(kernels):
    g = np.full(10 ** 6, 0.1, dtype=np.float32)
    total = kernels.clip_by_global_norm_flat(g, 1e9)
    np.testing.assert_allclose(total, math.sqrt(10 ** 6 * float(np.float32(0.1)) ** 2),
                               rtol=1e-12)


def test_clip_by_global_norm_kernel_nonfinite(kernels):
    """As the reference (and torch): a NaN norm makes every entry NaN, an
    infinite one sets finite entries to 0 and infinite ones to NaN."""
    for bad in (np.nan, np.inf):
        g = np.array([1.0, bad, -2.0])
        norm = math.sqrt(float(np.einsum("i,i->", g, g)))
        with np.errstate(invalid="ignore"):
            expected = g * (1.0 / (norm + 1e-6))
        total = kernels.clip_by_global_norm_flat(g, 1.0)
        assert not math.isfinite(total)
        np.testing.assert_array_equal(total, norm)
        np.testing.assert_array_equal(g, expected)


def test_optimizers_dispatch_to_the_kernels(monkeypatch):
    """The optimizers and clipping functions use the compiled kernels for
    float32/float64 buffers (the extension's where it is built), and give the
    reference's results."""
    kernels = optim._load_kernels()
    if not kernels:
        pytest.skip("no compiled optimizer kernels here")
    try:
        from cyrnn.backends import cython_backend
        assert kernels is cython_backend
    except ImportError:
        pass
    data = np.zeros(42)
    assert optim._compiled("adam_update", data) is kernels.adam_update
    assert optim._compiled("adam_update", data.astype(np.float16)) is None
    assert optim._compiled("adam_update", data.reshape(6, 7)[:, ::2]) is None

    def trajectory():
        b = ParameterBuffer([("w", (6, 7))], dtype=np.float64)
        b.data[...] = np.linspace(-1, 1, b.size)
        opt = optim.Adam(b, lr=0.05, amsgrad=True, clip_value=0.8, clip_norm=1.5)
        for _ in range(5):
            b.grad[...] = b.data ** 3 - 0.5
            opt.step()
        return b.data.copy(), opt.last_grad_norm

    calls = []
    for name in ("adam_update", "clip_by_value_flat", "clip_by_global_norm_flat"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    fast, fast_norm = trajectory()
    assert sorted(set(calls)) == ["adam_update", "clip_by_global_norm_flat",
                                  "clip_by_value_flat"]
    assert len(calls) == 15
    monkeypatch.setattr(optim, "_kernels", False)  # the NumPy reference path
    slow, slow_norm = trajectory()
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fast_norm, slow_norm, rtol=1e-12)


def test_kernels_check_state_sizes(kernels):
    """A state array shorter than the parameters raises (the extension's kernels) or is
    at least never written past (Numba's bounds checks are off: skipped there)."""
    if kernels.__name__.endswith("_optim_kernels"):
        pytest.skip("Numba's kernels take the arrays as the optimizers size them")
    p, g = np.zeros(10), np.ones(10)
    with pytest.raises(ValueError, match="square_avg has 3 elements"):
        kernels.rmsprop_update(p, g, np.zeros(3), np.zeros(0), np.zeros(0), None, 0.1, 0.9,
                               1e-6, 0.0, False, 0.0)
    with pytest.raises(ValueError, match="grad has 9 elements"):
        kernels.sgd_update(p, g[:9], np.zeros(0), None, 0.1, 0.0, 0.0, False, 0.0, True)
    assert not p.any()  # nothing was written before the checks


def test_cython_training_never_imports_numba(tmp_path):
    """A training loop on the Cython backend (RMSProp with both clippings) runs on the
    extension's kernels: Numba is never imported."""
    pytest.importorskip("cyrnn.backends.cython_backend")
    import cyrnn
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import cyrnn
        from cyrnn.training import train_step
        model = cyrnn.Sequential([cyrnn.LSTM(3, 8, return_sequences=False, backend="cython",
                                             random_state=0),
                                  cyrnn.Dense(8, 1, random_state=1)])
        opt = cyrnn.optim.RMSProp(model, lr=1e-2, clip_norm=1.0, clip_value=0.5)
        x = np.random.default_rng(0).normal(size=(6, 5, 3)).astype(np.float32)
        y = np.ones((6, 1), np.float32)
        losses = [train_step(model, opt, "mse", x, y) for _ in range(5)]
        assert losses[-1] < losses[0], losses
        print("numba" in sys.modules)
    """)
    # the cyrnn under test (installed in CI, built in place in a checkout)
    root = str(Path(cyrnn.__file__).resolve().parent.parent)
    env = dict(__import__("os").environ, PYTHONPATH=root)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
