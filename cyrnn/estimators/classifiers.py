"""LSTMClassifier, GRUClassifier, SimpleRNNClassifier."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.exceptions import DataConversionWarning
from sklearn.metrics import accuracy_score
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted

from ..sequences import (class_labels, class_log_probabilities, class_probabilities,
                         classes_from_archive)
from .base import (BaseSequenceModel, cell_constraints, check_n_samples, check_per_step_targets,
                   compose_doc)

__all__ = ["BaseSequenceClassifier", "LSTMClassifier", "GRUClassifier", "SimpleRNNClassifier"]


def _encode(classes, values, what="y"):
    """Indices of ``values`` in the sorted ``classes``; unknown labels raise ValueError."""
    values = np.asarray(values)
    C = len(classes)
    try:
        idx = np.searchsorted(classes, values)
        ok = (idx < C) & (classes[np.minimum(idx, C - 1)] == values)
    except TypeError:  # labels of another type than the classes
        idx, ok = np.zeros(values.shape, np.intp), np.zeros(values.shape, bool)
    if not np.all(ok):
        bad = list(dict.fromkeys(values[~ok].tolist()))[:10]
        raise ValueError(f"{what} contains labels not in classes_ {classes.tolist()}: {bad}")
    return idx.astype(np.intp)


class BaseSequenceClassifier(ClassifierMixin, BaseSequenceModel):
    """Classification of sequences (or of every step): binary with one sigmoid
    logit, multiclass with softmax.

    Use :class:`LSTMClassifier`, :class:`GRUClassifier` or :class:`SimpleRNNClassifier`.
    """

    _parameter_constraints = {**BaseSequenceModel._parameter_constraints,
                              "class_weight": [dict, StrOptions({"balanced"}), None]}

    # ------------------------------------------------------------------ targets
    def _labels(self, data, y):
        """Validated labels: (structure shaped like the outputs, flat valid labels)."""
        n = len(data)
        if not self.return_sequences:
            y = check_array(y, ensure_2d=False, dtype=None, input_name="y", estimator=self)
            if y.ndim == 2 and y.shape[1] == 1:
                warnings.warn("A column-vector y was passed when a 1d array was expected. "
                              "Please change the shape of y to (n_samples, ), for example "
                              "using ravel().", DataConversionWarning, stacklevel=4)
                y = y.ravel()
            if y.ndim != 1:
                raise ValueError(f"y should be a 1d array of labels (one per sequence), got "
                                 f"an array of shape {y.shape} instead; for per-step labels "
                                 "set return_sequences=True")
            check_n_samples(n, len(y))
            check_classification_targets(y)
            return y, y
        if data.uniform:
            check_per_step_targets(data, y)
            y = check_array(y, ensure_2d=False, allow_nd=True, dtype=None, input_name="y",
                            estimator=self)
            check_n_samples(n, len(y))
            if y.ndim != 2:
                raise ValueError(f"per-step labels must be (n_samples, n_steps), got shape "
                                 f"{y.shape}")
            flat = data.flat_steps(y)
        else:
            items = check_per_step_targets(data, y)
            y = []
            for i, item in enumerate(items):
                arr = check_array(item, ensure_2d=False, dtype=None, input_name=f"y[{i}]",
                                  estimator=self)
                if arr.ndim != 1:
                    raise ValueError(f"y[{i}] must hold one label per step, got shape "
                                     f"{arr.shape}")
                y.append(arr)
            flat = data.flat_steps(y)
        check_classification_targets(flat)
        return y, flat

    def _check_targets(self, data, y, sw, *, incremental, previous, classes=None):
        name = type(self).__name__
        y, flat = self._labels(data, y)
        if previous is None:
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit")
                classes_ = unique_labels(np.asarray(classes))
            else:
                classes_ = unique_labels(flat)
            if len(classes_) < 2 and incremental:
                raise ValueError(f"classes must list at least 2 classes, got "
                                 f"{classes_.tolist()}")
            if len(classes_) < 2:
                raise ValueError(f"{name} needs samples of at least 2 classes in the data, but "
                                 f"the data contains only 1 class: {classes_.tolist()[0]!r}")
        else:
            classes_ = previous.classes_
            if classes is not None and not np.array_equal(unique_labels(np.asarray(classes)),
                                                          classes_):
                raise ValueError(f"classes={np.asarray(classes).tolist()} is not the same as "
                                 f"on the last call, was: {classes_.tolist()}")
        binary = len(classes_) == 2
        enc_flat = _encode(classes_, flat)
        cw = np.ones(len(classes_))
        if self.class_weight is not None:
            if incremental and self.class_weight == "balanced":
                raise ValueError("class_weight='balanced' is not supported for partial_fit; "
                                 "pass a dict of class weights")
            if isinstance(self.class_weight, dict):
                unknown = [k for k in self.class_weight if k not in set(classes_.tolist())]
                if unknown:
                    raise ValueError(f"class_weight has labels that are not classes "
                                     f"{classes_.tolist()}: {unknown}")
            cw = compute_class_weight(self.class_weight, classes=classes_, y=flat)
        # Encode over valid steps only: labels at padding steps are ignored.
        masks = data.valid_masks()
        if not self.return_sequences:
            Y_idx = enc_flat
            W = sw * cw[Y_idx]
            flat_w = W
        elif data.uniform:
            Y_idx = np.zeros(np.shape(y), np.intp)
            if masks is None:
                Y_idx[...] = enc_flat.reshape(Y_idx.shape)
                W = sw[:, None] * cw[Y_idx]
            else:
                Y_idx[masks] = enc_flat
                W = sw[:, None] * cw[Y_idx] * masks
            flat_w = data.flat_steps(W)
        else:
            Y_idx, W, start = [], [], 0
            for i, m in enumerate(masks):
                e = np.zeros(len(m), np.intp)
                cnt = int(m.sum())
                e[m] = enc_flat[start:start + cnt]
                start += cnt
                Y_idx.append(e)
                W.append(sw[i] * cw[e] * m)
            flat_w = data.flat_steps(W)
        if not incremental:
            weighted = np.unique(enc_flat[np.asarray(flat_w) > 0])
            if len(weighted) == 1:  # none at all: BaseSequenceModel._fit says so
                raise ValueError(f"{name} needs samples of at least 2 classes with positive "
                                 f"weight, but only class {classes_.tolist()[weighted[0]]!r} has "
                                 "samples of positive sample_weight / class_weight")
        if binary:
            Y = (Y_idx[..., None].astype(np.float64) if not isinstance(Y_idx, list)
                 else [e[:, None].astype(np.float64) for e in Y_idx])
        else:
            Y = Y_idx
        target_spec = {"binary": binary, "n_classes": int(len(classes_))}
        attrs = {"classes_": classes_, "_n_model_outputs": 1 if binary else len(classes_)}
        return Y, W, target_spec, attrs

    def _split_stratify(self, data, Y, target_spec):
        if self.return_sequences:
            return None
        return np.asarray(Y).reshape(len(data), -1)[:, 0]

    def _loss_name(self, target_spec):
        return "sigmoid_binary_cross_entropy" if target_spec["binary"] else \
            "softmax_cross_entropy"

    def _score_flat(self, raw, y, weights, target_spec):
        if target_spec["binary"]:
            correct = (raw[:, 0] > 0) == (np.asarray(y).reshape(-1) > 0.5)
        else:
            correct = raw.argmax(axis=1) == np.asarray(y).reshape(-1)
        if weights.sum() <= 0:  # a validation split of zero-weighted items only
            return float(correct.mean())
        return float(np.average(correct, weights=weights))

    # ------------------------------------------------------------------ decoding
    def _proba(self, raw):
        return class_probabilities(raw, self._spec["target"]["binary"])

    def _decode(self, raw):
        return class_labels(self._proba(raw), self.classes_)

    def _export_task(self):
        classes = self.classes_
        if classes.dtype.kind in "biufUS":
            return {"classes": "array"}, {"classes": classes}
        values = classes.tolist()
        if all(isinstance(v, (str, bool, numbers.Integral, numbers.Real)) for v in values):
            return {"classes": "json", "values": [v if isinstance(v, str) else
                                                  (v.item() if hasattr(v, "item") else v)
                                                  for v in values]}, {}
        raise TypeError(f"classes_ of dtype {classes.dtype} holding "
                        f"{sorted({type(v).__name__ for v in values})} cannot be saved without "
                        "pickle; use pickle or joblib")

    def _import_task(self, meta, arrays, spec):
        return {"classes_": classes_from_archive(meta, arrays, spec)}

    # ------------------------------------------------------------------ API
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``X, y``, continuing from the fitted state (or starting one).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`
        y : labels, as in :meth:`fit`
        classes : array-like, default=None
            All the classes; required on the first call (when not fitted yet),
            optional later (it must then equal ``classes_``).
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        return self._partial_fit(X, y, sample_weight, classes=classes)

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : sequences, as in :meth:`fit`

        Returns
        -------
        proba : ndarray of float64, shape (n_samples, n_classes)
            Columns in the order of ``classes_``. With ``return_sequences``:
            (n_samples, n_steps, n_classes), or a list of per-sequence arrays
            for ragged ``X``.
        """
        out = self._predict_fast(X)
        return out if out is not None else self._proba(self._predict_raw(X))

    def predict_log_proba(self, X):
        """Logarithms of the class probabilities, computed from the logits (finite
        where :meth:`predict_proba` rounds a probability to 0).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`

        Returns
        -------
        log_proba : ndarray of float64, shaped as :meth:`predict_proba`'s output
        """
        return class_log_probabilities(self._predict_raw(X), self._spec["target"]["binary"])

    def predict(self, X):
        """Predicted labels (the most probable class).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            With ``return_sequences``: (n_samples, n_steps), or a list of
            per-sequence arrays for ragged ``X``.
        """
        proba = self._predict_fast(X)
        if proba is not None:
            return class_labels(proba, self.classes_)
        return self._decode(self._predict_raw(X))

    def score(self, X, y, sample_weight=None):
        """Accuracy (over all valid steps with ``return_sequences``).

        Parameters
        ----------
        X : sequences, as in :meth:`fit`
        y : true labels, shaped like :meth:`predict`'s output
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        if not self._spec["return_sequences"]:
            return super().score(X, y, sample_weight=self._check_score_weight(X, sample_weight))
        return self._sequence_score(
            X, y, sample_weight, lambda yt, yp, w: accuracy_score(yt, yp, sample_weight=w))


_CLF_PARAMS = """\
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes in the loss, multiplying ``sample_weight``:
        ``{label: weight}``, or 'balanced' (inversely proportional to the class
        frequencies in ``y``; not with ``partial_fit``).
"""
_CLF_ATTRS = """\
    classes_ : ndarray of shape (n_classes,)
        The class labels (strings or numbers), sorted.
"""
_CLF_NOTES = """\
    Labels ``y`` (strings or numbers): (n_samples,); with
    ``return_sequences=True``, (n_samples, n_steps) or a list of per-sequence
    label arrays for ragged ``X``. Two classes use one sigmoid logit
    (:func:`cyrnn.losses.sigmoid_binary_cross_entropy`), more use softmax
    cross-entropy; :meth:`score` is the accuracy.

"""


def _example(cls):
    return f"""\
    >>> from sklearn.datasets import load_digits
    >>> from cyrnn import {cls}
    >>> digits = load_digits()
    >>> X = digits.data.reshape(-1, 8, 8) / 16     # 8 steps (rows) of 8 features
    >>> clf = {cls}(hidden_size=16, optimizer="adam", learning_rate=1e-2,
    ...     max_iter=3, random_state=0).fit(X[:500], digits.target[:500])
    >>> clf.predict_proba(X[500:502]).shape
    (2, 10)
"""


class LSTMClassifier(BaseSequenceClassifier):
    _cell = "lstm"
    _cell_params = ("peephole",)
    _parameter_constraints = {**BaseSequenceClassifier._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 peephole=False, vocab_size=None, embedding_dim=None, return_sequences=False,
                 optimizer="rmsprop", learning_rate=3e-3, batch_size=32, max_iter=100,
                 shuffle=True, random_state=None, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, clip_norm=None,
                 clip_value=None, bptt_truncate=None, class_weight=None, backend="auto",
                 n_jobs=None, verbose=0, warm_start=False, dtype="float32",
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
        self.class_weight = class_weight
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


class GRUClassifier(BaseSequenceClassifier):
    _cell = "gru"
    _cell_params = ("reset_after",)
    _parameter_constraints = {**BaseSequenceClassifier._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 reset_after=True, vocab_size=None, embedding_dim=None,
                 return_sequences=False, optimizer="rmsprop", learning_rate=3e-3,
                 batch_size=32, max_iter=100, shuffle=True, random_state=None, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 clip_norm=None, clip_value=None, bptt_truncate=None, class_weight=None,
                 backend="auto", n_jobs=None, verbose=0, warm_start=False, dtype="float32",
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
        self.class_weight = class_weight
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


class SimpleRNNClassifier(BaseSequenceClassifier):
    _cell = "rnn"
    _cell_params = ("activation",)
    _parameter_constraints = {**BaseSequenceClassifier._parameter_constraints,
                              **cell_constraints(_cell, _cell_params)}

    def __init__(self, *, hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 activation="tanh", vocab_size=None, embedding_dim=None,
                 return_sequences=False, optimizer="rmsprop", learning_rate=3e-3,
                 batch_size=32, max_iter=100, shuffle=True, random_state=None, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 clip_norm=None, clip_value=None, bptt_truncate=None, class_weight=None,
                 backend="auto", n_jobs=None, verbose=0, warm_start=False, dtype="float32",
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
        self.class_weight = class_weight
        self.backend = backend
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.train_compute = train_compute


for _cls, _cell, _summary in [
        (LSTMClassifier, "lstm", "Sequence classification with an LSTM "
                                 "(``[Embedding] -> LSTM -> Dense``)."),
        (GRUClassifier, "gru", "Sequence classification with a GRU "
                               "(``[Embedding] -> GRU -> Dense``)."),
        (SimpleRNNClassifier, "rnn", "Sequence classification with an Elman RNN "
                                     "(``[Embedding] -> SimpleRNN -> Dense``).")]:
    _cls.__doc__ = compose_doc(_summary, _cell, task_params=_CLF_PARAMS, score="accuracy",
                               task_attrs=_CLF_ATTRS, notes=_CLF_NOTES,
                               example=_example(_cls.__name__))
del _cls, _cell, _summary
