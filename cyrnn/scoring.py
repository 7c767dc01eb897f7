"""Production scoring: a saved model in a fresh process, called once per request.

:func:`load` reads any file cyrnn saves (the six estimators, ``CharLanguageModel``,
``Sequential``) into a :class:`Scorer`, importing only NumPy, the compiled backend it
picks and cyrnn's model code: never scikit-learn, SciPy's statistics, Numba or llvmlite
(unless the file asks for the Numba backend). A scorer predicts exactly what the saved
object predicts, and streams: :meth:`Scorer.step` runs one new time step of the whole
model in one compiled call, with the state as a value the caller keeps, so one scorer
serves many streams from many threads (the compiled calls release the GIL and keep no
state).

Example::

    scorer = cyrnn.scoring.load("model.cyrnn")
    proba = scorer.predict_proba(x)            # as the estimator's predict_proba
    state = None
    for x_t in stream:                         # x_t: (n, features), one row per stream
        y_t, state = scorer.step(x_t, state)   # y_t: the output after this step
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _validation as V
from . import persistence
from . import sequences as S
from .generation import CharSampler, read_stored_fields

__all__ = ["Scorer", "EstimatorScorer", "ClassifierScorer", "LanguageModelScorer", "load",
           "from_estimator"]

# estimator kinds -> (cell family, is a classifier)
ESTIMATORS = {f"cyrnn.{name}{task}": (family, task == "Classifier")
              for name, family in (("LSTM", "lstm"), ("GRU", "gru"), ("SimpleRNN", "rnn"))
              for task in ("Classifier", "Regressor")}
_CELL_PARAMS = {"lstm": ("peephole",), "gru": ("reset_after",), "rnn": ("activation",)}


class Scorer:
    """A model ready for scoring: :meth:`predict` and :meth:`step`.

    This base class serves a saved :class:`cyrnn.Sequential` (``kind``
    ``"cyrnn.Sequential"``): :meth:`predict` is the model's inference forward. The
    subclasses add the estimators' input handling and output post-processing
    (:class:`EstimatorScorer`, :class:`ClassifierScorer`) and the language model's
    vocabulary (:class:`LanguageModelScorer`).

    Attributes
    ----------
    kind : str
        What the file held, e.g. ``"cyrnn.LSTMClassifier"``.
    model : cyrnn.Sequential
        The network (do not change it while the scorer is in use).
    streamable : bool
        Whether :meth:`step` works (no bidirectional or ``go_backwards`` layer, which
        read a sequence from its end).
    weights : None, ``"packed"`` or ``"bfloat16"``
        The weights setting of :func:`load` (None: as saved).
    compute : ``"float32"`` or ``"bfloat16"``
        The arithmetic of the products: ``"bfloat16"`` where :func:`load` was asked
        for it and the CPU has AVX-512 BF16, else ``"float32"``.
    """

    weights = None
    compute = "float32"

    def __init__(self, model, kind="cyrnn.Sequential"):
        self.model = model
        self.kind = kind
        refusals = [layer._stream_refusal() for layer in model.recurrent_layers]
        self._no_stream = next((why for why in refusals if why is not None), None)
        self.streamable = self._no_stream is None
        self._plan = model._plan()  # None on the NumPy reference backend
        # what the one-call path of step() checks: a single recurrent layer's state,
        # float rows of the input size or (without mask_zero) token ids
        form = model._step_form() if self._plan is not None else None
        self._step_fast = None if form is None else (form[0], form[1], form[2:4], form[4])
        self._bind_fast_calls()

    def _bind_fast_calls(self):
        """Bind the compiled calls of the exact-argument paths on the plan's weights as
        they are now (:func:`load` binds them again once it has chosen the weights):
        here :meth:`step`'s (the Cython backend's ``StepCall``, post-processing
        included; None where the backend has none, which then takes
        :meth:`_fast_step`)."""
        fast = self._step_fast
        self._step_call = None
        if fast is not None:
            ids, features, (L, H), has_c = fast
            self._step_call = self._plan.step_call(self._post(), ids, features, L, H, has_c)

    def _post(self):
        """The post-processing of the outputs, as the compiled calls name it: what
        :meth:`_step_output` does (a subclass overrides both)."""
        return "raw"

    def __repr__(self):
        return f"<{type(self).__name__} of a {self.kind}>"

    def __copy__(self):  # a shallow copy shares the model, as it always did
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce_ex__(self, protocol):
        # it holds compiled call tables and packed weights; a clear error instead of
        # "can't pickle local object" (or "cannot pickle 'module' object")
        raise TypeError(f"a {type(self).__name__} cannot be pickled or deep-copied: load "
                        "the model file in each process with cyrnn.scoring.load(path) (with "
                        "multiprocessing, in the pool's initializer)")

    def predict(self, X, lengths=None):
        """The model's output for ``X`` (inference), as :meth:`Sequential.forward`."""
        return self.model.forward(X, lengths=lengths, training=False)

    def initial_state(self, n=1):
        """Zero states for ``n`` streams (``step`` also takes None for zeros)."""
        return self.model.initial_states(n)

    def step(self, x_t, state=None):
        """One new time step of every layer, in one compiled call.

        Parameters
        ----------
        x_t : (n, features) floats, or (n,) token ids when the model starts with an
            embedding: one row per stream.
        state : list, or None for zeros
            What the previous call returned (or :meth:`initial_state`): one entry per
            recurrent layer, ``h`` or ``(h, c)``, each ``(num_layers, n, hidden)``.

        Returns
        -------
        y_t : the output after this step (post-processed as :meth:`predict`'s, per row)
        state : the new state (new arrays; the one passed in is not modified)

        Stepping through a sequence gives exactly the outputs of running it whole.
        Bidirectional models and ``go_backwards`` layers cannot stream (``ValueError``).
        """
        fast = self._step_call
        if fast is not None:  # (exact arguments: one compiled call, else None)
            res = fast(self.model.params.data, x_t, state)
            if res is not None:
                return res
        if not self.streamable:
            raise ValueError(f"{self.kind} cannot stream: a recurrent layer of it "
                             f"cannot step ({self._no_stream}); use predict on whole "
                             "sequences")
        res = self._fast_step(x_t, state)
        if res is not None:
            y, state = res
        else:
            self._check_step_input(x_t)
            y, state = self.model.step(x_t, state)
        return self._step_output(y), state

    def _fast_step(self, x_t, state):
        """``Sequential.step`` without its general checks, for exact arguments (one
        recurrent layer; ``x_t`` C-contiguous of the model's dtype, or int64 ids; the
        state None or as step returned it); None for anything else and for values the
        kernel declines (``step`` then takes the checked path, which raises)."""
        fast = self._step_fast
        if fast is None or type(x_t) is not np.ndarray or not x_t.flags.c_contiguous:
            return None
        ids, features, (L, H), has_c = fast
        if ids:
            if x_t.dtype != np.int64 or x_t.ndim != 1:
                return None
        elif x_t.dtype != self.model.dtype or x_t.ndim != 2 or x_t.shape[1] != features:
            return None
        n = x_t.shape[0]
        shape = (L, n, H)
        h = c = None
        if state is not None:
            if type(state) is not list or len(state) != 1:
                return None
            st = state[0]
            if has_c:
                if type(st) is not tuple or len(st) != 2:
                    return None
                h, c = st
            else:
                h = st
            dtype = self.model.dtype
            for a in ((h, c) if has_c else (h,)):
                # NaN/inf states: the compiled call declines them (both backends)
                if (type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype
                        or not ((fl := a.flags).c_contiguous and fl.aligned)):
                    return None
        res = self._plan.step(self.model.params.data, x_t, h, c, shape)
        if res is None:
            return None
        out, h_n, c_n = res
        return out, [(h_n, c_n) if has_c else h_n]

    def _check_step_input(self, x_t):
        pass

    def _step_output(self, y):
        return y


def _column_names(X):
    """A DataFrame's column names when they are all strings, None when none is, and
    ``TypeError`` for a mix (scikit-learn's ``_get_feature_names``)."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    names = list(columns)
    kinds = sorted({"str" if isinstance(v, str) else type(v).__name__ for v in names})
    if len(kinds) > 1 and "str" in kinds:
        raise TypeError("Feature names are only supported if all input features have string "
                        f"names, but your input has {kinds} as feature name / column name "
                        "types. If you want feature names to be stored and validated, you must "
                        "convert them all to strings, by using X.columns = "
                        "X.columns.astype(str) for example. Otherwise you can remove feature / "
                        "column names from your input data, or convert them all to a "
                        "non-string data type.")
    return names if names and kinds == ["str"] else None


def _check_column_names(fitted, X, name):
    """scikit-learn's feature-name check without scikit-learn: other column names than
    ``fitted`` raise ``ValueError``; names on one side only warn."""
    names = _column_names(X)
    if fitted is None:
        if names is not None:
            warnings.warn(f"X has feature names, but {name} was fitted without feature names",
                          UserWarning, stacklevel=4)
    elif names is None:
        warnings.warn(f"X does not have valid feature names, but {name} was fitted with "
                      "feature names", UserWarning, stacklevel=4)
    elif names != list(fitted):  # scikit-learn's message
        unseen = [v for v in names if v not in set(fitted)]
        missing = [v for v in fitted if v not in set(names)]
        message = "The feature names should match those that were passed during fit.\n"
        for title, items in (("Feature names unseen at fit time:", unseen),
                             ("Feature names seen at fit time, yet now missing:", missing)):
            if items:
                message += title + "\n" + "".join(f"- {v}\n" for v in items[:5]) + (
                    "- ...\n" if len(items) > 5 else "")
        if not unseen and not missing:
            message += "Feature names must be in the same order as they were in fit.\n"
        raise ValueError(message)


def _ids_without_padding(x_t):
    """Refuse padding ids (0) in a step of a model that masks them: whole sequences
    skip padding, so a padding step would not equal any whole-sequence run."""
    ids = np.asarray(x_t)
    if ids.dtype.kind in "iu" and ids.size and not ids.all():
        raise ValueError("x_t holds the padding id 0, which is not a step (whole sequences "
                         "skip it): leave those streams out of this call")


class EstimatorScorer(Scorer):
    """A saved regressor (``LSTMRegressor``, ``GRURegressor``, ``SimpleRNNRegressor``):
    :meth:`predict` returns what the estimator's ``predict`` returns, for the same input
    (3-D arrays, 2-D tables, ragged lists), and :meth:`step` the prediction for every
    stream's sequence so far (many-to-one) or for this step (``return_sequences``).

    Attributes
    ----------
    n_features_in_ : int
        As the estimator's.
    feature_names_in_ : ndarray of str or None
        The column names of the DataFrame the estimator was fitted on (None: it was
        not); a DataFrame given to :meth:`predict` must have the same columns in the
        same order (else ``ValueError``), as for the estimator.
    """

    def __init__(self, model, kind, spec, feature_names=None):
        # (first: the base class binds the compiled calls, which read them)
        self.feature_names_in_ = (None if feature_names is None
                                  else np.asarray(feature_names, dtype=object))
        self._spec = spec
        self._name = kind.split(".")[-1]
        self.n_features_in_ = spec["input"]["n_features_in"]
        inp = spec["input"]
        # exact 3-D float input of at most PREDICT_BATCH rows: one fused call, no batching
        self._fast_features = None if inp["tokens"] else inp["step_features"]
        super().__init__(model, kind)

    def _bind_fast_calls(self):
        """Also the one compiled call of :meth:`predict` (:meth:`predict_proba` for a
        classifier) on exact input, post-processing included (the Cython backend's
        ``ScoringCall``); None where the backend has none, and for a scorer fitted on
        a DataFrame (its column-name check runs first)."""
        super()._bind_fast_calls()
        plan = self._plan
        self._fast_call = None
        if plan is not None and self._fast_features is not None \
                and self.feature_names_in_ is None:
            self._fast_call = plan.scoring_call(self._post(), self._fast_features,
                                                S.PREDICT_BATCH)

    def _post(self):  # (regression_output's rule)
        return "float64_scalar" if S.one_target(self._spec) else "float64"

    def _raw(self, X):
        """The model's outputs for ``X``, as the estimator computes them (the model's
        dtype on the one-call path, else float64; the post-processing converts)."""
        if self.feature_names_in_ is not None or (type(X) is not np.ndarray
                                                  and hasattr(X, "columns")):
            _check_column_names(self.feature_names_in_, X, self._name)
        raw = self._fast_raw(X)
        if raw is not None:
            return raw
        spec = self._spec
        data = S.as_sequences(X, tokens=spec["input"]["tokens"], vocab_size=spec["vocab_size"],
                              dtype=spec["dtype"])
        S.check_fitted_input(data, spec["input"], self._name)
        return S.raw_outputs(self.model, data, spec)

    def _fast_raw(self, X):
        """One fused call for a 3-D float array of the fitted features and at most
        ``PREDICT_BATCH`` rows (what the batched path would run in one call too); None
        for anything else, and for values the kernel declines (the full path then
        raises the validators' error)."""
        plan = self._plan
        if plan is None or type(X) is not np.ndarray or X.ndim != 3:
            return None
        shape, xdtype = X.shape, X.dtype  # (each .shape is a new tuple)
        if (shape[2] != self._fast_features or not 0 < shape[0] <= S.PREDICT_BATCH
                or shape[1] == 0 or xdtype.kind != "f"):
            return None
        model = self.model
        dtype = model.dtype
        if xdtype != dtype and not (plan.takes_float64 and xdtype == np.float64
                                    and dtype == np.float32 and X.flags.c_contiguous):
            with np.errstate(over="ignore"):
                X = X.astype(dtype)  # too large: inf, which the kernel declines
        elif not X.flags.c_contiguous:
            X = np.ascontiguousarray(X)
        # the model's dtype: the post-processing converts to float64
        return plan.call_infer(model.params.data, X)

    def predict(self, X):
        """The estimator's ``predict`` of ``X``."""
        fast = self._fast_call
        if fast is not None:  # (exact input: one compiled call, else None)
            out = fast(self.model.params.data, X)
            if out is not None:
                return out
        return S.regression_output(self._raw(X), self._spec)

    def _check_step_input(self, x_t):
        if self._spec["vocab_size"] is not None:
            _ids_without_padding(x_t)

    def _step_output(self, y):
        return S.regression_output(y, self._spec)


class ClassifierScorer(EstimatorScorer):
    """A saved classifier: :meth:`predict_proba` and :meth:`predict` return what the
    estimator's return; :meth:`step` returns class probabilities.

    Attributes
    ----------
    classes_ : ndarray
        As the estimator's.
    """

    def __init__(self, model, kind, spec, classes, feature_names=None):
        super().__init__(model, kind, spec, feature_names)
        self.classes_ = classes
        self._binary = spec["target"]["binary"]

    def predict_proba(self, X):
        """The estimator's ``predict_proba`` of ``X``."""
        fast = self._fast_call
        if fast is not None:  # (exact input: one compiled call, else None)
            out = fast(self.model.params.data, X)
            if out is not None:
                return out
        return S.class_probabilities(self._raw(X), self._binary)

    def predict_log_proba(self, X):
        """The estimator's ``predict_log_proba`` of ``X``."""
        return S.class_log_probabilities(self._raw(X), self._binary)

    def predict(self, X):
        """The estimator's ``predict`` of ``X`` (the most probable class)."""
        return S.class_labels(self.predict_proba(X), self.classes_)

    def _step_output(self, y):
        return S.class_probabilities(y, self._binary)

    def _post(self):
        return "binary" if self._spec["target"]["binary"] else "softmax"


class LanguageModelScorer(Scorer, CharSampler):
    """A saved ``CharLanguageModel``: next-character probabilities, and new text.

    :meth:`predict_proba` takes token ids ``(n, T)`` (see :meth:`encode`; the model
    was trained on sequences that start with the begin marker ``1``) and returns, for
    every step, the probabilities of the next token ``(n, T, vocab)``; :meth:`predict`
    the most probable next token ids; :meth:`step` the probabilities after one more id
    per stream. :meth:`sample` and :meth:`sample_poem` write text as the model's own
    methods do (the same code, :class:`cyrnn.generation.CharSampler`): with the same
    ``random_state``, the same texts, for a scorer loaded with the default
    ``weights=None``. With ``weights="bfloat16"`` the generation kernel reads the
    rounded weights (a draw near a boundary can then pick another character), and
    with ``"packed"`` a prefix runs through the packed kernels (float rounding).

    Attributes
    ----------
    chars_ : list of str
        The vocabulary's characters; character ``chars_[k]`` has id ``k + 3``
        (0 padding, 1 begin, 2 end).
    vocab_size_ : int
    mode_ : {'sequences', 'text'}
        What the model was trained on (as ``CharLanguageModel.mode_``).
    max_length_ : int
        Its longest training sequence (:meth:`sample`'s default length is twice it).
    loss_curve_, train_time_
        Its training history, as saved (:meth:`info` reports them).
    """

    def __init__(self, model, kind, chars, one_hot=False, mode="sequences", max_length=100,
                 loss_curve=(), train_time=0.0):
        super().__init__(model, kind)
        self._set_vocabulary(chars)
        self._one_hot = one_hot
        self.mode_, self.max_length_ = mode, max_length
        self.loss_curve_, self.train_time_ = list(loss_curve), float(train_time)
        # draws of sample() calls without random_state: fresh entropy (a scorer has
        # no seed of its own)
        self._sample_rng = np.random.default_rng()

    def _require_fitted(self):  # (loaded from a fitted model's file)
        pass

    def _network(self):
        return self.model, self._one_hot

    def _sampling_backend(self):
        return self.model.layers[1].backend

    def predict_proba(self, X, lengths=None):
        """Next-token probabilities ``(n, T, vocab)`` (float64) after every step."""
        logits = self.model.forward(X, lengths=lengths, training=False)
        return S.class_probabilities(logits, False)

    def predict(self, X, lengths=None):
        """The most probable next token id after every step ``(n, T)``."""
        return self.predict_proba(X, lengths).argmax(axis=-1)

    def _step_output(self, y):
        return S.class_probabilities(y, False)

    def _post(self):
        return "softmax"


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------
def load(path, *, backend=None, weights=None, compute=None):
    """A :class:`Scorer` for a file saved by cyrnn (an estimator's, a
    ``CharLanguageModel``'s or a ``Sequential``'s ``save``).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
    backend : str, optional
        Kernel backend of the scorer's layers (default: the one the file names,
        usually ``'auto'``).
    weights : None, ``"packed"`` or ``"bfloat16"``
        None: predictions identical to the estimator's. Calls of four rows or
        more take the packed kernels, as the estimators' calls do; a scorer
        packs its weights for them once, on the first such call (the Cython
        backend; the estimators pack per call), so streaming a batch of streams
        does not repack the model at every step. With every setting, the
        scorer's weights must not change once it is in use (calls of 4+ rows
        would keep the packed copy): load a new scorer instead. ``"packed"``: the weights are packed once,
        on the first call, into the layout of the Cython backend's kernels, which
        then serve every call, one row and one step included (faster steps; results
        equal to the estimator's up to float rounding). ``"bfloat16"``: as
        ``"packed"``, with the recurrent and Dense weights rounded to bfloat16
        (nearest even; biases, peepholes and embeddings stay float32) and kept in
        half the memory; the arithmetic stays float32, so results equal a float32
        model holding the rounded weights. Both need the Cython backend; bfloat16 a
        float32 model. README, "Weights packed once, bfloat16 weights", gives the
        speed and the accuracy measured.
    compute : None, ``"float32"`` or ``"bfloat16"``
        The arithmetic of the products (None: float32). ``"bfloat16"`` (opt-in; it
        implies ``weights="bfloat16"``): the products also round their inputs (the
        features, the hidden states) to bfloat16 and multiply-add pairs of them with
        AVX-512 BF16's dot-product instruction, accumulating in float32 (src/pgemm.h):
        on CPUs where that instruction runs at twice the float32 rate (a Zen 4)
        batches score up to about twice as fast; results move by about as much again
        as with bfloat16 weights alone (README, "bfloat16 arithmetic"). Only where the
        CPU reports AVX-512 BF16: elsewhere a RuntimeWarning says so and the scorer
        keeps float32 arithmetic on the bfloat16 weights (:attr:`Scorer.compute`
        tells which ran). A stream's steps still equal its whole sequence, and a
        row's result does not depend on the rows scored with it.

    Returns
    -------
    Scorer
        :class:`ClassifierScorer`, :class:`EstimatorScorer` (regressors),
        :class:`LanguageModelScorer` or :class:`Scorer` (``Sequential``).

    Raises
    ------
    ValueError
        Invalid, tampered or truncated file, or a kind cyrnn does not save.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if compute not in COMPUTE:
        raise ValueError(f"compute must be one of {COMPUTE}, got {compute!r}")
    if compute == "bfloat16":
        if weights == "packed":
            raise ValueError("compute='bfloat16' multiplies bfloat16 weights: use "
                             "weights='bfloat16' (or leave weights unset)")
        weights = "bfloat16"
    kind, meta, arrays = persistence.load_archive(path)
    if backend is not None:
        from .backends import check_backend_name
        check_backend_name(backend)
    try:
        if kind in ESTIMATORS:
            scorer = _estimator_scorer(kind, meta, arrays, backend)
        elif kind == "cyrnn.CharLanguageModel":
            scorer = _language_model_scorer(kind, meta, arrays, backend)
        elif kind == "cyrnn.Sequential":
            from .model_io import sequential_from_archive
            model = sequential_from_archive(meta, arrays)
            if backend is not None:
                for layer in model.recurrent_layers:
                    layer.backend = backend
            scorer = Scorer(model, kind)
        else:
            raise ValueError(f"{kind!r} is not a kind cyrnn.scoring loads")
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"invalid {kind} archive: {type(exc).__name__}: {exc}") from exc
    if weights is not None:
        _pack_weights(scorer, weights, compute == "bfloat16")
    elif scorer._plan is not None and scorer._plan.can_pack:
        # the scorer owns its model: the calls that pack per call pack once instead
        scorer._plan.use_packed_weights("native", auto=True)
    scorer._bind_fast_calls()  # on the weights chosen above
    return scorer


WEIGHTS = (None, "packed", "bfloat16")
COMPUTE = (None, "float32", "bfloat16")


def _pack_weights(scorer, weights, bf16_arithmetic=False):
    """Switch a freshly loaded scorer (which owns its model) to weights packed once
    (``bf16_arithmetic``: multiplied in bfloat16 arithmetic where the CPU can)."""
    plan = scorer._plan
    what = "compute='bfloat16' (bfloat16 weights)" if bf16_arithmetic else f"weights={weights!r}"
    if plan is None:
        names = {layer._backend().__name__.rsplit(".", 1)[-1].replace("_backend", "")
                 for layer in scorer.model.recurrent_layers}
        if not names:
            raise ValueError(f"{what} needs a model with recurrent layers (their products "
                             "are what it packs)")
        if names <= {"numpy"}:
            raise ValueError(f"{what} needs the Cython backend; this model's layers run on "
                             "the NumPy reference")
        if len(names) > 1:
            raise ValueError(f"{what} needs the Cython backend; this model's recurrent "
                             f"layers run on several backends: {sorted(names)}")
        raise ValueError(f"{what} needs a model that runs as one compiled call: an optional "
                         "Embedding, then recurrent layers, then Dense or recurrent layers "
                         "(this one has " + ", ".join(type(layer).__name__
                                                     for layer in scorer.model.layers)
                         + "; a Masking or Activation layer, or a Dense layer first, runs "
                         "layer by layer)")
    model = scorer.model
    if weights == "bfloat16" and model.dtype != np.float32:
        raise ValueError(f"{what} needs a float32 model, got {model.dtype}")
    if not plan.can_pack:
        raise ValueError(f"{what} needs the Cython backend (this model's layers run on "
                         f"{plan._mod.__name__.rsplit('.', 1)[-1]})")
    # packing happens on the first call, so the weights rounded below are the ones packed
    arithmetic = "float32"
    if bf16_arithmetic:
        if plan._mod.bf16_arithmetic_available():
            arithmetic = "bfloat16"
        else:
            import warnings
            warnings.warn("compute='bfloat16' needs a CPU with AVX-512 BF16 (and the "
                          "kernels' AVX-512 path, which CYRNN_PGEMM_ISA can turn off); this "
                          "scorer multiplies its bfloat16 weights in float32 arithmetic",
                          RuntimeWarning, stacklevel=3)
    plan.use_packed_weights("bfloat16" if weights == "bfloat16" else "native",
                            arithmetic=arithmetic)
    scorer.weights, scorer.compute = weights, arithmetic
    if weights == "bfloat16":
        data = model.params.data
        for off, size in plan.packed_weight_ranges():
            data[off:off + size] = bfloat16_round(data[off:off + size])


def bfloat16_round(a):
    """The float32 array ``a`` rounded to bfloat16 (nearest, ties to even; NaN stays
    NaN, overflow rounds to inf), as float32: the values the bfloat16 kernels read."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r[nan] = (u[nan].astype(np.uint32) >> 16 | 0x40) << 16
    return r.view(np.float32).reshape(a.shape)


def estimator_kind(cls):
    """The archive kind (``"cyrnn.GRURegressor"``, ...) of cyrnn's estimator class
    ``cls`` or the nearest one it derives from (a user's subclass), else None."""
    for base in getattr(cls, "__mro__", ()):
        kind = f"cyrnn.{base.__name__}"
        if kind in ESTIMATORS and base.__module__.startswith("cyrnn."):
            return kind
    return None


def from_estimator(estimator):
    """A :class:`Scorer` sharing a fitted estimator's network (no copy, no file); a
    subclass of a cyrnn estimator is scored as that estimator."""
    kind = estimator_kind(type(estimator))
    if kind is None or not hasattr(estimator, "model_"):
        name = type(estimator)
        raise TypeError("from_estimator needs a fitted cyrnn estimator, got "
                        f"{name.__module__}.{name.__qualname__}")
    names = estimator.__dict__.get("feature_names_in_")
    if ESTIMATORS[kind][1]:
        return ClassifierScorer(estimator.model_, kind, estimator._spec, estimator.classes_,
                                names)
    return EstimatorScorer(estimator.model_, kind, estimator._spec, names)


def _params_vector(arrays, dtype, size):
    """The stored parameter vector, checked: ``dtype``, ``(size,)``, finite."""
    params = arrays["params"]
    if params.shape != (size,) or params.dtype != dtype:
        raise ValueError(f"the parameter vector is {params.dtype} {params.shape}, the "
                         f"architecture needs {np.dtype(dtype).name} ({size},)")
    if not np.isfinite(params).all():
        raise ValueError("the parameter vector contains NaN or infinity")
    return params


def _check_estimator_spec(spec, family):
    """The checks of the estimators' loader that the model needs, without
    scikit-learn: keys, types, ranges, the cell options."""
    if not isinstance(spec, dict) or set(spec) != S.SPEC_KEYS:
        raise ValueError("the model spec does not have the expected keys")
    options = spec["cell_options"]
    if spec["cell"] != family or not isinstance(options, dict) \
            or not set(options) <= set(_CELL_PARAMS[family]):
        raise ValueError("the model spec does not match the estimator")
    from .cells import Cell
    Cell(family, **options)  # ValueError for bad option values
    tokens = spec["vocab_size"] is not None
    inp = spec["input"]
    ok = (S.positive_int(spec["hidden_size"]) and S.positive_int(spec["num_layers"])
          and isinstance(spec["bidirectional"], bool)
          and isinstance(spec["return_sequences"], bool)
          and spec["dtype"] in ("float32", "float64") and isinstance(inp, dict)
          and (not tokens or (S.positive_int(spec["vocab_size"]) and spec["vocab_size"] >= 2
                              and S.positive_int(spec["embedding_dim"])))
          and (spec["embedding_dim"] is None) != tokens
          and set(inp) == S.INPUT_KEYS
          and inp.get("kind") in ("table", "array", "ragged") and inp.get("tokens") is tokens
          and S.positive_int(inp.get("n_features_in"))
          and (inp.get("step_features") is None if tokens
               else S.positive_int(inp.get("step_features")))
          and S.positive_int(spec["n_outputs"]) and isinstance(spec["target"], dict))
    if not ok:
        raise ValueError("the model spec is inconsistent")


def _estimator_scorer(kind, meta, arrays, backend):
    family, classifier = ESTIMATORS[kind]
    if meta.get("class") != kind.split(".")[-1]:
        raise ValueError(f"the archive does not hold a {kind}")
    spec = meta["spec"]
    _check_estimator_spec(spec, family)
    params = _params_vector(arrays, np.dtype(spec["dtype"]), S.n_params(spec))
    saved = meta["params"]
    if backend is None:
        backend = saved.get("backend", "auto")
        if not isinstance(backend, str):
            raise ValueError(f"bad backend {backend!r}")
    fitted = meta.get("fitted")
    # absent in files before 2026-12-02
    names = fitted.get("feature_names_in_") if isinstance(fitted, dict) else None
    if names is not None and (not isinstance(names, list)
                              or len(names) != spec["input"]["n_features_in"]
                              or not all(isinstance(v, str) for v in names)):
        raise ValueError("feature_names_in_ must be n_features_in_ strings")
    model = S.build_model(spec, np.random.default_rng(0), backend=backend)
    model.params.data[...] = params
    if not classifier:
        S.n_outputs_from_archive(meta["task"], spec)
        return EstimatorScorer(model, kind, spec, names)
    task = {k[5:]: v for k, v in arrays.items() if k.startswith("task/")}
    return ClassifierScorer(model, kind, spec, S.classes_from_archive(meta["task"], task, spec),
                            names)


def _language_model_scorer(kind, meta, arrays, backend):
    from . import layers

    if meta.get("class") != "CharLanguageModel":
        raise ValueError("the archive does not hold a CharLanguageModel")
    def network(p):
        """The checked network options of the parameters ``p``."""
        family = p.get("cell", "lstm")
        if family not in _CELL_PARAMS:
            raise ValueError(f"bad cell {family!r}")
        H = V.check_int(p.get("hidden_size", 64), "hidden_size", minimum=1)
        L = V.check_int(p.get("num_layers", 1), "num_layers", minimum=1)
        E = V.check_int(p.get("embedding_dim", 32), "embedding_dim", minimum=1,
                        allow_none=True)
        peephole = p.get("peephole", False)
        if not isinstance(peephole, bool) or (peephole and family != "lstm"):
            raise ValueError(f"bad peephole option {peephole!r} for cell {family!r}")
        return family, H, L, E, peephole, V.check_dtype(p.get("dtype", "float32"))

    p = meta["params"]
    network(p)  # the parameters are checked as cyrnn.load checks them
    arch = meta.get("architecture")  # the network as fitted (absent before 2026-12-02)
    if arch is not None:
        if not isinstance(arch, dict) or not set(arch) <= {
                "cell", "hidden_size", "num_layers", "embedding_dim", "peephole", "dtype",
                "train_compute"}:
            raise ValueError("bad architecture entry")
        p = {**p, **arch}
    stored = read_stored_fields(meta)  # the vocabulary, mode, lengths, history
    vocab = len(stored["chars"]) + 3
    family, H, L, E, peephole, dtype = network(p)
    options = {"peephole": True} if peephole else {}
    # the count as an estimator spec of the same network (one-hot input: E = vocab)
    size = S.n_params({"cell": family, "cell_options": options, "hidden_size": H,
                       "num_layers": L, "bidirectional": False, "vocab_size": vocab,
                       "embedding_dim": vocab if E is None else E, "n_outputs": vocab,
                       "input": None})
    params = _params_vector(arrays, dtype, size)
    if backend is None:
        backend = p.get("backend", "auto")
    cls = getattr(layers, {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}[family])
    emb = layers.Embedding(vocab, vocab if E is None else E, dtype=dtype)
    rnn = cls(emb.output_size, H, L, return_sequences=True, backend=backend, dtype=dtype,
              **options)
    from .model import Sequential
    model = Sequential([emb, rnn, layers.Dense(H, vocab, dtype=dtype)])
    model.params.data[...] = params
    return LanguageModelScorer(model, kind, one_hot=E is None, **stored)
