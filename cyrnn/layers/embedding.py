"""Embedding: integer token ids -> dense vectors."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .base import Layer, kept_for_backward


class Embedding(Layer):
    """A lookup table ``weight[ids]``.

    Parameters
    ----------
    vocab_size : int
        Number of distinct ids; valid ids are ``0 .. vocab_size - 1``.
    embedding_dim : int
    mask_zero : bool, default False
        Id 0 is padding: :meth:`compute_mask` marks it invalid, so the following
        recurrent layer skips those steps (Keras's ``mask_zero``).
    dtype : {float32, float64}, default float32
    random_state : None, int or numpy Generator

    Attributes
    ----------
    params : ParameterBuffer with ``weight`` (vocab_size, embedding_dim), initialised
        uniformly in [-0.05, 0.05] (Keras's default).
    """

    def __init__(self, vocab_size, embedding_dim, *, mask_zero=False, dtype=np.float32,
                 random_state=None):
        self.vocab_size = V.check_int(vocab_size, "vocab_size", minimum=1)
        self.embedding_dim = V.check_int(embedding_dim, "embedding_dim", minimum=1)
        self.mask_zero = bool(mask_zero)
        self.dtype = V.check_dtype(dtype)
        self._cache = None
        self._build_params()
        self.reset_parameters(random_state)

    @property
    def output_size(self):
        """Features of the output per step (``embedding_dim``)."""
        return self.embedding_dim

    def param_specs(self):
        return [("weight", (self.vocab_size, self.embedding_dim))]

    def reset_parameters(self, random_state=None):
        """Uniform in [-0.05, 0.05] (Keras's default)."""
        rng = V.check_rng(random_state)
        self.params["weight"][...] = rng.uniform(-0.05, 0.05, self.params.shapes["weight"])

    def check_ids(self, ids, ndim=2):
        """``ids`` as an int64 array of ``ndim`` dimensions, each id in
        ``[0, vocab_size)`` (ValueError/TypeError naming the problem otherwise)."""
        return V.check_index_array(ids, "token ids", ndim, self.vocab_size)

    def compute_mask(self, ids):
        """(n, T) bool: False where ``ids == 0`` when ``mask_zero``, else None."""
        return (np.asarray(ids) != 0) if self.mask_zero else None

    def forward(self, ids, training=None):
        """(n, T) int ids -> (n, T, embedding_dim)."""
        given, ids = ids, self.check_ids(ids)
        training = self._resolve_training(training)
        self._cache = kept_for_backward(ids, given, training) if training else None
        return self.params["weight"][ids]

    __call__ = forward

    def backward(self, d_output):
        """Adds the gradient to ``weight``; ids have no gradient (returns None)."""
        ids = self._require_cache()
        d = self._check_d_output(d_output, ids.shape + (self.embedding_dim,))
        self._cache = None
        d = d.reshape(-1, self.embedding_dim)
        np.add.at(self.params.grad_of("weight"), ids.reshape(-1), d)
        return None
