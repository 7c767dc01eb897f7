"""Kernel backends.

A backend is a module implementing the kernel contract of
``docs/architecture.md``: ``forward``, ``backward`` and ``step`` over a
:class:`Cell`, on time-major arrays. ``numpy`` is the reference; compiled
backends are imported lazily and listed by :func:`available` only when they
import (``cuda`` only with numba-cuda and a device or the simulator, and never
chosen by ``auto``).
"""

from __future__ import annotations

import importlib

from ..cells import Cell

__all__ = ["Cell", "available", "get_backend", "BACKENDS"]

# backend="auto": the first of these that loads. Cython first: in the measurements
# behind it (README, "Backends and threads"; benchmarks/bench_kernels.py) its training
# step was faster than Numba's in every configuration and its inference in most, and it
# compiles nothing at run time (Numba compiles on the first call in a fresh process, or
# loads from its disk cache: benchmarks/bench_first_call.py). Numba is the fallback
# where the extension is not built; the NumPy reference comes last.
BACKENDS = {
    "cython": "cyrnn.backends.cython_backend",
    # Imports numba when first loaded; any failure to load -> unavailable.
    "numba": "cyrnn.backends.numba",
    "numpy": "cyrnn.backends.numpy_backend",
    # Never reached by "auto" (the NumPy reference above always loads): the GPU is
    # used only when asked for by name. Loading it imports numba.cuda and probes for a
    # device (or the simulator); without either it is unavailable, with the reason.
    "cuda": "cyrnn.backends.cuda",
}
# backend="auto" considers these, in this order; never "cuda" (the GPU is used only when
# asked for by name, and probing for it costs a driver initialisation)
AUTO = ("cython", "numba", "numpy")
_loaded = {}


def _load(name):
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(BACKENDS[name])
        except Exception as exc:  # not built, numba missing, or unloadable here: unavailable
            _loaded[name] = exc
    return _loaded[name]


def available():
    """Names of the backends that can be used here, in ``auto`` preference order (this
    loads every backend, which for ``cuda`` means importing numba.cuda and probing for a
    device; ``get_backend("auto")`` loads only up to the one it picks)."""
    return [name for name in BACKENDS if not isinstance(_load(name), Exception)]


def get_backend(name="auto"):
    """The backend module for ``name`` ('auto' picks the first available)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name == "auto":
        auto = _loaded.get("auto")
        if auto is None:  # the first backend that loads; the ones after it stay unloaded
            auto = next(m for m in map(_load, AUTO) if not isinstance(m, Exception))
            _loaded["auto"] = auto
        return auto
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {['auto', *BACKENDS]}")
    module = _load(name)
    if isinstance(module, Exception):
        raise ValueError(f"backend {name!r} is not available: {module}")
    return module


def check_backend_name(name):
    """Validate a backend name without loading it (for layer constructors)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {['auto', *BACKENDS]}")
    return name
