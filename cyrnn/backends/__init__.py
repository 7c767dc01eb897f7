"""Kernel backends.

A backend is a module implementing the kernel contract of
``docs/architecture.md``: ``forward``, ``backward`` and ``step`` over a
:class:`Cell`, on time-major arrays. ``numpy`` is the reference; compiled
backends are imported lazily and listed by :func:`available` only when they
import.
"""

from __future__ import annotations

import importlib

from ._cell import Cell

__all__ = ["Cell", "available", "get_backend", "BACKENDS"]

# backend="auto": the first of these that imports. The rule, from
# benchmarks/bench_kernels.py (README, "Backends and threads"): the Cython backend's
# training step was faster than the Numba backend's in every configuration measured
# (batch 1 to 128) and its inference in all but two (imdb, large: within 20%); it
# compiles nothing at run time (Numba's first call in a fresh process costs ~11 s to
# compile, 0.2-0.3 s to load from its cache: benchmarks/bench_first_call.py) and has
# the fused training step. Numba is the fallback where the extension is not built;
# the NumPy reference comes last.
BACKENDS = {
    "cython": "cyrnn.backends.cython_backend",
    # Imports numba when first loaded; ImportError (numba missing) -> unavailable.
    "numba": "cyrnn.backends.numba",
    "numpy": "cyrnn.backends.numpy_backend",
}
_loaded = {}


def _load(name):
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(BACKENDS[name])
        except Exception as exc:  # not built, numba missing, or unloadable here: unavailable
            _loaded[name] = exc
    return _loaded[name]


def available():
    """Names of the backends that can be used here, in ``auto`` preference order."""
    return [name for name in BACKENDS if not isinstance(_load(name), Exception)]


def get_backend(name="auto"):
    """The backend module for ``name`` ('auto' picks the first available)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name == "auto":
        return _load(available()[0])
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
