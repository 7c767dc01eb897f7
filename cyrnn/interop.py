"""Conversion to and from PyTorch's ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``.

cyrnn's recurrent parameter names, shapes and gate order are PyTorch's
(``docs/architecture.md``), so conversion is a copy. torch is imported lazily
and only here: it is never a runtime dependency.
"""

from __future__ import annotations

import numpy as np

from .layers.recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN

_MODES = {"RNN_TANH": (SimpleRNN, {"activation": "tanh"}),
          "RNN_RELU": (SimpleRNN, {"activation": "relu"}),
          "LSTM": (LSTM, {}),
          "GRU": (GRU, {"reset_after": True})}


def _host_array(param):
    """A torch parameter as a float32 or float64 NumPy array (float16 and bfloat16
    weights widen to float32 exactly; NumPy has no bfloat16)."""
    t = param.detach().cpu()
    if str(t.dtype) not in ("torch.float32", "torch.float64"):
        if not t.dtype.is_floating_point:
            raise TypeError(f"from_torch needs floating-point weights, got {t.dtype}")
        t = t.float()
    return t.numpy()


def from_torch(module, backend="auto"):
    """An equivalent cyrnn layer for a ``torch.nn.RNN``, ``LSTM`` or ``GRU``.

    Copies ``num_layers``, ``bidirectional``, ``batch_first``, ``dropout``, ``bias``
    (``bias=False``: ``use_bias=False``, biases held at zero) and every weight; dtype
    follows the module's weights (float64 for ``.double()`` modules, else float32:
    float16 and bfloat16 weights widen exactly), and
    so does the training flag (a module in ``eval()`` mode gives a layer in eval mode,
    whose calls keep no backward cache). The result returns ``(output, state)`` exactly
    as the torch module does. The weights are those the module's forward uses (a
    pruned or weight-normed module's computed weights); a subclass that overrides
    ``forward``, or weights of mixed dtypes, raise ``ValueError``.
    """
    mode = getattr(module, "mode", None)
    if mode not in _MODES:
        raise TypeError(f"from_torch needs a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM with proj_size > 0 has no cyrnn equivalent")
    cls, options = _MODES[mode]
    _check_standard_forward(module)
    weights = _effective_weights(module)
    if not weights:  # torch.ao's dynamically quantized RNNs keep packed weights instead
        raise TypeError(f"from_torch needs a float torch.nn.RNN, LSTM or GRU; "
                        f"{type(module).__module__}.{type(module).__name__} has no float "
                        "parameters (a quantized module?): convert the float module")
    dtypes = sorted({str(w.dtype) for w in weights.values()})
    if len(dtypes) > 1:  # torch's own forward refuses such a module
        raise ValueError(f"the module's weights have mixed dtypes ({', '.join(dtypes)}); "
                         "convert it to one dtype first (module.float() or module.double())")
    dtype = np.float64 if next(iter(weights.values())).dtype == np.float64 else np.float32
    layer = cls(module.input_size, module.hidden_size, module.num_layers,
                bidirectional=module.bidirectional, batch_first=module.batch_first,
                dropout=float(module.dropout), use_bias=bool(module.bias), backend=backend,
                dtype=dtype, **options)
    state = {name: np.zeros(shape, dtype) for name, shape in layer.params.shapes.items()}
    state.update(weights)
    layer.params.load_state_dict(state)
    layer.train(bool(getattr(module, "training", True)))  # eval modules give eval layers
    return layer


def _check_standard_forward(module):
    """A subclass that overrides ``forward`` computes something else than the weights
    say: converting it would silently drop its changes."""
    import torch

    base = next((c for c in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.RNNBase)
                 if isinstance(module, c)), None)
    if base is not None and type(module).forward is not base.forward:
        raise ValueError(f"{type(module).__name__} overrides {base.__name__}.forward; "
                         f"from_torch converts only torch.nn.{base.__name__}'s own "
                         "computation (convert a plain module holding the same weights)")


def _effective_weights(module):
    """The weights the module's forward uses, by torch's names (``weight_ih_l0``, ...):
    for a pruned or parametrized module (``torch.nn.utils.prune``, ``weight_norm``,
    ``parametrize``) the computed weights, not their stored factors."""
    names = getattr(module, "_flat_weights_names", None)
    if not names:
        return {name: _host_array(p) for name, p in module.named_parameters()}
    weights = {}
    for name in names:
        value = getattr(module, name, None)
        if value is None:  # e.g. no biases (bias=False)
            continue
        if not hasattr(value, "detach"):
            raise TypeError(f"from_torch could not read the module's {name} "
                            f"(a {type(value).__name__}, not a tensor)")
        weights[name] = _host_array(value)
    return weights


def to_torch_state_dict(layer):
    """The layer's parameters as a ``state_dict`` for the matching torch module
    (``torch.Tensor`` values; load with ``module.load_state_dict``; no biases for a
    layer with ``use_bias=False``, whose module has ``bias=False``)."""
    import torch

    if not isinstance(layer, RecurrentLayer):
        raise TypeError("to_torch_state_dict needs a cyrnn recurrent layer")
    if layer.bidirectional and layer.merge_mode != "concat":
        raise ValueError("torch stacks bidirectional layers by concatenation; "
                         f"merge_mode={layer.merge_mode!r} has no torch equivalent")
    cell = layer.cell
    if cell.row.torch is None:  # the cell table names each kind's torch module
        options = ", ".join(f"{k}={v}" for k, v in cell.row.options.items())
        raise ValueError(f"the {cell.name} cell ({type(layer).__name__} {options}) has no "
                         f"torch equivalent")
    if cell.kind == "rnn" and cell.activation not in ("tanh", "relu"):
        raise ValueError(f"torch.nn.RNN has no {cell.activation} activation")
    if cell.kind != "rnn" and not cell.is_default:
        raise ValueError(f"torch.nn.{type(layer).__name__} computes tanh/sigmoid only, not "
                         f"activation={cell.activation!r}, "
                         f"recurrent_activation={cell.recurrent_activation!r}")
    if layer.go_backwards:
        raise ValueError("torch modules have no go_backwards; reverse the input instead")
    return {name: torch.from_numpy(value) for name, value in layer.params.state_dict().items()
            if layer.use_bias or not name.startswith("bias_")}  # torch bias=False: none

