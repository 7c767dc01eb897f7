"""How many threads cyrnn's compiled kernels (and BLAS under them) may use.

:func:`set_num_threads` sets one budget ``n`` for every thread pool cyrnn runs
on, so that kernels and BLAS together do not oversubscribe the cores:

* **Numba kernels** (``cyrnn.backends.numba``): at most ``n`` row blocks
  per call, process-wide, and ``numba.set_num_threads(n)`` for the calling
  thread (Numba's own setting is per Python thread; the block cap is global).
  Numba is not imported for it: where the backend is not loaded yet, it applies
  the budget when it loads.
* **Cython kernels** (``cyrnn._cython_kernels``): ``n`` OpenMP threads for the
  row chunks of a call: the extension's ``set_num_threads(n)`` stores ``n`` in a
  module-level int used as the ``num_threads=`` of every ``prange``
  (``omp_set_num_threads`` would only affect the calling thread). Before any
  call the loops use OpenMP's default (``OMP_NUM_THREADS`` when the runtime
  loads, else all cores); ``_status()`` reports whether the setting was taken.
* **BLAS** (NumPy's and SciPy's OpenBLAS, which the kernels call for the
  recurrent products): limited to ``blas_threads`` threads (default ``n``)
  with threadpoolctl, when it is installed.

The Numba backend's parallel kernels run one block of batch rows per thread
and call BLAS from inside those blocks only when BLAS is single-threaded
(otherwise they use their own loops, so that ``blocks x BLAS threads`` never
oversubscribes the cores). ``set_num_threads(n, blas_threads=1)`` therefore
suits the Numba backend best for large batches (its blocks then use BLAS),
while the default ``blas_threads = n`` suits the Cython backend (batches of
4+ rows run on its own threads and packed kernels without BLAS; smaller ones
use BLAS on the calling thread) and small batches.

Nothing is imported or changed until :func:`set_num_threads` is called.

**When the cores are busy.** The Cython kernels judge every parallel region of at
least 1 ms by the CPU time its chunks got: less than the region's wall time means the
team was slower than its calling thread alone would have been (another process holds
a core). After three such regions in a row the regions run on the calling thread for
the next 0.25 s, then try the team again. On the 2-core test machine with other
processes busy, the medium inference took 15.8 ms on two threads without this and 5.8
ms with it (one thread: 5.6 ms; quiet, two threads: 2.5 ms). Results do not depend on
the thread count. ``cyrnn._cython_kernels.set_contention_hold(seconds)`` changes the
0.25 s (0: never hold); ``cyrnn._cython_kernels.contention_state()`` shows the state.

:func:`call_threads` is the per-call limit behind the estimators' ``n_jobs``:
thread-local settings only (Numba's and OpenMP's thread counts hold for the
calling thread), so that concurrent calls never change process-wide settings.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import numbers
import os
import sys
import threading

__all__ = ["set_num_threads", "get_num_threads"]

_lock = threading.Lock()
#: The budget set by set_num_threads (None: libraries' defaults). Read by the
#: Numba backend at each call to cap its number of row blocks.
_num_threads = None
_blas_threads = None
_blas_limiter = None  # threadpoolctl limiter holding the BLAS limit (restorable)
_cython_set = None    # whether the Cython extension took the setting


def _check_n(name, n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


#: Set (under ``_lock``) by cyrnn's Numba backend once it has picked Numba's threading
#: layer and applied the budget: from then on set_num_threads sets Numba's count too.
_numba_ready = False
# Set in a process forked after the Numba backend's OpenMP pool started (by its fork
# handler): the Cython extension, which loads the same GNU OpenMP library, then runs
# its loops on the calling thread, also when this process imports it only later.
_gomp_pool_forked = False


def _numba_if_loaded():
    """numba, where cyrnn's Numba backend has loaded (``_numba_ready``), else None:
    setting a thread budget imports nothing (a scoring process on the Cython backend
    never loads Numba); the backend applies the budget when it loads."""
    return sys.modules.get("numba") if _numba_ready else None


def _cpu_limit():
    """The CPUs this process may run on (its affinity where the OS tells it): the cap
    of the OpenMP and BLAS thread counts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_num_threads(n, blas_threads=None):
    """Use at most ``n`` threads in cyrnn's compiled kernels and ``blas_threads``
    (default ``n``) in BLAS.

    Parameters
    ----------
    n : int >= 1
        Threads for the Numba kernels (row blocks per call; capped at Numba's
        pool size, ``NUMBA_NUM_THREADS``) and the Cython kernels' OpenMP loops
        (when the extension supports it; capped at the CPUs the process may run
        on: more threads than CPUs only wait for each other, and thousands of them
        can fail to start).
    blas_threads : int >= 1 or None
        Threads for BLAS (NumPy's and SciPy's), via threadpoolctl, capped at the
        number of CPUs too. ``None``: ``n``. ``1`` avoids BLAS threads nested under
        the Numba backend's parallel row blocks.

    Returns
    -------
    previous : int or None
        The previous budget (None when it had not been set).
    """
    global _num_threads, _blas_threads, _blas_limiter, _cython_set
    n = _check_n("n", n)
    blas_threads = n if blas_threads is None else _check_n("blas_threads", blas_threads)
    with _lock:
        previous = _num_threads
        numba = _numba_if_loaded()
        if numba is not None:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:  # through the backend module: it sets the OpenMP wait policy first
            kernels = importlib.import_module("cyrnn.backends.cython_backend")._k
        except ImportError:
            kernels = None
        setter = getattr(kernels, "set_num_threads", None)
        cpus = _cpu_limit()
        if setter is not None:
            setter(min(n, cpus))
            _cython_set = True
        else:
            _cython_set = False
        if importlib.util.find_spec("threadpoolctl") is not None:
            from threadpoolctl import threadpool_limits

            if _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
            _blas_limiter = threadpool_limits(limits=min(blas_threads, cpus),
                                              user_api="blas")
        _num_threads = n
        _blas_threads = blas_threads
        return previous


def get_num_threads():
    """The thread budget of the compiled kernels.

    Returns
    -------
    n : int
        The value given to :func:`set_num_threads`; before any call, Numba's
        current thread count where the Numba backend is loaded (its default is the
        number of cores), else ``os.cpu_count()``.
    """
    if _num_threads is not None:
        return _num_threads
    numba = _numba_if_loaded()
    if numba is not None:
        return int(numba.get_num_threads())
    return os.cpu_count() or 1


def _status():
    """What the last :func:`set_num_threads` did, for diagnostics."""
    return {"num_threads": _num_threads, "blas_threads": _blas_threads,
            "cython_openmp_set": _cython_set,
            "numba_threading_layer": _numba_layer()}


def _numba_layer():
    config = sys.modules.get("cyrnn.backends.numba.config")
    return config.THREADING_LAYER if _numba_ready and config is not None else None


# ---------------------------------------------------------------- per call (n_jobs)
_controller = None  # threadpoolctl's ThreadpoolController, made once


def _openmp_pools():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller.select(user_api="openmp")


@contextlib.contextmanager
def call_threads(n):
    """Use ``n`` threads in cyrnn's compiled kernels for the duration of one call.

    Only thread-local settings change, and they are restored on exit: Numba's
    thread count (``numba.set_num_threads`` holds for the calling thread; touched
    only once cyrnn's Numba backend is loaded, which picks Numba's threading
    layer) and OpenMP's default (``omp_set_num_threads`` sets the calling
    thread's). Calls in other threads see nothing, and nothing process-wide (BLAS's
    thread pool) changes: limit that with :func:`set_num_threads` or threadpoolctl.
    """
    numba = sys.modules.get("numba") if "cyrnn.backends.numba" in sys.modules \
        else None
    previous = None
    if numba is not None:
        previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    openmp = _openmp_pools()
    limiter = (openmp.limit(limits=max(1, min(n, _cpu_limit())))  # as set_num_threads
               if openmp.lib_controllers else None)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if numba is not None:
            numba.set_num_threads(previous)
