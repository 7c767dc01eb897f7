"""Device-resident training: a model's parameters, gradients and optimizer state stay
on the device across training steps.

:func:`resident_session` (through :meth:`cyrnn.plan.CompiledPlan.device_session`, which
:func:`cyrnn.fitting.device_training` and the fit loop call) uploads a
:class:`~cyrnn.params.ParameterBuffer`'s values and gradients once and registers a
:class:`Session` for it. While it is open:

* the fused calls (:mod:`.fused`) read the parameters from the session's device copy
  (:func:`device_data`) and add gradients into its device gradient buffer
  (:func:`device_grad`) instead of the host's;
* ``ParameterBuffer.zero_grad`` also zeroes the device gradients, and
  ``Optimizer.step`` runs :meth:`Session.step`: clipping and the update rule as device
  kernels (:mod:`.update`) on the device's arrays, with the optimizer's state
  uploaded on its first step;
* per training step the input (and dropout masks) go in and the output comes back
  (the loss and its gradient are computed on the host from it; the gradient goes in);
  with ``clip_norm`` the partial sums of the gradient's norm come back too.

:meth:`Session.sync` copies the values, gradients and optimizer state back into the
host arrays (the fit loop calls it after every epoch, before its divergence check and
validation); :meth:`Session.close` syncs and unregisters, after which the model is an
ordinary host model. A session ends early (synced, then closed) when a fused call on
its buffer declines (the layer path that runs instead reads the host arrays), when
the optimizer is not exactly SGD, RMSProp or Adam over the same buffer, or when a call
or an optimizer uses a part of the buffer on its own (a layer's view of the model's:
:func:`release_overlapping`); training then goes on with host parameters.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import ops, update

_SESSIONS = {}  # id(host data array) -> Session


def _session(data):
    s = _SESSIONS.get(id(data))
    return s if s is not None and s.params.data is data else None


def release_overlapping(data):
    """End (after syncing) every session whose buffer ``data`` is part of without being
    it: a layer's own view of a model's buffer, read or updated on the host (a layer's
    call, an optimizer over one layer). Training then goes on with host parameters,
    as after a declined call."""
    for s in list(_SESSIONS.values()):
        if s.params.data is not data and np.may_share_memory(s.params.data, data):
            s.close(force=True)


def device_data(data):
    """The device parameters for host buffer ``data``: the session's, else a copy made
    for this call (of host values made current first: see :func:`release_overlapping`)."""
    s = _session(data)
    if s is None:
        release_overlapping(data)
        return cuda.to_device(data)
    return s.d_data


def device_grad(data, grad):
    """``(d_grad, to_host)``: the device buffer a backward adds into (the session's
    when ``grad`` is its buffer's gradient, else a copy of ``grad``), and whether the
    caller copies it back into ``grad`` afterwards."""
    s = _session(data)
    if s is not None and grad is s.params.grad:
        return s.d_grad, False
    release_overlapping(data)
    return cuda.to_device(grad), True


def release(data):
    """End the session of ``data``, if any (a declined fused call: the layer path reads
    the host arrays)."""
    s = _session(data)
    if s is not None:
        s.close(force=True)


def resident_session(params):
    """Open (or, when one is open, enter again) the session of the
    :class:`~cyrnn.params.ParameterBuffer` ``params``."""
    s = _session(params.data)
    if s is None:
        s = Session(params)
    s.depth += 1
    return s


class Session:
    """The device copies of one parameter buffer during training (see the module)."""

    def __init__(self, params):
        self.params = params
        self.d_data = cuda.to_device(params.data)
        self.d_grad = cuda.to_device(params.grad)
        self.depth = 0
        self._opt = None
        self._state = {}
        self._none = cuda.device_array(1, params.dtype)  # for a state a rule does not use
        _SESSIONS[id(params.data)] = self
        params.device = self

    def zero_grad(self):
        ops.launch("fill", self.params.dtype, self.params.size, self.d_grad,
                   self.params.dtype.type(0))

    def step(self, opt):
        """``opt.step()`` on the device: clipping, then the update rule. Returns False
        (after closing the session: the host arrays are current) for an optimizer
        this cannot run, which then steps on the host."""
        from ...optim import SGD, Adam, RMSProp

        kind = type(opt)
        if kind not in (SGD, RMSProp, Adam) or opt.params is not self.params:
            self.close(force=True)
            return False
        if self._opt is not opt:
            self._sync_state()
            self._opt = opt
            self._state = {name: cuda.to_device(arr) for name, arr in opt._state.items()}
        dt = self.params.dtype
        F, n = dt.type, self.params.size
        g, p = self.d_grad, self.d_data
        if opt.clip_value is not None:
            update.launch("clip_value", dt, n, g, F(opt.clip_value))
        if opt.clip_norm is not None:
            total = update.global_norm(g)
            coef = opt.clip_norm / (total + 1e-6)
            if not coef >= 1.0:  # also a NaN coef, as the reference
                update.launch("scale", dt, n, g, F(coef))
            opt.last_grad_norm = total
        st = self._state.get
        none = self._none
        wd = F(opt.weight_decay)
        if kind is SGD:
            update.launch("sgd", dt, n, p, g, st("momentum_buffer", none), F(-opt.lr),
                          F(opt.momentum), F(1.0 - opt.dampening), int(opt.dampening != 0.0),
                          int(opt.nesterov), wd, int(opt.n_steps == 0))
        elif kind is RMSProp:
            w = 1.0 - opt.decay
            update.launch("rmsprop", dt, n, p, g, self._state["square_avg"],
                          st("grad_avg", none), st("momentum_buffer", none), F(-opt.lr),
                          F(opt.decay), F(w), F(w - 1.0), int(abs(w) < 0.5), F(opt.eps),
                          F(opt.momentum), int(opt.centered), wd)
        else:
            w = 1.0 - opt.beta1
            step = float(opt.n_steps + 1)
            update.launch("adam", dt, n, p, g, self._state["exp_avg"],
                          self._state["exp_avg_sq"], st("max_exp_avg_sq", none), F(w),
                          F(w - 1.0), int(abs(w) < 0.5), F(opt.beta2), F(1.0 - opt.beta2),
                          F(-(opt.lr / (1.0 - opt.beta1 ** step))),
                          F((1.0 - opt.beta2 ** step) ** 0.5), F(opt.eps), wd,
                          int(opt.amsgrad))
        return True

    def _sync_state(self):
        if self._opt is not None:
            for name, d in self._state.items():
                d.copy_to_host(self._opt._state[name])

    def sync(self):
        """Copy the device's values, gradients and optimizer state into the host arrays."""
        if _SESSIONS.get(id(self.params.data)) is self:
            self.d_data.copy_to_host(self.params.data)
            self.d_grad.copy_to_host(self.params.grad)
            self._sync_state()

    def close(self, force=False):
        """Sync; the outermost close (or a forced one) ends the session."""
        self.sync()
        self.depth -= 1
        if (self.depth <= 0 or force) and _SESSIONS.get(id(self.params.data)) is self:
            del _SESSIONS[id(self.params.data)]
            self.params.__dict__.pop("device", None)
