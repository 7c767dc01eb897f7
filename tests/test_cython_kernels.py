"""The Cython backend against the NumPy reference (the specification).

Every cell variant, both dtypes, with and without masks (including sequences
fully masked at the start or end), every truncation regime and batch sizes 1
and 5: forward outputs, final states, the whole cache, every backward output,
and ``step``.
"""

import contextlib
import itertools
import os

import numpy as np
import pytest

from cyrnn.backends import cython_backend as cy  # first: it sets the OpenMP wait policy
from cyrnn import _cython_kernels as kernels
from cyrnn.backends import Cell, available, get_backend
from cyrnn.backends import numpy_backend as ref

from kernel_harness import CELLS, DTYPES, H, T, KernelHarness, make_problem, run_forward  # noqa: E402,F401

harness = KernelHarness(cy, f32_atol=1e-6)
tol = harness.tol
assert_close = harness.assert_close
compare_forward = harness.compare_forward
compare_backward = harness.compare_backward
compare_step = harness.compare_step


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
        compare_step(cell, dtype, make_problem(cell, dtype, N, False, seed=N))


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


_CHUNKED_CHECK = r"""
import copy, sys
import numpy as np
import cyrnn
from cyrnn import _cython_kernels as kernels
from cyrnn.backends import get_backend

assert kernels.pgemm_isa() == sys.argv[1], (kernels.pgemm_isa(), sys.argv[1])
kernels._set_parallel_min_macs(0)  # the threaded row chunks, as for large problems
be = get_backend("cython")
# hidden 19: the weight gradients read dg as it lies or pack it; hidden 64 (inputs 40):
# from row strips, dW_ih in dW_hh's pass (the forward direction of the LSTMs)
for dtype, tol, D, H in ((np.float32, 2e-5, 5, 19), (np.float64, 1e-10, 5, 19),
                         (np.float32, 2e-5, 40, 64), (np.float64, 1e-10, 40, 64)):
    for Cls, kw in ((cyrnn.LSTM, {}), (cyrnn.LSTM, {"peephole": True}), (cyrnn.GRU, {}),
                    (cyrnn.GRU, {"reset_after": False}), (cyrnn.SimpleRNN, {})):
        model = cyrnn.Sequential([
            Cls(D, H, num_layers=2, bidirectional=True, backend="cython", dtype=dtype,
                random_state=0, **kw),
            cyrnn.Dense(2 * H, 3, dtype=dtype, random_state=1)])
        ref = copy.deepcopy(model)
        for layer in ref.recurrent_layers:
            layer.backend = "numpy"
        rng = np.random.default_rng(2)
        x = rng.standard_normal((37, 9, D)).astype(dtype)
        out = be.infer(model.inference_spec(), model.params.data, x)
        np.testing.assert_allclose(out, ref.forward(x, training=False), rtol=tol, atol=tol)
        out, _, _, cache = be.train_forward(model.inference_spec(), model.params.data, x)
        d_out = rng.standard_normal(out.shape).astype(dtype)
        model.zero_grad()
        dx, _, _ = be.train_backward(model.inference_spec(), model.params.data,
                                     model.params.grad, cache, d_out,
                                     model._truncations(), None, None, True)
        ref.forward(x, training=True)
        ref.zero_grad()
        dx_ref = ref.backward(d_out)
        np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(model.params.grad, ref.params.grad, rtol=tol,
                                   atol=tol * max(1.0, float(np.abs(ref.params.grad).max())))
        if dtype == np.float32:
            check_packed_weights(model, ref, x, tol)
    if H == 64:  # the gradients of these models took the strips, dW_ih in dW_hh's pass
        assert kernels._path_counts()["wgrad_strips"] > 0
        assert kernels._path_counts()["wgrad_pair"] > 0
# a step of 4+ rows reads the weights as stored (rows in the vector lanes), a whole
# sequence packs them: the same sums on every instruction set
rng = np.random.default_rng(3)
for dtype in (np.float32, np.float64):
    for Cls, kw in ((cyrnn.LSTM, {"peephole": True}), (cyrnn.GRU, {}),
                    (cyrnn.GRU, {"reset_after": False}), (cyrnn.SimpleRNN, {})):
        uni = cyrnn.Sequential([Cls(5, 19, num_layers=2, dtype=dtype, random_state=0,
                                    return_sequences=True, **kw),
                                cyrnn.Dense(19, 3, dtype=dtype, random_state=1)])
        for n in (6, 37):
            x = rng.standard_normal((n, 9, 5)).astype(dtype)
            raw0 = kernels._path_counts()["raw_forward"]
            whole, state = uni.forward(x), None
            assert kernels._path_counts()["raw_forward"] == raw0  # 9 steps: packed
            for t in range(9):
                y, state = uni.step(x[:, t], state)
                np.testing.assert_array_equal(y, whole[:, t], err_msg=f"{Cls.__name__} {n} {t}")
            assert kernels._path_counts()["raw_forward"] == raw0 + 9  # steps: as stored
# the weight gradients' three layouts give the same bits on every instruction set
for dtype in (np.float32, np.float64):
    for rows, C, K in ((700, 520, 33), (300, 13, 70), (257, 1040, 5)):
        dg = rng.standard_normal((rows, C)).astype(dtype)
        xs = rng.standard_normal((rows, K)).astype(dtype)
        res = [kernels.wgrad(dg, xs, mode) for mode in (0, 1, 2)]
        for out, bsum in res[1:]:
            np.testing.assert_array_equal(out, res[0][0])
            np.testing.assert_array_equal(bsum, res[0][1])
        np.testing.assert_allclose(res[0][0], dg.astype(np.float64).T @ xs, rtol=1e-4,
                                   atol=1e-3)
counts = kernels._path_counts()
assert counts["packed_forward"] >= 20 and counts["packed_backward"] >= 10, counts
print("ok")
"""


# Weights packed once (cyrnn.scoring's weights="packed"/"bfloat16"): single rows (the
# one-row kernels), a few rows and a chunked batch, one step and a sequence. bfloat16
# weights must equal the native kernels on the bfloat16-rounded weights bit for bit
# (float32 arithmetic in the same order); native packed ones the reference.
_PACKED_WEIGHTS_CHECK = r"""
from cyrnn.scoring import bfloat16_round

def check_packed_weights(model, ref, x, tol):
    plan = model._plan()
    spec, data = plan.spec, model.params.data
    rounded = data.copy()
    for off, size in plan.packed_weight_ranges():
        rounded[off:off + size] = bfloat16_round(data[off:off + size])
    native, bf16, on_rounded = (kernels.PackedWeights(), kernels.PackedWeights("bfloat16"),
                                kernels.PackedWeights())
    for n, T in ((1, 1), (1, 9), (2, 3), (37, 9)):
        xs = np.ascontiguousarray(x[:n, :T])
        out = kernels.infer(spec, data, xs, weights=native)
        np.testing.assert_allclose(out, ref.forward(xs, training=False), rtol=tol, atol=tol)
        a = kernels.infer(spec, data, xs, None, None, None, True, bf16)
        b = kernels.infer(spec, rounded, xs, None, None, None, True, on_rounded)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert 0.45 < bf16.nbytes / native.nbytes < 0.55, (bf16.nbytes, native.nbytes)
"""
_CHUNKED_CHECK = _CHUNKED_CHECK.replace("be = get_backend(\"cython\")\n",
                                        "be = get_backend(\"cython\")\n" + _PACKED_WEIGHTS_CHECK, 1)


def test_packed_tiles_of_every_height_give_each_row_its_own_sums():
    """The packed float32 product for 1-40 rows (the AVX-512 kernel's 12-row tiles with
    their 8- and 4-row last tiles and partial ones; AVX2's 6-row tiles; one and two
    rows the one-row kernel), panels whole and partial: every row equals that row
    alone, bit for bit, and the float64 product to rounding."""
    rng = np.random.default_rng(11)
    for K, C in [(1, 1), (3, 33), (17, 31), (64, 70), (129, 32)]:
        w = rng.normal(size=(C, K)).astype(np.float32)
        base = rng.normal(size=(40, K + 5)).astype(np.float32)
        alone = [kernels._packed_product(base[i:i + 1, :K], w) for i in range(40)]
        for n in range(1, 41):
            x = base[:n, :K]
            y = kernels._packed_product(np.ascontiguousarray(x), w)
            for i in range(n):
                np.testing.assert_array_equal(y[i:i + 1], alone[i], err_msg=f"K={K} C={C} n={n} row {i}")
            np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64),
                                       rtol=1e-5, atol=1e-5 * np.sqrt(K))


def test_packed_kernels_every_instruction_set(tmp_path):
    """The packed GEMM's instruction sets (AVX-512, AVX2, baseline: picked at run time,
    lowered by CYRNN_PGEMM_ISA) each give the reference's results on the row-chunked
    path, forward and backward, float32 and float64, and on weights packed once
    (native and bfloat16, one row included)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import cyrnn

    isas = ["baseline", "avx2", "avx512f"]
    best = isas.index(kernels.pgemm_isa())
    root = str(Path(cyrnn.__file__).resolve().parent.parent)
    for level in range(best + 1):
        env = dict(os.environ, CYRNN_PGEMM_ISA=str(level),
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable, "-c", _CHUNKED_CHECK, isas[level]], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and res.stdout.strip() == "ok", (isas[level], res.stderr)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_projection_kernels_agree_to_the_bit(dtype, rng=np.random.default_rng(7)):
    """The unpacked path's input projections: the lane-over-k kernel (steps) and the
    transposed one (whole sequences) sum in the same order, so every row gives the
    same bits whichever kernel and however many rows a call holds (stepping then
    equals the whole sequence); both are within rounding of float64 products."""
    for K in [*range(1, 20), 23, 24, 25, 31, 32, 33, 63, 64, 65, 129]:
        for R in (1, 3, 7, 8, 9, 16, 17, 33):
            x = rng.normal(size=(19, K)).astype(dtype)
            w = rng.normal(size=(R, K)).astype(dtype)
            b = rng.normal(size=R).astype(dtype)
            lanes, transposed, picked, wide, narrow = (kernels.projection(x, w, b, kern)
                                                       for kern in (0, 1, -1, 2, 3))
            np.testing.assert_array_equal(lanes, transposed, err_msg=f"K={K} R={R}")
            np.testing.assert_array_equal(lanes, picked)
            np.testing.assert_array_equal(lanes, wide, err_msg=f"K={K} R={R}")
            np.testing.assert_array_equal(lanes, narrow, err_msg=f"K={K} R={R}")
            for i in (0, 5, 18):
                np.testing.assert_array_equal(kernels.projection(x[i:i + 3], w, b),
                                              lanes[i:i + 3])
            ref_ = x.astype(np.float64) @ w.T.astype(np.float64) + b
            assert_close(lanes, ref_, dtype)
    with pytest.raises(ValueError, match="none empty"):
        kernels.projection(np.ones((2, 3), dtype), np.ones((4, 2), dtype), np.ones(4, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_weight_gradient_layouts_agree_to_the_bit(dtype, rng=np.random.default_rng(8)):
    """The packed path's weight gradients (dg^T x over every row, and dg's column
    sums for the bias): the row strips, x packed and dg packed sum every element in
    the same order, so the three layouts give the same bits; each within rounding
    of float64 products. Shapes cover partial tiles, partial reduction blocks,
    strips split into several column blocks and one-panel x."""
    for rows, C, K in [(5, 3, 1), (300, 13, 17), (700, 520, 33), (257, 64, 130),
                       (1000, 1040, 64), (600, 76, 19), (300, 2, 200), (513, 9, 40)]:
        dg = rng.normal(size=(rows, C)).astype(dtype)
        x = rng.normal(size=(rows, K)).astype(dtype)
        picked = kernels.wgrad(dg, x)
        for mode in (0, 1, 2):
            out, bsum = kernels.wgrad(dg, x, mode)
            np.testing.assert_array_equal(out, picked[0], err_msg=f"{rows} {C} {K} {mode}")
            np.testing.assert_array_equal(bsum, picked[1], err_msg=f"{rows} {C} {K} {mode}")
        assert_close(picked[0], dg.astype(np.float64).T @ x.astype(np.float64), dtype)
        assert_close(picked[1], dg.astype(np.float64).sum(axis=0), dtype)
        # a second operand in the same pass (an LSTM's dW_ih with its dW_hh): the
        # bits of each operand alone
        x2 = rng.normal(size=(rows, 32)).astype(dtype)
        for mode in (-1, 0, 1, 2):
            both = kernels.wgrad(dg, x, mode, x2)
            np.testing.assert_array_equal(both[0], picked[0])
            np.testing.assert_array_equal(both[1], picked[1])
            np.testing.assert_array_equal(both[2], kernels.wgrad(dg, x2)[0])
    with pytest.raises(ValueError, match="none empty"):
        kernels.wgrad(np.ones((2, 3), dtype), np.ones((3, 2), dtype))


@contextlib.contextmanager
def _threaded_settings(team_bytes, team_share):
    """Two threads, every batch on them (a busy machine holding nothing serial), the
    team mode's W_hh threshold and share as given; restores everything."""
    saved = (kernels.set_num_threads(2), kernels._set_parallel_min_macs(0),
             kernels.set_contention_hold(0), kernels._set_team_min_bytes(team_bytes),
             kernels._set_team_share(0))  # share 0 first: ends a hold in progress
    kernels._set_team_share(team_share)
    try:
        yield
    finally:
        kernels.set_num_threads(saved[0])
        kernels._set_parallel_min_macs(saved[1])
        kernels.set_contention_hold(saved[2])
        kernels._set_team_min_bytes(saved[3])
        kernels._set_team_share(saved[4])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["lstm", "gru", "gru_cho", "rnn_tanh", "lstm_peephole",
                                  "gru_linear_hard"])
def test_team_forward_equals_row_chunks_to_the_bit(name, dtype):
    """The team mode (recurrent products shared by columns, a barrier per step) gives
    the row-chunked path's outputs, states and gradients bit for bit, on 2 and 3
    threads, with masks, initial states and both directions; Cho's GRU keeps the row
    chunks (its two products per step)."""
    import cyrnn
    from fused_harness import CELLS

    Cls, kw = {c[0]: (c[1], c[2]) for c in CELLS}[name]
    be = get_backend("cython")
    model = cyrnn.Sequential([Cls(6, 40, num_layers=2, bidirectional=True, backend="cython",
                                  dtype=dtype, random_state=3, return_sequences=True, **kw)])
    rng = np.random.default_rng(5)
    N, T = 37, 9
    x = rng.standard_normal((N, T, 6)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)
    d_out = rng.standard_normal((N, T, 80)).astype(dtype)
    runs, teams = {}, {}
    with _threaded_settings(1e18, 0):  # share 0: a busy machine turns nothing off
        for mode, nthreads in (("rows", 2), ("team", 2), ("team", 3)):
            kernels.set_num_threads(nthreads)
            kernels._set_team_min_bytes(0 if mode == "team" else 1e18)
            start = kernels._path_counts()["team_forward"]
            mask = np.arange(T)[None, :] < lengths[:, None]
            spec = model.inference_spec()
            out, h_n, c_n, cache = be.train_forward(spec, model.params.data, x, mask=mask)
            model.zero_grad()
            dx, dh0, _ = be.train_backward(spec, model.params.data, model.params.grad, cache,
                                           d_out, model._truncations(), None, None, True)
            runs[(mode, nthreads)] = (out, h_n, dx, dh0, model.params.grad.copy(),
                                      be.infer(spec, model.params.data, x, mask=mask))
            teams[(mode, nthreads)] = kernels._path_counts()["team_forward"] - start
    assert teams[("rows", 2)] == 0
    assert teams[("team", 2)] == teams[("team", 3)] == (0 if name == "gru_cho" else 2 * 2)
    for key in (("team", 2), ("team", 3)):
        for a, b in zip(runs[("rows", 2)], runs[key]):
            np.testing.assert_array_equal(a, b)


def test_team_mode_steps_aside_after_a_stalled_region():
    """A team region of 1 ms or more whose threads worked less than TEAM_SHARE of
    their time (here impossible to reach: share 100) turns the team mode off for its
    hold (after the first 0.1 s of the process's team regions, which are not judged);
    the next calls take the row chunks, with the same results; share 0 ends the
    hold."""
    import cyrnn

    be = get_backend("cython")
    # regions of a few ms each
    model = cyrnn.Sequential([cyrnn.LSTM(16, 256, backend="cython", random_state=3)])
    x = np.random.default_rng(5).standard_normal((64, 40, 16)).astype(np.float32)
    spec = model.inference_spec()
    with _threaded_settings(0, 100.0):
        counts, outs = [], []
        while len(counts) < 200:
            start = kernels._path_counts()["team_forward"]
            outs.append(be.infer(spec, model.params.data, x))
            counts.append(kernels._path_counts()["team_forward"] - start)
            if kernels.contention_state()["team_held"] > 0:
                break
        for _ in range(2):
            start = kernels._path_counts()["team_forward"]
            outs.append(be.infer(spec, model.params.data, x))
            counts.append(kernels._path_counts()["team_forward"] - start)
        held = kernels.contention_state()["team_held"]
        share = kernels.contention_state()["team_share"]
        kernels._set_team_share(0.0)
        assert kernels.contention_state()["team_held"] == 0
        start = kernels._path_counts()["team_forward"]
        outs.append(be.infer(spec, model.params.data, x))
        counts.append(kernels._path_counts()["team_forward"] - start)
    assert counts[:-3] == [1] * (len(counts) - 3) and len(counts) < 200
    assert counts[-3:] == [0, 0, 1]
    assert 0 < held <= 2.0 and 0 <= share <= 1
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_on_one_thread():
    """GNU OpenMP's thread pool does not survive fork: a parallel region in the child
    of a parent that ran one hung (a multiprocessing pool, a pre-forking server after
    a warm-up call). A child forked after the parent ran one runs every loop on its
    calling thread: row chunks (64 rows) and the small-batch team (one row, a 1 MB
    W_hh) give the parent's results there, and the child reports one thread."""
    import signal
    import time
    import warnings

    import cyrnn

    chunked = cyrnn.Sequential([cyrnn.LSTM(8, 64, random_state=0)])
    big = cyrnn.LSTM(8, 256, num_layers=2, random_state=1)
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((64, 30, 8)).astype(np.float32)
    x1 = rng.standard_normal((1, 5, 8)).astype(np.float32)
    with _threaded_settings(2 * 1024 * 1024, 0):
        small = kernels._set_small_team_min_bytes(0)
        try:
            start = kernels._path_counts()
            y64 = chunked.forward(x64)
            y1 = big.forward(x1, training=False)[0]
            end = kernels._path_counts()
            assert end["threaded_regions"] > start["threaded_regions"]  # the parent's pool ran
            if kernels.own_small_gemm(1, 4 * 256 * 256 * 4, 4):
                assert end["small_team_forward"] > start["small_team_forward"]
            with warnings.catch_warnings():  # Python 3.12+: fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: no pytest machinery, exit status only
                code = 1
                try:
                    ok = (kernels.get_num_threads() == 1
                          and np.array_equal(chunked.forward(x64), y64)
                          and np.array_equal(big.forward(x1, training=False)[0], y1))
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
        finally:
            kernels._set_small_team_min_bytes(small)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("peephole", [False, True], ids=["lstm", "peephole"])
def test_lstm_backward_with_its_own_dgh_zeroes_it(monkeypatch, peephole):
    """The full LSTM sweep writes its gate gradients straight into dxp only when no dgh
    is given; a caller that passes one for an LSTM (the kernel allows it) gets dxp and
    dgh zeroed first and the same gradients, whatever the arrays held before."""
    cell = Cell("lstm", peephole=peephole)
    p = make_problem(cell, np.float64, 5, True, T=6, H=7)
    if peephole:
        p["peep"] = np.random.default_rng(2).standard_normal((3, 7))
    cache = run_forward(cy, cell, p)[3]
    plain = cy.backward(cell, cache, p["w_hh"], p["mask"], p["dh_seq"], p["dh_T"],
                        p["dc_T"], None, peep=p.get("peep"))
    real = kernels.backward
    seen = {}

    def with_garbage_dgh(*args):
        args = list(args)
        dxp = args[-11]  # dxp, dgh, dh0, dc0, work, dg, budget, valid, dw_hh, db_hh, dpeep
        assert args[-10] is None and dxp.ndim == 3
        dxp[...] = np.nan
        seen["dgh"] = np.full_like(dxp, np.nan)
        args[-10] = seen["dgh"]
        return real(*args)

    monkeypatch.setattr(cy._k, "backward", with_garbage_dgh)
    got = cy.backward(cell, cache, p["w_hh"], p["mask"], p["dh_seq"], p["dh_T"],
                      p["dc_T"], None, peep=p.get("peep"))
    for a, b in zip(got, plain):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seen["dgh"], plain[0], rtol=1e-12, atol=1e-12)


def test_row_thread_setting():
    """cyrnn.set_num_threads reaches the row-chunked path; results do not depend on it
    (each row is computed by one thread, in the same order, whatever the partition)."""
    import cyrnn
    from cyrnn import threads

    be = get_backend("cython")
    model = cyrnn.Sequential([cyrnn.GRU(6, 24, num_layers=2, backend="cython",
                                        dtype=np.float64, random_state=3, bptt_truncate=2)])
    x = np.random.default_rng(4).standard_normal((41, 7, 6))
    # output gradients on a few rows and steps only: truncated BPTT skips the sources
    # that are zero in the whole batch, never per chunk
    d_out = np.zeros((41, 7, 24))
    d_out[3, 2] = 1.0
    d_out[30:, 5] = -0.5
    before = kernels.set_num_threads(0)
    min_macs = kernels._set_parallel_min_macs(0)
    numba = pytest.importorskip("numba") if "numba" in available() else None
    numba_before = numba.get_num_threads() if numba is not None else None
    try:
        outs = []
        for n in (1, 2, 3):
            threads.set_num_threads(n)
            assert kernels.get_num_threads() == min(n, threads._cpu_limit())  # capped there
            assert threads._status()["cython_openmp_set"] is True
            kernels.set_num_threads(n)  # n threads even on fewer cores: results agree
            spec = model.inference_spec()
            out, h_n, c_n, cache = be.train_forward(spec, model.params.data, x)
            model.zero_grad()
            dx, dh0, _ = be.train_backward(spec, model.params.data, model.params.grad,
                                           cache, d_out, model._truncations(),
                                           None, None, True)
            outs.append((out, h_n, dx, dh0, model.params.grad.copy(),
                         be.infer(spec, model.params.data, x)))
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError):
            kernels.set_num_threads(-1)
    finally:
        kernels.set_num_threads(before)
        kernels._set_parallel_min_macs(min_macs)
        if numba is not None:  # threads.set_num_threads also set Numba's count
            numba.set_num_threads(numba_before)
        if threads._blas_limiter is not None:
            threads._blas_limiter.restore_original_limits()
        threads._blas_limiter = None
        threads._num_threads = None


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
    harness.check_mask_dtypes_and_empty_batch()


def test_registry_lists_cython():
    assert "cython" in available()
    assert get_backend("cython") is cy
    assert cy.NAME == "cython"
    assert isinstance(kernels.openmp_enabled(), bool)


def test_generated_constants_match_the_table():
    """src/_constants.pxi is generated from cyrnn/cells.py and cyrnn/backends/spec.py:
    the compiled module's codes, sizes, spec layout, messages and per-cell properties
    are the table's."""
    from cyrnn import cells
    from cyrnn.backends import spec

    g = kernels.GENERATED_CONSTANTS
    for row in cells.CELL_TABLE:
        assert g[f"CELL_{row.name.upper()}"] == row.code
    for a in cells.ACTIVATION_TABLE:
        assert g[f"ACT_{a.name.upper()}"] == a.code
    assert (g["N_CELLS"], g["N_ACTIVATIONS"]) == (cells.N_CELLS, cells.N_ACTIVATIONS)
    assert {k: g[k] for k in spec.constants()} == spec.constants()
    assert kernels.GENERATED_CELLS == tuple(
        (row.n_gates, int(row.has_cell_state), int(row.has_aux), row.n_peepholes)
        for row in cells.CELL_TABLE)
    assert kernels.SPEC_ERRORS == spec.ERRORS
    for name in ("INFER_SPEC_VERSION", "INFER_SPEC_WIDTH", "INFER_SPEC_HEADER"):
        assert not hasattr(kernels, name)  # the hand-written copies are gone


@pytest.mark.parametrize("n", [1, 40], ids=["one-row", "row-chunks"])
def test_denormals_flushed_inside_calls_only(n):
    """The compiled calls flush denormal numbers to zero (a gradient decaying through
    many steps would otherwise slow every multiply-add) and put the caller's
    floating-point mode back: NumPy still produces denormals afterwards."""
    import cyrnn

    tiny = np.float32(1e-38)
    assert tiny / np.float32(10) > 0  # a denormal, before
    # a linear SimpleRNN whose every output is 1e-20 * 1e-20 = 1e-40, a float32 denormal
    layer = cyrnn.SimpleRNN(2, 3, activation="linear", backend="cython", dtype=np.float32,
                            random_state=0)
    layer.params.data[...] = 0
    layer.params["weight_ih_l0"][...] = 1e-20
    model = cyrnn.Sequential([layer])
    x = np.full((n, 10, 2), 1e-20, np.float32)
    ref = cyrnn.SimpleRNN(2, 3, activation="linear", backend="numpy", dtype=np.float32)
    ref.params.data[...] = layer.params.data
    assert np.all(ref.forward(x, training=False)[0] > 0)  # the reference keeps denormals
    be = get_backend("cython")
    out = be.infer(model.inference_spec(), model.params.data, x)
    np.testing.assert_array_equal(out, 0)  # flushed inside the call
    out, _, _, cache = be.train_forward(model.inference_spec(), model.params.data, x)
    np.testing.assert_array_equal(out, 0)
    be.train_backward(model.inference_spec(), model.params.data, model.params.grad, cache,
                      np.ones_like(out), model._truncations(), None, None, False)
    assert tiny / np.float32(10) > 0  # and after


def test_scratch_blocks_reused_and_released():
    """Calls reuse freed scratch blocks (uninitialised memory: nothing may depend on
    its contents); results are the same with the cache emptied between calls."""
    import cyrnn

    be = get_backend("cython")
    model = cyrnn.Sequential([cyrnn.LSTM(16, 300, backend="cython", dtype=np.float32,
                                         random_state=0, return_sequences=False)])
    x = np.random.default_rng(0).standard_normal((64, 20, 16)).astype(np.float32)
    spec = model.inference_spec()
    outs = []
    for release in (True, False, False):
        if release:
            kernels._release_scratch()
        out, _, _, cache = be.train_forward(spec, model.params.data, x)
        model.zero_grad()
        be.train_backward(spec, model.params.data, model.params.grad, cache,
                          np.ones_like(out), model._truncations(), None, None, False)
        outs.append((out, model.params.grad.copy(), be.infer(spec, model.params.data, x)))
    kernels._release_scratch()
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C, K", [(256, 64), (20, 37), (7, 5), (48, 16), (33, 129)])
def test_small_product_sums_each_output_in_one_order(C, K, dtype, rng):
    """The unpacked path's forward product of few rows (cyrnn_dotrows for float32 with
    AVX-512, src/pgemm.h): every output is one sum whose order depends on K only, so
    its bits do not depend on the rows of x computed with it, on the block of weight
    rows it falls in, or on where a thread's columns start and end (a step equals
    its whole sequence; the small-batch team splits the columns anywhere); and it
    is the product, to float32's rounding (weights under 1 MB: one row on a bigger one
    takes the prefetching cyrnn_proj_ld, src/gemm.pxi)."""
    from cyrnn import _cython_kernels as kernels

    x = rng.normal(size=(3, K)).astype(dtype)
    w = rng.normal(size=(C, K)).astype(dtype)
    full = kernels._small_product(x, w)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    eps = np.finfo(dtype).eps
    assert np.abs(full - exact).max() <= 4 * K * eps * np.abs(x).max() * np.abs(w).max()
    for i in range(3):
        np.testing.assert_array_equal(kernels._small_product(x[i:i + 1], w)[0], full[i])
    for start, rows in [(0, 1), (1, C - 1), (C // 3, C - C // 3), (C - 1, 1), (5 % C, 1)]:
        part = kernels._small_product(x, w, start, rows)
        np.testing.assert_array_equal(part[:, start:start + rows], full[:, start:start + rows])
        assert not part[:, :start].any() and not part[:, start + rows:].any()
    # a weight row's outputs do not depend on the other rows of the weight
    np.testing.assert_array_equal(kernels._small_product(x, w[C // 2:C // 2 + 1])[:, 0],
                                  full[:, C // 2])
    lanes = {"avx512f": 16, "avx2": 8}.get(kernels.pgemm_isa())
    if dtype == np.float32 and lanes:  # cyrnn_dotrows: the documented order, bit for bit
        np.testing.assert_array_equal(full, _dotrows_order(x, w, lanes))


def _dotrows_order(x, w, lanes):
    """``x @ w.T`` summed as src/pgemm.h documents for cyrnn_dotrows: lane q a fused
    multiply-add chain over k = q, q + lanes, ... from +0 (each step rounded once: the
    float64 product of two float32 values is exact), then the lanes halved pairwise
    (l_q + l_{q + lanes/2}, ...) down to one."""
    n, K = x.shape
    acc = np.zeros((n, w.shape[0], lanes), np.float32)
    for k0 in range(0, K, lanes):
        xs, ws = x[:, k0:k0 + lanes], w[:, k0:k0 + lanes]
        m = xs.shape[1]
        prod = xs[:, None, :].astype(np.float64) * ws[None, :, :].astype(np.float64)
        acc[:, :, :m] = (prod + acc[:, :, :m].astype(np.float64)).astype(np.float32)
    while acc.shape[-1] > 1:
        half = acc.shape[-1] // 2
        acc = acc[..., :half] + acc[..., half:]
    return acc[..., 0]
