"""``njit`` that still compiles where Numba cannot cache on disk.

``numba.njit(cache=True)`` raises ``RuntimeError: cannot cache function ...: no
locator available`` when the function is *decorated* (so when its module is
imported) if no cache directory is writable: a read-only install (no writable
``__pycache__`` next to the module) with an unwritable user cache directory
(``$XDG_CACHE_HOME`` or ``~/.cache``) and no ``NUMBA_CACHE_DIR``. cyrnn's
kernels then fall back to running without the on-disk cache: they compile in
every process instead of loading from the cache, and one ``RuntimeWarning`` per
process says so (set ``NUMBA_CACHE_DIR`` to a writable folder to cache again).

Use it exactly like ``numba.njit``::

    from cyrnn._numba_util import njit

    @njit(nogil=True, cache=True)
    def kernel(a): ...
"""

from __future__ import annotations

import threading
import warnings

import numba

__all__ = ["njit"]

_warned = False
_lock = threading.Lock()


def njit(*args, **options):
    """``numba.njit(*args, **options)``; with ``cache=True`` it falls back to
    ``cache=False`` (one warning per process) where Numba has nowhere to cache."""
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], str):
        return _jit((), options, args[0])  # @njit without parentheses, or njit(func)
    return lambda func: _jit(args, options, func)


def _jit(signatures, options, func):
    try:
        return numba.njit(*signatures, **options)(func)
    except RuntimeError as exc:
        if not options.get("cache") or "cannot cache" not in str(exc):
            raise
        _warn_once(exc)
        return numba.njit(*signatures, **dict(options, cache=False))(func)


def _warn_once(exc):
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(f"Numba cannot cache cyrnn's compiled kernels on disk here ({exc}); they "
                  "are compiled in every process instead. Set NUMBA_CACHE_DIR to a writable "
                  "folder to cache them.", RuntimeWarning, stacklevel=4)
