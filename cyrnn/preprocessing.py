"""Preprocessing for sequence input: padding, and per-feature standardisation.

* :func:`pad_sequences` pads or truncates a list of sequences into one array,
  with Keras's arguments and behaviour.
* :class:`SequenceStandardScaler` standardises every feature over all valid
  steps of all sequences; it takes 3-D arrays, 2-D tables (one feature per step)
  and lists of per-sequence arrays of different lengths, and returns the same
  kind it got, so it fits in a :class:`~sklearn.pipeline.Pipeline` in front of
  cyrnn's estimators.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._set_output import ADAPTERS_MANAGER, _get_output_config
from sklearn.utils.validation import (_check_feature_names, _check_feature_names_in,
                                      check_is_fitted)

from . import _validation as V
from .estimators.base import check_fitted_input, check_sequences, input_spec, is_sequence_list

__all__ = ["pad_sequences", "SequenceStandardScaler"]


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """Pad (or truncate) sequences to one length, like Keras's ``pad_sequences``.

    Parameters
    ----------
    sequences : list of array-like
        Sequences of shape (n_steps_i,) or (n_steps_i, ...); the trailing shape is
        taken from the first non-empty one and must be the same for all.
    maxlen : int, default=None
        Length of the output; None: the longest sequence.
    dtype : str or dtype, default='int32'
        Output dtype (Keras's default: token ids; pass 'float32' for features,
        since floats are truncated towards zero otherwise).
    padding : {'pre', 'post'}, default='pre'
        Pad before or after each sequence.
    truncating : {'pre', 'post'}, default='pre'
        Drop the beginning or the end of sequences longer than ``maxlen``.
    value : float or str, default=0.0
        Padding value (0: the padding id that cyrnn's embeddings mask).

    Returns
    -------
    ndarray of shape (n_sequences, maxlen, ...)

    Examples
    --------
    >>> from cyrnn.preprocessing import pad_sequences
    >>> pad_sequences([[1, 2, 3], [4, 5], [6]], maxlen=2)
    array([[2, 3],
           [4, 5],
           [0, 6]], dtype=int32)
    >>> pad_sequences([[1, 2, 3], [4]], padding="post", truncating="post", maxlen=2)
    array([[1, 2],
           [4, 0]], dtype=int32)
    """
    if padding not in ("pre", "post"):
        raise ValueError(f'padding must be "pre" or "post", got {padding!r}')
    if truncating not in ("pre", "post"):
        raise ValueError(f'truncating must be "pre" or "post", got {truncating!r}')
    maxlen = V.check_int(maxlen, "maxlen", minimum=1, allow_none=True)
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise ValueError("sequences must be a list of iterables")
    lengths, sample_shape, found = [], (), False
    for s in sequences:
        if isinstance(s, (str, bytes)):
            raise ValueError(f"sequences must be a list of iterables; found a string {s!r}")
        try:
            lengths.append(len(s))
        except TypeError:
            raise ValueError(f"sequences must be a list of iterables; found non-iterable "
                             f"{s!r}") from None
        if not found and len(s):
            sample_shape, found = np.asarray(s).shape[1:], True
    if maxlen is None:
        maxlen = max(lengths, default=0)
    dtype = np.dtype(dtype)
    if isinstance(value, str) and dtype != object and dtype.kind != "U":
        raise ValueError(f"dtype {dtype} is not compatible with the string padding value "
                         f"{value!r}; use dtype=object or a string dtype")
    out = np.full((len(lengths), maxlen) + sample_shape, value, dtype=dtype)
    for i, s in enumerate(sequences):
        if not len(s):
            continue
        trunc = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        trunc = np.asarray(trunc, dtype=dtype)
        if trunc.shape[1:] != sample_shape:
            raise ValueError(f"sequence {i} has steps of shape {trunc.shape[1:]}, unlike the "
                             f"first non-empty sequence ({sample_shape})")
        if padding == "post":
            out[i, :len(trunc)] = trunc
        else:
            out[i, maxlen - len(trunc):] = trunc
    return out


def _float_dtype(X):
    """float32 when every given array is float32, else float64."""
    if is_sequence_list(X):
        return np.float32 if all(getattr(np.asarray(s), "dtype", None) == np.float32
                                 for s in X) else np.float64
    return np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64


class SequenceStandardScaler(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Standardise every feature over all valid steps of all sequences.

    ``z = (x - mean_) / scale_`` per feature, with statistics over every step of
    every sequence (padding of ragged lists does not exist, so it cannot bias
    them). Works on 3-D arrays ``(n_samples, n_steps, n_features)``, on 2-D
    tables ``(n_samples, n_steps)`` read as one feature per step (one mean and
    scale for all columns, as cyrnn's estimators read them) and on lists (or
    1-D object arrays) of arrays ``(n_steps_i, n_features)`` / ``(n_steps_i,)``;
    transforms return the same kind they got. float32 input stays float32.

    Parameters
    ----------
    with_mean : bool, default=True
        Subtract the mean.
    with_std : bool, default=True
        Divide by the standard deviation (features of zero variance are left
        unscaled).

    Attributes
    ----------
    mean_ : ndarray of shape (n_step_features,) or None
        Mean of every feature per step (None when ``with_mean=False``).
    var_ : ndarray of shape (n_step_features,) or None
        Variance of every feature (None when ``with_std=False``).
    scale_ : ndarray of shape (n_step_features,) or None
        The divisor: ``sqrt(var_)``, 1 where the variance is 0.
    n_steps_seen_ : int
        Number of steps the statistics were computed on.
    n_features_in_ : int
        The columns of a 2-D table, else the features per step (as for the
        estimators).
    feature_names_in_ : ndarray of str
        The column names of a DataFrame given to ``fit`` (only then); ``transform``
        checks them as scikit-learn's transformers do.

    Examples
    --------
    >>> import numpy as np
    >>> from cyrnn.preprocessing import SequenceStandardScaler
    >>> X = [np.array([[0.0, 10.0], [2.0, 10.0]]), np.array([[4.0, 40.0]])]
    >>> scaler = SequenceStandardScaler().fit(X)
    >>> scaler.mean_
    array([ 2., 20.])
    >>> [x.shape for x in scaler.transform(X)]
    [(2, 2), (1, 2)]
    """

    _parameter_constraints: dict = {"with_mean": ["boolean"], "with_std": ["boolean"]}

    def __init__(self, *, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.requires_fit = True
        return tags

    def _validate(self, X, fitted):
        data = check_sequences(X, dtype=_float_dtype(X), estimator=self)
        if fitted:
            check_fitted_input(data, self._input, type(self).__name__)
        # a DataFrame's column names: kept by fit, checked by transform
        _check_feature_names(self, X, reset=not fitted)
        return data

    def get_feature_names_out(self, input_features=None):
        """The output's feature names: the input's (``feature_names_in_``, or
        ``x0 .. x{n_features_in_ - 1}``), a table's columns or a step's features.

        Parameters
        ----------
        input_features : array-like of str or None

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        return _check_feature_names_in(self, input_features)

    def set_output(self, *, transform=None):
        """Set the container of ``transform``'s output, as scikit-learn's
        transformers do: ``"default"`` (the kind ``transform`` got), ``"pandas"`` or
        ``"polars"`` (a DataFrame with :meth:`get_feature_names_out` as columns: 2-D
        tables only; a 3-D array or a list of sequences has no DataFrame form, and
        ``transform`` then raises ValueError), None (unchanged). scikit-learn's
        global ``transform_output`` applies to tables and leaves sequences as they
        are.

        Returns
        -------
        self : object
        """
        if transform is None:
            return self
        if transform not in ("default", "pandas", "polars"):
            raise ValueError("transform must be 'default', 'pandas', 'polars' or None, got "
                             f"{transform!r}")
        self.__dict__.setdefault("_sklearn_output_config", {})["transform"] = transform
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the per-feature mean and standard deviation over all steps.

        Parameters
        ----------
        X : 3-D array, 2-D array, or list of per-sequence arrays
        y : ignored

        Returns
        -------
        self : object
        """
        data = self._validate(X, fitted=False)
        steps = (data.data.reshape(-1, data.step_features) if data.uniform
                 else np.concatenate(data.data))
        steps = steps.astype(np.float64, copy=False)
        mean = steps.mean(axis=0)
        var = steps.var(axis=0)
        # constant features have a zero variance up to rounding (the bound of
        # scikit-learn's StandardScaler): leave them unscaled
        n, eps = steps.shape[0], np.finfo(np.float64).eps
        var = np.where(var <= n * eps * var + (n * mean * eps) ** 2, 0.0, var)
        self.mean_ = mean if self.with_mean else None
        self.var_ = var if self.with_std else None
        self.scale_ = np.where(var == 0, 1.0, np.sqrt(var)) if self.with_std else None
        self.n_steps_seen_ = int(steps.shape[0])
        self.n_features_in_ = data.n_features
        self._input = input_spec(data)
        return self

    def _apply(self, X, forward):
        check_is_fitted(self)
        data = self._validate(X, fitted=True)
        dtype = _float_dtype(X)
        mean = 0.0 if self.mean_ is None else self.mean_
        scale = 1.0 if self.scale_ is None else self.scale_

        def f(a):
            out = (a - mean) / scale if forward else a * scale + mean
            return out.astype(dtype, copy=False)

        if data.kind == "table":
            return f(data.data)[:, :, 0]
        if data.kind == "array" and not is_sequence_list(X):
            return f(data.data)
        out = [f(seq) if np.ndim(orig) == 2 else f(seq)[:, 0]
               for seq, orig in zip(data.data, X)]
        if isinstance(X, np.ndarray):
            arr = np.empty(len(out), dtype=object)
            arr[:] = out
            return arr
        return out

    def transform(self, X):
        """Standardise ``X``.

        Parameters
        ----------
        X : 3-D array, 2-D array, or list of per-sequence arrays

        Returns
        -------
        X_scaled : same kind and shapes as ``X`` (a DataFrame for a table under
            :meth:`set_output` ``"pandas"``/``"polars"``)
        """
        dense = _get_output_config("transform", self)["dense"]
        if dense == "default":
            return self._apply(X, forward=True)
        table = not is_sequence_list(X) and np.ndim(np.asarray(X, dtype=object)) == 2
        if not table and self.__dict__.get(
                "_sklearn_output_config", {}).get("transform", "default") != "default":
            raise ValueError(f"set_output(transform={dense!r}) needs 2-D tables; a 3-D "
                             "array or a list of sequences has no DataFrame form: use "
                             "'default'")
        out = self._apply(X, forward=True)
        if not table:  # scikit-learn's global transform_output leaves sequences be
            return out
        # scikit-learn's container (its index kept from a DataFrame input)
        return ADAPTERS_MANAGER.adapters[dense].create_container(
            out, X, columns=self.get_feature_names_out)

    def fit_transform(self, X, y=None):
        """:meth:`fit`, then :meth:`transform` (the same result).

        Parameters
        ----------
        X : 3-D array, 2-D array, or list of per-sequence arrays
        y : ignored

        Returns
        -------
        X_scaled : as :meth:`transform`
        """
        return self.fit(X, y).transform(X)

    def inverse_transform(self, X):
        """Undo :meth:`transform`.

        Parameters
        ----------
        X : 3-D array, 2-D array, or list of per-sequence arrays

        Returns
        -------
        X_original : same kind and shapes as ``X``
        """
        return self._apply(X, forward=False)

