"""Activations by code (``cyrnn.cells.ACTIVATION_TABLE``) as CUDA device functions,
derivatives through the activation's output ``y`` (as every backend)."""

from __future__ import annotations

import math

from numba import cuda

from ...cells import ACT_HARD_SIGMOID, ACT_LINEAR, ACT_RELU, ACT_SIGMOID, ACT_TANH


@cuda.jit(device=True, inline=True)
def sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


@cuda.jit(device=True, inline=True)
def activate(code, a):
    """``f(a)`` of activation ``code``."""
    if code == ACT_TANH:
        return math.tanh(a)
    if code == ACT_SIGMOID:
        return sigmoid(a)
    if code == ACT_RELU:
        return max(a, 0.0)
    if code == ACT_LINEAR:
        return a
    if code == ACT_HARD_SIGMOID:  # Keras 3: clip(a / 6 + 1/2, 0, 1)
        return min(max(a / 6.0 + 0.5, 0.0), 1.0)
    return a


@cuda.jit(device=True, inline=True)
def derivative(code, y):
    """``f'(a)`` of activation ``code`` through its output ``y = f(a)``."""
    if code == ACT_TANH:
        return 1.0 - y * y
    if code == ACT_SIGMOID:
        return y * (1.0 - y)
    if code == ACT_RELU:
        return 1.0 if y > 0 else 0.0
    if code == ACT_LINEAR:
        return 1.0
    if code == ACT_HARD_SIGMOID:
        return 1.0 / 6.0 if 0 < y < 1 else 0.0
    return 1.0
