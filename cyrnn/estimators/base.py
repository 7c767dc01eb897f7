"""BaseSequenceModel: what the six scikit-learn estimators share.

* **Input handling.** :func:`check_sequences` turns ``X`` into a
  :class:`SequenceData`: a 3-D array ``(n_samples, n_steps, n_features)``; a
  2-D table ``(n_samples, n_steps)`` (one feature per step, or token ids when an
  embedding is configured); or a list / 1-D object array of per-sequence arrays
  of different lengths (``(T_i, n_features)``, or ``(T_i,)`` for one feature or
  token ids). A 2-D *object* array of numbers is a table, as scikit-learn expects.
* **Batching by length.** Training batches come from
  :class:`cyrnn.batching.LengthBatcher`: pools of shuffled sequences sorted by
  length, so a batch holds sequences of similar length and padding stays small;
  the batch is post-padded and ``lengths`` are passed to the model, whose masks
  make padded steps inert. Token tables (e.g. pre-padded reviews) are trimmed to
  the span of non-padding ids of each batch.
* **Training loop.** :func:`cyrnn.fitting.run_epochs` (the fit loop shared with
  ``CharLanguageModel``) runs epochs of :func:`cyrnn.training.train_step` on a
  :class:`cyrnn.Sequential` of ``[Embedding] + recurrent layer + Dense``, with
  scikit-learn's stopping rules (``tol``/``n_iter_no_change`` on the training
  loss, or on a held-out score with ``early_stopping``, restoring the best
  weights), ``warm_start``, ``partial_fit`` and a tqdm bar per epoch. A fit
  that diverges (an epoch loss above 10 times its reference, or a non-finite
  parameter: :func:`cyrnn.training.check_divergence`) raises ``ValueError``.
* **State.** Everything is validated and the new model is trained in locals;
  attributes are assigned only at the end, so a failed ``fit``/``partial_fit``
  leaves a fitted estimator unchanged. Pickling and :meth:`save` both go
  through one portable state (JSON metadata + arrays). One estimator runs one
  fit at a time (a lock; a fit from a second thread waits), while predictions
  read the committed state and may run during a fit.
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import threading
import warnings
import weakref
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import (Interval, Options, StrOptions,
                                             validate_parameter_constraints)
from sklearn.utils.validation import (_check_feature_names, _check_sample_weight,
                                      _get_feature_names, _num_samples, check_array,
                                      check_is_fitted)

from .. import _validation as V
from .. import persistence
from ..backends import BACKENDS, get_backend
from ..batching import pad
from ..cells import CELL_TABLE, resolve
from ..losses import get_loss
from ..model import TRAIN_COMPUTE
from ..optim import _SECOND_MOMENTS, get_optimizer
from ..threads import _cpu_limit, call_threads
from ..fitting import History, Progress, Stopping, run_epochs
from ..training import evaluate_loss, train_step, zero_output_loss
from ..sequences import (ARCH_KEYS, SPEC_KEYS, SequenceData, _check_ragged,  # noqa: F401
                         _refuse_strings,
                         build_model, check_fitted_input, input_spec, is_ragged,
                         is_sequence_list, n_params, positive_int, raw_outputs,
                         sequence_table)
_n_params = n_params  # the name tests use

__all__ = ["BaseSequenceModel", "SequenceData", "check_sequences", "check_fitted_input",
           "input_spec", "check_n_samples"]

# The layer class of each cell family, from the cell table.
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_ARCH_KEYS, _SPEC_KEYS = ARCH_KEYS, SPEC_KEYS


# ----------------------------------------------------------------------------
# sequence input (SequenceData and the checks without scikit-learn: cyrnn.sequences)
# ----------------------------------------------------------------------------
def check_sequences(X, *, tokens=False, vocab_size=None, dtype=np.float32, estimator=None):
    """Validate sequence input and convert it to a :class:`SequenceData`.

    Parameters
    ----------
    X : 3-D array, 2-D array, or list / 1-D object array of per-sequence arrays
    tokens : bool
        Read values as token ids in ``[0, vocab_size)`` (0 = padding).
    vocab_size : int, needed when ``tokens``
    dtype : float dtype of the float features
    estimator : estimator or None, for error messages

    Raises
    ------
    ValueError
        Empty input, NaN/inf, bad shapes, ragged feature counts, ids out of range,
        a token sequence without any non-padding id.
    TypeError
        Strings (even numeric ones), or ``X`` given as a dict, a set or an iterator.
    """
    dtype = V.check_dtype(dtype)
    if is_sequence_list(X, tokens):
        return _check_ragged(X, tokens, vocab_size, dtype)
    _refuse_strings(X)
    # scikit-learn's checks give the conventional messages (sparse, complex, 1-D,
    # empty, NaN); cyrnn's then convert to the compute dtype.
    arr = check_array(X, dtype="numeric" if tokens else (np.float64, np.float32),
                      allow_nd=True, ensure_all_finite=True, input_name="X",
                      estimator=estimator)
    return sequence_table(arr, tokens, vocab_size, dtype)


def check_per_step_targets(data, y, name="y"):
    """Split per-step targets ``y`` into per-sequence arrays matching ``data`` (ragged X)
    or check that an array ``y`` has one row per step (tables and 3-D arrays).

    Returns an ndarray ``(n, T, ...)`` for uniform ``data``, else a list of
    ``(T_i, ...)`` arrays (not converted: the caller validates values).
    """
    if data.uniform:
        shape = np.shape(y)
        if len(shape) < 2 or shape[1] != data.n_steps:
            raise ValueError(f"with return_sequences=True, {name} needs one target per step: "
                             f"shape ({len(data)}, {data.n_steps}) or ({len(data)}, "
                             f"{data.n_steps}, n_outputs), got {shape}")
        return y
    if not isinstance(y, (np.ndarray, list, tuple)):
        raise ValueError(f"with return_sequences=True and ragged X, {name} must be a list of "
                         "per-sequence target arrays")
    items = list(y)
    if len(items) != len(data):
        raise ValueError(f"X and {name} have inconsistent numbers of samples: {len(data)} and "
                         f"{len(items)}")
    for i, (item, T) in enumerate(zip(items, data.lengths)):
        shape = np.shape(item)
        if len(shape) < 1 or shape[0] != T:
            raise ValueError(f"{name}[{i}] needs one target per step of X[{i}] ({T} steps), "
                             f"got shape {shape}")
    return items


def check_n_samples(n_x, n_y):
    if n_x != n_y:
        raise ValueError(f"X and y have inconsistent numbers of samples: {n_x} and {n_y}")


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _total_weight(W):
    """Sum of item weights ``W`` (an array, or a list of per-sequence arrays)."""
    return float(W.sum()) if isinstance(W, np.ndarray) else float(sum(w.sum() for w in W))


_FIT_LOCKS = weakref.WeakKeyDictionary()  # estimator -> its fit lock
_FIT_LOCKS_GUARD = threading.Lock()


def _fit_lock(estimator):
    """The lock that serialises ``estimator``'s fits (kept outside the estimator, so
    that clones, pickles and copies get their own)."""
    with _FIT_LOCKS_GUARD:
        lock = _FIT_LOCKS.get(estimator)
        if lock is None:
            lock = _FIT_LOCKS[estimator] = threading.RLock()
        return lock


def _finite(value, name, loss=False):
    """A saved number of the fitted state, as a float: finite, and not negative for a
    loss (a crafted -inf or -1e300 best loss would stop every later fit at once)."""
    return V.check_float(value, name, minimum=0.0 if loss else None)


def _finite_list(values, name, loss=False):
    """A saved list of such numbers (a string would be read one digit per entry)."""
    if not isinstance(values, list):
        raise ValueError(f"{name} must be a list of numbers, got {type(values).__name__}")
    return [_finite(v, name, loss) for v in values]


def _rng_from_state(state):
    try:
        name = state["bit_generator"]
        if name not in _BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {name!r}")
        rng = np.random.Generator(getattr(np.random, name)())
        rng.bit_generator.state = state
        # NumPy does not range-check the position in the state's buffer, and a draw
        # from a crafted one reads out of bounds (a crash): checked before any draw
        stored = rng.bit_generator.state
        if name == "MT19937":
            position, limit = stored["state"]["pos"], 624
        elif name == "Philox":
            position, limit = stored["buffer_pos"], 4
        else:
            position, limit = 0, 0
        if not 0 <= int(position) <= limit:
            raise ValueError(f"the {name} buffer position {position} is outside [0, {limit}]")
    except (KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"bad random generator state: {exc}") from exc
    return rng


def _batch_targets(data, Y, W, idx, x, seqs):
    """Targets and weights of the sequences ``idx`` batched as ``x``: padded to its
    steps for ragged per-step targets."""
    if seqs and not data.uniform:
        T = x.shape[1]
        return pad(Y, idx, T), pad(W, idx, T, dtype=np.float64)
    return Y[idx], W[idx]


def _encode_param(value):
    """JSON form of a constructor parameter (for :meth:`save`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, type) and value in (np.float32, np.float64):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.dtype) and value in (np.float32, np.float64):
        return {"__np_dtype__": value.name}
    if isinstance(value, dict):
        return {"__items__": [[_encode_param(k), _encode_param(v)] for k, v in value.items()]}
    if isinstance(value, (np.random.Generator, np.random.RandomState)):
        return None  # the generator's state is saved with the fitted state
    raise TypeError(f"cannot store parameter value {value!r} without pickle")


def _decode_param(value):
    if isinstance(value, dict):
        if "__dtype__" in value:
            return {"float32": np.float32, "float64": np.float64}[value["__dtype__"]]
        if "__np_dtype__" in value:
            return np.dtype({"float32": np.float32, "float64": np.float64}[value["__np_dtype__"]])
        if "__items__" in value:
            return {_decode_param(k): _decode_param(v) for k, v in value["__items__"]}
        raise ValueError(f"bad parameter encoding {value!r}")
    if isinstance(value, list):
        raise ValueError(f"bad parameter encoding {value!r}")
    return value


# ----------------------------------------------------------------------------
# the estimator base
# ----------------------------------------------------------------------------
class BaseSequenceModel(BaseEstimator):
    """Base class of the recurrent estimators; use a subclass such as
    :class:`cyrnn.LSTMRegressor` or :class:`cyrnn.GRUClassifier`.

    It holds everything but the task: input handling (3-D arrays, 2-D tables,
    ragged lists bucketed by length), the model ``[Embedding] + recurrent layer +
    Dense``, the training loop (minibatches, ``tol``/``n_iter_no_change``,
    ``early_stopping``, ``warm_start``, ``partial_fit``, tqdm progress), threads,
    pickling and :meth:`save`. Subclasses set ``_cell`` ('rnn', 'lstm' or 'gru')
    and implement target encoding, the loss, output decoding and the score.

    Parameters
    ----------
    **params
        See the concrete estimators: every parameter is stored verbatim by
        ``__init__`` and validated by ``fit`` (``_parameter_constraints``).

    Attributes
    ----------
    model_ : cyrnn.Sequential
        The trained network.
    n_features_in_, loss_curve_, validation_scores_, best_loss_, \
best_validation_score_, n_iter_
        See the concrete estimators.

    Examples
    --------
    >>> import numpy as np
    >>> from cyrnn.estimators import BaseSequenceModel, GRURegressor
    >>> issubclass(GRURegressor, BaseSequenceModel)
    True
    """

    _cell = None

    _parameter_constraints: dict = {
        "hidden_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "num_layers": [Interval(numbers.Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "vocab_size": [None, Interval(numbers.Integral, 2, None, closed="left")],
        "embedding_dim": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "return_sequences": ["boolean"],
        "optimizer": [StrOptions({"rmsprop", "adam", "sgd"})],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state", np.random.Generator],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                             Options(numbers.Real, {np.inf})],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "clip_norm": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "clip_value": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "bptt_truncate": [None, Interval(numbers.Integral, 0, None, closed="left")],
        "backend": [StrOptions({"auto", *BACKENDS})],
        "n_jobs": [None, Interval(numbers.Integral, 1, None, closed="left"),
                   Interval(numbers.Integral, None, -1, closed="right")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "dtype": [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}),
                  Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
        "train_compute": [StrOptions(set(TRAIN_COMPUTE))],
    }

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ task hooks
    def _loss_name(self, target_spec):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_targets(self, data, y, sample_weight, *, incremental, previous, classes=None):
        """Validate and encode ``y``: returns (Y_enc, item_weights, target_spec, attrs)."""
        raise NotImplementedError  # pragma: no cover

    def _score_flat(self, raw, y_enc, weights, target_spec):  # pragma: no cover - abstract
        raise NotImplementedError

    def _split_stratify(self, data, Y, target_spec):
        return None

    # ------------------------------------------------------------------ config
    # The cell options a concrete estimator exposes as parameters (keywords of its
    # family's layer class; their constraints derive from the cell table).
    _cell_params = ()

    def _cell_options(self):
        return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else v)
                for k, v in ((k, getattr(self, k)) for k in self._cell_params)}

    def _config(self):
        """Checks beyond ``_parameter_constraints``; returns the run configuration."""
        if self.embedding_dim is not None and self.vocab_size is None:
            raise ValueError("embedding_dim is set but vocab_size is None: the embedding "
                             "needs vocab_size (ids 0 .. vocab_size - 1, 0 = padding)")
        get_backend(self.backend)  # raises ValueError when not available here
        dtype = V.check_dtype(self.dtype).name
        if self.train_compute == "bfloat16":
            if dtype != "float32":
                raise ValueError("train_compute='bfloat16' needs dtype='float32'")
            if self.backend not in ("auto", "cython"):
                raise ValueError("train_compute='bfloat16' needs the Cython backend "
                                 f"(backend='cython' or 'auto'), got backend={self.backend!r}")
        return dict(dtype=dtype, tokens=self.vocab_size is not None)

    def _architecture(self, cfg, data, n_outputs):
        tokens = cfg["tokens"]
        return {
            "cell": self._cell,
            "cell_options": self._cell_options(),
            "hidden_size": int(self.hidden_size),
            "num_layers": int(self.num_layers),
            "bidirectional": bool(self.bidirectional),
            "vocab_size": None if not tokens else int(self.vocab_size),
            "embedding_dim": None if not tokens else int(self.embedding_dim
                                                         or self.hidden_size),
            "return_sequences": bool(self.return_sequences),
            "dtype": cfg["dtype"],
            "input": input_spec(data),
            "n_outputs": int(n_outputs),
        }

    def _build_model(self, spec, rng):
        """``[Embedding] + recurrent layer + Dense`` for ``spec``, drawing from ``rng``."""
        model = build_model(spec, rng, dropout=self.dropout, bptt_truncate=self.bptt_truncate,
                            backend=self.backend)
        if self.train_compute == "bfloat16" and model.dtype == np.float32:
            model.train_compute = "bfloat16"  # (fit checked the pair; a loaded file may not)
        return model

    def _rebuild_model(self, spec, rng, params):
        """The model of ``spec`` holding ``params``; ``rng`` (kept for dropout) ends in
        the state it started in: building only draws throwaway initial values."""
        state = rng.bit_generator.state
        model = self._build_model(spec, rng)
        rng.bit_generator.state = state
        params = np.asarray(params)
        if params.shape != model.params.data.shape or params.dtype != model.params.dtype:
            raise ValueError(f"the parameter vector is {params.dtype} {params.shape}, the "
                             f"architecture needs {model.params.dtype} {model.params.data.shape}")
        if not np.isfinite(params).all():
            raise ValueError("the parameter vector contains NaN or infinity")
        model.params.data[...] = params
        return model

    def _make_optimizer(self, model):
        return get_optimizer(self.optimizer, model, lr=float(self.learning_rate),
                             clip_norm=self.clip_norm, clip_value=self.clip_value)

    def _threads(self):
        """Threads of the kernels for ``n_jobs``, for this call and thread only
        (:func:`cyrnn.threads.call_threads`), or nothing."""
        n = self.n_jobs
        if n is None:
            return nullcontext()
        if n < 0:  # joblib's rule, counted on the CPUs this process may run on
            n = max(1, _cpu_limit() + 1 + n)
        return call_threads(int(n))

    # ------------------------------------------------------------------ input
    def _check_X(self, X, spec=None):
        """Validate ``X``; with a fitted ``spec``, also its consistency with the fit."""
        if spec is None:
            return check_sequences(X, tokens=self.vocab_size is not None,
                                   vocab_size=self.vocab_size, dtype=self.dtype, estimator=self)
        # scikit-learn's rule for a DataFrame's column names (feature_names_in_): other
        # names than in fit raise, names on one side only warn
        _check_feature_names(self, X, reset=False)
        inp = spec["input"]
        data = check_sequences(X, tokens=inp["tokens"], vocab_size=spec["vocab_size"],
                               dtype=spec["dtype"], estimator=self)
        check_fitted_input(data, inp, type(self).__name__)
        return data

    def _check_sample_weight(self, sample_weight, n):
        if sample_weight is None:
            return np.ones(n, dtype=np.float64)
        sw = _check_sample_weight(sample_weight, np.empty(n), dtype=np.float64,
                                  ensure_non_negative=True)
        if sw.size and sw.max() > np.finfo(np.float64).max / (4.0 * sw.size):
            # finite weights whose sums would overflow (1e308 each gave a NaN loss
            # curve): only their ratios count, in the losses and the scores alike
            sw = sw / sw.max()
        return sw

    def _check_score_weight(self, X, sample_weight):
        """A many-to-one score's ``sample_weight``, checked as in fit (finite, not
        negative, one per sequence), as the per-step score checks it."""
        if sample_weight is None:
            return None
        return self._check_sample_weight(sample_weight, _num_samples(X))

    # ------------------------------------------------------------------ raw outputs
    def _raw(self, model, data, spec):
        """Float64 model outputs (:func:`cyrnn.sequences.raw_outputs`)."""
        return raw_outputs(model, data, spec)

    def _predict_raw(self, X):
        """Outputs for ``predict_log_proba``, and for ``predict``/``predict_proba``
        where :meth:`_predict_fast` declines (the decoding converts them to float64):
        one fused call for exact input (a 3-D float array of at most 256 rows,
        ``n_jobs=None``: the scorer's fast path,
        :meth:`cyrnn.scoring.EstimatorScorer._fast_raw`, which also converts other
        float dtypes and non-contiguous arrays), else :meth:`_raw_predict`."""
        scorer = self._fast_scorer()
        if scorer is not None:
            raw = scorer._fast_raw(X)
            if raw is not None:
                return raw
        return self._raw_predict(X)[1]

    def _predict_fast(self, X):
        """``predict``'s result (a classifier's: ``predict_proba``'s) for exact input in
        one compiled call, post-processing included (the scorer's ``ScoringCall``,
        :meth:`cyrnn.scoring.EstimatorScorer._bind_fast_calls`); None for any other
        input, and where there is no such call (the caller decodes
        :meth:`_predict_raw`'s outputs)."""
        scorer = self._fast_scorer()
        fast = None if scorer is None else scorer._fast_call
        return None if fast is None else fast(scorer.model.params.data, X)

    def _fast_scorer(self):
        """The scorer of the fitted network that serves the one-call paths, or None
        (unfitted, ``n_jobs`` set, or fitted on a DataFrame, whose column names
        :meth:`_raw_predict` checks)."""
        model = self.__dict__.get("model_")
        if model is None or self.n_jobs is not None or "feature_names_in_" in self.__dict__:
            return None
        # the scorer is kept on the model (a cycle the collector frees with it; a
        # WeakKeyDictionary kept it alive: the scorer holds its key) and rebuilt
        # when the layers' backend changes (its plan is that backend's)
        backend = tuple([getattr(layer, "backend", None) for layer in model.layers])
        entry = model.__dict__.get("_estimator_scorer")
        if entry is None or entry[0] != backend:
            from ..scoring import from_estimator
            entry = model._estimator_scorer = (backend, from_estimator(self))
        return entry[1]

    def _raw_predict(self, X):
        check_is_fitted(self)
        data = self._check_X(X, self._spec)
        with self._threads():
            return data, self._raw(self.model_, data, self._spec)

    def set_params(self, **params):
        """Set parameters (scikit-learn's ``set_params``).

        On a fitted (or loaded) estimator a new ``backend`` applies to the fitted
        network at once, so predictions run there from the next call (say a model
        fitted on 'cuda', scored where there is no GPU, after
        ``set_params(backend='auto')``); a backend that is unknown or not available
        here raises ValueError (TypeError for a non-string) before anything changes.
        Scorers from :func:`cyrnn.scoring.from_estimator` share that network (one made
        before the change keeps its compiled plan for its one-call path: make a new
        one). Other parameters, and every parameter of an unfitted estimator, are
        checked by ``fit``, as scikit-learn does; assigning ``est.backend`` directly
        moves nothing until the next fit."""
        fitted = "model_" in self.__dict__ and "backend" in params
        if fitted:
            get_backend(params["backend"])
        try:
            return super().set_params(**params)
        finally:  # (also when another key raised after backend was set)
            if fitted:
                for layer in self.model_.layers:
                    if hasattr(layer, "backend"):
                        layer.backend = self.backend

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train on sequences ``X`` and targets ``y``.

        Parameters
        ----------
        X : array of shape (n_samples, n_steps, n_features) or (n_samples, n_steps), \
or list of arrays of shape (n_steps_i, n_features) or (n_steps_i,)
            Sequences. A 2-D array has one feature per step (token ids when
            ``vocab_size`` is set); a list holds sequences of different lengths.
        y : array-like
            One target per sequence (``return_sequences=False``), else one per step:
            (n_samples, n_steps[, n_outputs]) or a list of per-sequence arrays.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the sequences in the loss (and in the validation score).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _fitted(self):
        return hasattr(self, "model_")

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        # One fit at a time per estimator: two warm starts from two threads would
        # both continue the same history, and one's epochs would be lost.
        # Predictions do not wait (they read the fitted state, replaced at the end).
        with _fit_lock(self):
            return self._fit_locked(X, y, sample_weight, incremental, classes)

    def _fit_locked(self, X, y, sample_weight, incremental, classes=None):
        cfg = self._config()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        warm = self._fitted() and (incremental or self.warm_start)
        previous = self._spec if warm else None
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")
        data = self._check_X(X, previous)
        names = self.__dict__.get("feature_names_in_") if warm else _get_feature_names(X)
        sw = self._check_sample_weight(sample_weight, len(data))
        Y, W, target_spec, attrs = self._check_targets(
            data, y, sw, incremental=incremental, previous=self if warm else None,
            classes=classes)
        if not _total_weight(W) > 0:
            raise ValueError("no sample has a positive weight (sample_weight times "
                             "class_weight); nothing to learn from")
        spec = self._architecture(cfg, data, attrs.pop("_n_model_outputs"))
        spec["target"] = target_spec
        if warm:
            changed = [key for key in _ARCH_KEYS if previous[key] != spec[key]]
            if previous["dtype"] != spec["dtype"]:
                changed.append("dtype")
            if changed:
                raise ValueError(f"{'partial_fit' if incremental else 'warm_start'} needs the "
                                 f"fitted architecture, but {changed} changed; fit again with "
                                 "warm_start=False")
            spec["input"] = previous["input"]
        run = self._start_run(spec, warm, incremental)
        with self._threads():
            self._train(run, data, Y, W, sw, target_spec, incremental)
        self._commit(run, dict(attrs, feature_names_in_=names))
        return self

    def _start_run(self, spec, warm, incremental):
        """A fresh model and history, or a copy of the fitted ones to continue from."""
        if not warm:
            rng = V.check_rng(self.random_state)
            if rng is self.random_state:
                # The caller's Generator is consumed (one draw, like a RandomState),
                # never kept: the fitted model must not share a mutable object with it.
                rng = np.random.default_rng(int(rng.integers(np.iinfo(np.int64).max)))
            model = self._build_model(spec, rng)
            return SimpleNamespace(spec=spec, rng=rng, model=model,
                                   optimizer=self._make_optimizer(model), history=History())
        rng = copy.deepcopy(self._rng)
        model = self._rebuild_model(spec, rng, self.model_.params.data)
        optimizer = self._make_optimizer(model)
        if incremental and self._optimizer_state is not None \
                and self._optimizer_state[0] == self.optimizer:
            state = dict(self._optimizer_state[1])
            state["lr"] = float(self.learning_rate)
            optimizer.load_state_dict(state)
        scores = self.validation_scores_
        history = History(loss_curve=list(self.loss_curve_),
                          validation_scores=None if scores is None else list(scores),
                          best_loss=np.inf if self.best_loss_ is None else self.best_loss_,
                          best_validation_score=self.best_validation_score_)
        return SimpleNamespace(spec=spec, rng=rng, model=model, optimizer=optimizer,
                               history=history)

    def _validation_split(self, run, data, Y, target_spec):
        n = len(data)
        idx = np.arange(n)
        stratify = self._split_stratify(data, Y, target_spec)
        seed = int(run.rng.integers(np.iinfo(np.int32).max))
        split = None
        if stratify is not None:
            try:
                split = train_test_split(idx, test_size=self.validation_fraction,
                                         random_state=seed, stratify=stratify)
            except ValueError:  # (MLPClassifier raises; a small dataset trains on)
                warnings.warn("early_stopping: the validation split cannot be stratified by "
                              "class (a class has fewer than 2 samples, or the split has "
                              "fewer samples than there are classes); it is not stratified",
                              UserWarning, stacklevel=7)  # (the caller of fit)
        if split is None:
            split = train_test_split(idx, test_size=self.validation_fraction,
                                     random_state=seed)
        train, val = split
        if len(val) < 2 or len(train) < 1:
            raise ValueError(f"The validation set is too small ({len(val)} of {n} samples). "
                             "Increase validation_fraction or the size of your dataset.")
        return train, val

    def _take(self, values, idx):
        return values[idx] if isinstance(values, np.ndarray) else [values[i] for i in idx]

    def _train(self, run, data, Y, W, sw, target_spec, incremental):
        """Run epochs on ``run`` (never on the fitted state): :func:`cyrnn.fitting.run_epochs`
        over length-bucketed batches (:class:`cyrnn.batching.LengthBatcher`)."""
        loss = get_loss(self._loss_name(target_spec))  # item-shaped weights
        seqs = run.spec["return_sequences"]
        score = None  # the held-out score of early stopping
        if self.early_stopping:
            train, val_idx = self._validation_split(run, data, Y, target_spec)
            vdata, vY, vsw = data.subset(val_idx), self._take(Y, val_idx), sw[val_idx]
            data, Y, W = data.subset(train), self._take(Y, train), self._take(W, train)
            if not _total_weight(W) > 0:
                raise ValueError("all samples left for training after the validation split "
                                 "have zero sample_weight")

            score = functools.partial(self._score_encoded, spec=run.spec, data=vdata, Y=vY,
                                      sw=vsw, target_spec=target_spec)

        batcher = data.batcher(min(int(self.batch_size), len(data)))

        def step(idx):
            x, lengths = data.batch(idx, trim=not seqs)
            yb, wb = _batch_targets(data, Y, W, idx, x, seqs)
            m = float(np.sum(wb))
            if m <= 0:
                return None  # only zero-weight items: nothing to learn from
            return train_step(run.model, run.optimizer, loss, x, yb, lengths=lengths,
                              sample_weight=wb), m

        epochs = 1 if incremental else int(self.max_iter)
        result = run_epochs(
            run.model, run.history, epochs=epochs,
            batches=lambda: batcher.epoch(run.rng, self.shuffle), step=step,
            start_loss=lambda: self._start_loss(run, data, Y, W, loss),
            baseline=lambda: self._zero_loss(run, data, Y, W, loss),
            stopping=Stopping(self.tol, self.n_iter_no_change, score),
            progress=Progress(int(self.verbose) > 0, epochs, numbered=not incremental))
        if not result.stopped and not incremental:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({epochs}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning)

    def _start_loss(self, run, data, Y, W, loss):
        """``run.model``'s loss before this call trains it (inference mode; a fresh
        fit's untrained model, a warm start's or ``partial_fit``'s current one) on up to
        256 evenly spaced sequences of this call's data; None if they all have zero
        weight."""
        seqs = run.spec["return_sequences"]
        n = len(data)
        idx = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.intp))
        x, lengths = data.batch(idx, trim=not seqs)
        yb, wb = _batch_targets(data, Y, W, idx, x, seqs)
        if not float(np.sum(wb)) > 0:
            return None
        return evaluate_loss(run.model, loss, x, yb, lengths=lengths, sample_weight=wb)

    def _zero_loss(self, run, data, Y, W, loss):
        """The loss of an all-zero output on every training sequence (no forward),
        in blocks of 256 combined by their weight as an epoch combines its batches'
        losses: the scale of the targets, :func:`check_divergence`'s baseline (on a
        sample of rows, one large target outside it made a sound fit look diverged);
        None if all have zero weight."""
        seqs = run.spec["return_sequences"]
        total = mass = 0.0
        for i0 in range(0, len(data), 256):
            idx = np.arange(i0, min(i0 + 256, len(data)))
            x, lengths = data.batch(idx, trim=not seqs)
            yb, wb = _batch_targets(data, Y, W, idx, x, seqs)
            m = float(np.sum(wb))
            if m > 0:
                total += zero_output_loss(run.model, loss, x, yb, lengths=lengths,
                                          sample_weight=wb) * m
                mass += m
        return total / mass if mass > 0 else None

    def _score_encoded(self, model, spec, data, Y, sw, target_spec):
        raw = self._raw(model, data, spec)
        if spec["return_sequences"]:
            raw = data.flat_steps(raw)
            Y = data.flat_steps(Y)
            sw = np.repeat(sw, data.step_counts())
        return float(self._score_flat(raw, Y, sw, target_spec))

    def _commit(self, run, attrs):
        """Assign the fitted state (the only place fit/partial_fit touch ``self``)."""
        history = run.history
        state = {
            "model_": run.model,
            "n_features_in_": run.spec["input"]["n_features_in"],
            "loss_curve_": history.loss_curve,
            "n_iter_": len(history.loss_curve),
            "validation_scores_": history.validation_scores,
            "best_loss_": None if self.early_stopping else float(history.best_loss),
            "best_validation_score_": (float(history.best_validation_score)
                                       if self.early_stopping else None),
            "_spec": run.spec,
            "_rng": run.rng,
            "_optimizer_state": (self.optimizer, run.optimizer.state_dict()),
        }
        state.update(attrs)
        if state.get("feature_names_in_", 0) is None:  # fitted without column names
            del state["feature_names_in_"]
            self.__dict__.pop("feature_names_in_", None)
        self.__dict__.update(state)

    # ------------------------------------------------------------------ partial_fit
    def _partial_fit(self, X, y, sample_weight=None, classes=None):
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    # ------------------------------------------------------------------ scoring
    def _sequence_score(self, X, y, sample_weight, flat_score):
        """Score over all valid steps (``return_sequences=True``)."""
        data, raw = self._raw_predict(X)
        y = check_per_step_targets(data, y)
        if data.uniform:
            y = np.asarray(y)
            check_n_samples(len(data), len(y))
        sw = self._check_sample_weight(sample_weight, len(data))
        pred = self._decode(raw)
        y_flat = data.flat_steps(y)
        p_flat = data.flat_steps(pred)
        return flat_score(y_flat, p_flat, np.repeat(sw, data.step_counts()))

    def _decode(self, raw):  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence
    def _export_task(self):
        """(metadata, arrays) of the task's fitted attributes (classes_, n_outputs_)."""
        return {}, {}

    def _import_task(self, meta, arrays, spec):
        """Fitted task attributes from :meth:`_export_task`'s output, as a dict."""
        return {}

    def _export_state(self):
        """(metadata, arrays): the fitted estimator in JSON + arrays (no pickle)."""
        check_is_fitted(self)
        opt_name, opt_state = self._optimizer_state
        opt_arrays = sorted(k for k in opt_state if k not in ("step", "lr"))
        task_meta, task_arrays = self._export_task()
        meta = {
            "class": type(self).__name__,
            "params": {k: _encode_param(v) for k, v in self.get_params(deep=False).items()},
            "spec": self._spec,
            "fitted": {
                "n_features_in_": int(self.n_features_in_),
                "n_iter_": int(self.n_iter_),
                "loss_curve_": [float(v) for v in self.loss_curve_],
                "validation_scores_": (None if self.validation_scores_ is None
                                       else [float(v) for v in self.validation_scores_]),
                "best_loss_": None if self.best_loss_ is None else float(self.best_loss_),
                "best_validation_score_": (None if self.best_validation_score_ is None
                                           else float(self.best_validation_score_)),
                "rng_state": self._rng.bit_generator.state,
                "feature_names_in_": (None if "feature_names_in_" not in self.__dict__
                                      else [str(v) for v in self.feature_names_in_]),
            },
            "optimizer": {"name": opt_name, "step": int(opt_state["step"]),
                          "lr": float(opt_state["lr"]), "arrays": opt_arrays},
            "task": task_meta,
        }
        arrays = {"params": self.model_.params.data.copy()}
        arrays.update({f"optimizer/{k}": opt_state[k] for k in opt_arrays})
        arrays.update({f"task/{k}": v for k, v in task_arrays.items()})
        return meta, arrays

    def _check_spec(self, spec, size):
        """Check a model spec read from a file before anything is built from it:
        the keys and value types that :meth:`_architecture` produces, and a
        parameter count equal to ``size`` (the size of the stored vector, so
        a crafted architecture cannot make loading allocate more than the file)."""
        if not isinstance(spec, dict) or set(spec) != _SPEC_KEYS:
            raise ValueError("the model spec does not have the expected keys")
        options = spec["cell_options"]
        if spec["cell"] != self._cell or not isinstance(options, dict) \
                or not set(options) <= set(self._cell_params):
            raise ValueError(f"the model spec is not a {type(self).__name__}'s")
        # options added since the file was written take their defaults
        defaults = inspect.signature(type(self)).parameters
        options.update({k: defaults[k].default for k in self._cell_params if k not in options})
        arch = {k: spec[k] for k in ("hidden_size", "num_layers", "bidirectional",
                                     "return_sequences", "vocab_size", "embedding_dim")}
        validate_parameter_constraints(
            {k: self._parameter_constraints[k] for k in (*arch, *options)},
            {**arch, **options}, caller_name="the archive's model spec")
        inp, tokens = spec["input"], spec["vocab_size"] is not None
        if (spec["dtype"] not in ("float32", "float64") or not isinstance(inp, dict)
                or (spec["embedding_dim"] is None) == tokens
                or inp.get("kind") not in ("table", "array", "ragged")
                or inp.get("tokens") is not tokens
                or not positive_int(inp.get("n_features_in"))
                or not (inp.get("step_features") is None if tokens
                        else positive_int(inp.get("step_features")))
                or not positive_int(spec["n_outputs"])
                or not isinstance(spec["target"], dict)):
            raise ValueError("the model spec is inconsistent")
        # The spec must be one that fit builds: the architecture of an estimator with
        # the spec's own settings. The constructor parameters may differ from it
        # (``set_params`` after fit changes them, not the fitted model, as in
        # scikit-learn and a pickle); a later warm start or partial_fit compares
        # them with the spec and refuses a changed architecture.
        fitted_input = SimpleNamespace(kind=inp["kind"], tokens=tokens,
                                       n_features=inp["n_features_in"],
                                       step_features=inp["step_features"])
        as_fitted = copy.copy(self)
        as_fitted.__dict__.update(
            {k: spec[k] for k in ("hidden_size", "num_layers", "bidirectional",
                                  "return_sequences", "vocab_size", "embedding_dim")},
            **options)
        cfg = {"dtype": spec["dtype"], "tokens": tokens}
        want = as_fitted._architecture(cfg, fitted_input, spec["n_outputs"])
        disagree = sorted(k for k in want if want[k] != spec[k])
        if disagree:
            raise ValueError(f"the model spec is inconsistent on {disagree}")
        if n_params(spec) != size:
            raise ValueError(f"the parameter vector has {size} values, the architecture "
                             f"needs {n_params(spec)}")

    def _import_state(self, meta, arrays):
        """Rebuild the fitted state from :meth:`_export_state`'s output, checking it."""
        try:
            spec, fitted, opt = meta["spec"], meta["fitted"], meta["optimizer"]
            params = arrays["params"]
            if params.ndim != 1:
                raise ValueError(f"the parameter vector has shape {params.shape}")
            self._check_spec(spec, params.size)
            rng = _rng_from_state(fitted["rng_state"])
            model = self._rebuild_model(spec, rng, params)
            size = model.params.size
            opt_state = {"step": int(opt["step"]), "lr": float(opt["lr"])}
            for k in opt["arrays"]:
                arr = np.asarray(arrays[f"optimizer/{k}"])
                if arr.shape != (size,) or arr.dtype != model.params.dtype:
                    raise ValueError(f"optimizer state {k!r} is {arr.dtype} {arr.shape}, "
                                     f"expected {model.params.dtype} ({size},)")
                opt_state[k] = V.check_values(arr, f"optimizer state {k!r}", (size,),
                                              arr.dtype)
                if k in _SECOND_MOMENTS and (arr < 0).any():
                    raise ValueError(f"optimizer state {k!r} holds negative values")
            task = self._import_task(meta["task"], {k[5:]: v for k, v in arrays.items()
                                                    if k.startswith("task/")}, spec)
            scores = fitted["validation_scores_"]
            best_loss, best_score = fitted["best_loss_"], fitted["best_validation_score_"]
            if fitted["n_features_in_"] != spec["input"]["n_features_in"]:
                raise ValueError("n_features_in_ disagrees with the model spec")
            if fitted["n_iter_"] != len(fitted["loss_curve_"]):
                raise ValueError("n_iter_ disagrees with the length of loss_curve_")
            names = fitted.get("feature_names_in_")  # absent in files before 2026-12-02
            if names is not None:
                if (not isinstance(names, list) or len(names) != spec["input"]["n_features_in"]
                        or not all(isinstance(v, str) for v in names)):
                    raise ValueError("feature_names_in_ must be n_features_in_ strings")
                task["feature_names_in_"] = np.asarray(names, dtype=object)
            attrs = dict(
                model_=model, _spec=spec, _rng=rng,
                _optimizer_state=(str(opt["name"]), opt_state),
                n_features_in_=int(fitted["n_features_in_"]),
                n_iter_=int(fitted["n_iter_"]),
                loss_curve_=_finite_list(fitted["loss_curve_"], "loss_curve_", loss=True),
                validation_scores_=(None if scores is None
                                    else _finite_list(scores, "validation_scores_")),
                best_loss_=(None if best_loss is None
                            else _finite(best_loss, "best_loss_", loss=True)),
                best_validation_score_=(None if best_score is None
                                        else _finite(best_score, "best_validation_score_")),
                **task)
        except ValueError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
            raise ValueError(f"inconsistent estimator state: {type(exc).__name__}: {exc}") \
                from exc
        self.__dict__.update(attrs)
        return self

    def save(self, path):
        """Save the fitted estimator to one file (arrays + JSON metadata, no pickle).

        Load it with :func:`cyrnn.load`; the format is described in
        :mod:`cyrnn.persistence`. The parameters, the learned weights, the
        optimizer state and the random generator's state are stored, so a loaded
        estimator predicts identically and can go on with ``partial_fit``.

        A subclass of a cyrnn estimator is refused (``TypeError``, nothing written):
        the file holds no code, so :func:`cyrnn.load` could only give back the base
        class; pickle and joblib keep the subclass.

        Parameters
        ----------
        path : str, os.PathLike or binary file object

        Returns
        -------
        path
        """
        from ..scoring import estimator_kind
        kind = estimator_kind(type(self))
        if kind != f"cyrnn.{type(self).__name__}":
            # a subclass: the file holds no code, and cyrnn.load would give back the
            # base class without the subclass's methods
            raise TypeError(f"save() stores cyrnn's own estimator classes; "
                            f"{type(self).__qualname__} derives from {kind}, whose file "
                            "cyrnn.load could not turn back into it: use pickle or joblib "
                            "(which keep the class), or save an estimator of the base "
                            "class")
        meta, arrays = self._export_state()
        persistence.save_archive(path, kind, meta, arrays)
        return path

    @classmethod
    def _from_archive(cls, meta, arrays):
        """The loader registered with :func:`cyrnn.persistence.register_loader`."""
        if not isinstance(meta, dict) or meta.get("class") != cls.__name__:
            raise ValueError(f"the archive does not hold a {cls.__name__}")
        try:
            params = {k: _decode_param(v) for k, v in meta["params"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad parameters in the archive: {exc}") from exc
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} for {cls.__name__}")
        est = cls(**params)
        try:
            est._validate_params()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid parameters in the archive: {exc}") from exc
        return est._import_state(meta, arrays)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        # The layers' parameters are views into the model's flat buffer, which
        # pickle would split into copies: store the flat vector and rebuild.
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            state["_model_params"] = model.params.data.copy()
        return state

    def __setstate__(self, state):
        state = dict(state)
        params = state.pop("_model_params", None)
        super().__setstate__(state)
        if params is not None:
            self.model_ = self._rebuild_model(self._spec, self._rng, params)


# ----------------------------------------------------------------------------
# shared documentation
# ----------------------------------------------------------------------------
_ARCH_DOC = """\
    hidden_size : int, default=32
        Units of the recurrent layer (per direction).
    num_layers : int, default=1
        Stacked recurrent layers.
    bidirectional : bool, default=False
        Also run every layer backwards in time and concatenate both directions.
    dropout : float, default=0
        Dropout between stacked recurrent layers (PyTorch's rule: no effect with
        ``num_layers=1``), during training only.
{cell}\
    vocab_size : int, default=None
        Set it to read ``X`` as integer token ids ``0 .. vocab_size - 1`` through an
        embedding (id 0 is padding: masked, so padded steps are skipped).
    embedding_dim : int, default=None
        Size of the token vectors (None: ``hidden_size``); needs ``vocab_size``.
    return_sequences : bool, default=False
        False: one output per sequence (many-to-one). True: one output per step
        (many-to-many); ``y`` then has one target per step.
"""

_TRAIN_DOC = """\
    optimizer : {'rmsprop', 'adam', 'sgd'}, default='rmsprop'
        Update rule (see :mod:`cyrnn.optim`).
    learning_rate : float, default=3e-3
        Step size of the optimizer. The default was 1e-3, with which
        LSTMRegressor did not fit scikit-learn's toy regression problem
        (``check_estimator``) in its 100 epochs: training R^2 0.40-0.49 on seeds
        0-2, against 0.71-0.81 at 3e-3.
    batch_size : int, default=32
        Sequences per update (capped at the number of samples). Variable-length
        input is batched by length so that padding stays small.
    max_iter : int, default=100
        Maximum number of epochs.
    shuffle : bool, default=True
        Shuffle the samples (and the order of the length buckets) every epoch.
    random_state : int, RandomState instance, numpy Generator or None, default=None
        Seeds the one ``numpy.random.Generator`` that all randomness comes from:
        initialisation, dropout, shuffling and the validation split. Pass an int
        for reproducible results. A ``RandomState`` or ``Generator`` passed in is
        consumed by each ``fit`` (one draw seeds the estimator's own generator)
        and never kept.
    tol : float, default=1e-4
        Improvement below ``tol`` for ``n_iter_no_change`` consecutive epochs
        (of the training loss, or of the validation score with
        ``early_stopping``) ends training.
    n_iter_no_change : int, default=10
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop when its score
        ({score}) stops improving, and keep the best weights. The score is weighted
        by ``sample_weight``; a held-out part whose weights are all zero is scored
        unweighted.
    validation_fraction : float, default=0.1
    clip_norm : float, default=None
        Rescale the gradient to at most this global L2 norm before each update.
    clip_value : float, default=None
        Clip every gradient entry to ``[-clip_value, clip_value]``.
    bptt_truncate : int, default=None
        Truncated backpropagation through time: a gradient a recurrent layer
        receives at a step flows back at most this many earlier steps of that
        layer (per layer: with ``num_layers`` > 1 the layers below take the
        truncated gradients as new sources). None: full BPTT.
{task}\
    backend : str, default='auto'
        Kernel backend (``cyrnn.backends.available()``; 'auto' picks the fastest).
    n_jobs : int, default=None
        Threads of cyrnn's compiled kernels (Numba's and OpenMP's) during fit and
        predict, set for the calling thread and call only: nothing process-wide
        changes, so concurrent calls do not disturb each other (BLAS's threads are
        the process's: see :func:`cyrnn.set_num_threads`). None leaves them as they
        are, -1 uses all cores. An estimator runs one fit at a time (a second fit
        from another thread waits for the first); predicting during a fit is
        allowed.
    verbose : int, default=0
        1: a tqdm progress bar per epoch (on stderr) with the loss and the
        validation score. 0: silent.
    warm_start : bool, default=False
        Continue from the fitted weights on the next ``fit`` instead of
        starting over (the architecture must not change).
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the computation. Predictions are float64 either way.
    train_compute : {'float32', 'bfloat16'}, default='float32'
        Arithmetic of the training steps' matrix products (opt-in; float32
        models on the Cython backend): 'bfloat16' rounds both operands of the
        forward's and backward's products (weight gradients included) to bfloat16
        and accumulates in float32 (AVX-512 BF16), faster at medium and large
        shapes on CPUs whose ``VDPBF16PS`` outruns float32 FMA
        (:attr:`cyrnn.Sequential.train_compute`). Parameters, cell math, loss and
        optimizer stay float32;
        ``predict`` runs float32 (serve with ``cyrnn.scoring.load(path,
        compute='bfloat16')`` for the same products). Without AVX-512 BF16 fit
        warns (RuntimeWarning) and trains in float32.
"""

_ATTRS_DOC = """\
    model_ : cyrnn.Sequential
        The trained network: ``[Embedding] + recurrent layer + Dense``.
{task}\
    n_features_in_ : int
        Number of features seen during fit: the columns of a 2-D table, else
        the features per step.
    feature_names_in_ : ndarray of str
        The column names of ``X`` when fit was given a DataFrame with string
        column names (absent otherwise); ``predict`` and ``score`` then require the
        same columns in the same order, as scikit-learn's estimators do.
    loss_curve_ : list of float
        Training loss (sample-weighted mean over the epoch) of every epoch.
    validation_scores_ : list of float or None
        Score on the held-out data after every epoch (with ``early_stopping``).
    best_loss_ : float or None
        Lowest training loss (None with ``early_stopping``).
    best_validation_score_ : float or None
        Best validation score (with ``early_stopping``; its weights are kept).
    n_iter_ : int
        Epochs run in total: by ``fit`` and by later warm-started fits and
        ``partial_fit`` calls (equals ``len(loss_curve_)``).
"""

_INPUT_DOC = """\
    Input ``X`` is a 3-D array ``(n_samples, n_steps, n_features)``; a 2-D array
    ``(n_samples, n_steps)`` (one feature per step, or token ids with
    ``vocab_size``); or a list (or 1-D object array) of arrays ``(n_steps_i,
    n_features)`` / ``(n_steps_i,)``, batched by length with masks (a list of
    NumPy arrays of features is a list of sequences even when their lengths are
    equal, then run as the 3-D array they stack into; a nested Python list of
    equal lengths, and a list of token-id arrays of equal lengths, is read as one
    2-D table). Values must be numbers: strings are refused (``TypeError``) even when
    they spell numbers, in arrays and lists alike. Such lists work as-is with
    ``cross_val_score``, ``GridSearchCV`` and ``Pipeline`` (see
    :class:`cyrnn.preprocessing.SequenceStandardScaler`).
    A 2-D table's columns are its features in scikit-learn's sense: predicting
    needs as many columns as fitting did, while 3-D arrays and lists of arrays
    may have other lengths than in fit.
"""

def _choices(names):
    return "{" + ", ".join(repr(n) for n in names) + "}"


_CELL_DOCS = {  # the cell parameters of each family, from the cell table
    "rnn": f"""\
    activation : {_choices(resolve("rnn").activations)}, default='tanh'
        Nonlinearity of the Elman cell.
""",
    "lstm": """\
    peephole : bool, default=False
        Peephole connections: the input and forget gates see ``c_{t-1}``, the
        output gate ``c_t`` (weights ``weight_peephole_l{k}``, zero-initialised).
""",
    "gru": """\
    reset_after : bool, default=True
        True: PyTorch/cuDNN's GRU (reset gate applied after the recurrent
        product); False: Cho et al.'s original.
""",
}


def cell_constraints(family, params):
    """scikit-learn parameter constraints for the cell options ``params`` of
    ``family``, from the cell table."""
    rows = [row for row in CELL_TABLE if row.family == family]
    out = {}
    for name in params:
        if name == "activation":
            out[name] = [StrOptions(set(rows[0].activations))]
        elif name == "recurrent_activation":
            out[name] = [StrOptions(set(rows[0].recurrent_activations))]
        else:
            out[name] = ["boolean"]
    return out


def compose_doc(summary, cell, *, task_params, score, task_attrs, notes, example):
    """The numpydoc docstring of a concrete estimator."""
    return (f"{summary}\n\n{_INPUT_DOC}\n{notes}"
            "    Parameters\n    ----------\n"
            + _ARCH_DOC.replace("{cell}", _CELL_DOCS[cell])
            + _TRAIN_DOC.replace("{task}", task_params).replace("{score}", score)
            + "\n    Attributes\n    ----------\n"
            + _ATTRS_DOC.replace("{task}", task_attrs)
            + "\n    See Also\n    --------\n"
            "    cyrnn.preprocessing.pad_sequences, cyrnn.preprocessing.SequenceStandardScaler,\n"
            "    cyrnn.plot_learning_curve, cyrnn.load\n"
            f"\n    Examples\n    --------\n{example}")
