"""What every layer shares: a parameter buffer, a training flag, state dicts."""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from ..params import ParameterBuffer


def glorot_uniform(rng, shape, dtype):
    """Keras's default kernel initialiser for a (fan_out, fan_in) weight."""
    fan_out, fan_in = shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def orthogonal(rng, n, dtype):
    """A random (n, n) orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


def kept_for_backward(a, given, training):
    """``a`` (an input converted from the caller's ``given``) as a training forward
    keeps it for backward: a copy where it shares the caller's memory, so that a
    caller who changes its array between forward and backward does not change the
    gradients (the fused compiled calls copy their input too)."""
    if training and isinstance(given, np.ndarray) and np.may_share_memory(a, given):
        return a.copy()
    return a


class Module:
    """What layers and :class:`cyrnn.Sequential` share: a training flag and the
    parameters in ``self.params`` (a :class:`ParameterBuffer`), PyTorch's names."""

    training = True

    def train(self, mode=True):
        """Set training mode (``mode=False``: inference, as :meth:`eval`); returns self.

        In training mode a forward keeps what backward needs and applies dropout; an
        explicit ``training=`` argument of a call overrides the flag for that call."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode: forward keeps nothing and applies no dropout; returns self."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter gradient (``params.grad``) to zero."""
        self.params.zero_grad()

    def state_dict(self):
        """Copies of the parameters, ``{name: array}`` (PyTorch's names for the
        recurrent layers: ``weight_ih_l0``, ...)."""
        return self.params.state_dict()

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` (``{name: array}``, e.g. from :meth:`state_dict`) into the
        parameters; names, shapes and values (finite in this dtype) are checked
        before anything is copied. ``strict=False`` ignores unexpected names, and
        parameters missing from ``state`` keep their values."""
        self.params.load_state_dict(state, strict=strict)


class Layer(Module):
    """Base class: parameters live in ``self.params`` (a :class:`ParameterBuffer`).

    Attributes
    ----------
    params : ParameterBuffer
        Values and gradients; ``params[name]`` / ``params.grad_of(name)``.
    training : bool
        True: forward keeps what backward needs and applies dropout.
        False (inference): keeps nothing, so concurrent forward calls are safe.
    """

    def param_specs(self):  # pragma: no cover - abstract
        """``[(name, shape), ...]``: the parameters this layer allocates, in order."""
        raise NotImplementedError

    def _build_params(self):
        self.params = ParameterBuffer(self.param_specs(), dtype=self.dtype)

    def rehome(self, data, grad):
        """Move the parameters into ``data``/``grad`` (slices of a model's buffer). The
        layer keeps its ``params`` object (an optimizer built on it follows)."""
        self.params._rebind(data, grad)

    def _resolve_training(self, training):
        return self.training if training is None else bool(training)

    def _require_cache(self):
        cache = getattr(self, "_cache", None)
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a preceding forward in "
                               "training mode, with no inference forward after it (inference "
                               "keeps no backward caches and drops the last one)")
        return cache

    def _check_d_output(self, d_output, shape):
        """``d_output`` as an array of this layer's dtype, checked to have the shape of
        the forward's output (``shape``) before ``backward`` changes anything."""
        d = V._numeric_array(d_output, "d_output")
        if d.shape != tuple(shape):
            want = tuple(shape)
            raise ValueError(f"{type(self).__name__}.backward: d_output must have the "
                             f"forward output's shape {want}, got {d.shape}")
        return d.astype(self.dtype, copy=False)
