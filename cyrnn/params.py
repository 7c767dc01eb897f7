"""One contiguous flat buffer for all parameters, with named per-tensor views.

Every trainable array of a layer or model is a view into ``ParameterBuffer.data``;
every gradient is a view into ``ParameterBuffer.grad`` at the same offset. Clipping
and optimizer updates are therefore single passes over two 1-D arrays, and a
compiled backend can fuse them without knowing anything about layers.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _validation as V

__all__ = ["ParameterBuffer"]

#: Byte alignment of a buffer's storage: a cache line. The compiled kernels read
#: weights 64 bytes at a time; NumPy's allocations are 16-byte aligned, and loads
#: that straddle two cache lines made the one-row recurrent product take 1.2-1.6x
#: the time (src/pgemm.h, ``cyrnn_dotrows``; benchmarks/dotrows_rate.c).
ALIGNMENT = 64


def aligned_zeros(size, dtype):
    """A C-contiguous ``(size,)`` array of zeros whose data starts on an
    :data:`ALIGNMENT`-byte boundary (a view into a slightly larger block)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(size * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size * dtype.itemsize].view(dtype)


class ParameterBuffer:
    """Named parameter tensors stored back to back in one 1-D array.

    Parameters
    ----------
    specs : list of (str, tuple)
        Names and shapes, in buffer order.
    dtype : numpy dtype, default float32
    data, grad : ndarray of shape (size,), optional
        Existing 1-D arrays to use as storage (a slice of a larger buffer, so that a
        model's layers share one buffer). Fresh zeros when omitted.

    Attributes
    ----------
    data : ndarray of shape (size,)
        All parameter values.
    grad : ndarray of shape (size,)
        All gradients (same layout as ``data``).
    names : list of str
        Tensor names in buffer order.
    """

    def __init__(self, specs, dtype=np.float32, data=None, grad=None):
        self.dtype = np.dtype(dtype)
        self.names = [name for name, _ in specs]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate parameter names in {self.names}")
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in specs}
        self.offsets = {}
        offset = 0
        for name in self.names:
            self.offsets[name] = offset
            offset += int(np.prod(self.shapes[name], dtype=np.int64))
        self.size = offset
        self.data = aligned_zeros(self.size, self.dtype) if data is None else data
        self.grad = aligned_zeros(self.size, self.dtype) if grad is None else grad
        for arr in (self.data, self.grad):
            if arr.shape != (self.size,) or arr.dtype != self.dtype:
                raise ValueError(f"storage must be a ({self.size},) {self.dtype} array, "
                                 f"got {arr.shape} {arr.dtype}")

    def _rebind(self, data, grad):
        """Use ``data``/``grad`` (same size and dtype; the current values copied in) as
        storage from now on. In place, so every holder of this buffer (an optimizer
        built on a layer before the layer joined a model) follows it."""
        for arr in (data, grad):
            if arr.shape != (self.size,) or arr.dtype != self.dtype:
                raise ValueError(f"storage must be a ({self.size},) {self.dtype} array, "
                                 f"got {arr.shape} {arr.dtype}")
        self._end_device_sessions()
        data[...] = self.data
        grad[...] = self.grad
        self.data, self.grad = data, grad

    def _realign(self):
        """Move the values and gradients into :data:`ALIGNMENT`-aligned storage where
        they are not (a buffer restored by pickle or deepcopy, whose arrays NumPy
        allocated: ``__setstate__``); the caller re-homes any views
        (``Sequential.__setstate__``)."""
        if self.data.ctypes.data % ALIGNMENT or self.grad.ctypes.data % ALIGNMENT:
            self._rebind(aligned_zeros(self.size, self.dtype),
                         aligned_zeros(self.size, self.dtype))

    def __setstate__(self, state):
        # pickle and deepcopy hand back arrays NumPy allocated (16-byte aligned): a
        # buffer restored on its own (a lone layer's) starts on a cache line again;
        # a model re-homes its layers' buffers into its own (``Sequential.__setstate__``)
        self.__dict__.update(state)
        self._realign()

    def __copy__(self):
        # a shallow copy shares the arrays (a layer's slice of a model's buffer stays
        # one), so it does not go through ``__setstate__``'s realignment
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def _view(self, flat, name):
        start = self.offsets[name]
        shape = self.shapes[name]
        return flat[start:start + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def __getitem__(self, name):
        """The value view of tensor ``name`` (writes go into the buffer)."""
        return self._view(self.data, name)

    def grad_of(self, name):
        """The gradient view of tensor ``name``."""
        return self._view(self.grad, name)

    def __contains__(self, name):
        return name in self.offsets

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    #: The device session holding this buffer's values, gradients and optimizer state
    #: during device-resident training (:func:`cyrnn.fitting.device_training`); None
    #: when the arrays here are the values.
    device = None

    def zero_grad(self):
        """Set every gradient to zero (on the device too, for a device session)."""
        if self.device is not None:
            self.grad[...] = 0
            self.device.zero_grad()
            return
        # part of a buffer trained on the device (a layer's): that session ends first,
        # its gradients coming back, and then they are zeroed
        self._end_device_sessions()
        self.grad[...] = 0

    def to_host(self):
        """End device residency, if any: the device's values, gradients and optimizer
        state are copied into the host arrays first (a layer path is about to read
        them)."""
        if self.device is not None:
            self.device.close(force=True)

    def _end_device_sessions(self):
        """Make the host arrays the values: end this buffer's device session, or the
        session of a buffer it is part of (a layer's, inside a model's)."""
        self.to_host()
        resident = sys.modules.get("cyrnn.backends.cuda.resident")
        if resident is not None:
            resident.release_overlapping(self.data)

    def state_dict(self):
        """A dict of copies ``{name: array}``."""
        self._end_device_sessions()
        return {name: self[name].copy() for name in self.names}

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the buffer, checking names and shapes first."""
        missing = [n for n in self.names if n not in state]
        unexpected = [n for n in state if n not in self.offsets]
        if strict and (missing or unexpected):
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        arrays = {}  # every tensor is checked before any is written
        for name in self.names:
            if name not in state:
                continue
            arrays[name] = V.check_values(state[name], f"parameter {name!r}",
                                          self.shapes[name], self.dtype)
        self._end_device_sessions()
        for name, value in arrays.items():
            self[name][...] = value

    def astype(self, dtype):
        """A new buffer of ``dtype`` holding the same values (gradients zeroed)."""
        out = ParameterBuffer([(n, self.shapes[n]) for n in self.names], dtype=dtype)
        out.data[...] = self.data
        return out

    def __repr__(self):
        return f"ParameterBuffer({len(self.names)} tensors, {self.size} values, {self.dtype})"
