"""The property-based bad-input suite (tests/fuzz_bad_input.py), one subprocess per
backend: a crash of the interpreter, a hang or a violated property fails the test.

Hypothesis runs with a fixed seed (``derandomize``); the examples per target are
scaled by ``CYRNN_FUZZ_SCALE`` (default 3: about 15-25 s per backend on 2 cores).
Each subprocess may use at most 8 GiB of address space, so a runaway allocation
ends in MemoryError (a failure) instead of the machine's OOM killer.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cyrnn
from conftest import BACKENDS  # the CPU backends

ROOT = Path(__file__).resolve().parents[1]
# The cyrnn under test (the installed package in CI, an in-place build in a checkout).
PACKAGE_ROOT = Path(cyrnn.__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("fuzz_bad_input.py")
SCALE = os.environ.get("CYRNN_FUZZ_SCALE", "3")
TARGETS = ("layer", "layer.step", "sequential", "train_step", "estimator", "lm", "load")


def _limit_memory():  # pragma: no cover - runs in the child
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    except (ImportError, ValueError, OSError):
        pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_never_crashes_and_matches_the_reference(backend):
    env = dict(os.environ,
               PYTHONPATH=str(PACKAGE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), backend, SCALE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170,
                          preexec_fn=_limit_memory if os.name == "posix" else None)
    report = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    counts = dict((k, int(v)) for k, v in re.findall(r"([\w.]+:\w+) (\d+)", summary))
    for target in TARGETS:  # not vacuous: every target saw good input and bad input
        names = [k for k in counts if k.rsplit(":", 1)[0] == target or k.startswith(target + ".")]
        ok = sum(counts[k] for k in names if k.endswith(":ok"))
        bad = sum(counts[k] for k in names if k.endswith(":error"))
        assert ok > 0 and bad > 0, f"{target}: {ok} accepted, {bad} refused\n{summary}"
