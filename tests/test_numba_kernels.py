"""The Numba backend against the NumPy reference (the specification).

Every cell variant x {float32, float64} x {no mask, random masks with fully
masked rows} x {truncate None, 0, 2, T, T+3} x {N=1, N=5, N=16 on the parallel
path} x {own-loop, BLAS recurrent products}: forward outputs, final states,
the whole cache, inference, every backward output and ``step`` (float64 within
1e-10 relative; float32 within 1e-5 of the array's scale). Also: strided,
Fortran-ordered and read-only inputs, non-finite values, degenerate shapes, a
problem big enough for the parallel path by default, two Python threads
running parallel kernels at once, and a forked child.

Compilation dominates the cost: every test shares the same compiled kernels
(one per dtype for the serial entry points, one per dtype for the parallel
ones), cached on disk after the first run.
"""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("numba")

from cyrnn import threads  # noqa: E402
from cyrnn.backends import Cell, available, get_backend  # noqa: E402
from cyrnn.backends import numba as nb  # noqa: E402
from cyrnn.backends.numba import config as nb_config  # noqa: E402
from cyrnn.backends.numba import gemm as nb_gemm  # noqa: E402
from cyrnn.backends import numpy_backend as ref  # noqa: E402

from conftest import BackgroundRun  # noqa: E402
from kernel_harness import CELLS, DTYPES, H, T, KernelHarness, make_problem, run_forward  # noqa: E402,F401

TRUNCATIONS = [None, 0, 2, T, T + 3]
PARALLEL_N = 16
MULTICORE = nb_config._get_num_threads() >= 2
harness = KernelHarness(nb, f32_atol=1e-5)
tol = harness.tol
assert_close = harness.assert_close
compare_forward = harness.compare_forward
compare_backward = harness.compare_backward
compare_step = harness.compare_step


@pytest.fixture
def force_parallel(monkeypatch):
    """Send every call with N >= 8 to the parallel kernels (2+ row blocks)."""
    monkeypatch.setattr(nb_config, "_PAR_MIN_WORK", 0)
    monkeypatch.setattr(threads, "_num_threads", None)


@pytest.fixture(params=["loops", "blas", "blas-rows"])
def products(request, monkeypatch):
    """How the recurrent products run: the own loops (the default for these
    tiny shapes), one BLAS call each, or BLAS on single rows (the row blocks
    of ``_blas_mode`` 1)."""
    if request.param == "blas":
        monkeypatch.setattr(nb_gemm, "_blas_mode", lambda N, GHH, blocks: 2)
    elif request.param == "blas-rows":
        monkeypatch.setattr(nb_gemm, "_blas_mode", lambda N, GHH, blocks: 1)
        monkeypatch.setattr(nb_gemm, "_SERIAL_GEMM_MNK", 1)
    return request.param


@pytest.mark.parametrize("N", [1, 5, PARALLEL_N], ids=["N1", "N5", "Npar"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_matches_reference(cell_name, dtype, masked, N, products, request):
    """Forward, cache, inference, backward for every truncation, and step; on
    the serial and the parallel kernels, with every kind of recurrent product."""
    if N == PARALLEL_N:
        request.getfixturevalue("force_parallel")
        if MULTICORE:
            assert nb_config._blocks(T, N, H, H) >= 2
    if products == "loops":
        assert nb_gemm._blas_mode(N, H * H, 1) == 0
    cell = CELLS[cell_name]
    p = make_problem(cell, dtype, N, masked, seed=N + 10 * masked)
    cache_nb, cache_ref = compare_forward(cell, dtype, p)
    for truncate in TRUNCATIONS:
        compare_backward(cell, dtype, p, cache_nb, cache_ref, truncate)
    compare_step(cell, dtype, p)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_missing_gradients(cell_name):
    cell = CELLS[cell_name]
    dtype = np.float64
    p = make_problem(cell, dtype, 3, True, seed=3)
    cache_nb, cache_ref = compare_forward(cell, dtype, p)
    for grads in ({"dh_seq": None}, {"dh_T": None, "dc_T": None},
                  {"dh_seq": None, "dh_T": None},
                  {"dh_seq": None, "dh_T": None, "dc_T": None}):
        for truncate in (None, 1):
            compare_backward(cell, dtype, p, cache_nb, cache_ref, truncate, **grads)


def _odd_layouts(p):
    """The same problem with strided, Fortran-ordered and read-only arrays."""
    q = dict(p)
    for key in ("xp", "dh_seq"):
        wide = np.zeros(p[key].shape[:-1] + (2 * p[key].shape[-1],), p[key].dtype)
        wide[..., ::2] = p[key]
        q[key] = wide[..., ::2]
        assert not q[key].flags.c_contiguous
    for key in ("w_hh", "h0", "c0", "dh_T", "dc_T"):
        if p[key] is not None:
            q[key] = np.asfortranarray(p[key])
    q["b_hh"] = np.repeat(p["b_hh"], 2)[::2]
    q["mask"] = np.asfortranarray(p["mask"])
    return q


def _read_only(p):
    q = {}
    for key, value in p.items():
        if value is not None:
            value = value.copy()
            value.flags.writeable = False
        q[key] = value
    return q


@pytest.mark.parametrize("layout", ["strided-fortran", "read-only"])
@pytest.mark.parametrize("cell_name", ["rnn-tanh", "lstm", "gru-cho"])
def test_odd_input_layouts(cell_name, layout):
    cell = CELLS[cell_name]
    dtype = np.float64
    p = make_problem(cell, dtype, 5, True, seed=7)
    q = _odd_layouts(p) if layout == "strided-fortran" else _read_only(p)
    expected = run_forward(ref, cell, p)
    actual = run_forward(nb, cell, q)
    for a, e in zip(actual[:3], expected[:3]):
        assert_close(a, e, dtype)
    cache = actual[3]
    if layout == "strided-fortran":  # as another producer might hand over
        cache = {k: np.asfortranarray(v) for k, v in cache.items()}
    else:
        cache = _read_only(cache)
    for truncate in (None, 1):
        exp = ref.backward(cell, expected[3], p["w_hh"], p["mask"], p["dh_seq"],
                           p["dh_T"], p["dc_T"], truncate)
        got = nb.backward(cell, cache, q["w_hh"], q["mask"], q["dh_seq"], q["dh_T"],
                          q["dc_T"], truncate)
        for a, e in zip(got, exp):
            assert_close(a, e, dtype)
    s_exp = ref.step(cell, p["xp"][0], p["w_hh"], p["b_hh"], p["h0"], p["c0"])
    s_got = nb.step(cell, q["xp"][0], q["w_hh"], q["b_hh"], q["h0"], q["c0"])
    for a, e in zip(s_got, s_exp):
        assert_close(a, e, dtype)
    if layout == "read-only":  # inputs untouched (several are typed writable)
        for key, value in q.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, p[key], err_msg=key)
        for key, value in cache.items():
            np.testing.assert_array_equal(value, actual[3][key], err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_saturated_and_nonfinite_values(dtype):
    """Huge pre-activations saturate without overflow; NaN and inf propagate
    as in the reference (no fastmath nnan/ninf)."""
    for cell_name in ("rnn-relu", "lstm", "gru-reset-after", "gru-cho"):
        cell = CELLS[cell_name]
        p = make_problem(cell, dtype, 5, False, seed=5)
        p["xp"] = (np.sign(p["xp"]) * 1e4).astype(dtype)
        with np.errstate(over="ignore"):
            cache_nb, cache_ref = compare_forward(cell, dtype, p)
        assert all(np.isfinite(v).all() for v in cache_nb.values())
        compare_backward(cell, dtype, p, cache_nb, cache_ref, None)
        q = make_problem(cell, dtype, 5, False, seed=6)
        q["xp"][2, 1, 0] = np.nan
        q["xp"][4, 3, :] = np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            expected = run_forward(ref, cell, q)
            actual = run_forward(nb, cell, q)
        for a, e in zip(actual[:2], expected[:2]):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
            ok = np.isfinite(e)
            np.testing.assert_allclose(a[ok], e[ok], **tol(dtype))
        assert np.isnan(actual[0][2:, 1]).any()


def test_mask_dtypes_and_degenerate_shapes():
    cell = CELLS["gru-reset-after"]
    p = harness.check_mask_dtypes_and_empty_batch()
    no_steps = dict(p, xp=p["xp"][:0], mask=None)
    h_seq, h_T, _, cache = run_forward(nb, cell, no_steps)
    assert h_seq.shape == (0, 5, H)
    np.testing.assert_array_equal(h_T, p["h0"])


def test_registry_lists_numba():
    names = available()
    assert "numba" in names
    assert names.index("numba") < names.index("numpy")
    assert get_backend("numba") is nb
    assert nb.NAME == "numba"
    assert nb.THREADING_LAYER in ("omp", "tbb", "workqueue", "default", "safe",
                                  "threadsafe", "forksafe")


_ONE_VERSION_CHECK = r"""
import sys
import numpy as np
from numba import types
from numba.core.registry import CPUDispatcher
from cyrnn.backends import numba as nb
from cyrnn.backends.numba import cells, config, fused, gemm, loops, mathfn
from cyrnn.backends.numba import generate as _  # noqa: F401 (the package's generate is a function)
gen = sys.modules["cyrnn.backends.numba.generate"]
for name in nb._DISPATCHERS:
    nb._kernel(name, np.float32)
# every compiled function the backend's modules hold, wherever its Python source lives
# (e.g. fused._blocks_nb wraps config._blocks_of)
found = {}
for mod in (fused, loops, cells, mathfn, gemm, gen, config):
    for fname, disp in vars(mod).items():
        if isinstance(disp, CPUDispatcher):
            found.setdefault(id(disp), (mod.__name__ + "." + fname, disp))
bad = []
for name, disp in found.values():
    sigs = disp.signatures
    if len(sigs) > 1 or any(isinstance(a, types.Literal) for s in sigs for a in s):
        bad.append((name, [str(s) for s in sigs]))
compiled = sum(1 for _, d in found.values() if d.signatures)
print(len(bad), "functions compiled more than once:")
for b in bad:
    print(b)
print("compiled functions:", compiled)
# the inputs typed writable to share the fused runner's versions are only read: the
# loops compile with them read-only (Numba refuses an indexed write or a ufunc output
# into a read-only array; not np.dot's out=, which only the loops' own scratch takes)
ro = nb._signatures(types.float32, readonly_inputs=True)
for name in ("fwd_rows", "bwd_rows", "train_bwd"):
    nb._DISPATCHERS[name].compile(ro[name])
print("read-only inputs compile")
"""


_CACHE_STEP = r"""
import sys
import numpy as np
import cyrnn
dt = np.float32
if sys.argv[1] == "sequential":  # the fused inference without states: _infer_kernel
    m = cyrnn.Sequential([cyrnn.LSTM(3, 4, dtype=dt, backend="numba", random_state=0),
                          cyrnn.Dense(4, 5, dtype=dt, random_state=0)])
    out = m.forward(np.ones((1, 2, 3), dt))
else:  # a layer's call returns its final states: _infer_state_kernel
    lay = cyrnn.LSTM(3, 4, dtype=dt, backend="numba", random_state=0).eval()
    out = lay(np.ones((1, 2, 3), dt))[0]
ref = cyrnn.LSTM(3, 4, dtype=dt, backend="numpy", random_state=0).eval()(np.ones((1, 2, 3), dt))[0]
ok = sys.argv[1] == "sequential" or np.allclose(out, ref, rtol=1e-5, atol=1e-6)
print(sys.argv[1], out.shape, "ok" if ok else "MISMATCH")
"""


def _installed_env(**extra):
    """The environment of a subprocess that imports the cyrnn these tests import (the
    installed package with its extension, not a source tree in the working folder)."""
    import cyrnn
    root = os.path.dirname(os.path.dirname(os.path.abspath(cyrnn.__file__)))
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **extra)


def test_cache_entries_load_in_any_order(tmp_path, one_version_run):
    """Entry points cached in any order of processes load and run: an entry point
    compiled where its parallel callees came from the cache (``_infer_state_kernel``
    after an ``_infer_kernel`` process cached ``_fused_run``) is cached without
    Numba's note to start the parallel runtime first, and loading it in a fresh
    process crashed the interpreter (SIGSEGV) before ``_start_parallel_runtime``.
    Three processes on one empty cache (float32, LLVM -O1 to compile sooner; at -O0
    Numba cannot cache the kernels at all); the third must load the entry from the
    cache. (Asks for ``one_version_run`` only to start it: it compiles meanwhile.)"""
    env = _installed_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"), NUMBA_OPT="1")
    outs = []
    for step, debug in (("sequential", "0"), ("layer", "0"), ("layer", "1")):
        proc = subprocess.run([sys.executable, "-c", _CACHE_STEP, step],
                              env=dict(env, NUMBA_DEBUG_CACHE=debug), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (step, proc.returncode, proc.stderr[-3000:])
        assert proc.stdout.strip().endswith("ok"), proc.stdout[-2000:]
        outs.append(proc.stdout)
    # not vacuous: the last process ran the entry point loaded from the cache
    assert "data loaded from" in outs[2] and "_infer_state_kernel" in outs[2], outs[2][-2000:]


@pytest.fixture(scope="module")
def one_version_run(tmp_path_factory):
    """The subprocess of :func:`test_one_compiled_version_per_dtype`, started when the
    first test asking for it runs: :func:`test_cache_entries_load_in_any_order`,
    just before it, asks too, so that the two compile at once (each compiles on one
    core; on 2 cores the pair took 197 s one after the other, 2026-12-03)."""
    folder = tmp_path_factory.mktemp("one-version")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(folder / "cache"), NUMBA_OPT="0")
    run = BackgroundRun([sys.executable, "-c", _ONE_VERSION_CHECK], folder, env=env)
    yield run
    run.stop()


def test_one_compiled_version_per_dtype(one_version_run):
    """Every entry point (fused calls, layer contract, generation) shares one compiled
    version of each function per dtype: Numba compiles a function again for each
    signature of argument types, where a constant argument is typed as a literal and a
    read-only array as a type of its own, and each such copy compiles everything it
    calls again (the first fused inference compiled in twice the time). Run in a fresh
    process with an empty cache (an entry point loaded from the cache brings none of
    its callees), float32, at LLVM's -O0 (the signatures do not depend on it). Also:
    the inputs the entry points type writable for that are never written."""
    returncode, stdout, stderr = one_version_run.result(timeout=600)
    assert returncode == 0, stderr[-3000:]
    assert stdout.startswith("0 functions"), stdout
    # not vacuous: the loops and their helpers compiled in that process (61 functions)
    assert int(stdout.split("compiled functions:")[1].split()[0]) >= 50, stdout
    assert "read-only inputs compile" in stdout


_FORK_CROSS = r"""
import os, sys, time, signal
import numpy as np
import cyrnn
parent, child = sys.argv[1], sys.argv[2]

def run(backend):
    m = cyrnn.Sequential([cyrnn.LSTM(3, 64, backend=backend, random_state=0),
                          cyrnn.Dense(64, 5, random_state=1)])
    return m.forward(np.random.default_rng(0).normal(size=(16, 40, 3)).astype(np.float32))

ref = run("numpy")
if parent == "cython":
    from cyrnn import _cython_kernels as k
    before = k._path_counts()["threaded_regions"]
    run("cython")
    assert k._path_counts()["threaded_regions"] > before, "the parent ran no team"
    import cyrnn.backends.numba  # loaded, its pool not started
else:
    from numba.np.ufunc import parallel
    from cyrnn.backends import numba as nb
    assert nb._split_args(16)[0] > 1
    run("numba")
    assert parallel._is_initialized
    if parent == "numba+ext":
        from cyrnn import _cython_kernels  # noqa: F401 (loaded before the fork)
    else:
        assert "cyrnn._cython_kernels" not in sys.modules
pid = os.fork()
if pid == 0:
    signal.alarm(120)  # a hung region: killed, reported below
    os._exit(0 if float(np.abs(run(child) - ref).max()) < 1e-5 else 1)
t = time.time()
while time.time() - t < 150:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        print("child", "hung" if code == -signal.SIGALRM else code)
        sys.exit(0 if code == 0 else 3)
    time.sleep(0.1)
os.kill(pid, signal.SIGKILL)
print("child hung")
sys.exit(3)
"""


@pytest.mark.skipif(not MULTICORE or not hasattr(os, "fork"),
                    reason="needs os.fork and 2+ threads")
@pytest.mark.parametrize("parent, child", [("cython", "numba"), ("numba+ext", "cython"),
                                           ("numba", "cython")])
def test_forked_child_of_the_other_backend_does_not_hang(parent, child, tmp_path):
    """Both backends load the same GNU OpenMP library, whose pool does not survive
    fork, and each backend's fork guard saw its own regions only: a child forked after
    one backend's team ran hung in the other's first parallel region (both ways, also
    when the child imports the Cython extension only after the fork). In a fresh
    process: the parent runs one backend on 2 threads, the child the other backend at
    the same size, which must finish with the reference's results."""
    env = _installed_env()
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):  # 2 threads must be possible
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", _FORK_CROSS, parent, child], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "child 0" in proc.stdout


@pytest.mark.skipif(not MULTICORE, reason="Numba has a single thread here")
def test_default_thresholds_take_the_parallel_path():
    """A problem above the default thresholds runs on several row blocks and
    agrees with the reference and with the serial kernels."""
    cell = CELLS["lstm"]
    dtype = np.float64
    N, Hb, Tb = 64, 64, 10
    assert nb_config._blocks(Tb, N, Hb, 4 * Hb) >= 2
    p = make_problem(cell, dtype, N, True, seed=11, T=Tb, H=Hb)
    cache_nb, cache_ref = compare_forward(cell, dtype, p)
    compare_backward(cell, dtype, p, cache_nb, cache_ref, None)
    compare_backward(cell, dtype, p, cache_nb, cache_ref, 1)
    parallel = nb.backward(cell, cache_nb, p["w_hh"], p["mask"], p["dh_seq"], p["dh_T"],
                           p["dc_T"])
    previous = threads._num_threads
    threads._num_threads = 1  # what set_num_threads(1) does for this backend
    try:
        assert nb_config._blocks(Tb, N, Hb, 4 * Hb) == 1
        serial = nb.backward(cell, cache_nb, p["w_hh"], p["mask"], p["dh_seq"], p["dh_T"],
                             p["dc_T"])
    finally:
        threads._num_threads = previous
    for a, b in zip(parallel, serial):
        assert_close(a, b, dtype)


@pytest.mark.skipif(not MULTICORE, reason="Numba has a single thread here")
def test_two_python_threads_run_parallel_kernels_at_once(force_parallel):
    """Concurrent parallel kernels from two Python threads neither abort (the
    threading layer is thread-safe, or calls are serialised) nor mix results."""
    cell = CELLS["gru-cho"]
    dtype = np.float64
    problems = [make_problem(cell, dtype, PARALLEL_N, True, seed=s, T=20) for s in (21, 22)]
    expected = []
    for p in problems:
        out = run_forward(ref, cell, p)
        expected.append((out, ref.backward(cell, out[3], p["w_hh"], p["mask"], p["dh_seq"],
                                           p["dh_T"], None, 2)))
    errors = []
    barrier = threading.Barrier(2)

    def work(k):
        try:
            p = problems[k]
            barrier.wait()
            for _ in range(30):
                out = run_forward(nb, cell, p)
                grads = nb.backward(cell, out[3], p["w_hh"], p["mask"], p["dh_seq"],
                                    p["dh_T"], None, 2)
                exp_out, exp_grads = expected[k]
                for a, e in zip(out[:2] + grads, exp_out[:2] + exp_grads):
                    assert_close(a, e, dtype)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[0]


def test_set_num_threads_caps_the_row_blocks(force_parallel):
    previous = threads._num_threads
    try:
        threads._num_threads = 1
        assert nb_config._blocks(T, 64, H, H) == 1
        threads._num_threads = 64
        assert nb_config._blocks(T, 64, H, H) == min(nb_config._get_num_threads(), 16)
    finally:
        threads._num_threads = previous


def test_set_num_threads_public_api():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba

    with pytest.raises(TypeError):
        threads.set_num_threads(1.5)
    with pytest.raises(ValueError):
        threads.set_num_threads(0)
    with pytest.raises(ValueError):
        threads.set_num_threads(2, blas_threads=0)
    numba_before = numba.get_num_threads()
    try:
        threads.set_num_threads(1, blas_threads=1)
        assert threads.get_num_threads() == 1
        assert numba.get_num_threads() == 1
        assert nb_config._blocks(T, 4096, 64, 256) == 1
        assert all(info["num_threads"] == 1 for info in threadpoolctl.threadpool_info()
                   if info["user_api"] == "blas")
        assert nb_gemm._blas_single_threaded()
        assert threads.set_num_threads(2, blas_threads=1) == 1  # returns the previous one
        assert threads.get_num_threads() == 2
        # far more threads than CPUs: the pools are capped at the CPU count (thousands
        # of OpenMP threads can fail to start, which ends the process); the budget is kept
        cpus = threads._cpu_limit()
        threads.set_num_threads(2**40)
        assert threads.get_num_threads() == 2**40
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # its pool size
        assert all(info["num_threads"] <= cpus for info in threadpoolctl.threadpool_info()
                   if info["user_api"] == "blas")
        if "cython" in available():
            from cyrnn.backends.cython_backend import _k

            assert _k.get_num_threads() == cpus
    finally:
        if threads._blas_limiter is not None:
            threads._blas_limiter.restore_original_limits()
        threads._blas_limiter = None
        threads._num_threads = None
        numba.set_num_threads(numba_before)


def test_blas_mode(monkeypatch):
    """Own loops for tiny products; inside parallel row blocks BLAS only when
    it is single-threaded; serial mid-sized products in single-thread-sized
    row blocks unless BLAS is single-threaded anyway."""
    for single in (True, False):
        monkeypatch.setattr(nb_gemm, "_blas_single_threaded", lambda s=single: s)
        assert nb_gemm._blas_mode(1, 8 * 32, 1) == 0
        assert nb_gemm._blas_mode(5, 4 * 16, 1) == 0
        assert nb_gemm._blas_mode(64, 128 * 512, 2) == (2 if single else 0)
        assert nb_gemm._blas_mode(64, 128 * 512, 1) == (2 if single else 1)
        assert nb_gemm._blas_mode(4096, 512 * 2048, 1) == 2   # large: one threaded call
        assert nb_gemm._blas_mode(2, 64 * 256, 1) == 2        # below OpenBLAS's threading


@pytest.mark.parametrize("cell_name", ["lstm", "gru-cho", "rnn-relu"])
def test_generate_products(cell_name, products, monkeypatch):
    """The compiled ``generate`` with every recurrent/output product mode (own
    loops, one BLAS call, BLAS row blocks) equals the reference token for token;
    it never falls back to it for regular input."""
    from test_generate_kernel import make_problem as make_gen_problem

    cell = CELLS[cell_name]
    w, s = make_gen_problem(cell, L=2, n=6, H=5, V=13, T=25, seed=3)
    expected = ref.generate(cell, **w, **s, temperature=0.9, top_k=3, end_token=2)
    monkeypatch.setattr(nb, "_reference", None)  # a fallback would fail
    got = nb.generate(cell, **w, **s, temperature=0.9, top_k=3, end_token=2)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_generate_odd_input_goes_to_the_reference():
    """Token ids outside the table, or another dtype: the reference's behaviour."""
    from test_generate_kernel import make_problem as make_gen_problem

    cell = CELLS["lstm"]
    w, s = make_gen_problem(cell, n=3)
    s["start"] = np.array([3, 13, 4])  # 13 is outside the (13,)-row table
    with pytest.raises(IndexError):
        nb.generate(cell, **w, **s, temperature=1.0, top_k=0, end_token=2)
    w16 = {k: (None if v is None else v.astype(np.float16)) for k, v in w.items()}
    s["start"] = np.array([3, 5, 4])
    got = nb.generate(cell, **w16, **s, temperature=1.0, top_k=0, end_token=2)
    expected = ref.generate(cell, **w16, **s, temperature=1.0, top_k=0, end_token=2)
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("name,kw", [("lstm", {}), ("gru-cho", {"reset_after": False})])
def test_infer_product_modes(name, kw, products):
    """The fused ``infer`` (which picks its own product modes) equals the layer
    path (whose modes the fixture sets), for a batch big enough for BLAS."""
    import cyrnn

    Cls = cyrnn.LSTM if name == "lstm" else cyrnn.GRU
    model = cyrnn.Sequential([Cls(6, 24, num_layers=2, return_sequences=False,
                                  backend="numba", dtype=np.float64, random_state=0, **kw),
                              cyrnn.Dense(24, 3, dtype=np.float64, random_state=1)])
    x = np.random.default_rng(0).standard_normal((40, 9, 6))
    fused = nb.infer(model.inference_spec(), model.params.data, x)
    layered = model.forward(x, lengths=np.full(40, 9))  # lengths: the general path
    assert fused is not None and fused.shape == (40, 3)
    np.testing.assert_allclose(fused, layered, rtol=1e-10, atol=1e-12)
