"""Input checks shared by every public entry point.

Everything here runs before any state changes, and raises ``TypeError`` for
wrong kinds of objects and ``ValueError`` for wrong values, naming the problem.
Kernels never validate: by the time they run, inputs are known to be sane.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """Normalise a compute dtype (float32 or float64)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_rng(random_state):
    """A ``numpy.random.Generator`` from None, an int seed or a Generator."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, numbers.Integral) and random_state < 0:
        raise ValueError(f"random_state must be None, a non-negative int (a seed) or a numpy "
                         f"Generator, got {random_state}")
    if random_state is None or isinstance(random_state, (numbers.Integral, np.random.SeedSequence)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got {random_state!r}")


def check_int(value, name, minimum=None, maximum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(value, name, minimum=None, maximum=None, include_min=True, include_max=True,
                allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range (e.g. from a file's JSON)
        raise ValueError(f"{name} must be finite, got an integer of "
                         f"{int(value).bit_length()} bits") from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (value == minimum and not include_min)):
        raise ValueError(f"{name} must be {'>=' if include_min else '>'} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (value == maximum and not include_max)):
        raise ValueError(f"{name} must be {'<=' if include_max else '<'} {maximum}, got {value}")
    return value


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _numeric_array(x, name):
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got a string")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} could not be read as an array ({exc}); "
                         "ragged sequences need lengths/mask and padding") from exc
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must hold numbers, got dtype object that does not convert "
                            f"to float ({exc})") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def to_dtype(arr, dtype, name):
    """``arr`` in ``dtype`` (no copy when it already is), ``ValueError`` where a finite
    value becomes infinite (1e300 in float32; a value that rounds to the largest float32
    stays, as the compiled paths' conversion rounds it); NaN and inf pass through."""
    if arr.dtype == dtype:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        converted = arr.astype(dtype)
    if (np.isinf(converted) & np.isfinite(arr)).any():
        raise ValueError(f"{name} holds values too large for {np.dtype(dtype).name} "
                         f"(largest magnitude {float(np.abs(arr).max()):.9g}, the largest "
                         f"{np.dtype(dtype).name} {float(np.finfo(dtype).max):.9g})")
    return converted


def check_array(x, name, ndim, dtype, feature_size=None, feature_name="features"):
    """A finite float array of ``ndim`` dims in ``dtype`` (a new array if converted).

    Empty leading axes, NaN/inf and a wrong last-axis size raise ``ValueError``.
    """
    arr = _numeric_array(x, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0 or 0 in arr.shape:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if feature_size is not None and arr.shape[-1] != feature_size:
        raise ValueError(f"{name} has {arr.shape[-1]} {feature_name} per step, "
                         f"expected {feature_size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return to_dtype(arr, dtype, name)


def check_values(value, name, shape, dtype):
    """``value`` (a tensor to load into a model or an optimizer) converted to
    ``dtype``, checked first: a real numeric array, not booleans, of ``shape``, finite
    after the conversion (1e300 would become inf in float32)."""
    arr = _numeric_array(value, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got booleans")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = arr.astype(dtype)
    if not np.isfinite(converted).all():
        why = ("" if not np.isfinite(arr).all()
               else f" (values too large for {np.dtype(dtype).name})")
        raise ValueError(f"{name} holds NaN or infinity{why}")
    return converted


def check_index_array(x, name, ndim, upper):
    """An integer array of token ids in ``[0, upper)``."""
    arr = _numeric_array(x, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinity")
        if not (arr == np.round(arr)).all():
            raise ValueError(f"{name} must hold integer token ids")
    low, high = arr.min(), arr.max()  # in the given dtype: nothing wrapped yet
    if low < 0 or high >= upper:
        raise ValueError(f"{name} holds ids outside [0, {upper}): min {low}, max {high}")
    return arr.astype(np.intp, copy=False)


def check_lengths(lengths, n, T):
    """Integer lengths of shape (n,) with 1 <= length <= T."""
    arr = _numeric_array(lengths, "lengths")
    if arr.dtype.kind == "b":
        raise TypeError("lengths must be integers (steps per sequence), got booleans")
    if arr.ndim != 1 or arr.shape[0] != n:
        hint = ("; initial states go in initial_state= (a torch module's second argument "
                "is its state, a cyrnn layer's is lengths)" if arr.ndim >= 2 else "")
        raise ValueError(f"lengths must have shape ({n},), got {arr.shape}{hint}")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError("lengths must be whole numbers")
    lo, hi = arr.min().item(), arr.max().item()  # before any cast: no wrap-around
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must be between 1 and {T} (the number of steps), "
                         f"got min {lo:g}, max {hi:g}" if arr.dtype.kind == "f" else
                         f"lengths must be between 1 and {T} (the number of steps), "
                         f"got min {lo}, max {hi}")
    return arr.astype(np.int64)


def check_mask(mask, shape):
    """A bool mask of ``shape`` (values 0/1 or bool)."""
    arr = _numeric_array(mask, "mask")
    if arr.shape != tuple(shape):
        raise ValueError(f"mask must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("mask must hold only 0/1 or booleans")
        arr = arr.astype(bool)
    return arr


def lengths_to_mask(lengths, T):
    """(n,) lengths -> (n, T) bool mask of post-padded sequences."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]
