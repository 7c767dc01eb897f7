"""Public layers."""

from .base import Layer
from .dense import Dense
from .embedding import Embedding
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN

__all__ = ["Layer", "Dense", "Embedding", "RecurrentLayer", "SimpleRNN", "LSTM", "GRU"]
