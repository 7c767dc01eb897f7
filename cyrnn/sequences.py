"""Sequence input, batched inference and output decoding of the estimators' models.

What the scikit-learn estimators (:mod:`cyrnn.estimators`) and the scoring entry point
(:mod:`cyrnn.scoring`) share, so that a loaded model predicts exactly as the estimator
does. NumPy only: importing this module imports neither scikit-learn nor SciPy.

* Input: :class:`SequenceData` (a 3-D array, a 2-D table or a ragged list of
  sequences, validated), :func:`as_sequences` (the checks without scikit-learn; the
  estimators run scikit-learn's ``check_array`` first, for its conventional messages,
  then :func:`sequence_table`), :func:`check_fitted_input`.
* The model: :func:`build_model` (``[Embedding] + recurrent layer + Dense`` of a fitted
  spec), :func:`n_params`, :func:`raw_outputs` (float64 outputs in groups of at most
  ``PREDICT_BATCH`` rows sorted by length).
* Outputs: :func:`class_probabilities`, :func:`class_labels`, :func:`regression_output`,
  and the task attributes read back from a file (:func:`classes_from_archive`,
  :func:`n_outputs_from_archive`).
"""

from __future__ import annotations

import collections.abc

import numpy as np

from . import _validation as V
from .batching import LengthBatcher, pad, sorted_batches
from .cells import CELL_TABLE, Cell

PREDICT_BATCH = 256     # at most this many rows per forward call at inference
# Parameters that fix the shapes (or meaning) of the learned parameters: a warm
# start or partial_fit needs them unchanged.
ARCH_KEYS = ("cell", "cell_options", "hidden_size", "num_layers", "bidirectional",
             "vocab_size", "embedding_dim", "return_sequences")
# The keys of a fitted model's spec (see BaseSequenceModel._architecture).
SPEC_KEYS = frozenset(ARCH_KEYS + ("dtype", "input", "n_outputs", "target"))


# ----------------------------------------------------------------------------
# sequence input
# ----------------------------------------------------------------------------
class SequenceData:
    """Validated sequence input (internal).

    Attributes
    ----------
    kind : {'table', 'array', 'ragged'}
        A 2-D table, a 3-D array or a list of per-sequence arrays.
    tokens : bool
        Integer token ids (for an embedding) instead of float features.
    data : ndarray or list of ndarray
        ``(n, T, F)`` floats or ``(n, T)`` ids; for 'ragged', arrays ``(T_i, F)``
        or ``(T_i,)`` ids.
    lengths : ndarray of int, shape (n,)
        Valid steps per sequence (for token tables: the span from the first to the
        last non-padding id).
    starts : ndarray of int, shape (n,)
        Where that span starts (0 except for token tables).
    n_features : int
        scikit-learn's ``n_features_in_``: the columns of a table, else the
        features per step (1 for univariate or token sequences).
    step_features : int or None
        Features per step fed to the recurrent layer (None for tokens).
    """

    def __init__(self, kind, tokens, data, lengths, starts, n_features, step_features):
        self.kind, self.tokens, self.data = kind, tokens, data
        self.lengths, self.starts = lengths, starts
        self.n_features, self.step_features = n_features, step_features

    def __len__(self):
        return len(self.lengths)

    @property
    def uniform(self):
        return self.kind != "ragged"

    @property
    def n_steps(self):
        """Steps of a table or 3-D array (None for ragged input)."""
        return self.data.shape[1] if self.uniform else None

    def subset(self, idx):
        idx = np.asarray(idx, dtype=np.intp)
        data = self.data[idx] if self.uniform else [self.data[i] for i in idx]
        return SequenceData(self.kind, self.tokens, data, self.lengths[idx], self.starts[idx],
                            self.n_features, self.step_features)

    def valid_masks(self):
        """Valid steps: (n, T) bool (None: all valid) or, for ragged, a list of bool arrays.

        Padding ids (0) of token input are not valid steps.
        """
        if self.uniform:
            return (self.data != 0) if self.tokens else None
        if self.tokens:
            return [seq != 0 for seq in self.data]
        return [np.ones(len(seq), bool) for seq in self.data]

    def step_counts(self):
        """Number of valid steps of every sequence."""
        masks = self.valid_masks()
        if masks is None:
            return np.full(len(self), self.n_steps, dtype=np.intp)
        if self.uniform:
            return masks.sum(axis=1)
        return np.array([m.sum() for m in masks], dtype=np.intp)

    def flat_steps(self, values):
        """Concatenate per-step ``values`` (shaped like the sequences) over valid steps."""
        masks = self.valid_masks()
        if self.uniform:
            values = np.asarray(values)
            if masks is None:
                return values.reshape((-1,) + values.shape[2:])
            return values[masks]
        return np.concatenate([np.asarray(v)[m] for v, m in zip(values, masks)])

    def batch(self, idx, trim=False):
        """Model input for sequences ``idx``: ``(x, lengths or None)``.

        Ragged sequences are post-padded (zeros) and come with their lengths;
        ``trim`` cuts token tables to the columns holding any non-padding id.
        """
        idx = np.asarray(idx, dtype=np.intp)
        if self.uniform:
            x = self.data[idx]
            if self.tokens and trim:
                lo = int(self.starts[idx].min())
                hi = int((self.starts[idx] + self.lengths[idx]).max())
                if lo > 0 or hi < x.shape[1]:
                    x = x[:, lo:hi]
            return x, None
        lens = self.lengths[idx]
        T = int(lens.max())
        x = pad(self.data, idx, T, dtype=np.intp if self.tokens else None)
        return x, (None if (lens == T).all() else lens)

    def batcher(self, batch_size):
        """The training batches: by length, except for equal-length float arrays."""
        if self.uniform and not self.tokens:
            return LengthBatcher(batch_size, n=len(self))
        return LengthBatcher(batch_size, self.lengths)


def _is_sequence_element(e):
    try:
        return np.ndim(e) >= 1 and not isinstance(e, (str, bytes))
    except ValueError:  # an inhomogeneous nested list: still meant as a sequence
        return True


def is_ragged(X):
    """True when ``X`` is a list (or 1-D object array) of sequences of unequal shapes.

    A 1-D object array of arrays (or a pandas Series of them, a DataFrame column) is
    always read as ragged; a list of equal-shape arrays is an ordinary 2-D table or
    3-D array.
    """
    if (not isinstance(X, np.ndarray) and getattr(X, "ndim", None) == 1
            and getattr(X, "dtype", None) == object and hasattr(X, "to_numpy")):
        X = X.to_numpy()
    if isinstance(X, np.ndarray):
        return (X.dtype == object and X.ndim == 1 and X.size > 0
                and all(_is_sequence_element(e) for e in X))
    if isinstance(X, (list, tuple)) and len(X) > 0:
        shapes = set()
        for e in X:
            if not _is_sequence_element(e):
                return False
            try:
                shapes.add(np.shape(e))
            except ValueError:
                return True
        return len(shapes) > 1
    return False


def is_sequence_list(X, tokens=False):
    """True when ``X`` is read as a list of sequences rather than as one array.

    Ragged input (:func:`is_ragged`) always is. So is a list or tuple of NumPy
    float-feature arrays of equal shapes: each array is one sequence, so a model
    fitted on such a list takes sequences of other lengths later, and a list of one
    sequence is never read as a one-row table (such a list then runs as the 3-D
    array it stacks into). Nested Python lists, and token ids, of equal lengths are
    read as one array (a table of token ids keeps its padding rules).
    """
    if is_ragged(X):
        return True
    return (not tokens and isinstance(X, (list, tuple)) and len(X) > 0
            and all(isinstance(e, np.ndarray) and e.ndim in (1, 2) for e in X))


def as_sequences(X, *, tokens=False, vocab_size=None, dtype=np.float32):
    """Validate sequence input without scikit-learn (:mod:`cyrnn.scoring`): the same
    conversion as the estimators' ``check_sequences``, with cyrnn's own messages."""
    dtype = V.check_dtype(dtype)
    if is_sequence_list(X, tokens):
        return _check_ragged(X, tokens, vocab_size, dtype)
    _refuse_strings(X)
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"X must hold real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"X is empty (shape {arr.shape})")
    if not tokens:
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("X contains NaN or infinity")
    return sequence_table(arr, tokens, vocab_size, dtype)


def sequence_table(arr, tokens, vocab_size, dtype):
    """The :class:`SequenceData` of a checked, non-empty 2-D or 3-D numeric array."""
    if arr.ndim not in (2, 3):
        raise ValueError(f"X must be 2-D (n_samples, n_steps) or 3-D (n_samples, n_steps, "
                         f"n_features), got shape {arr.shape}")
    n = arr.shape[0]
    if tokens:
        if arr.ndim != 2:
            raise ValueError(f"token ids must be a 2-D array (n_samples, n_steps) or a list of "
                             f"1-D arrays, got shape {arr.shape}")
        ids = V.check_index_array(arr, "X (token ids)", 2, vocab_size)
        nonzero = ids != 0
        has = nonzero.any(axis=1)
        if not has.all():
            raise ValueError(f"X[{int(np.argmin(has))}] has no non-padding token (all ids are 0)")
        T = ids.shape[1]
        starts = nonzero.argmax(axis=1)
        ends = T - nonzero[:, ::-1].argmax(axis=1)
        return SequenceData("table", True, ids, (ends - starts).astype(np.intp),
                            starts.astype(np.intp), T, None)
    kind = "table" if arr.ndim == 2 else "array"
    n_features = arr.shape[1] if arr.ndim == 2 else arr.shape[2]
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    with np.errstate(over="ignore"):
        arr = V.check_array(arr, "X", 3, dtype)
    T = arr.shape[1]
    return SequenceData(kind, False, arr, np.full(n, T, np.intp), np.zeros(n, np.intp),
                        n_features, arr.shape[2])


def _refuse_strings(X):
    """Values must be numbers: strings are refused even when they spell numbers, in
    arrays as in lists of sequences (whose elements go through ``V.check_array``)."""
    if isinstance(X, str | bytes):
        raise TypeError("X must be an array of numbers or a list of sequences, got a "
                        f"{type(X).__name__}")
    if (isinstance(X, dict | set | frozenset | collections.abc.Iterator)
            and not hasattr(X, "tocoo")):  # (SciPy's dok_matrix is a dict: sparse input
        # gets scikit-learn's message)
        raise TypeError("X must be an array of numbers or a list of sequences, got "
                        f"{type(X).__name__} (make a list of it first)")
    kind = getattr(getattr(X, "dtype", None), "kind", None)
    if kind is None and isinstance(X, list | tuple):
        try:
            kind = np.asarray(X).dtype.kind
        except (ValueError, TypeError):
            return  # ragged or odd: the checks below judge it
    if kind in ("U", "S") or (kind == "O" and any(
            isinstance(v, str | bytes) for v in np.asarray(X, dtype=object).ravel())):
        raise TypeError("X must hold numbers, got strings; convert them first (numeric "
                        "strings are not read as numbers, in arrays or lists)")


def _check_ragged(X, tokens, vocab_size, dtype):
    seqs, F = [], None
    for i, seq in enumerate(X):
        name = f"X[{i}]"
        if tokens:
            ids = V.check_index_array(seq, f"{name} (token ids)", 1, vocab_size)
            if not ids.any():
                raise ValueError(f"{name} has no non-padding token (all ids are 0)")
            seqs.append(ids)
            continue
        try:
            ndim = np.ndim(seq)
        except ValueError as exc:
            raise ValueError(f"{name} could not be read as an array ({exc})") from exc
        if ndim not in (1, 2):
            raise ValueError(f"{name} must be a 2-D array (n_steps, n_features) or 1-D "
                             f"(n_steps,), got {ndim} dimensions")
        arr = np.asarray(seq)
        if arr.ndim == 1:
            arr = arr[:, None]
        if F is None:
            F = arr.shape[1]
        elif arr.shape[1] != F:
            raise ValueError(f"ragged X has mismatched feature counts: {name} has "
                             f"{arr.shape[1]} features per step, X[0] has {F}")
        with np.errstate(over="ignore"):
            seqs.append(V.check_array(arr, name, 2, dtype))
    lengths = np.array([len(s) for s in seqs], dtype=np.intp)
    starts = np.zeros(len(seqs), np.intp)
    if tokens:
        return SequenceData("ragged", True, seqs, lengths, starts, 1, None)
    if (lengths == lengths[0]).all():
        # sequences of one length: one 3-D array (as np.stack would give; the same
        # batches, fits and outputs), still read as sequences, not as a table
        return SequenceData("array", False, np.stack(seqs), lengths, starts, F, F)
    return SequenceData("ragged", False, seqs, lengths, starts, F, F)


#: The keys of :func:`input_spec`.
INPUT_KEYS = frozenset({"kind", "tokens", "step_features", "n_features_in"})


def input_spec(data):
    """What :func:`check_fitted_input` needs to know about the fitted input."""
    return {"kind": data.kind, "tokens": data.tokens, "step_features": data.step_features,
            "n_features_in": data.n_features}


def check_fitted_input(data, inp, name):
    """Check new input ``data`` against the input seen in fit (:func:`input_spec`).

    A 2-D float table fitted on must come back with as many columns
    (scikit-learn's ``n_features_in_`` contract); otherwise the features per step
    must match, and the sequences may have any length. Token ids are padded
    sequences: tables of them may be padded to any width.
    """
    if data.kind == "table" and inp["kind"] == "table" and not inp["tokens"]:
        if data.n_features != inp["n_features_in"]:
            raise ValueError(f"X has {data.n_features} features, but {name} is expecting "
                             f"{inp['n_features_in']} features as input.")
    elif data.kind == "table" and not inp["tokens"] and inp["step_features"] != 1:
        raise ValueError(f"X is a 2-D table, read as one feature per step, but {name} was "
                         f"fitted on sequences of {inp['step_features']} features per step; "
                         "pass a 3-D array or a list of 2-D arrays")
    elif not data.tokens and data.step_features != inp["step_features"]:
        raise ValueError(f"X has {data.step_features} features per step, but {name} is "
                         f"expecting {inp['step_features']} features per step as input.")


def positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def n_params(spec):
    """Size of the parameter vector of ``spec``'s model, computed without building it
    (Python integers: no overflow, no allocation)."""
    row = Cell(spec["cell"], **spec["cell_options"]).row  # the options are validated
    H, L = spec["hidden_size"], spec["num_layers"]
    D = 2 if spec["bidirectional"] else 1
    if spec["vocab_size"] is not None:
        n, x = spec["vocab_size"] * spec["embedding_dim"], spec["embedding_dim"]
    else:
        n, x = 0, spec["input"]["step_features"]
    n += row.n_params(x, H, D) + (L - 1) * row.n_params(D * H, H, D)
    return n + spec["n_outputs"] * (D * H + 1)  # Dense


# ----------------------------------------------------------------------------
# the model and its outputs
# ----------------------------------------------------------------------------
def build_model(spec, rng, *, dropout=0.0, bptt_truncate=None, backend="auto"):
    """``[Embedding] + recurrent layer + Dense`` of a fitted ``spec``, drawing its
    initial values from ``rng``."""
    from . import layers
    from .model import Sequential

    dtype = np.dtype(spec["dtype"])
    out = []
    if spec["vocab_size"] is not None:
        out.append(layers.Embedding(spec["vocab_size"], spec["embedding_dim"], mask_zero=True,
                                    dtype=dtype, random_state=rng))
        in_size = spec["embedding_dim"]
    else:
        in_size = spec["input"]["step_features"]
    cls = getattr(layers, next(row.layer for row in CELL_TABLE if row.family == spec["cell"]))
    rnn = cls(in_size, spec["hidden_size"], spec["num_layers"],
              bidirectional=spec["bidirectional"], dropout=float(dropout),
              return_sequences=spec["return_sequences"], bptt_truncate=bptt_truncate,
              backend=backend, dtype=dtype, random_state=rng, **spec["cell_options"])
    out.append(rnn)
    out.append(layers.Dense(rnn.output_size, spec["n_outputs"], dtype=dtype, random_state=rng))
    return Sequential(out)


def raw_outputs(model, data, spec):
    """Float64 model outputs: (n, k), (n, T, k) or a list of (T_i, k).

    Rows are run in groups of at most ``PREDICT_BATCH`` (bounded memory); a
    single sequence is run alone, so batch-1 scoring costs one sequence.
    """
    seqs = spec["return_sequences"]
    k = spec["n_outputs"]
    n = len(data)
    if not seqs:
        out = np.empty((n, k), np.float64)
    elif data.uniform:
        out = np.empty((n, data.n_steps, k), np.float64)
    else:
        out = [None] * n
    for idx in sorted_batches(data.lengths, PREDICT_BATCH):
        b = len(idx)
        x, lengths = data.batch(idx, trim=not seqs)
        res = model.forward(x, lengths=lengths, training=False)[:b]
        if not seqs or data.uniform:
            out[idx] = res
        else:
            for j, i in enumerate(idx):
                out[i] = res[j, :data.lengths[i]].astype(np.float64)
    return out


def _each(fn, raw):
    return [fn(r) for r in raw] if isinstance(raw, list) else fn(raw)


def _sigmoid_pair(r):
    """``[1 - p, p]`` along the last axis, ``p = 1 / (1 + exp(-r))`` of the one logit
    ``r[..., :1]``."""
    p = 1.0 / (1.0 + np.exp(-r))
    return np.concatenate([1.0 - p, p], axis=-1)


def _softmax(r):
    e = np.exp(r - r.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _compiled_probabilities():
    """The compiled extension's ``probabilities`` (one call instead of five NumPy
    calls, which at batch 1 cost more than the arithmetic), or None without it."""
    global _PROBABILITIES
    if _PROBABILITIES is None:
        try:  # through the backend module: it loads the extension without scipy.linalg
            from .backends.cython_backend import probabilities
        except ImportError:  # pragma: no cover - a build without the extension
            probabilities = False
        _PROBABILITIES = probabilities
    return _PROBABILITIES or None


_PROBABILITIES = None


def _probabilities(r, binary):
    compiled = _PROBABILITIES  # (looked up once: False without the extension)
    if compiled is None:
        compiled = _compiled_probabilities()
    out = compiled(r, binary) if compiled else None
    if out is None:  # the same rule in NumPy (any other array form)
        r = np.asarray(r, np.float64)
        out = _sigmoid_pair(r) if binary else _softmax(r)
    return out


def class_probabilities(raw, binary):
    """Class probabilities (float64) of logits ``raw`` (float32 or float64; an array
    or a list of them): one sigmoid logit for two classes, softmax for more. Every
    path (estimators, scorers, fast or batched) computes them here, so they agree
    exactly (the scorers' compiled calls, ``ScoringCall``/``StepCall``, run the same
    compiled routine on their fresh outputs)."""
    if type(raw) is np.ndarray:  # (no per-call closure for the common case)
        return _probabilities(raw, binary)
    return _each(lambda r: _probabilities(r, binary), raw)


def _log_probabilities(r, binary):
    r = np.asarray(r, np.float64)
    if binary:  # log(1 - p), log p of p = sigmoid(r), without forming p
        return np.concatenate([-np.logaddexp(0.0, r), -np.logaddexp(0.0, -r)], axis=-1)
    shifted = r - r.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def class_log_probabilities(raw, binary):
    """The logarithms of :func:`class_probabilities` (float64), from the logits: finite
    where a probability rounds to 0 (log-sigmoid, log-softmax)."""
    return _each(lambda r: _log_probabilities(r, binary), raw)


def class_labels(proba, classes):
    """The most probable class of every row of ``proba`` (an array or a list)."""
    if type(proba) is np.ndarray:  # (no per-call closure for the common case)
        return classes[proba.argmax(axis=-1)]
    return _each(lambda p: classes[p.argmax(axis=-1)], proba)


def regression_output(raw, spec):
    """The regressors' predictions (float64) of outputs ``raw`` (float32 or float64):
    one target drops its axis."""
    scalar = one_target(spec)
    return _each(lambda r: np.asarray(r[..., 0] if scalar else r, np.float64), raw)


def one_target(spec):
    """Whether a regressor of ``spec`` predicts one target (its outputs' last axis is
    dropped)."""
    return spec["target"]["y_ndim"] == (2 if spec["return_sequences"] else 1)


def classes_from_archive(meta, arrays, spec):
    """The ``classes_`` a classifier saved (``meta``, ``arrays``: its task entries),
    checked against the model ``spec``."""
    if meta.get("classes") == "array":
        classes = np.asarray(arrays["classes"])
    elif meta.get("classes") == "json":
        classes = np.empty(len(meta["values"]), dtype=object)
        classes[:] = meta["values"]
    else:
        raise ValueError("the archive has no classes")
    target, C = spec["target"], len(classes)
    if classes.ndim != 1 or C < 2 or C != target["n_classes"] \
            or target["binary"] is not (C == 2) or spec["n_outputs"] != (1 if C == 2 else C) \
            or not all(a < b for a, b in zip(classes[:-1], classes[1:])):
        raise ValueError(f"classes_ in the archive do not fit the model: {classes!r}")
    return classes


def n_outputs_from_archive(meta, spec):
    """The ``n_outputs_`` a regressor saved, checked against the model ``spec``."""
    k = V.check_int(meta["n_outputs_"], "n_outputs_", minimum=1)
    target = spec["target"]
    y_ndims = (2, 3) if spec["return_sequences"] else (1, 2)
    if k != target["n_outputs"] or k != spec["n_outputs"] or target["y_ndim"] not in y_ndims \
            or (k > 1 and target["y_ndim"] == y_ndims[0]):
        raise ValueError("n_outputs_ in the archive does not fit the model")
    return k
