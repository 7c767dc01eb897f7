"""cyrnn: recurrent neural networks (SimpleRNN, LSTM, GRU) for NumPy users.

The NumPy reference backend is the specification; compiled backends
(``cyrnn.backends.available()``) implement the same kernel contract.
"""

__version__ = "0.1.0"

from . import backends, losses, optim, persistence, preprocessing  # noqa: F401
from .estimators import (GRUClassifier, GRURegressor, LSTMClassifier, LSTMRegressor,
                         SimpleRNNClassifier, SimpleRNNRegressor)
from .interop import from_torch
from .layers import GRU, LSTM, Dense, Embedding, SimpleRNN
from .model import Sequential
from .params import ParameterBuffer
from .persistence import load
from .plotting import plot_learning_curve

__all__ = ["SimpleRNN", "LSTM", "GRU", "Embedding", "Dense", "Sequential", "ParameterBuffer",
           "LSTMRegressor", "LSTMClassifier", "GRURegressor", "GRUClassifier",
           "SimpleRNNRegressor", "SimpleRNNClassifier", "load", "plot_learning_curve",
           "from_torch", "backends", "losses", "optim", "persistence", "preprocessing",
           "__version__"]
