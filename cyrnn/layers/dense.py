"""Dense (fully connected) layer applied to the last axis."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .base import Layer, glorot_uniform, kept_for_backward


class Dense(Layer):
    """``y = x W^T + b`` on the last axis (per step for sequences).

    Parameters
    ----------
    in_features, out_features : int
    dtype : {float32, float64}, default float32
    random_state : None, int or numpy Generator

    Attributes
    ----------
    params : ParameterBuffer with ``weight`` (out_features, in_features), Glorot-uniform,
        and ``bias`` (out_features,), zero. (PyTorch's ``nn.Linear`` layout.)

    Outputs are logits: the losses in :mod:`cyrnn.losses` apply sigmoid/softmax.
    """

    def __init__(self, in_features, out_features, *, dtype=np.float32, random_state=None):
        self.in_features = V.check_int(in_features, "in_features", minimum=1)
        self.out_features = V.check_int(out_features, "out_features", minimum=1)
        self.dtype = V.check_dtype(dtype)
        self._cache = None
        self._build_params()
        self.reset_parameters(random_state)

    @property
    def output_size(self):
        """Features of the output (``out_features``)."""
        return self.out_features

    def param_specs(self):
        return [("weight", (self.out_features, self.in_features)), ("bias", (self.out_features,))]

    def reset_parameters(self, random_state=None):
        """Glorot-uniform ``weight``, zero ``bias`` (Keras's defaults)."""
        rng = V.check_rng(random_state)
        self.params["weight"][...] = glorot_uniform(rng, self.params.shapes["weight"], self.dtype)
        self.params["bias"][...] = 0

    def forward(self, x, training=None):
        """``x @ weight.T + bias`` on the last axis: (..., in_features) -> (...,
        out_features), every step of a sequence alike. ``x`` must hold real numbers
        (TypeError otherwise); finite values too large for this layer's dtype raise
        ValueError, while NaN and inf pass through, as in PyTorch (inside a model they
        come from a layer before, and the training loop's checks name them).
        ``training`` overrides ``self.training`` (training keeps ``x`` for
        :meth:`backward`)."""
        xa = V._numeric_array(x, "x")  # TypeError: strings, complex, not numbers
        if xa.ndim == 0 or xa.shape[-1] != self.in_features:
            raise ValueError(f"Dense expects {self.in_features} input features on the last "
                             f"axis, got shape {xa.shape}")
        xa = V.to_dtype(xa, self.dtype, "x")
        training = self._resolve_training(training)
        self._cache = kept_for_backward(xa, x, training) if training else None
        return xa @ self.params["weight"].T + self.params["bias"]

    __call__ = forward

    def backward(self, d_output):
        """Adds the gradients of ``weight`` and ``bias`` into ``params.grad`` and
        returns the gradient on the input, through the last (training) forward."""
        x = self._require_cache()
        d = self._check_d_output(d_output, x.shape[:-1] + (self.out_features,))
        self._cache = None
        d2, x2 = d.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
        self.params.grad_of("weight")[...] += d2.T @ x2
        self.params.grad_of("bias")[...] += d2.sum(axis=0)
        return d @ self.params["weight"]
