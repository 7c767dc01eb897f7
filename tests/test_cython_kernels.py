"""The Cython backend against the NumPy reference (the specification).

Every cell variant, both dtypes, with and without masks (including sequences
fully masked at the start or end), every truncation regime and batch sizes 1
and 5: forward outputs, final states, the whole cache, every backward output,
and ``step``.
"""

import itertools

import numpy as np
import pytest

from cyrnn.backends import cython_backend as cy  # first: it sets the OpenMP wait policy
from cyrnn import _cython_kernels as kernels
from cyrnn.backends import Cell, available, get_backend
from cyrnn.backends import numpy_backend as ref

CELLS = {
    "rnn-tanh": Cell("rnn", "tanh"),
    "rnn-relu": Cell("rnn", "relu"),
    "rnn-sigmoid": Cell("rnn", "sigmoid"),
    "lstm": Cell("lstm"),
    "gru-reset-after": Cell("gru", reset_after=True),
    "gru-cho": Cell("gru", reset_after=False),
}
DTYPES = [np.float64, np.float32]
T = 7
H = 4


def tol(dtype, scale=1.0):
    """float64: rtol 1e-10, atol 1e-12. float32: rtol 1e-5 and atol 1e-6 taken
    relative to the array's scale (max(1, max|expected|)): sums such as dW_hh
    cancel, and both backends' float32 round-off is ~5e-7 of that scale."""
    if dtype == np.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 1e-5, "atol": 1e-6 * max(1.0, scale)}


def make_problem(cell, dtype, N, masked, seed=0, T=T, H=H):
    rng = np.random.default_rng(seed)
    GH = cell.n_gates * H
    p = {
        "xp": rng.standard_normal((T, N, GH)),
        "w_hh": rng.standard_normal((GH, H)) * 0.6,
        "b_hh": rng.standard_normal(GH) * 0.3,
        "h0": rng.standard_normal((N, H)),
        "c0": rng.standard_normal((N, H)) if cell.has_cell_state else None,
        "dh_seq": rng.standard_normal((T, N, H)),
        "dh_T": rng.standard_normal((N, H)),
        "dc_T": rng.standard_normal((N, H)) if cell.has_cell_state else None,
    }
    p = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
    mask = None
    if masked:
        mask = rng.random((T, N)) > 0.3
        mask[:2, 0] = False           # pre-padding: row 0 masked at the start
        mask[-2:, N - 1] = False      # post-padding: last row masked at the end
        mask[3, :] = False            # a step masked in every row
        if N > 2:
            mask[:, 2] = False        # a fully masked sequence
    p["mask"] = mask
    return p


def assert_close(actual, expected, dtype, what=""):
    if expected is None:
        assert actual is None, what
        return
    assert actual is not None, what
    assert actual.shape == expected.shape, what
    assert actual.dtype == dtype, what
    scale = float(np.abs(expected).max()) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol(dtype, scale))


def run_forward(backend, cell, p, keep_cache=True):
    return backend.forward(cell, p["xp"], p["w_hh"], p["b_hh"], p["h0"], p["c0"],
                           p["mask"], keep_cache)


def compare_forward(cell, dtype, p):
    expected = run_forward(ref, cell, p)
    actual = run_forward(cy, cell, p)
    for name, a, e in zip(("h_seq", "h_T", "c_T"), actual[:3], expected[:3]):
        assert_close(a, e, dtype, name)
    assert set(actual[3]) == set(expected[3])
    for key in expected[3]:
        assert_close(actual[3][key], expected[3][key], dtype, f"cache[{key!r}]")
    # Inference keeps no cache and gives the same outputs.
    inference = run_forward(cy, cell, p, keep_cache=False)
    assert inference[3] is None
    for name, a, e in zip(("h_seq", "h_T", "c_T"), inference[:3], expected[:3]):
        assert_close(a, e, dtype, "inference " + name)
    return actual[3], expected[3]


def compare_backward(cell, dtype, p, cache_cy, cache_ref, truncate, **grads):
    kw = {"dh_seq": p["dh_seq"], "dh_T": p["dh_T"], "dc_T": p["dc_T"]}
    kw.update(grads)
    expected = ref.backward(cell, cache_ref, p["w_hh"], p["mask"], truncate=truncate, **kw)
    actual = cy.backward(cell, cache_cy, p["w_hh"], p["mask"], truncate=truncate, **kw)
    for name, a, e in zip(("dxp", "dh0", "dc0", "dw_hh", "db_hh"), actual, expected):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("N", [1, 5])
@pytest.mark.parametrize("truncate", [None, 0, 2, T, T + 3])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_matches_reference(cell_name, dtype, masked, truncate, N):
    cell = CELLS[cell_name]
    p = make_problem(cell, dtype, N, masked, seed=N + 10 * masked)
    cache_cy, cache_ref = compare_forward(cell, dtype, p)
    compare_backward(cell, dtype, p, cache_cy, cache_ref, truncate)


@pytest.mark.parametrize("truncate", [None, 1])
@pytest.mark.parametrize("which", ["no_dh_seq", "no_final", "only_dc_T", "none"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_missing_gradients(cell_name, which, truncate):
    cell = CELLS[cell_name]
    dtype = np.float64
    p = make_problem(cell, dtype, 3, True, seed=3)
    cache_cy, cache_ref = compare_forward(cell, dtype, p)
    grads = {
        "no_dh_seq": {"dh_seq": None},
        "no_final": {"dh_T": None, "dc_T": None},
        "only_dc_T": {"dh_seq": None, "dh_T": None},
        "none": {"dh_seq": None, "dh_T": None, "dc_T": None},
    }[which]
    compare_backward(cell, dtype, p, cache_cy, cache_ref, truncate, **grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_step(cell_name, dtype):
    cell = CELLS[cell_name]
    for N in (1, 5):
        p = make_problem(cell, dtype, N, False, seed=N)
        expected = ref.step(cell, p["xp"][0], p["w_hh"], p["b_hh"], p["h0"], p["c0"])
        actual = cy.step(cell, p["xp"][0], p["w_hh"], p["b_hh"], p["h0"], p["c0"])
        for name, a, e in zip(("h", "c"), actual, expected):
            assert_close(a, e, dtype, name)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_noncontiguous_inputs(cell_name):
    """Strided and Fortran-ordered inputs give the same results."""
    cell = CELLS[cell_name]
    dtype = np.float64
    p = make_problem(cell, dtype, 5, True, seed=7)
    q = dict(p)
    for key in ("xp", "dh_seq"):
        # every other element of a wider array along the last axis
        wide = np.zeros(p[key].shape[:-1] + (2 * p[key].shape[-1],), dtype)
        wide[..., ::2] = p[key]
        q[key] = wide[..., ::2]
        assert not q[key].flags.c_contiguous
    for key in ("w_hh", "h0", "c0", "dh_T", "dc_T"):
        if p[key] is not None:
            q[key] = np.asfortranarray(p[key])
    q["b_hh"] = np.repeat(p["b_hh"], 2)[::2]
    q["mask"] = np.asfortranarray(p["mask"])
    expected = run_forward(ref, cell, p)
    actual = run_forward(cy, cell, q)
    for a, e in zip(actual[:3], expected[:3]):
        assert_close(a, e, dtype)
    # A cache with Fortran-ordered arrays (as another producer might hand over).
    cache_f = {k: np.asfortranarray(v) for k, v in actual[3].items()}
    for truncate in (None, 1):
        exp = ref.backward(cell, expected[3], p["w_hh"], p["mask"], p["dh_seq"],
                           p["dh_T"], p["dc_T"], truncate)
        got = cy.backward(cell, cache_f, q["w_hh"], q["mask"], q["dh_seq"],
                          q["dh_T"], q["dc_T"], truncate)
        for a, e in zip(got, exp):
            assert_close(a, e, dtype)
    s_exp = ref.step(cell, p["xp"][0], p["w_hh"], p["b_hh"], p["h0"], p["c0"])
    s_got = cy.step(cell, q["xp"][0], q["w_hh"], q["b_hh"], q["h0"], q["c0"])
    for a, e in zip(s_got, s_exp):
        assert_close(a, e, dtype)


@pytest.mark.parametrize("cell_name", ["lstm", "gru-reset-after", "gru-cho"])
def test_parallel_row_loops(cell_name):
    """A step big enough for the (OpenMP) parallel row loops, masked, truncated."""
    cell = CELLS[cell_name]
    dtype = np.float64
    N, H_big = 256, kernels.PARALLEL_MIN // 256 + 8
    assert N * H_big >= kernels.PARALLEL_MIN
    p = make_problem(cell, dtype, N, True, seed=11, T=4, H=H_big)
    cache_cy, cache_ref = compare_forward(cell, dtype, p)
    compare_backward(cell, dtype, p, cache_cy, cache_ref, None)
    compare_backward(cell, dtype, p, cache_cy, cache_ref, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_saturated_gates_stay_finite(cell_name, dtype):
    """Huge pre-activations saturate the sigmoid/tanh without overflow or NaN."""
    cell = CELLS[cell_name]
    p = make_problem(cell, dtype, 5, False, seed=5)
    p["xp"] = (np.sign(p["xp"]) * 1e4).astype(dtype)
    with np.errstate(over="ignore"):  # the reference may warn; we only compare
        cache_cy, cache_ref = compare_forward(cell, dtype, p)
    assert all(np.isfinite(v).all() for v in cache_cy.values())
    compare_backward(cell, dtype, p, cache_cy, cache_ref, None)


def test_mask_dtypes_and_degenerate_shapes():
    cell = CELLS["gru-reset-after"]
    p = make_problem(cell, np.float64, 5, True, seed=2)
    expected = run_forward(ref, cell, p)
    q = dict(p, mask=p["mask"].astype(np.int32) * 3)   # non-bool, nonzero = valid
    for a, e in zip(run_forward(cy, cell, q)[:2], expected[:2]):
        assert_close(a, e, np.float64)
    # Empty batch: handled without touching BLAS.
    empty = dict(p, xp=p["xp"][:, :0], h0=p["h0"][:0], mask=None)
    h_seq, h_T, c_T, _ = run_forward(cy, cell, empty)
    assert h_seq.shape == (T, 0, H) and h_T.shape == (0, H) and c_T is None


def test_registry_lists_cython():
    assert "cython" in available()
    assert get_backend("cython") is cy
    assert cy.NAME == "cython"
    assert isinstance(kernels.openmp_enabled(), bool)
