"""Device, simulator and launch sizes of the CUDA backend.

Importing this module is the backend's availability check: it imports
``numba.cuda`` (the ``numba-cuda`` package, ``pip install "cyrnn[cuda]"``) and asks
``numba.cuda.is_available()``, which is True on a machine with a usable NVIDIA
driver and device, and under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set
before Numba is imported). Otherwise it raises ``ImportError`` with what is missing,
and :func:`cyrnn.backends.get_backend` turns that into its ``ValueError``. Only
``cyrnn.backends.available()`` and ``backend="cuda"`` import it; ``backend="auto"``
stops at an earlier backend (the NumPy reference always loads) and never gets here.

Launch sizes
------------
The recurrent kernels are cooperative: one launch runs every step of a sequence
(:mod:`.loops`), each block owning a slice of ``U`` hidden units for all batch rows,
and the blocks meet at a grid-wide barrier (``cuda.cg.this_grid().sync()``) after
every phase of a step. :func:`launch_plan` sizes the grid from the compiled kernel's
``max_cooperative_grid_blocks`` (every block of a cooperative grid must be resident
at once). A block keeps its slice of ``W_hh`` (``G * U * H`` values) in shared
memory when it fits in ``SHARED_BYTES``; otherwise the layer takes the per-step path
(:mod:`.loops`: a tiled GEMM and a cell launch per step).
"""

from __future__ import annotations

import math
import os

try:
    from numba import cuda
except Exception as exc:  # numba-cuda missing or broken
    raise ImportError("the cuda backend needs numba-cuda: pip install \"cyrnn[cuda]\" "
                      f"(importing numba.cuda failed: {exc})") from exc


def _simulating():
    """Whether numba-cuda runs its simulator: its own setting, read once when it was
    imported (the environment variable may have changed since, or hold another true
    value)."""
    for path in ("numba.cuda.core.config", "numba.core.config"):
        try:
            module = __import__(path, fromlist=["ENABLE_CUDASIM"])
            return bool(int(module.ENABLE_CUDASIM))
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


SIMULATOR = _simulating()

if not cuda.is_available():
    raise ImportError("the cuda backend found no CUDA device (numba.cuda.is_available() "
                      "is False); it needs an NVIDIA GPU with its driver, or Numba's CUDA "
                      "simulator (NUMBA_ENABLE_CUDASIM=1 before numba is imported)")

# Threads per block. The simulator runs every thread of a block as a Python thread,
# so it gets few.
THREADS = 16 if SIMULATOR else 256
# Shared memory a block may use for its slice of W_hh without opting in to more than
# the default 48 KiB per block (numba-cuda has no call to raise the limit). Tests set
# it to 0 to run the per-step path.
SHARED_BYTES = 48 * 1024
# Tile edge of the tiled GEMM kernel (.gemm).
TILE = 4 if SIMULATOR else 16  # the simulator runs TILE**2 Python threads per block

_coop_cache = {}


def max_coop_blocks(kernel, args, threads, shared_bytes):
    """``max_cooperative_grid_blocks`` of ``kernel`` compiled for ``args`` (the
    simulator's answer is 1: it runs a cooperative grid as one block)."""
    if SIMULATOR:
        return kernel.overloads[None].max_cooperative_grid_blocks(threads)
    import numba

    sig = tuple(numba.typeof(a) for a in args)
    key = (kernel, sig, threads, shared_bytes)
    n = _coop_cache.get(key)
    if n is None:
        n = _coop_cache[key] = kernel.compile(sig).max_cooperative_grid_blocks(
            threads, shared_bytes)
    return n


def launch_plan(kernel, args, G, H, itemsize):
    """``(blocks, U, shared_bytes)`` of a persistent kernel: ``blocks`` cooperative blocks
    of ``U`` hidden units each (``blocks * U >= H``), each holding ``G * U * H`` values
    of ``W_hh`` in shared memory; None when a slice cannot fit in ``SHARED_BYTES`` on
    a grid whose blocks are all resident (the layer then takes the per-step path)."""
    per_unit = G * H * itemsize
    if per_unit > SHARED_BYTES:  # not even one unit's slice
        return None
    blocks = min(H, max(1, max_coop_blocks(kernel, args, THREADS, 0)))
    U = math.ceil(H / blocks)
    while U * per_unit <= SHARED_BYTES:
        fit = max_coop_blocks(kernel, args, THREADS, U * per_unit)
        if fit >= math.ceil(H / U):
            return math.ceil(H / U), U, U * per_unit
        if fit < 1:
            return None
        U = max(U + 1, math.ceil(H / fit))  # fewer resident blocks: wider slices
    return None
