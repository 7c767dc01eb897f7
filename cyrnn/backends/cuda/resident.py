"""Where the fused calls (:mod:`.fused`) find a model's parameters and gradients on
the device: a copy of the host buffers per call."""

from __future__ import annotations

from numba import cuda


def device_data(data):
    """The device copy of the host parameter buffer ``data`` for one call."""
    return cuda.to_device(data)


def device_grad(data, grad):
    """``(d_grad, to_host)``: the device buffer a backward adds into (a copy of
    ``grad``), and whether the caller copies it back into ``grad`` afterwards."""
    return cuda.to_device(grad), True

