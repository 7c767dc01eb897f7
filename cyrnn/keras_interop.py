"""``from_keras``: Keras 3 models and layers as cyrnn ones (as ``from_torch`` for torch).

Keras stores ``kernel`` (D, G*H) and ``recurrent_kernel`` (H, G*H), cyrnn (and
PyTorch) the transposes; Keras's LSTM gates are i, f, c, o (cyrnn's i, f, g, o), its
GRU gates z, r, h (cyrnn's r, z, n). A Keras LSTM or SimpleRNN has one bias (cyrnn's
``bias_ih``; ``bias_hh`` is zero), a GRU with ``reset_after=True`` two (input and
recurrent), with ``reset_after=False`` one (Cho's form, cyrnn's ``reset_after=False``).
keras is never imported here: the objects are read through their attributes.
"""

from __future__ import annotations

import warnings

import numpy as np

from .layers import GRU, LSTM, Activation, Dense, Embedding, Masking, SimpleRNN
from .model import Sequential

_RECURRENT = {"SimpleRNN": (SimpleRNN, [0]), "LSTM": (LSTM, [0, 1, 2, 3]),
              "GRU": (GRU, [1, 0, 2])}  # Keras gate blocks in cyrnn's order


def _numpy(w):
    try:
        import keras

        return np.asarray(keras.ops.convert_to_numpy(w))
    except ImportError:  # pragma: no cover - a Keras object without keras
        return np.asarray(w)


def _is_keras(obj):
    """Whether ``obj`` is a Keras object (its class defined in a Keras package)."""
    return type(obj).__module__.split(".")[0] in ("keras", "tf_keras")


def _act_name(fn):
    """cyrnn's name for a Keras activation: Keras's own functions (``keras.activations``
    or ``keras.ops``) by name; any other function is refused, whatever its name (a
    user's ``def sigmoid`` converted as the built-in computed something else)."""
    if fn is None or isinstance(fn, str):
        name = fn
    else:
        name = getattr(fn, "__name__", None)
        module = getattr(fn, "__module__", None) or ""
        if name is None or module.split(".")[0] not in ("keras", "tf_keras"):
            raise TypeError(f"from_keras converts Keras's own activation functions; "
                            f"{name or repr(fn)!s} (from {module or 'unknown module'}) is not "
                            "one of them")
    return "linear" if name in (None, "linear", "identity") else name


def _dtype(layer):
    name = getattr(getattr(layer, "dtype_policy", None), "variable_dtype", None) or \
        getattr(layer, "dtype", "float32")
    return np.float64 if str(name) == "float64" else np.float32


def _blocks(w, order, H):
    """Keras (D, G*H) with Keras's gate order -> cyrnn (G*H, D) in cyrnn's."""
    return np.concatenate([w[:, k * H:(k + 1) * H] for k in order], axis=1).T


def _direction_options(klayer):
    """The options of a Keras recurrent layer that a cyrnn layer shares between its
    directions."""
    cell = klayer.cell
    return {"units": int(cell.units), "activation": _act_name(cell.activation),
            "recurrent_activation": (_act_name(cell.recurrent_activation)
                                     if hasattr(cell, "recurrent_activation") else None),
            "reset_after": bool(getattr(cell, "reset_after", False)),
            "use_bias": bool(cell.use_bias), "stateful": bool(klayer.stateful),
            "recurrent_dropout": float(getattr(cell, "recurrent_dropout", 0.0)),
            "dtype": _dtype(klayer)}


def _recurrent(klayer, backend, bidirectional=None):
    """A cyrnn recurrent layer for a Keras SimpleRNN/LSTM/GRU (or a Bidirectional's
    pair of them)."""
    kind = type(klayer).__name__
    cls, order = _RECURRENT[kind]
    cell = klayer.cell
    H = int(cell.units)
    kernel = _numpy(cell.kernel)
    D = kernel.shape[0]
    options = dict(activation=_act_name(cell.activation), use_bias=bool(cell.use_bias),
                   return_sequences=bool(klayer.return_sequences),
                   go_backwards=bool(klayer.go_backwards), stateful=bool(klayer.stateful),
                   recurrent_dropout=float(getattr(cell, "recurrent_dropout", 0.0)),
                   dtype=_dtype(klayer), backend=backend)
    if kind != "SimpleRNN":
        options["recurrent_activation"] = _act_name(cell.recurrent_activation)
    if kind == "GRU":
        options["reset_after"] = bool(cell.reset_after)
    cells = [cell]
    if bidirectional is not None:
        fwd, bwd = bidirectional.forward_layer, bidirectional.backward_layer
        if fwd.go_backwards or not bwd.go_backwards or type(bwd) is not type(fwd):
            raise ValueError("from_keras converts Bidirectional layers whose backward layer "
                             "is the forward layer's type with go_backwards=True")
        # one cyrnn layer holds both directions with one set of options: a custom
        # backward_layer must match the forward one
        differ = sorted(k for k, v in _direction_options(fwd).items()
                        if _direction_options(bwd)[k] != v)
        if differ:
            raise ValueError(f"from_keras converts Bidirectional layers whose two directions "
                             f"have the same options; the backward layer differs in {differ}")
        options.update(bidirectional=True, merge_mode=bidirectional.merge_mode,
                       return_sequences=bool(bidirectional.return_sequences), go_backwards=False)
        cells = [fwd.cell, bwd.cell]
    dropout = max(float(getattr(c, "dropout", 0.0)) for c in cells)
    if dropout > 0:
        warnings.warn(f"{kind}(dropout={dropout}) drops inputs in training; cyrnn has "
                      "no input dropout, so the converted layer has none (outputs at "
                      "inference are the same)", UserWarning, stacklevel=3)
    owner = bidirectional if bidirectional is not None else klayer
    layer = cls(D, H, return_state=bool(getattr(owner, "return_state", False)), **options)
    state = {}
    for d, c in enumerate(cells):
        sfx = "_l0" + ("_reverse" if d else "")
        G = len(order)
        state[f"weight_ih{sfx}"] = _blocks(_numpy(c.kernel), order, H)
        state[f"weight_hh{sfx}"] = _blocks(_numpy(c.recurrent_kernel), order, H)
        b_ih = b_hh = np.zeros(G * H)
        if c.use_bias:
            bias = _numpy(c.bias)
            if bias.ndim == 2:  # GRU reset_after: (input bias, recurrent bias)
                b_ih, b_hh = (_blocks(bias[k][None, :], order, H)[:, 0] for k in range(2))
            else:
                b_ih = _blocks(bias[None, :], order, H)[:, 0]
        state[f"bias_ih{sfx}"], state[f"bias_hh{sfx}"] = b_ih, b_hh
    layer.params.load_state_dict({k: v.astype(layer.dtype) for k, v in state.items()})
    return layer


def _dense(klayer, backend):
    kernel = _numpy(klayer.kernel)
    dt = _dtype(klayer)
    dense = Dense(kernel.shape[0], kernel.shape[1], dtype=dt)
    bias = _numpy(klayer.bias) if klayer.use_bias else np.zeros(kernel.shape[1])
    dense.params.load_state_dict({"weight": kernel.T.astype(dt), "bias": bias.astype(dt)})
    act = _act_name(klayer.activation)
    return [dense] if act == "linear" else [dense, Activation(act, dtype=dt)]


def _convert(klayer, backend):
    kind = type(klayer).__name__
    if kind != "InputLayer":
        name = getattr(klayer, "name", kind)
        inner = [klayer] + [getattr(klayer, a) for a in ("forward_layer", "backward_layer")
                            if getattr(klayer, a, None) is not None]
        if not all(getattr(k, "built", True) for k in inner):
            raise ValueError(f"the Keras layer {name!r} ({kind}) is not built, so it has no "
                             "weights yet: give the model a keras.Input or call it on data "
                             "first")
        mode = next((m for m in (getattr(k, "quantization_mode", None) for k in inner) if m),
                    None)
        if mode:  # integer weights with separate scales: read as floats they are wrong
            raise ValueError(f"the Keras layer {name!r} ({kind}) is quantized "
                             f"({mode!r}); from_keras converts float weights: convert the "
                             "model before model.quantize()")
    if kind in _RECURRENT:
        return [_recurrent(klayer, backend)]
    if kind == "Bidirectional":
        inner = type(klayer.forward_layer).__name__
        if inner not in _RECURRENT:
            raise TypeError(f"from_keras converts Bidirectional SimpleRNN/LSTM/GRU, not {inner}")
        return [_recurrent(klayer.forward_layer, backend, bidirectional=klayer)]
    if kind == "Embedding":
        table = _numpy(klayer.embeddings)
        emb = Embedding(table.shape[0], table.shape[1], mask_zero=bool(klayer.mask_zero),
                        dtype=_dtype(klayer))
        emb.params["weight"][...] = table
        return [emb]
    if kind == "Masking":
        return [Masking(float(klayer.mask_value), dtype=_dtype(klayer))]
    if kind == "Dense":
        return _dense(klayer, backend)
    if kind == "TimeDistributed" and type(klayer.layer).__name__ == "Dense":
        return _dense(klayer.layer, backend)  # cyrnn's Dense acts on every step already
    if kind == "Activation":
        act = _act_name(klayer.activation)
        return [] if act == "linear" else [Activation(act, dtype=_dtype(klayer))]
    if kind in ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise",
                "AlphaDropout"):
        return []  # identity at inference (documented in from_keras)
    if kind == "InputLayer":
        return []
    raise TypeError(f"from_keras converts Embedding, Masking, SimpleRNN, LSTM, GRU, "
                    f"Bidirectional, Dense (or TimeDistributed Dense), Activation and "
                    f"Dropout layers, not {kind}")


def from_keras(model_or_layer, backend="auto"):
    """A cyrnn model (or layer) computing what a Keras 3 one computes.

    Parameters
    ----------
    model_or_layer : keras.Sequential or keras layer
        A Sequential of Embedding, Masking, SimpleRNN, LSTM, GRU, Bidirectional, Dense
        (or TimeDistributed Dense), Activation and Dropout layers, or one such layer.
    backend : str, default 'auto'
        The cyrnn backend of the recurrent layers.

    Returns
    -------
    cyrnn.Sequential, or a layer for a single layer (a recurrent layer returns its
    output only, as the Keras layer does; ``Dense(activation=...)`` becomes
    ``[Dense, Activation]``, a Sequential for a single Dense layer).

    Keras options cyrnn has no equivalent of raise (``stateful=True``,
    ``recurrent_dropout > 0``, other activations, functions of one's own as
    activations), as do layers that are not built yet (no weights) or quantized
    (``model.quantize``); Keras's input ``dropout`` is dropped with a warning (it acts
    in training only), and so are ``Dropout`` layers (and Keras's other noise layers),
    silently: the converted model computes Keras's inference. ``TimeDistributed(Dense)``
    becomes ``Dense`` and ``Activation`` ``cyrnn.Activation``. A single recurrent layer
    with ``return_state=True`` returns cyrnn's ``(output, state)``, the states shaped
    ``(num_directions, n, units)`` as PyTorch's, where Keras returns
    ``[output, *states]`` shaped ``(n, units)``. At masked steps a cyrnn layer
    outputs zeros where Keras repeats the last valid output (outside
    ``Bidirectional``); valid steps, final states and everything a following
    recurrent layer computes agree, except after a ``go_backwards`` layer with a
    mask (Keras hands the next layer the reversed outputs with the mask unreversed,
    so it reads padded positions, which differ).
    """
    kind = type(model_or_layer).__name__
    if not _is_keras(model_or_layer):  # a cyrnn or torch LSTM failed on missing attributes
        raise TypeError(f"from_keras needs a Keras model or layer, got "
                        f"{type(model_or_layer).__module__}.{kind}")
    if kind == "Sequential":
        layers = [c for klayer in model_or_layer.layers for c in _convert(klayer, backend)]
        if not layers:
            raise ValueError("the Keras model has no layers")
        return Sequential(layers)
    converted = _convert(model_or_layer, backend)
    if len(converted) == 1:
        layer = converted[0]
        return layer
    return Sequential(converted)


__all__ = ["from_keras"]
