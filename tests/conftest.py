"""Shared fixtures: every conformance test runs once per available backend."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import cyrnn

# The CUDA backend has its own cases (tests/test_cuda_backend.py runs them under the
# simulator or on a GPU); it takes no part in the CPU conformance suite.
BACKENDS = [name for name in cyrnn.backends.available() if name != "cuda"]

# Tolerances against the NumPy reference and PyTorch, by dtype.
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-9)}


class BackgroundRun:
    """A subprocess started now and waited for later (``result``), its output in files
    under ``folder`` (no pipe to fill while nobody reads it): a test that only waits on
    a subprocess lets it run while other tests run (the slow compile and fuzz runs)."""

    def __init__(self, argv, folder, **kwargs):
        self.out = open(os.path.join(folder, "out"), "w+", encoding="utf-8")
        self.err = open(os.path.join(folder, "err"), "w+", encoding="utf-8")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err, text=True,
                                     **kwargs)

    def result(self, timeout):
        """``(returncode, stdout, stderr)``; killed and TimeoutExpired after ``timeout`` s."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.out.seek(0)
        self.err.seek(0)
        return self.proc.returncode, self.out.read(), self.err.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.err.close()


# Numba compiles each kernel entry point on first use, per dtype, into its on-disk cache
# (about 110 CPU-seconds per dtype here; docs: README "Backends and threads"). In a fresh
# environment (CI) the Numba tests of the first modules waited for all of it. A session
# that runs Numba tests therefore compiles the entry points meanwhile in a background
# process at low priority, into the same cache, float64 first and each dtype's entry
# points in the reverse of the order the tests first need them, so that the tests load
# most of them instead of compiling them (2026-12-03, an empty NUMBA_CACHE_DIR, one run
# each on 2 cores: test_bad_input + test_cell_table + test_fused_*, 340 s -> 196 s; the
# whole clean-clone suite 1,021 -> 1,049 s on a loaded host, within its noise: the
# first module's float32 kernels still compile in the session). Results do not
# change: a kernel loaded from the cache is the one the test would have compiled.
# CYRNN_TEST_NO_WARM_UP=1 turns it off.
_WARM_UP = """
import os, sys
os.nice(10)  # the tests first
import numpy as np
from cyrnn.backends import numba as nb
parent = os.getppid()
for dtype in ("float64", "float32"):
    for name in reversed(list(nb._DISPATCHERS)):
        if os.getppid() != parent:  # the test session is gone: stop
            sys.exit(0)
        nb._kernel(name, np.dtype(dtype))
"""


def pytest_collection_finish(session):
    if ("numba" not in BACKENDS or os.environ.get("CYRNN_TEST_NO_WARM_UP")
            or not any("numba" in item.nodeid for item in session.items)):
        return
    folder = tempfile.mkdtemp(prefix="cyrnn-warm-up-")
    # the cyrnn under test (the installed package in CI), not a source tree in the
    # working directory
    env = dict(os.environ, PYTHONPATH=str(Path(cyrnn.__file__).resolve().parent.parent))
    session.config._cyrnn_warm_up = (folder, BackgroundRun(
        [sys.executable, "-c", _WARM_UP], folder, env=env, cwd=folder))


def pytest_sessionfinish(session):
    folder, run = getattr(session.config, "_cyrnn_warm_up", (None, None))
    if run is not None:
        run.stop()  # (done long before, in a whole run)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of a backend; conformance tests run for each one available."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


FUSED_CALLS = ("infer", "train_forward", "train_backward")


def spy_fused_calls(backend, monkeypatch):
    """Wrap a compiled backend's fused calls (``infer``, ``train_forward``,
    ``train_backward``, and the scorers' bound calls, counted as ``infer``) to count
    those that ran (did not decline); plans and scorers built after this bind the
    wrappers. Returns the counts, or None for the NumPy reference."""
    from cyrnn.backends import get_backend

    if backend == "numpy":
        return None
    mod = get_backend(backend)
    counts = dict.fromkeys(FUSED_CALLS, 0)
    for name in FUSED_CALLS:
        real = getattr(mod, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            res = _real(*args, **kwargs)
            if res is not None:
                counts[_name] += 1
            return res
        monkeypatch.setattr(mod, name, wrapped)
    # the scorers' bound calls (the Cython backend's ScoringCall and StepCall) run
    # infer's body in one compiled call: a call that ran counts as an infer
    for name in ("ScoringCall", "StepCall"):
        make = getattr(mod, name, None)
        if make is None:
            continue

        def bound(*args, _make=make, **kwargs):
            call = _make(*args, **kwargs)

            def counted(*call_args):
                res = call(*call_args)
                if res is not None:
                    counts["infer"] += 1
                return res
            return counted
        monkeypatch.setattr(mod, name, bound)
    return counts


@pytest.fixture
def compiled_plan_ran(request, monkeypatch):
    """For conformance modules (use as ``autouse``): a test that runs on a compiled
    backend must have run it through the compiled plan (a fused call that did not
    decline). Tests that compute nothing (rejections) carry ``no_fused_call``."""
    if ("backend" not in request.fixturenames
            or request.node.get_closest_marker("no_fused_call") is not None):
        yield None
        return
    backend = request.getfixturevalue("backend")
    counts = spy_fused_calls(backend, monkeypatch)
    yield counts
    if counts is not None:
        assert sum(counts.values()) > 0, f"no fused call of the {backend} backend ran"


def bf16_kernels_or_skip():
    """The Cython kernels where bfloat16 arithmetic runs here (AVX-512 BF16), else skip."""
    import cyrnn
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    from cyrnn import _cython_kernels as kernels
    if not kernels.bf16_arithmetic_available():
        pytest.skip("this CPU has no AVX-512 BF16 (or CYRNN_PGEMM_ISA lowers the kernels)")
    return kernels

