"""The CUDA backend: availability rules here, conformance in tests/cuda_cases.py.

``test_simulator_suite`` runs tests/cuda_cases.py in a subprocess under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` must be set before Numba is imported, so it
cannot run in this process) on tiny shapes; ``pytest -m gpu`` runs the same cases
on a real GPU at realistic shapes (skipped without one). The simulator runs a
cooperative grid as one block, so only the GPU run proves the multi-block persistent
path.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyrnn.backends import BACKENDS, available, get_backend

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HAS_NUMBA_CUDA = subprocess.run(
    [sys.executable, "-c", "import numba.cuda"], capture_output=True).returncode == 0


def _run_cases(env_extra, timeout):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), **env_extra)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(HERE / "cuda_cases.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_cuda_is_registered_last():
    """auto takes the first backend that loads: the NumPy reference, before cuda,
    always loads, so auto never reaches (or imports) the CUDA backend."""
    assert list(BACKENDS)[-1] == "cuda"
    assert list(BACKENDS).index("numpy") < list(BACKENDS).index("cuda")


def test_auto_never_imports_cuda():
    code = ("import sys, cyrnn; from cyrnn.backends import get_backend; "
            "m = get_backend('auto'); "
            "print(m.NAME, 'cyrnn.backends.cuda' in sys.modules, 'numba.cuda' in sys.modules)")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] != "cuda" and out[1:] == ["False", "False"]


@pytest.mark.no_fused_call
def test_unavailable_gives_a_clear_error():
    """Without a device (and without the simulator: this process), backend="cuda" raises
    ValueError saying what is missing, and nothing else changes."""
    if "cuda" in available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="numba-cuda|no CUDA device"):
        get_backend("cuda")
    import cyrnn

    layer = cyrnn.LSTM(2, 3, backend="cuda")  # the name is valid; loading happens on use
    with pytest.raises(ValueError, match="backend 'cuda' is not available"):
        layer.forward(__import__("numpy").zeros((1, 2, 2), "float32"))
    assert "cuda" not in available()


def test_missing_numba_cuda_message():
    """When numba.cuda cannot be imported, the error says what to install."""
    code = ("import sys; sys.modules['numba.cuda'] = None\n"
            "from cyrnn.backends import get_backend\n"
            "try:\n    get_backend('cuda')\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert 'pip install "cyrnn[cuda]"' in out


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_simulator_suite():
    """tests/cuda_cases.py under NUMBA_ENABLE_CUDASIM=1, tiny shapes."""
    _run_cases({"NUMBA_ENABLE_CUDASIM": "1", "CYRNN_CUDA_SHAPES": "tiny"}, timeout=600)


def _has_nvvm():
    """Whether this environment can compile a kernel to PTX (NVVM and the toolkit's
    libraries of cyrnn[cuda]; plain numba-cuda has neither)."""
    probe = ("from numba import cuda, types\n"
             "def k(a):\n    a[0] = 1.0\n"
             "cuda.compile_ptx(k, (types.float32[::1],), cc=(9, 0))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return HAS_NUMBA_CUDA and subprocess.run([sys.executable, "-c", probe], env=env,
                                             capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_nvvm(), reason="no NVVM (the CUDA toolkit of cyrnn[cuda])")
def test_kernels_compile_to_ptx():
    """Every kernel compiles to PTX for sm_90, the persistent loops with their grid
    sync (the simulator never compiles; this is the check that the kernels type)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, str(HERE / "cuda_ptx_check.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" ok") == 46, proc.stdout


@pytest.mark.gpu
def test_gpu_suite():
    """tests/cuda_cases.py on the GPU at realistic shapes (pytest -m gpu)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or "cuda" not in available():
        pytest.skip("no CUDA device")
    _run_cases({"NUMBA_ENABLE_CUDASIM": "0", "CYRNN_CUDA_SHAPES": "realistic"}, timeout=1800)
