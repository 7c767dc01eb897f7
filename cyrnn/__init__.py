"""cyrnn: recurrent neural networks (SimpleRNN, LSTM, GRU) for NumPy users.

The NumPy reference backend is the specification; compiled backends
(``cyrnn.backends.available()``) implement the same kernel contract.

The core (layers, Sequential, optimizers, losses) is imported eagerly; the
scikit-learn estimators, preprocessing, persistence, datasets, plotting and the
language model are imported on first use, so ``import cyrnn`` (and the
``cyrnn`` command) does not pay for scikit-learn unless it is used.
"""

import importlib

__version__ = "0.1.0"

from . import backends, losses, optim  # noqa: F401,E402
from .interop import from_torch  # noqa: E402
from .layers import GRU, LSTM, Dense, Embedding, SimpleRNN  # noqa: E402
from .model import Sequential  # noqa: E402
from .params import ParameterBuffer  # noqa: E402

# name -> (module, attribute or None for the module itself)
_LAZY = {
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
    "preprocessing": ("cyrnn.preprocessing", None),
    "training": ("cyrnn.training", None),
}

__all__ = ["SimpleRNN", "LSTM", "GRU", "Embedding", "Dense", "Sequential", "ParameterBuffer",
           "from_torch", "backends", "losses", "optim", "__version__", *_LAZY]


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
