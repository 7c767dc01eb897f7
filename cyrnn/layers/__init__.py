"""Public layers."""

from .activation import Activation
from .base import Layer
from .dense import Dense
from .embedding import Embedding
from .masking import Masking
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN

__all__ = ["Activation", "Layer", "Dense", "Embedding", "Masking", "RecurrentLayer", "SimpleRNN",
           "LSTM", "GRU"]
