"""Threads, compilation flags and tuning constants of the Numba backend.

Threading layer
---------------
Numba's default order tries ``tbb``, ``omp``, then ``workqueue``, and
``workqueue`` terminates the process when two Python threads launch parallel
kernels at once. At import, before any parallel kernel is compiled or run,
this module sets ``numba.config.THREADING_LAYER`` to ``"omp"`` if Numba's
OpenMP pool can be loaded, else ``"tbb"`` (both thread-safe), else
``"workqueue"``; a layer chosen with ``NUMBA_THREADING_LAYER``, or a pool
already started, is respected. Unless the layer is known thread-safe, the
parallel kernels are serialised with a lock (serial calls never take it).
Like the Cython backend, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
chose a policy, so that idle OpenMP threads do not spin against BLAS.
GNU OpenMP cannot be used in a process forked after its parent used it (Numba
terminates such a child): in a child forked while the pool was running, or after
the Cython extension (the same ``libgomp``) ran a parallel region, the backend runs
everything on the serial entry points, and the extension's loops run on their
calling thread where Numba's pool had started (``os.register_at_fork``).
``cyrnn.set_num_threads`` caps the number of row blocks (:func:`_blocks`).

Flags
-----
Every kernel is ``nogil``, ``cache=True``, ``error_model="numpy"`` (IEEE
division, no exception branch, which would also block vectorisation) and uses
only ``fastmath={"contract", "arcp", "nsz", "afn", "reassoc"}`` (the math
functions a subset of them); never ``nnan``/``ninf``, so NaN/inf checks stay.
The sampling rule runs without fast-math (``_EXACT``). Functions on rows that
allocate nothing run without Numba's reference counting (``_JIT_ROWS``).

Compile time
------------
Numba compiles a function once per signature of argument types, and finalises
each compiled version together with everything it calls. A constant argument at
a call site is typed as a literal (``Literal[int](0)``, a signature of its own)
and a read-only array is a type of its own, so each would compile the whole
loop below it again. The calls between kernels therefore pass runtime values
(``np.int64(0)``, or a global NumPy scalar, which is typed int64), and the entry
points type as writable the inputs the fused runner passes to the same loops as
writable arrays of its own (``xp``, the states, the mask, ``dh_seq``, ``dh_T``,
``dc_T``, the cache and its plan; the loops only read them): one compiled copy of
each function per dtype. ``tests/test_numba_kernels.py::
test_one_compiled_version_per_dtype`` checks both (it compiles the loops with those
inputs read-only too, which Numba refuses for an array written to).
The nine entry points compile in 110 CPU-seconds per dtype instead of 246
(``benchmarks/bench_cold_compile.py --entry-points``, 2-core EPYC, 2026-12-01).

The on-disk cache
-----------------
Kernels compile lazily, per dtype, on first use. ``cache=True`` stores them in
``__pycache__`` next to these modules, or, where that is not writable, in
Numba's user-wide cache directory; ``NUMBA_CACHE_DIR`` overrides both. Numba
keys a cached kernel on the stamp of the file that defines it only, not on the
files of the functions it calls and compiles in: after editing ``mathfn.py``,
``gemm.py``, ``cells.py`` or ``loops.py`` in place, delete
``cyrnn/backends/numba/__pycache__/*.nb[ic]`` (an installed upgrade rewrites
every file, so it is not affected).

Numba records, with a cached kernel that contains a parallel loop, that the
parallel runtime must be started before the kernel's code is loaded (the code
calls ``numba_parallel_for`` and the pool's other entry points, which Numba
registers only then). It records that only for a kernel whose parallel callees
were compiled in the same process: a kernel compiled where its callees came
from the cache (``_infer_state_kernel`` after ``_fused_run`` was cached by an
``_infer_kernel`` compile) is cached without it, and loading that entry in a
fresh process left those symbols, and every one after them in the object, at
address 0 (a segmentation fault on the first call; reproduced with Numba
0.68.1). :func:`_start_parallel_runtime` starts the runtime before an entry
point with parallel loops is compiled or loaded (``cyrnn.backends.numba._kernel``);
``tests/test_numba_kernels.py::test_cache_entries_load_in_any_order`` runs
that sequence of processes.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

# Before any OpenMP runtime is loaded (same policy as the Cython backend).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

from ... import threads as _threads  # noqa: E402

# ----------------------------------------------------------------------------
# Threading layer and fork handling.
# ----------------------------------------------------------------------------

_THREADSAFE_LAYERS = ("omp", "tbb", "safe", "threadsafe")


def _select_threading_layer():
    """Pick a thread-safe layer before the pool starts; return the layer name."""
    from numba.np.ufunc import parallel as _npar

    if getattr(_npar, "_is_initialized", False):
        return numba.threading_layer()
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER  # the user's choice
    for name, module in (("omp", "omppool"), ("tbb", "tbbpool")):
        try:
            importlib.import_module("numba.np.ufunc." + module)
        except ImportError:
            continue
        numba.config.THREADING_LAYER = name
        return name
    numba.config.THREADING_LAYER = "workqueue"
    return "workqueue"


THREADING_LAYER = _select_threading_layer()
# Parallel launches are serialised only when the layer may be workqueue.
_par_lock = None if THREADING_LAYER in _THREADSAFE_LAYERS else threading.Lock()
_parallel_ok = True
# A budget set before this backend loaded (cyrnn.set_num_threads imports no Numba):
# Numba's count for the importing thread, as set_num_threads sets it once loaded
# (under its lock: a concurrent set_num_threads either comes first and is applied
# here, or comes after and sets Numba's count itself).
with _threads._lock:
    if _threads._num_threads is not None:
        numba.set_num_threads(min(_threads._num_threads, numba.config.NUMBA_NUM_THREADS))
    _threads._numba_ready = True


def _after_fork_in_child():
    """In a child of ``os.fork``: parallel regions off where GNU OpenMP's pool ran in
    the parent. The Cython extension loads the same ``libgomp``, so each backend's
    regions hang in a child forked after the other one's ran: the extension's record
    of its regions turns this backend's off, and Numba's started pool turns the
    extension's off (its own pthread_atfork handler sees its regions only)."""
    global _parallel_ok
    from numba.np.ufunc import parallel as _npar

    numba_pool = getattr(_npar, "_is_initialized", False) and THREADING_LAYER != "tbb"
    ext = sys.modules.get("cyrnn._cython_kernels")
    if numba_pool or (ext is not None and ext._forked()):
        _parallel_ok = False
    if numba_pool:  # the extension's loops too, now or when this child imports it
        _threads._gomp_pool_forked = True
        if ext is not None:
            ext._forked_serial()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# Imported first in a child forked after the extension's regions ran in the parent.
if getattr(sys.modules.get("cyrnn._cython_kernels"), "_forked", lambda: False)():
    _parallel_ok = False

# ----------------------------------------------------------------------------
# JIT flags.
# ----------------------------------------------------------------------------

_FASTMATH = {"contract", "arcp", "nsz", "afn", "reassoc"}
# _nrt=True explicitly: a callee inherits the caller's setting otherwise, and the
# row functions below (no reference counting) call these.
_JIT = dict(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy", _nrt=True)
_JIT_PAR = dict(_JIT, parallel=True)
# Row functions (cells, activations, own-loop products, masking, the steps of the
# time loops): they allocate nothing and no view they make outlives the call, so
# they run without Numba's reference counting (``_nrt=False``, an internal but
# long-standing Numba option); with it, every row view and array argument costs
# atomic operations, a large share of a small step.
_JIT_ROWS = dict(_JIT, _nrt=False)
# exp/sigmoid/tanh: no "reassoc" (it could merge the two-constant ln 2 reduction)
# nor "arcp"; "contract" only makes them more accurate.
_FN_OPTS = dict(fastmath={"contract", "nsz"}, error_model="numpy")
# The sampling rule: its sums and comparisons are the reference's, in the same
# order (a reassociated running sum could move a draw).
_EXACT = dict(nogil=True, cache=True, error_model="numpy")

# ----------------------------------------------------------------------------
# Tuning constants (measured on the 2-core AMD EPYC test machine).
# ----------------------------------------------------------------------------

# Per-step recurrent products go through BLAS for batches of 2+ rows with at
# least _BLAS_MIN multiply-adds (N*G*H*H), and for single rows above
# _BLAS_MIN_ROW; below, the own loops match or beat the BLAS call.
_BLAS_MIN = 4096
_BLAS_MIN_ROW = 65536
# The parallel kernels split the batch only when every block gets at least
# _PAR_MIN_ROWS rows and the call has at least _PAR_MIN_WORK multiply-adds.
_PAR_MIN_ROWS = 4
_PAR_MIN_WORK = 1 << 23  # ~8M multiply-adds: 1-3 ms of serial work
# OpenBLAS runs a GEMM with m*n*k <= 262144 on one thread (interface/gemm.c);
# mid-sized products are split into such blocks up to _THREADED_GEMM_MNK (as the
# Cython backend does), above which one threaded call pays off.
_SERIAL_GEMM_MNK = 262144
_THREADED_GEMM_MNK = 16777216

_get_num_threads = numba.get_num_threads


def _start_parallel_runtime():
    """Start Numba's parallel runtime (the threading layer chosen above), so that
    the symbols of its pool are registered before a kernel is loaded from the
    cache (see "The on-disk cache" above); a no-op once started. What Numba runs
    itself when it loads a cached kernel it knows to be parallel."""
    from numba.np.ufunc.parallel import _launch_threads

    _launch_threads()


def _blocks_of(T, N, H, GH, n):
    """The rule of :func:`_blocks` for ``n`` usable threads (also compiled into the
    fused runner, which gets ``n`` from :func:`_block_threads`)."""
    if N < 2 * _PAR_MIN_ROWS or T * N * GH * H < _PAR_MIN_WORK or n <= 1:
        return 1
    return min(n, N // _PAR_MIN_ROWS)


def _block_threads():
    """Threads row blocks may use: Numba's, capped by ``cyrnn.set_num_threads``
    (1 where parallel regions are off, e.g. in a forked child)."""
    if not _parallel_ok:
        return 1
    n = _get_num_threads()
    cap = _threads._num_threads
    return cap if cap is not None and cap < n else n


def _blocks(T, N, H, GH):
    """Row blocks for a problem: 1 (the serial entry point) or one per thread
    (capped by ``cyrnn.set_num_threads``), each of at least ``_PAR_MIN_ROWS``
    rows, when the whole call has at least ``_PAR_MIN_WORK`` multiply-adds
    (one parallel region per call, so its cost is paid once, not per step)."""
    if _blocks_of(T, N, H, GH, 2) == 1:  # too small to split: no thread query
        return 1
    return _blocks_of(T, N, H, GH, _block_threads())
