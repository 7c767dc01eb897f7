"""Activation: an elementwise nonlinearity as a layer (Keras's Dense(activation=...))."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .base import Layer


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# name -> (function, derivative through the output y and the incoming gradient d)
ACTIVATIONS = {
    "linear": (lambda a: a, lambda y, d: d),
    "tanh": (np.tanh, lambda y, d: d * (1 - y * y)),
    "relu": (lambda a: np.maximum(a, 0), lambda y, d: d * (y > 0)),
    "sigmoid": (lambda a: 0.5 * (1 + np.tanh(0.5 * a)), lambda y, d: d * y * (1 - y)),
    "softmax": (_softmax, lambda y, d: y * (d - (d * y).sum(axis=-1, keepdims=True))),
}


class Activation(Layer):
    """``f(x)`` elementwise (softmax: over the last axis); no parameters.

    Parameters
    ----------
    activation : {'linear', 'tanh', 'relu', 'sigmoid', 'softmax'}
    dtype : {float32, float64}, default float32

    The losses in :mod:`cyrnn.losses` take logits: put this layer after the Dense head
    for predictions (``cyrnn.from_keras`` does, for ``Dense(activation=...)``), not
    before a loss that applies sigmoid/softmax itself.
    """

    def __init__(self, activation, *, dtype=np.float32):
        self.activation = V.check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.dtype = V.check_dtype(dtype)
        self._cache = None
        self._build_params()

    def param_specs(self):
        return []

    def forward(self, x, training=None):
        y = ACTIVATIONS[self.activation][0](np.asarray(x, self.dtype)).astype(self.dtype,
                                                                             copy=False)
        # backward reads a copy: the caller may change the returned output in place
        self._cache = y.copy() if self._resolve_training(training) else None
        return y

    __call__ = forward

    def backward(self, d_output):
        y = self._require_cache()
        d = self._check_d_output(d_output, y.shape)
        self._cache = None
        return ACTIVATIONS[self.activation][1](y, d)

    def __repr__(self):
        return f"Activation({self.activation!r})"
