"""Activation: an elementwise nonlinearity as a layer (Keras's Dense(activation=...))."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .base import Layer


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(a):
    z = a - a.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _sigmoid(a):
    return 0.5 * (1 + np.tanh(0.5 * a))


def _hard_sigmoid(a):
    return np.clip(a / 6 + 0.5, 0, 1)


# Keras 3's SELU constants (keras.activations.selu).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_LEAKY_SLOPE = 0.2  # Keras 3's default negative_slope for activation="leaky_relu"

# name -> (function of the input a, derivative from the input a, the output y and the
# incoming gradient d). The definitions are Keras 3's (keras.activations.<name>).
ACTIVATIONS = {
    "linear": (lambda a: a, lambda a, y, d: d),
    "tanh": (np.tanh, lambda a, y, d: d * (1 - y * y)),
    "relu": (lambda a: np.maximum(a, 0), lambda a, y, d: d * (y > 0)),
    "sigmoid": (_sigmoid, lambda a, y, d: d * y * (1 - y)),
    "softmax": (_softmax, lambda a, y, d: y * (d - (d * y).sum(axis=-1, keepdims=True))),
    "hard_sigmoid": (_hard_sigmoid, lambda a, y, d: d * (((y > 0) & (y < 1)) / 6)),
    "softplus": (lambda a: np.logaddexp(0, a), lambda a, y, d: d * _sigmoid(a)),
    "softsign": (lambda a: a / (1 + np.abs(a)), lambda a, y, d: d / np.square(1 + np.abs(a))),
    "elu": (lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0))),
            lambda a, y, d: d * np.where(a > 0, 1, y + 1)),
    "selu": (lambda a: _SELU_SCALE * np.where(a > 0, a, _SELU_ALPHA * np.expm1(np.minimum(a, 0))),
             lambda a, y, d: d * np.where(a > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA)),
    "silu": (lambda a: a * _sigmoid(a),
             lambda a, y, d: d * (_sigmoid(a) * (1 + a * (1 - _sigmoid(a))))),
    "hard_silu": (lambda a: a * _hard_sigmoid(a),
                  lambda a, y, d: d * np.where(a < -3, 0, np.where(a > 3, 1, a / 3 + 0.5))),
    "relu6": (lambda a: np.clip(a, 0, 6), lambda a, y, d: d * ((a > 0) & (a < 6))),
    "leaky_relu": (lambda a: np.where(a > 0, a, _LEAKY_SLOPE * a),
                   lambda a, y, d: d * np.where(a > 0, 1, _LEAKY_SLOPE)),
    "exponential": (np.exp, lambda a, y, d: d * y),
    "log_softmax": (_log_softmax,
                    lambda a, y, d: d - np.exp(y) * d.sum(axis=-1, keepdims=True)),
}
# Keras's other names for the same functions.
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}


class Activation(Layer):
    """``f(x)`` elementwise (softmax: over the last axis); no parameters.

    Parameters
    ----------
    activation : str
        'linear', 'tanh', 'relu', 'sigmoid', 'softmax', 'hard_sigmoid', 'softplus',
        'softsign', 'elu', 'selu', 'silu' (or 'swish'), 'hard_silu' (or 'hard_swish'),
        'relu6', 'leaky_relu' (negative slope 0.2), 'exponential' or 'log_softmax':
        Keras 3's definitions (hard_sigmoid is ``clip(x / 6 + 1/2, 0, 1)``; softmax and
        log_softmax over the last axis).
    dtype : {float32, float64}, default float32

    The losses in :mod:`cyrnn.losses` take logits: put this layer after the Dense head
    for predictions (``cyrnn.from_keras`` does, for ``Dense(activation=...)``), not
    before a loss that applies sigmoid/softmax itself.
    """

    def __init__(self, activation, *, dtype=np.float32):
        if isinstance(activation, str):
            activation = ALIASES.get(activation, activation)
        self.activation = V.check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.dtype = V.check_dtype(dtype)
        self._cache = None
        self._build_params()

    def param_specs(self):
        return []

    def forward(self, x, training=None):
        """``f(x)`` elementwise (softmax and log_softmax over the last axis), in this
        layer's dtype; real numbers only (TypeError otherwise). Overflow gives inf, as
        in Keras. ``training`` overrides ``self.training``."""
        a = V._numeric_array(x, "x").astype(self.dtype, copy=False)
        with np.errstate(over="ignore"):  # exp/exponential overflow to inf, as in Keras
            y = ACTIVATIONS[self.activation][0](a).astype(self.dtype, copy=False)
        # backward reads copies: the caller may change its input or the output in place
        self._cache = (a.copy(), y.copy()) if self._resolve_training(training) else None
        return y

    __call__ = forward

    def backward(self, d_output):
        """The gradient on the input of the last (training) forward."""
        a, y = self._require_cache()
        d = self._check_d_output(d_output, y.shape)
        self._cache = None
        return ACTIVATIONS[self.activation][1](a, y, d).astype(self.dtype, copy=False)

    def __repr__(self):
        return f"Activation({self.activation!r})"
