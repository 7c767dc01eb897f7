"""Running cyrnn on a Dask cluster (the optional ``dask`` extra).

``pip install "cyrnn[dask]"`` installs dask, distributed and dask-ml. Nothing
else in cyrnn imports this module, so ``import cyrnn`` never imports dask.

What works without any helper (README, "Scaling out"):

* ``GridSearchCV`` / ``RandomizedSearchCV`` over cyrnn estimators and pipelines
  under ``joblib.parallel_backend("dask")``: the fits run on the workers and the
  results are those of the sequential search with the same threads per fit.
* dask-ml's ``Incremental`` (``partial_fit`` over the blocks of a 2-D dask array)
  and ``ParallelPostFit`` (prediction), given ``predict_meta`` /
  ``predict_proba_meta``: without them dask-ml infers the output by predicting
  on an all-zero row, which for token ids is all padding and is refused.

What this module adds:

* :func:`parallel_backend`: ``joblib.parallel_backend("dask")`` for searches,
  except that a task the scheduler gives up on (a worker killed while running
  it more often than ``distributed.scheduler.allowed-failures`` allows) makes
  the search raise ``KilledWorker`` (joblib 1.6's own Dask backend then waits
  forever), that a cluster of one single-threaded worker is used (joblib runs
  ``n_jobs == 1`` in the calling process), and that scattered data get fresh
  keys.
* :class:`ThreadBudget`, a worker plugin: every task's kernels, BLAS and
  OpenMP loops use ``threads_per_task`` threads (default 1), so a worker running
  ``nthreads`` tasks at once never puts more than ``nthreads`` threads on its
  cores. :func:`thread_report` shows the counts from inside a task.
* :func:`predict_blocks` and :func:`partial_fit_blocks`: prediction and
  block-by-block ``partial_fit`` on dask arrays of any dimension chunked along
  samples (dask-ml's wrappers take only 1-D and 2-D arrays; cyrnn's 3-D
  ``(n_samples, n_steps, n_features)`` input needs these).
* :func:`predict_bag`: prediction over a ``dask.bag`` of variable-length
  sequences, in input order, from an estimator or from a saved file that each
  worker loads once (:func:`load_cached`).
"""

from __future__ import annotations

import copy
import numbers
import os
import threading

import numpy as np

try:
    import dask
    import dask.array as da
    import joblib
    from distributed.diagnostics.plugin import WorkerPlugin
    # joblib's Dask backend lives in a private module; it is the class behind
    # joblib.parallel_backend("dask").
    from joblib._dask import DaskDistributedBackend
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("cyrnn.scaleout needs the optional dask extra: "
                      "pip install 'cyrnn[dask]' (dask, distributed, dask-ml)") from exc

__all__ = ["parallel_backend", "ThreadBudget", "thread_report", "predict_blocks",
           "partial_fit_blocks", "predict_bag", "load_cached", "cache_info"]


# ----------------------------------------------------------------------------
# searches through joblib
# ----------------------------------------------------------------------------
class _DaskBackend(DaskDistributedBackend):
    """joblib's Dask backend with three changes (joblib 1.6.0, and its main branch
    of July 2026):

    * Errors of the Dask futures themselves are reported. joblib calls a batch's
      completion callback only for futures that finished; a future that errs at
      the Dask level (``KilledWorker``: not an exception of the task, which
      joblib wraps and returns as a result) only gets its exception set on a
      future nobody waits for, so ``Parallel`` -- and a search -- wait forever.
      Passing the exception to the callback makes joblib record the batch as
      failed and raise it.
    * At least 2 jobs: the Dask backend reports the cluster's thread count as
      ``n_jobs``, and joblib runs a call with ``n_jobs == 1`` sequentially in the
      calling process, so a cluster of one 1-thread worker was never used.
    * ``scatter`` data get fresh keys (``hash=False``). joblib scatters under
      keys hashed from the data; searching again with the same data, after a
      task that took them as an argument, failed with "lost dependencies" (a
      worker: "Could not find data: ['list-...']") or hung, in 3 of 3 runs of
      that sequence here, and passed with fresh keys.
    """

    def __init__(self, scatter=None, **backend_args):
        super().__init__(**backend_args)
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(f"scatter must be a list or tuple, got {type(scatter).__name__}")
        if scatter:
            self._scatter = list(scatter)  # joblib's attributes: keep the objects alive
            futures = self.client.scatter(self._scatter, broadcast=True, hash=False)
            self.data_futures = {id(x): f for x, f in zip(self._scatter, futures)}

    def effective_n_jobs(self, n_jobs):
        n = super().effective_n_jobs(n_jobs)
        return 2 if n == 1 else n

    def submit(self, func, callback=None):
        future = super().submit(func, callback)
        if callback is not None:
            def report_error(done):
                exc = done.exception()
                if exc is not None:
                    callback(exc)
            future.add_done_callback(report_error)
        return future


def parallel_backend(**backend_args):
    """Run joblib's work (scikit-learn's searches, ``cross_validate``) on Dask.

    ``with scaleout.parallel_backend(): search.fit(X, y)`` is
    ``with joblib.parallel_backend("dask"): ...`` with three fixes: when a
    worker dies running a task more often than the scheduler allows
    (``distributed.scheduler.allowed-failures``, default 3; fewer deaths are
    retried on other workers), the search raises ``distributed.KilledWorker``
    instead of waiting forever; a cluster with a single worker thread runs the
    work (joblib's own backend then runs it all in the calling process); and
    ``scatter`` data go under fresh keys (with joblib's hashed keys a repeated
    search failed with "lost dependencies").

    Parameters
    ----------
    **backend_args
        Passed to joblib's Dask backend: ``client=`` (default: the current
        client), ``scatter=[X, y]`` (send the data once to every worker; ragged
        lists are not scattered automatically), ``wait_for_workers_timeout=``,
        and keyword arguments of ``Client.submit`` (e.g. ``resources=``).

    Returns
    -------
    A context manager (``joblib.parallel_config``).
    """
    return joblib.parallel_config(backend=_DaskBackend(**backend_args))


# ----------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------
class ThreadBudget(WorkerPlugin):
    """Worker plugin: ``cyrnn.set_num_threads(threads_per_task)`` in every worker.

    A Dask worker with ``nthreads=k`` runs up to ``k`` tasks at once, one per
    thread. If each of them let cyrnn's kernels, BLAS and OpenMP use every core,
    a worker would run ``k`` times as many threads as it has cores. Registered
    on a client, this plugin sets one budget per worker process when the
    worker starts (and on every worker that joins or is restarted later):

    * cyrnn's Numba kernels: at most ``threads_per_task`` row blocks per call;
    * cyrnn's Cython kernels: ``threads_per_task`` OpenMP threads for the row chunks;
    * BLAS (NumPy's and SciPy's OpenBLAS / MKL): ``threads_per_task`` threads,
      through threadpoolctl.

    These three settings are process-wide (see :mod:`cyrnn.threads`), so they
    hold in the worker's task threads. Where Numba is installed the plugin loads
    cyrnn's Numba backend, so that Numba's thread pool starts in the plugin's
    thread: its OpenMP layer sets the OpenMP thread count of the thread that
    starts it to the pool's size, which in a task thread would undo the 1 below. Dask's nanny already starts workers with
    ``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1``
    (``distributed.nanny.pre-spawn-environ``), but Numba's pool defaults to all
    cores; the plugin covers all of them, also for workers started without a
    nanny.

    The default, 1 thread per task, suits workers that run as many tasks as
    they have cores (Dask's default). For multi-threaded fits, give each worker
    fewer task slots than cores, e.g. ``dask worker --nthreads 1`` on a 4-core
    machine with ``ThreadBudget(4)``.

    Parameters
    ----------
    threads_per_task : int, default=1
        Threads each task may use in cyrnn's kernels and in BLAS.

    Examples
    --------
    >>> from distributed import Client                      # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")             # doctest: +SKIP
    >>> client.register_plugin(ThreadBudget(1))             # doctest: +SKIP
    >>> client.run(lambda: None)                            # doctest: +SKIP
    """

    name = "cyrnn-thread-budget"

    def __init__(self, threads_per_task=1):
        if isinstance(threads_per_task, bool) or not isinstance(threads_per_task,
                                                                 numbers.Integral):
            raise TypeError(f"threads_per_task must be an int, got {threads_per_task!r}")
        if threads_per_task < 1:
            raise ValueError(f"threads_per_task must be >= 1, got {threads_per_task}")
        self.threads_per_task = int(threads_per_task)

    def setup(self, worker):
        import importlib.util

        from .threads import set_num_threads

        # Numba's OpenMP pool sets the OpenMP thread count of the thread that starts
        # it to the pool's size: started here (set_num_threads starts it where the
        # backend is loaded), task threads keep the nanny's OMP_NUM_THREADS=1.
        if importlib.util.find_spec("numba") is not None:
            try:
                importlib.import_module("cyrnn.backends.numba")
            except Exception:  # a backend that cannot load here: nothing to start
                pass
        set_num_threads(self.threads_per_task)


def thread_report():
    """Thread counts that cyrnn's work would use if it ran in the calling thread.

    Submit it as a task (``client.submit(thread_report, pure=False)``) to see
    what a task on a worker gets.

    Returns
    -------
    report : dict
        ``cyrnn`` (the budget, :func:`cyrnn.get_num_threads`), ``numba_blocks``
        (row blocks the Numba kernels may use: Numba's thread count capped by
        the budget; None without Numba), ``cython_openmp`` (OpenMP threads of
        the Cython kernels' row chunks; None without the extension), ``blas``
        (the largest thread count of the loaded BLAS libraries) and ``openmp``
        (the largest of the loaded OpenMP runtimes, for the calling thread),
        both from threadpoolctl (None when none is loaded).
    """
    import importlib

    from threadpoolctl import threadpool_info

    from .threads import get_num_threads

    budget = get_num_threads()
    try:
        numba = importlib.import_module("numba")
        importlib.import_module("cyrnn.backends.numba")
        numba_blocks = min(int(numba.get_num_threads()), budget)
    except ImportError:
        numba_blocks = None
    try:
        kernels = importlib.import_module("cyrnn.backends.cython_backend")._k
        cython = int(kernels.get_num_threads())
    except (ImportError, AttributeError):
        cython = None
    info = threadpool_info()

    def most(api):
        counts = [lib["num_threads"] for lib in info if lib["user_api"] == api]
        return max(counts) if counts else None

    return {"cyrnn": budget, "numba_blocks": numba_blocks, "cython_openmp": cython,
            "blas": most("blas"), "openmp": most("openmp")}


# ----------------------------------------------------------------------------
# dask arrays of any dimension
# ----------------------------------------------------------------------------
def _by_samples(X, name="X"):
    """``X`` as a dask array chunked along axis 0 only."""
    X = da.asarray(X)
    if X.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension")
    if any(np.isnan(s) for s in X.shape):
        raise ValueError(f"{name} has unknown chunk sizes; call compute_chunk_sizes() first")
    if any(len(c) > 1 for c in X.chunks[1:]):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    return X


def _delayed_model(estimator):
    """One graph key holding the estimator: it travels once to each worker that
    needs it, not once per task."""
    return dask.delayed(estimator, pure=False, traverse=False)


def _apply(estimator, X, method):
    return getattr(estimator, method)(X)


def predict_blocks(estimator, X, method="predict"):
    """Lazy ``estimator.<method>`` over a dask array, block by block.

    For cyrnn's 3-D input ``(n_samples, n_steps, n_features)``, which dask-ml's
    ``ParallelPostFit`` does not take; 1-D and 2-D arrays work too. The
    estimator is one key of the graph (it is sent once to each worker that
    runs a block). The output's shape and dtype come from a one-row
    prediction on ones (a valid token id and a finite feature), made here,
    not from an all-zero row.

    Parameters
    ----------
    estimator : fitted estimator or pipeline
    X : dask array (or array-like), shape (n_samples, ...)
        Chunked along samples; other axes are merged into one chunk.
    method : str, default='predict'
        'predict', 'predict_proba', 'decision_function', 'transform', ...

    Returns
    -------
    dask array of shape (n_samples, ...), chunked as ``X`` along samples.

    Examples
    --------
    >>> import dask.array as da                                          # doctest: +SKIP
    >>> X = da.random.random((100_000, 50, 3), chunks=(10_000, 50, 3))   # doctest: +SKIP
    >>> predict_blocks(fitted_lstm, X).compute()                         # doctest: +SKIP
    """
    X = _by_samples(X)
    fn = getattr(estimator, method)
    probe = np.asarray(fn(np.ones((1,) + X.shape[1:], dtype=X.dtype)))
    model = _delayed_model(estimator)
    parts = [da.from_delayed(dask.delayed(_apply, pure=False)(model, block, method),
                             shape=(n,) + probe.shape[1:], dtype=probe.dtype,
                             meta=probe[:0])
             for block, n in zip(X.to_delayed().ravel(), X.chunks[0])]
    return da.concatenate(parts, axis=0)


def _partial_fit_block(estimator, X, y, sample_weight, fit_params):
    # A copy: the input is another task's result, which a retry may read again.
    estimator = copy.deepcopy(estimator)
    if len(X):
        if sample_weight is not None:
            fit_params = dict(fit_params, sample_weight=sample_weight)
        estimator.partial_fit(X, y, **fit_params)
    return estimator


def partial_fit_blocks(estimator, X, y, *, sample_weight=None, compute=True, **fit_params):
    """Train with ``partial_fit`` over the blocks of dask arrays, in order.

    What dask-ml's ``Incremental.fit`` does, for arrays of any dimension (cyrnn's
    3-D input included): one task per block, each continuing from the previous
    one's estimator, so the result is that of calling ``partial_fit`` on the
    blocks one after the other in one process. The blocks stay where they are
    computed; the estimator (parameters as arrays, a few hundred kB for
    typical sizes) travels between tasks.

    Parameters
    ----------
    estimator : estimator with ``partial_fit``
        Not modified: a fitted copy is returned.
    X : dask array (or array-like), shape (n_samples, ...)
    y : dask array (or array-like), shape (n_samples, ...)
        Rechunked to ``X``'s blocks along samples.
    sample_weight : dask array (or array-like) of shape (n_samples,), default=None
    compute : bool, default=True
        False: return the ``dask.delayed`` estimator instead.
    **fit_params
        Passed to every ``partial_fit`` call, e.g. ``classes=`` for classifiers.

    Returns
    -------
    estimator : the fitted copy (or a Delayed of it)
    """
    X = _by_samples(X)
    blocks = X.chunks[0]

    def along(a, name):
        a = _by_samples(a, name)
        if a.shape[0] != X.shape[0]:
            raise ValueError(f"{name} has {a.shape[0]} samples, X has {X.shape[0]}")
        return list(a.rechunk({0: blocks}).to_delayed().ravel())

    ys = along(y, "y")
    sws = along(sample_weight, "sample_weight") if sample_weight is not None \
        else [None] * len(blocks)
    fitted = _delayed_model(copy.deepcopy(estimator))
    step = dask.delayed(_partial_fit_block, pure=False)
    for xb, yb, wb in zip(X.to_delayed().ravel(), ys, sws):
        fitted = step(fitted, xb, yb, wb, fit_params)
    return fitted.compute() if compute else fitted


# ----------------------------------------------------------------------------
# ragged sequences in bags, saved models loaded once per worker
# ----------------------------------------------------------------------------
_cache_lock = threading.Lock()
_cache = {}          # (path, mtime_ns, size) -> loaded object
_cache_loads = 0     # files read by load_cached in this process


def load_cached(path):
    """``cyrnn.load(path)``, read once per process and file version.

    On a worker, every task scoring with the same saved model shares one
    loaded copy (cyrnn's safe format: arrays + JSON, no pickle). A file
    rewritten in place (other modification time or size) is read again, and
    replaces the older copy.

    Parameters
    ----------
    path : str or os.PathLike
        Readable by every worker (a shared file system, or the same path on
        every machine).

    Returns
    -------
    The loaded estimator (shared: do not fit it).
    """
    global _cache_loads
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            from .persistence import load

            model = load(path)
            for old in [k for k in _cache if k[0] == path]:
                del _cache[old]
            _cache[key] = model
            _cache_loads += 1
        return model


def cache_info():
    """What :func:`load_cached` holds in this process.

    Returns
    -------
    info : dict
        ``loads`` (files read so far) and ``paths`` (the files held).
    """
    with _cache_lock:
        return {"loads": _cache_loads, "paths": sorted(k[0] for k in _cache)}


def _empty_output(model, method):
    """What ``model.<method>`` gives for no sequences: a zero-row array of its output's
    shape and dtype (labels keep the classes' dtype), so that the partitions of a bag
    concatenate; an empty list where outputs are per-sequence arrays (per step)."""
    from . import sequences as S

    steps = getattr(model, "steps", None)
    est = steps[-1][1] if steps else model  # an estimator or a cyrnn.scoring scorer
    spec = getattr(est, "_spec", None)
    if spec is None or spec["return_sequences"]:
        return []
    raw = np.zeros((0, spec["n_outputs"]))  # the model's outputs for no rows
    classes = getattr(est, "classes_", None)
    if classes is None:
        return S.regression_output(raw, spec) if method == "predict" else []
    binary = spec["target"]["binary"]
    if method == "predict":
        return S.class_labels(S.class_probabilities(raw, binary), classes)
    if method == "predict_proba":
        return S.class_probabilities(raw, binary)
    if method == "predict_log_proba":
        return S.class_log_probabilities(raw, binary)
    return []


def _predict_partition(sequences, model, method):
    sequences = list(sequences)
    if isinstance(model, str):
        model = load_cached(model)
    if not sequences:
        return _empty_output(model, method)
    # An array partition (rows = predictions) travels as one buffer, not as
    # one pickled NumPy scalar per sequence; ragged per-step outputs are a list.
    return getattr(model, method)(sequences)


def predict_bag(model, sequences, method="predict"):
    """Lazy prediction over a ``dask.bag`` of variable-length sequences.

    Each partition is predicted in one call (cyrnn batches it by length), and
    the output bag has one prediction per sequence, in input order, partitioned
    like ``sequences``.

    Parameters
    ----------
    model : fitted estimator or pipeline, a ``cyrnn.scoring`` scorer, or str / os.PathLike
        An object becomes one graph key, sent once to each worker that needs it.
        A path to a file written by ``estimator.save`` is loaded on the workers
        with :func:`load_cached`: once per worker process, not once per task.
    sequences : dask.bag.Bag
        Elements are sequences as the estimator takes them in a list:
        ``(n_steps_i, n_features)`` arrays, or ``(n_steps_i,)`` features / token ids.
    method : str, default='predict'

    Returns
    -------
    dask.bag.Bag
        ``predict``: one label or value (or a per-step array with
        ``return_sequences``) per sequence; ``predict_proba``: one row. Each
        partition is the array (or list) the estimator returned: fetch large
        outputs as ``np.concatenate(dask.compute(*bag.to_delayed()))`` rather
        than ``bag.compute()``, which builds and sends one Python list of NumPy
        scalars (100,000 sequences: 4-5 s more in ``benchmarks/bench_dask.py``).

    Examples
    --------
    >>> import dask.bag as db                                               # doctest: +SKIP
    >>> bag = db.from_sequence(reviews, npartitions=16)                     # doctest: +SKIP
    >>> predict_bag("imdb.cyrnn", bag, "predict_proba").compute()           # doctest: +SKIP
    """
    if not hasattr(sequences, "map_partitions"):
        raise TypeError(f"sequences must be a dask.bag.Bag, got {type(sequences).__name__} "
                        "(dask.bag.from_sequence makes one)")
    if isinstance(model, (str, os.PathLike)):
        target = os.path.abspath(os.fspath(model))
    else:
        getattr(model, method)  # errors now, not on the workers
        if hasattr(model, "fit"):  # (a cyrnn.scoring scorer is fitted by construction)
            from sklearn.utils.validation import check_is_fitted
            check_is_fitted(model)
        target = _delayed_model(model)
    return sequences.map_partitions(_predict_partition, target, method)
