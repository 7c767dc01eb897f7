"""Shared fixtures: every conformance test runs once per available backend."""

import numpy as np
import pytest

import cyrnn

BACKENDS = cyrnn.backends.available()

# Tolerances against the NumPy reference and PyTorch, by dtype.
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-9)}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The name of a backend; conformance tests run for each one available."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
