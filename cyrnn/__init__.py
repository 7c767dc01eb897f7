"""cyrnn: recurrent neural networks (SimpleRNN, LSTM, GRU) for NumPy users.

The NumPy reference backend is the specification; compiled backends
(``cyrnn.backends.available()``) implement the same kernel contract.
"""

__version__ = "0.1.0"

from . import backends, losses, optim  # noqa: F401
from .interop import from_torch
from .layers import GRU, LSTM, Dense, Embedding, SimpleRNN
from .model import Sequential
from .params import ParameterBuffer

__all__ = ["SimpleRNN", "LSTM", "GRU", "Embedding", "Dense", "Sequential", "ParameterBuffer",
           "from_torch", "backends", "losses", "optim", "__version__"]
