"""Activations by code (``cyrnn.cells.ACTIVATION_TABLE``) as CUDA device functions,
derivatives through the activation's output ``y`` (as every backend), built
per float type by :func:`make`."""

from __future__ import annotations

import math

from numba import cuda

from ...cells import ACT_HARD_SIGMOID, ACT_LINEAR, ACT_RELU, ACT_SIGMOID, ACT_TANH


def make(F):
    """``(activate, derivative)`` for floats of type ``F`` (``numpy.float32`` or
    ``float64``): the constants are ``F`` values, so float32 math stays float32."""
    ZERO, ONE, HALF, SIX = F(0), F(1), F(0.5), F(6)

    @cuda.jit(device=True, inline=True)
    def sigmoid(a):
        return ONE / (ONE + math.exp(-a))

    @cuda.jit(device=True, inline=True)
    def activate(code, a):
        """``f(a)`` of activation ``code``."""
        if code == ACT_TANH:
            return math.tanh(a)
        if code == ACT_SIGMOID:
            return sigmoid(a)
        if code == ACT_RELU:
            return max(a, ZERO)
        if code == ACT_LINEAR:
            return a
        if code == ACT_HARD_SIGMOID:  # Keras 3: clip(a / 6 + 1/2, 0, 1)
            return min(max(a / SIX + HALF, ZERO), ONE)
        return a

    @cuda.jit(device=True, inline=True)
    def derivative(code, y):
        """``f'(a)`` of activation ``code`` through its output ``y = f(a)``."""
        if code == ACT_TANH:
            return ONE - y * y
        if code == ACT_SIGMOID:
            return y * (ONE - y)
        if code == ACT_RELU:
            return ONE if y > ZERO else ZERO
        if code == ACT_LINEAR:
            return ONE
        if code == ACT_HARD_SIGMOID:
            return ONE / SIX if ZERO < y < ONE else ZERO
        return ONE

    return activate, derivative
