"""Saving and loading a :class:`cyrnn.Sequential` in cyrnn's safe file format.

The file is a :mod:`cyrnn.persistence` archive of kind ``"cyrnn.Sequential"``: the
flat parameter vector (``params``, the model's dtype) and, as JSON metadata, one
configuration per layer (its class name and constructor arguments). Only cyrnn's own
layer classes are saved and rebuilt (``Embedding``, ``Masking``, ``SimpleRNN``, ``LSTM``,
``GRU``, ``Dense``, ``Activation``; subclasses are refused), and the parameter count the
configurations declare is checked against the stored vector before any layer is built,
so a crafted file cannot make loading allocate more than it holds.
"""

from __future__ import annotations

import numpy as np

from . import _validation as V
from . import persistence
from .cells import Cell

KIND = "cyrnn.Sequential"
_RECURRENT = ("SimpleRNN", "LSTM", "GRU")
_FAMILY = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
# constructor options of the recurrent layers, stored as they are
_RNN_OPTIONS = ("input_size", "hidden_size", "num_layers", "bidirectional", "merge_mode",
                "dropout", "return_sequences", "return_state", "bptt_truncate",
                "go_backwards", "use_bias", "backend")


def layer_config(layer):
    """The JSON configuration of one of cyrnn's layers (TypeError for other classes)."""
    from . import layers as L

    cls = type(layer)
    name = cls.__name__
    if cls is L.Embedding:
        return {"class": name, "vocab_size": layer.vocab_size,
                "embedding_dim": layer.embedding_dim, "mask_zero": layer.mask_zero}
    if cls is L.Dense:
        return {"class": name, "in_features": layer.in_features,
                "out_features": layer.out_features}
    if cls is L.Activation:
        return {"class": name, "activation": layer.activation}
    if cls is L.Masking:
        return {"class": name, "mask_value": float(layer.mask_value)}
    if name in _RECURRENT and cls is getattr(L, name):
        cfg = {"class": name, **{k: getattr(layer, k) for k in _RNN_OPTIONS}}
        cell = layer.cell
        cfg["activation"] = cell.activation
        if name != "SimpleRNN":
            cfg["recurrent_activation"] = cell.recurrent_activation
        if name == "LSTM":
            cfg.update(peephole=cell.peephole, forget_bias=float(layer.forget_bias))
        if name == "GRU":
            cfg["reset_after"] = cell.reset_after
        return cfg
    raise TypeError(f"cannot save a layer of class {cls.__module__}.{name}: only cyrnn's "
                    "Embedding, Masking, SimpleRNN, LSTM, GRU, Dense and Activation")


def save_sequential(model, path):
    """Write ``model`` (a :class:`cyrnn.Sequential`) to ``path``; see :meth:`Sequential.save`."""
    meta = {"class": "Sequential", "dtype": np.dtype(model.dtype).name,
            "layers": [layer_config(layer) for layer in model.layers]}
    persistence.save_archive(path, KIND, meta, {"params": model.params.data})
    return path


# options saved as JSON booleans (the constructors take any truthy value; a file must
# say true or false, so that the count below and the layer built agree)
_FLAGS = ("bidirectional", "return_sequences", "return_state", "go_backwards", "use_bias",
          "peephole", "reset_after", "mask_zero")


def _count(cfg):
    """Parameters of the layer ``cfg`` describes, from its (checked) sizes alone."""
    name = cfg["class"]
    for flag in _FLAGS:
        if flag in cfg and not isinstance(cfg[flag], bool):
            raise ValueError(f"{name} option {flag} must be true or false, got "
                             f"{cfg[flag]!r}")
    if name == "Embedding":
        return V.check_int(cfg["vocab_size"], "vocab_size", minimum=1) * \
            V.check_int(cfg["embedding_dim"], "embedding_dim", minimum=1)
    if name == "Dense":
        return V.check_int(cfg["out_features"], "out_features", minimum=1) * \
            (V.check_int(cfg["in_features"], "in_features", minimum=1) + 1)
    if name in ("Activation", "Masking"):
        return 0
    if name not in _RECURRENT:
        raise ValueError(f"unknown layer class {name!r}")
    options = {k: cfg[k] for k in ("activation", "recurrent_activation", "peephole",
                                   "reset_after") if k in cfg}
    row = Cell(_FAMILY[name], **options).row
    D = 2 if cfg["bidirectional"] else 1
    H = V.check_int(cfg["hidden_size"], "hidden_size", minimum=1)
    layers = V.check_int(cfg["num_layers"], "num_layers", minimum=1)
    width = H if cfg["merge_mode"] in ("sum", "mul", "ave") else D * H
    x = V.check_int(cfg["input_size"], "input_size", minimum=1)
    # arithmetic, not a list per layer: the count is checked before anything is built
    return row.n_params(x, H, D) + (layers - 1) * row.n_params(width, H, D)


def build_layer(cfg, dtype):
    """The layer of a configuration written by :func:`layer_config`."""
    from . import layers as L

    args = {k: v for k, v in cfg.items() if k != "class"}
    return getattr(L, cfg["class"])(**args, dtype=dtype)


def sequential_from_archive(meta, arrays):
    """The :class:`cyrnn.Sequential` of an archive written by :func:`save_sequential`."""
    from .model import Sequential

    try:
        if meta.get("class") != "Sequential":
            raise ValueError("the archive does not hold a Sequential")
        dtype = V.check_dtype(meta["dtype"])
        configs = meta["layers"]
        if not isinstance(configs, list) or not configs \
                or not all(isinstance(c, dict) and isinstance(c.get("class"), str)
                           for c in configs):
            raise ValueError("bad layer list")
        params = arrays["params"]
        size = sum(_count(c) for c in configs)
        if params.shape != (size,) or params.dtype != dtype:
            raise ValueError(f"the parameter vector is {params.dtype} {params.shape}, the "
                             f"layers need {np.dtype(dtype).name} ({size},)")
        if not np.isfinite(params).all():
            raise ValueError("the parameter vector contains NaN or infinity")
        model = Sequential([build_layer(c, dtype) for c in configs])
    except ValueError as exc:
        raise ValueError(f"invalid Sequential archive: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"invalid Sequential archive: {type(exc).__name__}: {exc}") from exc
    model.params.data[...] = params
    return model


persistence.register_loader(KIND, sequential_from_archive)
