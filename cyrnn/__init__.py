"""cyrnn: recurrent neural networks (SimpleRNN, LSTM, GRU) for NumPy users.

The NumPy reference backend is the specification; compiled backends
(``cyrnn.backends.available()``) implement the same kernel contract.

Every name is imported on first use (``cyrnn.LSTM``, ``from cyrnn import
LSTM``): ``import cyrnn`` itself loads nothing, so the ``cyrnn`` command starts
at once and handles Ctrl-C from its first moments, and nothing pays for
scikit-learn (the estimators) unless it is used.
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "SimpleRNN": ("cyrnn.layers", "SimpleRNN"),
    "LSTM": ("cyrnn.layers", "LSTM"),
    "GRU": ("cyrnn.layers", "GRU"),
    "Embedding": ("cyrnn.layers", "Embedding"),
    "Dense": ("cyrnn.layers", "Dense"),
    "Masking": ("cyrnn.layers", "Masking"),
    "Activation": ("cyrnn.layers", "Activation"),
    "Sequential": ("cyrnn.model", "Sequential"),
    "ParameterBuffer": ("cyrnn.params", "ParameterBuffer"),
    "from_torch": ("cyrnn.interop", "from_torch"),
    "from_keras": ("cyrnn.keras_interop", "from_keras"),
    "to_onnx": ("cyrnn.onnx_export", "to_onnx"),
    "onnx_backend": ("cyrnn.onnx_backend", None),
    "backends": ("cyrnn.backends", None),
    "cells": ("cyrnn.cells", None),
    "losses": ("cyrnn.losses", None),
    "optim": ("cyrnn.optim", None),
    "layers": ("cyrnn.layers", None),
    "model": ("cyrnn.model", None),
    "params": ("cyrnn.params", None),
    "interop": ("cyrnn.interop", None),
    "LSTMRegressor": ("cyrnn.estimators", "LSTMRegressor"),
    "LSTMClassifier": ("cyrnn.estimators", "LSTMClassifier"),
    "GRURegressor": ("cyrnn.estimators", "GRURegressor"),
    "GRUClassifier": ("cyrnn.estimators", "GRUClassifier"),
    "SimpleRNNRegressor": ("cyrnn.estimators", "SimpleRNNRegressor"),
    "SimpleRNNClassifier": ("cyrnn.estimators", "SimpleRNNClassifier"),
    "CharLanguageModel": ("cyrnn.language_model", "CharLanguageModel"),
    "load": ("cyrnn.persistence", "load"),
    "plot_learning_curve": ("cyrnn.plotting", "plot_learning_curve"),
    "set_num_threads": ("cyrnn.threads", "set_num_threads"),
    "get_num_threads": ("cyrnn.threads", "get_num_threads"),
    "datasets": ("cyrnn.datasets", None),
    "estimators": ("cyrnn.estimators", None),
    "persistence": ("cyrnn.persistence", None),
    "scoring": ("cyrnn.scoring", None),
    "preprocessing": ("cyrnn.preprocessing", None),
    "training": ("cyrnn.training", None),
}

__all__ = ["__version__", *(name for name in _LAZY
                             if name not in ("layers", "model", "params", "interop", "cells",
                                           "onnx_backend"))]  # needs onnx: explicit import


def __getattr__(name):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cyrnn' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
