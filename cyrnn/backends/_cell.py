"""Compatibility alias: the cell descriptor lives in :mod:`cyrnn.cells` (the cell table)."""

from ..cells import Cell  # noqa: F401
