"""LSTMRegressor, GRURegressor, SimpleRNNRegressor."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin, _fit_context
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_array, check_is_fitted

from .. import _validation as V
from ..sequences import n_outputs_from_archive, regression_output
from .base import (BaseSequenceModel, cell_constraints, check_n_samples, check_per_step_targets,
                   compose_doc)

__all__ = ["BaseSequenceRegressor", "LSTMRegressor", "GRURegressor", "SimpleRNNRegressor"]


def _padding_ignored(Y, masks, name):
    """``Y`` (n, T, k) with its padding steps (``masks`` False) set to 0, after checking
    that every valid step is finite (NaN/inf are allowed at padding steps only)."""
    bad = masks & ~np.isfinite(Y).all(axis=-1)
    if bad.any():
        i, t = (int(v) for v in np.argwhere(bad)[0])
        where = f"sequence {i}, step {t}" if name == "y" else f"step {t}"
        raise ValueError(f"{name} contains NaN or infinity at a valid step ({where}); only "
                         "padding steps may hold them")
    return np.where(masks[..., None], Y, 0.0)

class BaseSequenceRegressor(RegressorMixin, BaseSequenceModel):
    """Regression on sequences: mean squared error, single or multi-output.

    Use :class:`LSTMRegressor`, :class:`GRURegressor` or :class:`SimpleRNNRegressor`.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # ------------------------------------------------------------------ task hooks
    def _loss_name(self, target_spec):
        return "mse"

    def _check_targets(self, data, y, sw, *, incremental, previous, classes=None):
        n = len(data)
        if not self.return_sequences:
            y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y",
                            estimator=self)
            if y.ndim not in (1, 2):
                raise ValueError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), "
                                 f"got shape {y.shape}")
            check_n_samples(n, len(y))
            Y = y.reshape(n, -1)
            W = sw
            y_ndim = y.ndim
        elif data.uniform:
            check_per_step_targets(data, y)
            masks = data.valid_masks()
            # targets at padding steps are ignored (as score and the classifiers do), so
            # they may be NaN; valid steps are checked below
            y = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64,
                            input_name="y", estimator=self, ensure_all_finite=masks is None)
            check_n_samples(n, len(y))
            if y.ndim not in (2, 3):
                raise ValueError(f"per-step y must be (n_samples, n_steps) or (n_samples, "
                                 f"n_steps, n_outputs), got shape {y.shape}")
            Y = y.reshape(n, y.shape[1], -1)
            if masks is not None:
                Y = _padding_ignored(Y, masks, "y")
            W = np.broadcast_to(sw[:, None], Y.shape[:2]) * (1 if masks is None else masks)
            y_ndim = y.ndim
        else:
            items = check_per_step_targets(data, y)
            Y, W, y_ndim = [], [], None
            masks = data.valid_masks()
            for i, item in enumerate(items):
                arr = check_array(item, ensure_2d=False, dtype=np.float64,
                                  input_name=f"y[{i}]", estimator=self,
                                  ensure_all_finite=not data.tokens)
                if arr.ndim not in (1, 2):
                    raise ValueError(f"y[{i}] must be (n_steps,) or (n_steps, n_outputs), got "
                                     f"shape {arr.shape}")
                arr2 = arr.reshape(len(arr), -1)
                if data.tokens:
                    arr2 = _padding_ignored(arr2[None], masks[i][None], f"y[{i}]")[0]
                if y_ndim is None:
                    y_ndim, k = arr.ndim + 1, arr2.shape[1]
                elif arr.ndim + 1 != y_ndim or arr2.shape[1] != k:
                    raise ValueError(f"y[{i}] has shape {arr.shape}, unlike y[0]; every "
                                     "sequence needs the same number of outputs per step")
                Y.append(arr2)
                W.append(sw[i] * masks[i])
        k = (Y[0] if isinstance(Y, list) else Y).shape[-1]
        # the squared error, computed in the model's dtype, overflows above the square
        # root of its largest value, and would read as divergence
        limit = float(np.sqrt(np.finfo(V.check_dtype(self.dtype)).max))
        largest = max(float(np.abs(a).max()) for a in (Y if isinstance(Y, list) else [Y]))
        if largest > limit:
            raise ValueError(f"y holds values too large for a {np.dtype(self.dtype)} model "
                             f"(largest magnitude {largest:.3g}; the squared error overflows "
                             f"above {limit:.3g}); scale the targets")
        if previous is not None:
            fitted = previous._spec["target"]
            if fitted["n_outputs"] != k or fitted["y_ndim"] != y_ndim:
                raise ValueError(f"y has {k} output(s) of {y_ndim} dimensions, but the fitted "
                                 f"model has {fitted['n_outputs']} of {fitted['y_ndim']}")
        target_spec = {"y_ndim": int(y_ndim), "n_outputs": int(k)}
        return Y, W, target_spec, {"n_outputs_": int(k), "_n_model_outputs": int(k)}

    def _score_flat(self, raw, y, weights, target_spec):
        # a validation split whose sample weights are all zero (early stopping on
        # mostly zero-weighted data) is scored unweighted, as the classifiers do
        return r2_score(y, raw, sample_weight=weights if weights.sum() > 0 else None)

    def _decode(self, raw):
        return regression_output(raw, self._spec)

    def _export_task(self):
        return {"n_outputs_": int(self.n_outputs_)}, {}

    def _import_task(self, meta, arrays, spec):
        return {"n_outputs_": n_outputs_from_archive(meta, spec)}

    # ------------------------------------------------------------------ API
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``X, y``, continuing from the fitted state (or starting one).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`
        y : targets, as in :meth:`fit`
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        return self._partial_fit(X, y, sample_weight)

    def predict(self, X):
        """Predict targets of sequences ``X``.

        Parameters
        ----------
        X : sequences, as in :meth:`fit`

        Returns
        -------
        y : ndarray of float64
            (n_samples,) or (n_samples, n_outputs); with ``return_sequences``,
            (n_samples, n_steps[, n_outputs]), or a list of per-sequence arrays
            for ragged ``X``.
        """
        out = self._predict_fast(X)
        return out if out is not None else self._decode(self._predict_raw(X))

    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R^2 (over all valid steps with
        ``return_sequences``; multi-output: uniform average).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`
        y : true targets, shaped like :meth:`predict`'s output
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        if not self._spec["return_sequences"]:
            return super().score(X, y, sample_weight=self._check_score_weight(X, sample_weight))
        return self._sequence_score(
            X, y, sample_weight, lambda yt, yp, w: r2_score(yt, yp, sample_weight=w))


_REG_ATTRS = """\
    n_outputs_ : int
        Number of targets (per step with ``return_sequences``).
"""
_REG_NOTES = """\
    Targets ``y``: (n_samples,) or (n_samples, n_outputs); with
    ``return_sequences=True``, (n_samples, n_steps[, n_outputs]) or a list of
    per-sequence arrays for ragged ``X``. Targets at padding steps (token id 0) are
    ignored and may be NaN. The loss is the (sample-weighted) mean squared error over
    the valid steps; :meth:`score` is R^2.

"""


def _example(cls):
    return f"""\
    >>> import numpy as np
    >>> from cyrnn import {cls}
    >>> series = np.cos(np.arange(200))
    >>> windows = np.lib.stride_tricks.sliding_window_view(series, 51)
    >>> X, y = windows[:, :50], windows[:, 50]          # 50 steps, 1 feature each
    >>> est = {cls}(hidden_size=16, optimizer="adam", learning_rate=1e-2,
    ...     max_iter=5, random_state=0).fit(X[:100], y[:100])
    >>> est.predict(X[100:103]).shape
    (3,)
"""


class LSTMRegressor(BaseSequenceRegressor):
    _cell = "lstm"
    _cell_params = ("peephole",)
    _parameter_constraints = {**BaseSequenceRegressor._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 peephole=False, vocab_size=None, embedding_dim=None, return_sequences=False,
                 optimizer="rmsprop", learning_rate=3e-3, batch_size=32, max_iter=100,
                 shuffle=True, random_state=None, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, clip_norm=None,
                 clip_value=None, bptt_truncate=None, backend="auto", n_jobs=None, verbose=0,
                 warm_start=False, dtype="float32",
                 train_compute="float32"):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.peephole = peephole
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.return_sequences = return_sequences
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.bptt_truncate = bptt_truncate
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


class GRURegressor(BaseSequenceRegressor):
    _cell = "gru"
    _cell_params = ("reset_after",)
    _parameter_constraints = {**BaseSequenceRegressor._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 reset_after=True, vocab_size=None, embedding_dim=None,
                 return_sequences=False, optimizer="rmsprop", learning_rate=3e-3,
                 batch_size=32, max_iter=100, shuffle=True, random_state=None, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 clip_norm=None, clip_value=None, bptt_truncate=None, backend="auto",
                 n_jobs=None, verbose=0, warm_start=False, dtype="float32",
                 train_compute="float32"):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.reset_after = reset_after
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.return_sequences = return_sequences
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.bptt_truncate = bptt_truncate
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


class SimpleRNNRegressor(BaseSequenceRegressor):
    _cell = "rnn"
    _cell_params = ("activation",)
    _parameter_constraints = {**BaseSequenceRegressor._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 activation="tanh", vocab_size=None, embedding_dim=None,
                 return_sequences=False, optimizer="rmsprop", learning_rate=3e-3,
                 batch_size=32, max_iter=100, shuffle=True, random_state=None, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 clip_norm=None, clip_value=None, bptt_truncate=None, backend="auto",
                 n_jobs=None, verbose=0, warm_start=False, dtype="float32",
                 train_compute="float32"):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.activation = activation
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.return_sequences = return_sequences
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.bptt_truncate = bptt_truncate
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


for _cls, _cell, _summary in [
        (LSTMRegressor, "lstm", "Sequence regression with an LSTM "
                                "(``[Embedding] -> LSTM -> Dense``)."),
        (GRURegressor, "gru", "Sequence regression with a GRU "
                              "(``[Embedding] -> GRU -> Dense``)."),
        (SimpleRNNRegressor, "rnn", "Sequence regression with an Elman RNN "
                                    "(``[Embedding] -> SimpleRNN -> Dense``).")]:
    _cls.__doc__ = compose_doc(_summary, _cell, task_params="", score="R^2",
                               task_attrs=_REG_ATTRS, notes=_REG_NOTES,
                               example=_example(_cls.__name__))
del _cls, _cell, _summary
