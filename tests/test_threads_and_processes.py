"""Threads and processes (issue 15, items 7-9): n_jobs never changes process-wide
settings from a predict, Numba without a writable cache, concurrent fits."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import cyrnn
from cyrnn.estimators import GRUClassifier, GRURegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
ROOT = Path(__file__).resolve().parents[1]


def _blas_threads():
    return sorted({(m["internal_api"], m["num_threads"]) for m in threadpool_info()
                   if m["user_api"] == "blas"})


@pytest.fixture
def two_blas_threads():
    """BLAS at 2 threads for the test (so that a leaked limit of 1 shows)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=2, user_api="blas"):
        if not _blas_threads() or any(n != 2 for _, n in _blas_threads()):
            pytest.skip("BLAS cannot run 2 threads here")
        yield


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5, 3))
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(int)


# --------------------------------------------------------------- item 7
def test_concurrent_predicts_never_change_process_wide_blas_threads(monkeypatch,
                                                                    two_blas_threads):
    X, y = _data()
    clf = GRUClassifier(hidden_size=8, max_iter=2, n_jobs=1, random_state=0).fit(X, y)
    before = _blas_threads()
    seen = []
    real = type(clf)._raw

    def spy(self, *args):
        seen.append(_blas_threads())  # during the call, from inside it
        return real(self, *args)

    monkeypatch.setattr(type(clf), "_raw", spy)
    expected = clf.predict(X)
    errors = []

    def worker():
        try:
            for _ in range(10):
                np.testing.assert_array_equal(clf.predict(X), expected)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == before
    assert all(s == before for s in seen), "a predict changed the process's BLAS threads"


def test_fit_with_n_jobs_does_not_change_process_wide_blas_threads(monkeypatch,
                                                                  two_blas_threads):
    from cyrnn.estimators import base

    X, y = _data()
    before = _blas_threads()
    seen = []
    real = base.BaseSequenceModel._train

    def spy(self, *args, **kwargs):
        seen.append(_blas_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(base.BaseSequenceModel, "_train", spy)
    GRUClassifier(hidden_size=4, max_iter=1, n_jobs=1, random_state=0).fit(X, y)
    assert seen == [before] and _blas_threads() == before


# --------------------------------------------------------------- item 8
# Numba compiles here: its optimizer and clipping kernels (cyrnn.optim takes the Cython
# extension's where it is built, so they are called directly), in a process whose Numba
# has nowhere to cache
READ_ONLY_SCRIPT = r"""
import sys, warnings
import numpy as np
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import cyrnn
    from cyrnn import _optim_kernels as numba_kernels
    from cyrnn.training import train_step
    model = cyrnn.Sequential([cyrnn.LSTM(2, 3, return_sequences=False, backend="cython"),
                              cyrnn.Dense(3, 1)])
    for opt in (cyrnn.optim.Adam(model, lr=1e-3, clip_norm=1.0),
                cyrnn.optim.RMSProp(model, lr=1e-3), cyrnn.optim.SGD(model, lr=1e-3)):
        train_step(model, opt, "mse", np.zeros((2, 4, 2)), np.zeros((2, 1)))
    g = np.linspace(-2, 2, 11)
    numba_kernels.clip_by_value_flat(g, 1.0)
    norm = float(np.linalg.norm(g))
    assert abs(numba_kernels.clip_by_global_norm_flat(g, 0.5) - norm) < 1e-12
cache = [w for w in caught if "cannot cache" in str(w.message)]
print("warnings:", len(cache))
if sys.argv[1:] == ["auto"]:
    out, _ = cyrnn.LSTM(2, 3)(np.zeros((1, 4, 2)))
    print("auto:", out.shape)
"""


@pytest.fixture(scope="module")
def read_only_install(tmp_path_factory):
    """A copy of the package where Numba has no cache directory: every __pycache__ is a
    file (so no in-tree cache) and XDG_CACHE_HOME lies under a file (no user cache)."""
    tmp = tmp_path_factory.mktemp("ro")
    pkg = tmp / "site" / "cyrnn"
    # the cyrnn under test (installed in CI, built in place in a checkout): with its extension
    shutil.copytree(Path(cyrnn.__file__).resolve().parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__pycache__").write_text("not a folder")
    blocker = tmp / "blocker"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.update(PYTHONPATH=str(tmp / "site"), XDG_CACHE_HOME=str(blocker / "cache"),
               HOME=str(blocker / "home"), PYTHONDONTWRITEBYTECODE="1")
    return env


def test_optimizer_kernels_and_cli_run_without_a_numba_cache(read_only_install, tmp_path):
    env = read_only_install
    out = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warnings: 1" in out.stdout, out.stdout + out.stderr[-2000:]
    corpus = tmp_path / "names.txt"
    corpus.write_text("ada\nalan\ngrace\n")
    out = subprocess.run([sys.executable, "-m", "cyrnn", "train", str(corpus), "--backend",
                          "cython", "--epochs", "1", "--hidden", "4", "-q", "-o",
                          str(tmp_path / "m.cyrnn")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "m.cyrnn").exists()


def test_numba_backend_decorates_through_the_cache_fallback():
    """Every module of the Numba backend compiles through ``cyrnn._numba_util.njit``."""
    for path in (ROOT / "cyrnn" / "backends" / "numba").glob("*.py"):
        source = path.read_text()
        assert "from numba import njit" not in source and "numba.njit(" not in source, path
        if "@njit" in source:
            assert "from ..._numba_util import njit" in source, path


def test_auto_backend_runs_without_a_numba_cache(read_only_install, tmp_path):
    out = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, "auto"],
                         env=read_only_install, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "auto: (1, 4, 3)" in out.stdout


# --------------------------------------------------------------- item 9
def test_concurrent_warm_start_fits_lose_no_epochs(monkeypatch):
    from cyrnn.estimators import base

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4, 2))
    y = X[:, :, 0].sum(axis=1)
    est = GRURegressor(hidden_size=4, max_iter=3, tol=0, n_iter_no_change=100,
                       random_state=0).fit(X, y)
    assert est.n_iter_ == 3
    est.set_params(warm_start=True)
    real = base.BaseSequenceModel._train

    def slow_train(self, *args, **kwargs):
        time.sleep(0.2)  # both fits would read the same history without a lock
        return real(self, *args, **kwargs)

    monkeypatch.setattr(base.BaseSequenceModel, "_train", slow_train)
    threads = [threading.Thread(target=est.fit, args=(X, y)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert est.n_iter_ == 9 and len(est.loss_curve_) == 9


def test_predict_during_a_fit_is_allowed(monkeypatch):
    from cyrnn.estimators import base

    X, y = _data()
    clf = GRUClassifier(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    expected = clf.predict(X)
    entered, release = threading.Event(), threading.Event()
    real = base.BaseSequenceModel._train

    def held_train(self, *args, **kwargs):
        entered.set()
        release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(base.BaseSequenceModel, "_train", held_train)
    clf.set_params(warm_start=True)
    fitting = threading.Thread(target=clf.fit, args=(X, y))
    fitting.start()
    try:
        assert entered.wait(30)
        np.testing.assert_array_equal(clf.predict(X), expected)  # not blocked by the fit
    finally:
        release.set()
        fitting.join(60)
    assert clf.n_iter_ == 4


def test_fit_lock_survives_clone_pickle_and_deepcopy():
    import copy
    import pickle

    from sklearn.base import clone

    X, y = _data()
    clf = GRUClassifier(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    for other in (clone(clf), pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        other.fit(X, y)
        assert other.n_iter_ == 1
