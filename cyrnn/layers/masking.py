"""Masking: Keras's layer that marks steps whose features all equal a value as padding."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .base import Layer


class Masking(Layer):
    """Steps whose every feature equals ``mask_value`` are padding.

    As the first layer of a :class:`cyrnn.Sequential` (as an Embedding's
    ``mask_zero``), it gives the model's recurrent layers the mask of valid steps
    (combined with ``lengths``/``mask`` when given), so they skip padded steps;
    its output is the input with padded steps set to zero (Keras's rule). No
    parameters.

    Parameters
    ----------
    mask_value : float, default 0.0
    dtype : {float32, float64}, default float32
    """

    def __init__(self, mask_value=0.0, *, dtype=np.float32):
        self.mask_value = V.check_float(mask_value, "mask_value")
        self.dtype = V.check_dtype(dtype)
        self._cache = None
        self._build_params()

    def param_specs(self):
        return []

    def compute_mask(self, x):
        """(n, T) bool: True where some feature of the step differs from ``mask_value``."""
        return np.any(np.asarray(x) != self.mask_value, axis=-1)

    def forward(self, x, training=None):
        """``x`` with its padded steps (every feature equal to ``mask_value``) set to
        zero; real numbers only (TypeError otherwise)."""
        x = V._numeric_array(x, "x").astype(self.dtype, copy=False)
        keep = self.compute_mask(x)[..., None].astype(self.dtype)
        self._cache = (keep, x.shape) if self._resolve_training(training) else None
        return x * keep

    __call__ = forward

    def backward(self, d_output):
        """``d_output`` with the padded steps' gradients zeroed."""
        keep, shape = self._require_cache()
        d = self._check_d_output(d_output, shape)
        self._cache = None
        return d * keep

    def __repr__(self):
        return f"Masking(mask_value={self.mask_value!r})"
