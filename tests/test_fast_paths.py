"""Fast paths of the Cython backend: vectorised float32 activations, the own
small-GEMM kernels, blocked BLAS calls, and the single-validation training step."""

import numpy as np
import pytest
from scipy.special import expit

from cyrnn.backends import Cell, available, get_backend

pytestmark = pytest.mark.skipif("cython" not in available(), reason="Cython backend not built")


def _activation(act, x, dtype=np.float32, H=64):
    """act(x) through the kernel: a SimpleRNN step with zero recurrent weights."""
    cy = get_backend("cython")
    n = -(-x.size // H)
    xx = np.zeros(n * H, dtype)
    xx[:x.size] = x
    _, h_T, _, _ = cy.forward(Cell("rnn", activation=act), xx.reshape(1, n, H),
                              np.zeros((H, H), dtype), np.zeros(H, dtype),
                              np.zeros((n, H), dtype))
    return h_T.reshape(-1)[:x.size]


@pytest.mark.parametrize("H", [64, 37])  # 37: rows end inside a 16-lane vector
@pytest.mark.parametrize("act, ref", [("tanh", np.tanh), ("sigmoid", expit)])
def test_float32_activations_accurate_saturating_nan(act, ref, H):
    _check_float32_activation(act, ref, H)


def _check_float32_activation(act, ref, H):
    x = np.concatenate([np.linspace(-100, 100, 200001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 0.4, -0.4, 88.5, -88.5, 1e4,
                                    -1e4, np.inf, -np.inf, np.nan])])
    y32 = _activation(act, x, H=H)
    y = y32.astype(np.float64)
    exact = ref(x.astype(np.float64))
    # a value's bits do not depend on where it lies: the array functions take several
    # vectors at once, then one at a time, the last one masked
    part = np.concatenate([x[:4099], x[-13:]])
    ref32 = np.concatenate([y32[:4099], y32[-13:]])
    for k in (1, 8, 29):
        moved = _activation(act, np.concatenate([np.zeros(k, np.float32), part]), H=H)
        assert np.array_equal(moved[k:], ref32, equal_nan=True)
    finite = np.isfinite(x)
    err = np.abs(y - exact)[finite]
    assert err.max() < 2e-7  # a few float32 ulp of values <= 1
    normal = np.abs(exact[finite]) > 1e-30
    assert (err[normal] / np.abs(exact[finite][normal])).max() < 1e-6
    assert np.isnan(y[np.isnan(x)]).all()
    big = np.abs(x) > 60
    if act == "tanh":
        assert np.array_equal(y[big], np.sign(x[big]))
    else:
        assert (y[x > 60] == 1).all() and (y[x < -90] == 0).all()


@pytest.mark.parametrize("level", ["0", "1"], ids=["baseline", "avx2"])
def test_float32_activations_below_avx512(tmp_path, level):
    """The same checks on the AVX2 array functions and the portable ones (the
    AVX-512 ones take the division as a reciprocal and a Newton step), with
    CYRNN_PGEMM_ISA lowering the pick in a fresh process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cyrnn
    from cyrnn import _cython_kernels as kernels

    if level == "1" and kernels.pgemm_isa() == "baseline":
        pytest.skip("this CPU has no AVX2 + FMA")
    root = str(Path(cyrnn.__file__).resolve().parent.parent)
    tests = str(Path(__file__).resolve().parent)
    code = ("from test_fast_paths import _check_float32_activation as c\n"
            "import numpy as np\nfrom scipy.special import expit\n"
            "c('tanh', np.tanh, 37); c('sigmoid', expit, 37); print('ok')")
    env = dict(os.environ, CYRNN_PGEMM_ISA=level,
               PYTHONPATH=os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def _gate_activation(ract, x, dtype):
    """ract(x) through the kernel: an LSTM step with gate activation ``ract``, linear
    activation, zero state and weights, a_i = x, a_g = 1, a_o large: h = ract(x)."""
    cy = get_backend("cython")
    H = 64
    n = -(-x.size // H)
    xi = np.zeros(n * H, dtype)
    xi[:x.size] = x
    xp = np.zeros((1, n, 4 * H), dtype)
    xp[0, :, :H] = xi.reshape(n, H)
    xp[0, :, 2 * H:3 * H] = 1
    xp[0, :, 3 * H:] = 1e4
    cell = Cell("lstm", "linear", recurrent_activation=ract)
    _, h_T, _, _ = cy.forward(cell, xp, np.zeros((4 * H, H), dtype), np.zeros(4 * H, dtype),
                              np.zeros((n, H), dtype), np.zeros((n, H), dtype))
    return h_T.reshape(-1)[:x.size]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "linear", "hard_sigmoid"])
def test_other_activations_equal_the_reference(act, dtype):
    """relu, linear and Keras 3's hard sigmoid in the kernels: the reference's values in
    the working precision, NaN propagating."""
    from cyrnn.backends.numpy_backend import _ACTIVATIONS

    x = np.concatenate([np.linspace(-8, 8, 4001), [0.0, -0.0, -3.0, 3.0, 1e30, -1e30,
                                                   np.inf, -np.inf, np.nan]]).astype(dtype)
    y = (_gate_activation(act, x, dtype) if act == "hard_sigmoid"  # a gate activation
         else _activation(act, x, dtype))
    finite = np.isfinite(x)  # (inf + 0 * inf in the step's products is NaN)
    with np.errstate(invalid="ignore"):
        expected = _ACTIVATIONS[act][0](x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[finite], expected[finite])
    assert np.isnan(y[np.isnan(x)]).all()


CELLS = {"rnn": Cell("rnn"), "rnn-relu": Cell("rnn", activation="relu"),
         "lstm": Cell("lstm"), "gru": Cell("gru"), "gru-cho": Cell("gru", reset_after=False),
         "lstm_peephole-hard": Cell("lstm", peephole=True,
                                    recurrent_activation="hard_sigmoid"),
         "gru-cho-linear": Cell("gru", "linear", reset_after=False)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("N", [1, 3, 6])
def test_small_gemm_kernels_match_blas(name, dtype, N):
    """The own small-GEMM kernels (odd H, gate rows not a multiple of 4) give the
    BLAS path's results."""
    from cyrnn import _cython_kernels as k
    cell = CELLS[name]
    T, H = 5, 13
    GH = cell.n_gates * H
    rng = np.random.default_rng(N)
    xp = rng.standard_normal((T, N, GH)).astype(dtype)
    w = (rng.standard_normal((GH, H)) * 0.5).astype(dtype)
    b = rng.standard_normal(GH).astype(dtype)
    mask = np.ones((T, N), np.uint8)
    mask[1, 0] = 0
    lstm, gru = cell.has_cell_state, cell.kind == "gru"
    peep = (rng.standard_normal((3, H)) * 0.5).astype(dtype) if cell.peephole else None
    dh_T = rng.standard_normal((N, H)).astype(dtype)
    dh_seq = rng.standard_normal((T, N, H)).astype(dtype)
    results = []
    for small in (0, 64):
        h = np.zeros((T + 1, N, H), dtype)
        h[0] = 0.3
        c = np.full((T + 1, N, H), 0.2, dtype) if lstm else None
        gates = np.empty((T, N, GH), dtype)
        aux = np.empty((T, N, H), dtype) if gru else None
        hs = np.empty((T, N, H), dtype)
        k.forward(*cell.codes, True, xp, w, b, peep, mask, h, c, gates, aux, hs,
                  np.empty((N, GH), dtype), small)
        dxp, dgh = np.zeros((T, N, GH), dtype), np.zeros((T, N, GH), dtype)
        dh0 = np.empty((N, H), dtype)
        dc0 = np.empty((N, H), dtype) if lstm else None
        dw, db = np.empty((GH, H), dtype), np.empty(GH, dtype)
        dpeep = None if peep is None else np.empty((3, H), dtype)
        k.backward(*cell.codes, -1, h, c, gates, aux, w, peep, mask, dh_seq, dh_T,
                   dh_T if lstm else None, dxp, dgh, dh0, dc0, np.empty((5, N, H), dtype),
                   np.empty((N, GH), dtype), np.empty(N, np.int64), np.empty(N, np.uint8),
                   dw, db, dpeep, small)
        results.append([hs, h, gates, dxp, dh0, dw, db] + ([dc0] if lstm else [])
                       + ([dpeep] if peep is not None else []))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 5), (300, 200, 50), (2000, 64, 30), (64, 2000, 30),
                                   (1, 3000, 300)])
def test_blocked_matmul(dtype, shape):
    """matmul splits mid-sized GEMMs into blocks; the result is one GEMM's."""
    from cyrnn import _cython_kernels as k
    M, N, K = shape
    rng = np.random.default_rng(0)
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
            b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
            out = rng.standard_normal((M, N)).astype(dtype)
            expected = (a.T if ta else a) @ (b.T if tb else b) + 0.5 * out
            k.matmul(a, ta, b, tb, out, 0.5)
            np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                       atol=1e-3 if dtype == np.float32 else 1e-10)


def test_train_step_validates_before_state_changes():
    import cyrnn
    from cyrnn.optim import RMSProp
    from cyrnn.training import train_step
    model = cyrnn.Sequential([cyrnn.LSTM(3, 5, return_sequences=False, random_state=0),
                              cyrnn.Dense(5, 1, random_state=0)])
    opt = RMSProp(model, lr=1e-3, clip_norm=1.0)
    x = np.zeros((2, 4, 3), np.float32)
    y = np.zeros((2, 1), np.float32)
    train_step(model, opt, "mse", x, y)
    model.params.grad[...] = 7.0
    data = model.params.data.copy()
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_step(model, opt, "mse", bad, y)
    with pytest.raises(ValueError, match="features per step"):
        train_step(model, opt, "mse", np.zeros((2, 4, 2), np.float32), y)
    assert (model.params.grad == 7.0).all() and np.array_equal(model.params.data, data)


@pytest.mark.parametrize("level, small", [(0, None), (1, None), (None, "0"), (None, "7")],
                         ids=["baseline", "avx2", "blas-small-gemm", "own-small-gemm"])
def test_bit_exact_paths_below_the_native_instruction_set(tmp_path, level, small):
    """Below AVX-512 the unpacked path's recurrent products take the own kernels (not
    BLAS) and the packed kernels other tiles (AVX2: 6 rows, a last tile of 4): stepping
    must still equal the whole sequence at every batch size, and the weight-gradient
    layouts must still agree, bit for bit. The suite runs those tests on the CPU's own
    pick; here they run again in a fresh process with CYRNN_PGEMM_ISA lowering it, and
    with CYRNN_SMALL_GEMM_ROWS sending every small product to BLAS (0) or to the own
    kernels (7) instead of the CPU's rule."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cyrnn
    from cyrnn import _cython_kernels as kernels

    best = ["baseline", "avx2", "avx512f"].index(kernels.pgemm_isa())
    if level is not None and level >= best:
        pytest.skip("the CPU's own pick: the suite covers it")
    if small == "7" and best < 2:
        pytest.skip("without AVX-512 the rule is this limit: the suite covers it")
    here = Path(__file__).resolve().parent
    tests = [f"{here / 'test_scoring.py'}::test_step_equals_long_sequences",
             f"{here / 'test_scoring.py'}::test_step_equals_whole_on_weights_that_stream",
             f"{here / 'test_cython_kernels.py'}::test_weight_gradient_layouts_agree_to_the_bit"]
    env = dict(os.environ, PYTHONPATH=str(Path(cyrnn.__file__).resolve().parent.parent))
    if level is not None:
        env["CYRNN_PGEMM_ISA"] = str(level)
    else:
        env["CYRNN_SMALL_GEMM_ROWS"] = small
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-1000:]
