"""Optimizers that update a :class:`~cyrnn.params.ParameterBuffer` in place.

Every parameter of a model lives in one flat array (``buffer.data``) with its
gradient in another (``buffer.grad``), so an optimizer step is a single
vectorised pass over a few 1-D arrays: clipping first, then the update rule.

The update rules reproduce PyTorch's single-tensor (``foreach=False``,
``fused=False``) implementations of :class:`torch.optim.SGD`,
:class:`torch.optim.RMSprop` and :class:`torch.optim.Adam`, following the same
order of floating point operations, so float64 trajectories agree with torch
to round-off.

The math of each optimizer is a small pure function operating on flat arrays
in place (:func:`_sgd_update`, :func:`_rmsprop_update`, :func:`_adam_update`).
The classes look these functions up in the module namespace at every step, so
a compiled kernel with the same signature can replace them.  The NumPy
versions use ``out=`` ufunc arguments and a preallocated ``work`` array of
shape ``(2, size)``; a fused elementwise kernel may simply ignore ``work``.
Arrays of state that a configuration does not use are passed as empty arrays
(shape ``(0,)``), never ``None``, to keep the signatures kernel-friendly.
"""

from __future__ import annotations

import math

import numpy as np

from . import _validation as V
from .params import ParameterBuffer

__all__ = [
    "Optimizer",
    "SGD",
    "RMSProp",
    "Adam",
    "clip_by_value",
    "clip_by_global_norm",
    "get_optimizer",
]


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------

def _check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """``low <(=) value <(=) high`` and finite, as a float (the shared validation rule)."""
    return V.check_float(value, name, minimum=low, maximum=high, include_min=not low_open,
                         include_max=not high_open)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_optional_positive(name, value):
    if value is None:
        return None
    return _check_range(name, value, low=0.0, low_open=True)


def _as_buffer(params):
    """The ParameterBuffer behind ``params`` (a buffer, or an object with ``.params``)."""
    if isinstance(params, ParameterBuffer):
        return params
    inner = getattr(params, "params", None)
    if isinstance(inner, ParameterBuffer):
        return inner
    raise TypeError("params must be a ParameterBuffer or an object whose .params attribute is "
                    f"a ParameterBuffer, got {type(params).__name__}")


def _check_grad_array(name, grad):
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(grad).__name__}")
    if not np.issubdtype(grad.dtype, np.floating):
        raise TypeError(f"{name} must have a floating dtype, got {grad.dtype}")


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------

def clip_by_value(grad, clip_value):
    """Clip every gradient entry to ``[-clip_value, clip_value]``, in place.

    Same rule as :func:`torch.nn.utils.clip_grad_value_`. NaN entries stay NaN.

    Parameters
    ----------
    grad : ndarray of floating dtype
        Gradient array, typically the flat ``ParameterBuffer.grad``; modified
        in place.
    clip_value : float
        Non-negative bound.

    Returns
    -------
    grad : ndarray
        The same (clipped) array.
    """
    _check_grad_array("grad", grad)
    c = _check_range("clip_value", clip_value, low=0.0)
    kernel = _compiled("clip_by_value_flat", grad)
    if kernel is not None:
        kernel(grad.reshape(-1), c)
    else:
        np.clip(grad, -c, c, out=grad)
    return grad


def clip_by_global_norm(grad, max_norm):
    """Rescale ``grad`` in place so its L2 norm is at most ``max_norm``.

    Same rule as :func:`torch.nn.utils.clip_grad_norm_` with its default
    ``error_if_nonfinite=False``: with ``total_norm = ||grad||_2`` and
    ``coef = max_norm / (total_norm + 1e-6)``, the gradient is multiplied by
    ``coef`` when ``coef < 1`` and left untouched otherwise. The norm is
    accumulated in float64 whatever the gradient dtype.

    A non-finite norm raises nothing: as in torch, the gradient is still
    scaled, so a NaN norm makes every entry NaN and an infinite norm sets
    finite entries to 0 (and infinite ones to NaN). Check the returned norm
    with :func:`math.isfinite` to skip such steps.

    Parameters
    ----------
    grad : ndarray of floating dtype
        Gradient array, typically the flat ``ParameterBuffer.grad``; modified
        in place. The norm is taken over all entries.
    max_norm : float
        Non-negative maximum norm.

    Returns
    -------
    total_norm : float
        The L2 norm of ``grad`` before clipping.
    """
    _check_grad_array("grad", grad)
    max_norm = _check_range("max_norm", max_norm, low=0.0)
    kernel = _compiled("clip_by_global_norm_flat", grad)
    if kernel is not None:
        return kernel(grad.reshape(-1), max_norm)
    flat = grad.reshape(-1)
    # einsum with dtype=float64 casts in small buffered chunks: no full-size copy.
    total_norm = math.sqrt(float(np.einsum("i,i->", flat, flat, dtype=np.float64)))
    coef = max_norm / (total_norm + 1e-6)
    if not coef >= 1.0:  # also true for a NaN coef, which torch applies as well
        # inf * 0 -> NaN for an infinite norm: expected here, as in torch, so no warning.
        with np.errstate(invalid="ignore"):
            np.multiply(grad, coef, out=grad)
    return total_norm


# ---------------------------------------------------------------------------
# update rules on flat arrays (replaceable by compiled kernels)
# ---------------------------------------------------------------------------

def _lerp(start, end, weight, tmp):
    """``start += weight * (end - start)`` in place, with torch.lerp's two branches."""
    np.subtract(end, start, out=tmp)
    if abs(weight) < 0.5:
        np.multiply(tmp, weight, out=tmp)
        np.add(start, tmp, out=start)
    else:
        np.multiply(tmp, weight - 1.0, out=tmp)
        np.add(end, tmp, out=start)


def _effective_grad(param, grad, weight_decay, out):
    """``grad + weight_decay * param`` into ``out`` (or ``grad`` itself when no decay)."""
    if weight_decay == 0.0:
        return grad
    np.multiply(param, weight_decay, out=out)
    np.add(grad, out, out=out)
    return out


def _sgd_update(param, grad, momentum_buf, work, lr, momentum, dampening, nesterov,
                weight_decay, first_step):
    """One SGD step (torch.optim.SGD), in place on flat arrays.

    Parameters
    ----------
    param : ndarray of shape (n,)
        Parameters, updated in place.
    grad : ndarray of shape (n,)
        Gradient (not modified).
    momentum_buf : ndarray of shape (n,) or (0,)
        Momentum buffer, updated in place; empty when ``momentum == 0``.
    work : ndarray of shape (2, n)
        Scratch space.
    lr, momentum, dampening, weight_decay : float
    nesterov : bool
    first_step : bool
        Whether this is the first step (the buffer is then set to the gradient).
    """
    d_p = _effective_grad(param, grad, weight_decay, work[0])
    tmp = work[1]
    if momentum != 0.0:
        if first_step:
            np.copyto(momentum_buf, d_p)
        else:
            np.multiply(momentum_buf, momentum, out=momentum_buf)
            if dampening != 0.0:
                np.multiply(d_p, 1.0 - dampening, out=tmp)
                np.add(momentum_buf, tmp, out=momentum_buf)
            else:
                np.add(momentum_buf, d_p, out=momentum_buf)
        if nesterov:
            np.multiply(momentum_buf, momentum, out=tmp)
            np.add(d_p, tmp, out=tmp)
            d_p = tmp
        else:
            d_p = momentum_buf
    np.multiply(d_p, -lr, out=tmp)
    np.add(param, tmp, out=param)


def _rmsprop_update(param, grad, square_avg, grad_avg, momentum_buf, work, lr, alpha, eps,
                    momentum, centered, weight_decay):
    """One RMSProp step (torch.optim.RMSprop), in place on flat arrays.

    ``v = alpha*v + (1-alpha)*g^2``; ``avg = sqrt(v) + eps`` (centered:
    ``m = lerp(m, g, 1-alpha)``, ``avg = sqrt(v - m^2) + eps``); then
    ``p -= lr*g/avg``, or with momentum ``buf = momentum*buf + g/avg;
    p -= lr*buf``.

    Parameters
    ----------
    param : ndarray of shape (n,)
        Parameters, updated in place.
    grad : ndarray of shape (n,)
        Gradient (not modified).
    square_avg : ndarray of shape (n,)
        Running average of squared gradients, updated in place.
    grad_avg : ndarray of shape (n,) or (0,)
        Running average of gradients (empty unless ``centered``).
    momentum_buf : ndarray of shape (n,) or (0,)
        Momentum buffer (empty unless ``momentum > 0``).
    work : ndarray of shape (2, n)
        Scratch space.
    lr, alpha, eps, momentum, weight_decay : float
    centered : bool
    """
    g = _effective_grad(param, grad, weight_decay, work[0])
    avg = work[1]
    np.multiply(square_avg, alpha, out=square_avg)
    np.multiply(g, 1.0 - alpha, out=avg)
    np.multiply(avg, g, out=avg)
    np.add(square_avg, avg, out=square_avg)
    if centered:
        _lerp(grad_avg, g, 1.0 - alpha, avg)
        np.multiply(grad_avg, grad_avg, out=avg)
        np.subtract(square_avg, avg, out=avg)
        np.sqrt(avg, out=avg)
    else:
        np.sqrt(square_avg, out=avg)
    np.add(avg, eps, out=avg)
    if momentum > 0.0:
        np.multiply(momentum_buf, momentum, out=momentum_buf)
        np.divide(g, avg, out=avg)
        np.add(momentum_buf, avg, out=momentum_buf)
        np.multiply(momentum_buf, -lr, out=avg)
        np.add(param, avg, out=param)
    else:
        tmp = work[0]  # g may live here; it is read before being overwritten
        np.multiply(g, -lr, out=tmp)
        np.divide(tmp, avg, out=tmp)
        np.add(param, tmp, out=param)


def _adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, work, step, lr, beta1,
                 beta2, eps, weight_decay, amsgrad):
    """One Adam step (torch.optim.Adam, L2 weight decay), in place on flat arrays.

    ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2)*g^2``;
    ``denom = sqrt(v)/sqrt(1-b2^t) + eps``; ``p -= (lr/(1-b1^t)) * m/denom``
    (amsgrad: ``v`` replaced by its running maximum in ``denom``).

    Parameters
    ----------
    param : ndarray of shape (n,)
        Parameters, updated in place.
    grad : ndarray of shape (n,)
        Gradient (not modified).
    exp_avg, exp_avg_sq : ndarray of shape (n,)
        First and second moment estimates, updated in place.
    max_exp_avg_sq : ndarray of shape (n,) or (0,)
        Running maximum of ``exp_avg_sq`` (empty unless ``amsgrad``).
    work : ndarray of shape (2, n)
        Scratch space.
    step : int
        1-based step number (for bias correction).
    lr, beta1, beta2, eps, weight_decay : float
    amsgrad : bool
    """
    g = _effective_grad(param, grad, weight_decay, work[0])
    tmp = work[1]
    _lerp(exp_avg, g, 1.0 - beta1, tmp)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    np.multiply(g, 1.0 - beta2, out=tmp)
    np.multiply(tmp, g, out=tmp)
    np.add(exp_avg_sq, tmp, out=exp_avg_sq)

    step = float(step)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5

    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        np.sqrt(max_exp_avg_sq, out=tmp)
    else:
        np.sqrt(exp_avg_sq, out=tmp)
    denom = tmp
    np.divide(denom, bias_correction2_sqrt, out=denom)
    np.add(denom, eps, out=denom)
    upd = work[0]  # g is no longer needed
    np.multiply(exp_avg, -step_size, out=upd)
    np.divide(upd, denom, out=upd)
    np.add(param, upd, out=param)


# ---------------------------------------------------------------------------
# compiled kernels
# ---------------------------------------------------------------------------
# The NumPy functions above are the reference. When numba is installed, the
# update rules and the clipping passes run as fused compiled kernels
# (cyrnn._optim_kernels: same signatures, same operations in the same order),
# for float32/float64 C-contiguous arrays; numba is imported at the first use,
# not with cyrnn. The reference stays available in _REFERENCE.

#: Optimizer states that average squared gradients (never negative).
_SECOND_MOMENTS = frozenset({"square_avg", "exp_avg_sq", "max_exp_avg_sq"})

_REFERENCE = {"_sgd_update": _sgd_update, "_rmsprop_update": _rmsprop_update,
              "_adam_update": _adam_update}
_kernels = None  # the cyrnn._optim_kernels module, False when it cannot be imported


def _load_kernels():
    """The module of the compiled kernels: the Cython extension's (through its backend
    module, which loads it without scipy.linalg's package), else Numba's
    ``_optim_kernels``, else False (the NumPy reference). The extension comes first:
    it compiles nothing at run time, and a training loop on the Cython backend then
    never imports Numba (about 100 MB of resident memory and a second of import)."""
    try:
        from .backends import cython_backend as module
        return module
    except Exception:  # not built here: Numba's
        pass
    try:
        from . import _optim_kernels as module
    except ImportError:
        return False
    except Exception as exc:  # numba is there but cannot compile here: the reference
        import warnings
        warnings.warn(f"cyrnn's compiled optimizer kernels are unavailable ({exc}); "
                      "using the NumPy reference", RuntimeWarning, stacklevel=4)
        return False
    return module


def _compiled(name, arr):
    """The compiled kernel ``name`` for ``arr``, or None (no compiled kernels, other
    dtype/layout)."""
    global _kernels
    if _kernels is None:
        _kernels = _load_kernels()
    if (_kernels and type(arr) is np.ndarray and arr.dtype.char in "fd"
            and arr.flags.c_contiguous):
        return getattr(_kernels, name)
    return None


def _dispatching(reference, name):
    def update(param, grad, *args):
        kernel = _compiled(name, param)
        if kernel is None or grad.dtype != param.dtype or not grad.flags.c_contiguous:
            kernel = reference
        kernel(param, grad, *args)

    update.__name__ = reference.__name__
    update.__qualname__ = reference.__qualname__
    update.__doc__ = reference.__doc__
    update.__wrapped__ = reference
    return update


_sgd_update = _dispatching(_sgd_update, "sgd_update")
_rmsprop_update = _dispatching(_rmsprop_update, "rmsprop_update")
_adam_update = _dispatching(_adam_update, "adam_update")


# ---------------------------------------------------------------------------
# optimizer classes
# ---------------------------------------------------------------------------

class Optimizer:
    """Base class for optimizers over a :class:`~cyrnn.params.ParameterBuffer`.

    Parameters
    ----------
    params : ParameterBuffer or object with a ``.params`` ParameterBuffer
        The parameters to optimize (a buffer, or a model/layer owning one).
    lr : float
        Learning rate, finite and >= 0 (0, as in torch.optim: a scheduler's
        warm-up may start there).
    clip_value : float or None, default None
        If set (> 0), gradients are clipped to ``[-clip_value, clip_value]``
        at each step (see :func:`clip_by_value`).
    clip_norm : float or None, default None
        If set (> 0), gradients are rescaled to a global L2 norm of at most
        ``clip_norm`` at each step, after value clipping (see
        :func:`clip_by_global_norm`).

    Attributes
    ----------
    params : ParameterBuffer
        The optimized buffer.
    n_steps : int
        Number of steps taken.
    last_grad_norm : float or None
        Gradient norm before clipping at the last step (only with ``clip_norm``).

    Notes
    -----
    :meth:`step` clips ``params.grad`` in place (like torch's clipping
    utilities modify ``.grad``), then updates ``params.data`` in place.
    Optimizer state has the buffer's dtype and is allocated once at
    construction, together with a ``(2, size)`` scratch array, so steps do not
    allocate full-size arrays.
    """

    #: names of the per-parameter state arrays, set by subclasses in ``__init__``
    _state_names = ()

    def __init__(self, params, lr, clip_value=None, clip_norm=None):
        self.params = _as_buffer(params)
        self.lr = lr
        self.clip_value = _check_optional_positive("clip_value", clip_value)
        self.clip_norm = _check_optional_positive("clip_norm", clip_norm)
        self.n_steps = 0
        self.last_grad_norm = None
        self._state = {}
        self._empty = np.zeros(0, dtype=self.params.dtype)
        self._work = np.zeros((2, self.params.size), dtype=self.params.dtype)

    @property
    def lr(self):
        """Learning rate (validated on assignment, so schedulers may set it)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        # 0 allowed, as in torch.optim: a scheduler's warm-up may start there
        self._lr = _check_range("lr", value, low=0.0)

    def _add_state(self, name):
        arr = np.zeros(self.params.size, dtype=self.params.dtype)
        self._state[name] = arr
        return arr

    def _get_state(self, name):
        return self._state.get(name, self._empty)

    def step(self):
        """Clip ``params.grad`` (if configured) and update ``params.data`` in place
        (during device-resident training, the device's arrays: ``params.device``)."""
        device = self.params.device
        if device is not None and device.step(self):
            self.n_steps += 1
            return
        if device is None:
            # an optimizer over part of a model trained on the device (one layer's
            # buffer): the host arrays are made current and the session ends
            self.params._end_device_sessions()
        grad = self.params.grad
        if self.clip_value is not None:
            clip_by_value(grad, self.clip_value)
        if self.clip_norm is not None:
            self.last_grad_norm = clip_by_global_norm(grad, self.clip_norm)
        self._update(self.params.data, grad)
        self.n_steps += 1

    def _update(self, param, grad):
        raise NotImplementedError

    def zero_grad(self):
        """Set all gradients of the buffer to zero."""
        self.params.zero_grad()

    def state_dict(self):
        """The optimizer state as plain numbers and numpy arrays.

        Returns
        -------
        state : dict
            ``{"step": int, "lr": float, <state name>: ndarray copy, ...}``;
            storable with :func:`numpy.savez` without pickling. Other
            hyperparameters are not included: construct the optimizer with
            the same configuration before loading.
        """
        self.params._end_device_sessions()  # the device holds the state until then
        state = {"step": int(self.n_steps), "lr": float(self.lr)}
        for name, arr in self._state.items():
            state[name] = arr.copy()
        return state

    def load_state_dict(self, state):
        """Restore state produced by :meth:`state_dict`.

        Parameters
        ----------
        state : mapping
            Must hold exactly the keys of :meth:`state_dict` for this
            configuration. Arrays are copied into the existing state (cast to
            the buffer dtype); 0-d arrays are accepted for the numbers.
        """
        expected = {"step", "lr", *self._state}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"optimizer state dict mismatch: missing {missing}, "
                             f"unexpected {unexpected}")
        step = np.asarray(state["step"])
        if step.shape != () or not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
            raise ValueError(f"state 'step' must be a non-negative integer, got {state['step']!r}")
        lr = _check_range("lr", float(V.check_values(state["lr"], "state 'lr'", (), np.float64)),
                          low=0.0)
        arrays = {}  # every value checked before any is written
        for name in self._state:
            arrays[name] = V.check_values(state[name], f"state {name!r}", (self.params.size,),
                                          self._state[name].dtype)
            if name in _SECOND_MOMENTS and (arrays[name] < 0).any():
                raise ValueError(f"state {name!r} holds negative values (it averages "
                                 "squares)")
        self.params._end_device_sessions()  # the device's state would overwrite this
        self.lr = lr
        self.n_steps = int(step)
        for name, value in arrays.items():
            self._state[name][...] = value

    def _hyperparameters(self):
        return {"lr": self.lr}

    def __repr__(self):
        hp = dict(self._hyperparameters())
        if self.clip_value is not None:
            hp["clip_value"] = self.clip_value
        if self.clip_norm is not None:
            hp["clip_norm"] = self.clip_norm
        args = ", ".join(f"{k}={v!r}" for k, v in hp.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Exactly the algorithm of :class:`torch.optim.SGD`: with
    ``g = grad + weight_decay * p``, the momentum buffer is set to ``g`` at
    the first step and ``buf = momentum*buf + (1-dampening)*g`` afterwards;
    the step direction is ``g + momentum*buf`` (Nesterov) or ``buf``, and
    ``p -= lr * direction``.

    Parameters
    ----------
    params : ParameterBuffer or object with a ``.params`` ParameterBuffer
    lr : float, default 0.01
        Learning rate, >= 0.
    momentum : float, default 0.0
        Momentum factor, >= 0.
    dampening : float, default 0.0
        Dampening of the momentum, in [0, 1].
    nesterov : bool, default False
        Nesterov momentum; requires ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, >= 0.
    clip_value, clip_norm : float or None
        See :class:`Optimizer`.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, clip_value=None, clip_norm=None):
        super().__init__(params, lr, clip_value=clip_value, clip_norm=clip_norm)
        self.momentum = _check_range("momentum", momentum, low=0.0)
        self.dampening = _check_range("dampening", dampening, low=0.0, high=1.0)
        self.nesterov = _check_bool("nesterov", nesterov)
        self.weight_decay = _check_range("weight_decay", weight_decay, low=0.0)
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0, got "
                             f"momentum={self.momentum!r}, dampening={self.dampening!r}")
        if self.momentum != 0.0:
            self._add_state("momentum_buffer")

    def _update(self, param, grad):
        _sgd_update(param, grad, self._get_state("momentum_buffer"), self._work, self.lr,
                    self.momentum, self.dampening, self.nesterov, self.weight_decay,
                    self.n_steps == 0)

    def _hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class RMSProp(Optimizer):
    """RMSProp, exactly :class:`torch.optim.RMSprop` with ``alpha=decay``.

    ``v = decay*v + (1-decay)*g^2`` and ``avg = sqrt(v) + eps`` (eps added
    after the square root); centered: ``m = decay*m + (1-decay)*g`` and
    ``avg = sqrt(v - m^2) + eps``. Then ``p -= lr*g/avg``, or with momentum
    ``buf = momentum*buf + g/avg; p -= lr*buf``. ``g`` includes the L2
    penalty ``weight_decay * p``.

    Parameters
    ----------
    params : ParameterBuffer or object with a ``.params`` ParameterBuffer
    lr : float, default 1e-3
        Learning rate, >= 0.
    decay : float, default 0.9
        Smoothing constant of the running averages, in (0, 1). Note that
        torch's default ``alpha`` is 0.99.
    eps : float, default 1e-6
        Added to the denominator, >= 0. Note that torch's default is 1e-8.
    momentum : float, default 0.0
        Momentum factor, >= 0.
    centered : bool, default False
        Normalise by an estimate of the gradient variance.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, >= 0.
    clip_value, clip_norm : float or None
        See :class:`Optimizer`.
    """

    def __init__(self, params, lr=1e-3, decay=0.9, eps=1e-6, momentum=0.0, centered=False,
                 weight_decay=0.0, clip_value=None, clip_norm=None):
        super().__init__(params, lr, clip_value=clip_value, clip_norm=clip_norm)
        self.decay = _check_range("decay", decay, low=0.0, high=1.0, low_open=True,
                                  high_open=True)
        self.eps = _check_range("eps", eps, low=0.0)
        self.momentum = _check_range("momentum", momentum, low=0.0)
        self.centered = _check_bool("centered", centered)
        self.weight_decay = _check_range("weight_decay", weight_decay, low=0.0)
        self._add_state("square_avg")
        if self.centered:
            self._add_state("grad_avg")
        if self.momentum > 0.0:
            self._add_state("momentum_buffer")

    def _update(self, param, grad):
        _rmsprop_update(param, grad, self._state["square_avg"], self._get_state("grad_avg"),
                        self._get_state("momentum_buffer"), self._work, self.lr, self.decay,
                        self.eps, self.momentum, self.centered, self.weight_decay)

    def _hyperparameters(self):
        return {"lr": self.lr, "decay": self.decay, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam, exactly :class:`torch.optim.Adam` (L2 weight decay, not AdamW).

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g^2``;
    ``denom = sqrt(v)/sqrt(1-b2^t) + eps``; ``p -= (lr/(1-b1^t)) * m/denom``.
    With ``amsgrad``, ``v`` in ``denom`` is replaced by its running maximum.

    Parameters
    ----------
    params : ParameterBuffer or object with a ``.params`` ParameterBuffer
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, >= 0.
    amsgrad : bool, default False
        Use the AMSGrad variant.
    clip_value, clip_norm : float or None
        See :class:`Optimizer`.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, clip_value=None, clip_norm=None):
        super().__init__(params, lr, clip_value=clip_value, clip_norm=clip_norm)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
        self.beta1 = _check_range("betas[0]", beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = _check_range("betas[1]", beta2, low=0.0, high=1.0, high_open=True)
        self.eps = _check_range("eps", eps, low=0.0)
        self.weight_decay = _check_range("weight_decay", weight_decay, low=0.0)
        self.amsgrad = _check_bool("amsgrad", amsgrad)
        self._add_state("exp_avg")
        self._add_state("exp_avg_sq")
        if self.amsgrad:
            self._add_state("max_exp_avg_sq")

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _update(self, param, grad):
        _adam_update(param, grad, self._state["exp_avg"], self._state["exp_avg_sq"],
                     self._get_state("max_exp_avg_sq"), self._work, self.n_steps + 1, self.lr,
                     self.beta1, self.beta2, self.eps, self.weight_decay, self.amsgrad)

    def _hyperparameters(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}


_OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSProp, "adam": Adam}


def get_optimizer(name, params, **kwargs):
    """Build an optimizer by name.

    Parameters
    ----------
    name : str
        ``'sgd'``, ``'rmsprop'`` or ``'adam'`` (case-insensitive).
    params : ParameterBuffer or object with a ``.params`` ParameterBuffer
    **kwargs
        Passed to the optimizer's constructor.

    Returns
    -------
    optimizer : Optimizer
    """
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {type(name).__name__}")
    try:
        cls = _OPTIMIZERS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; valid names are "
                         f"{sorted(_OPTIMIZERS)}") from None
    return cls(params, **kwargs)
