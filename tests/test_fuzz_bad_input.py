"""The property-based bad-input suite (tests/fuzz_bad_input.py), one subprocess per
backend: a crash of the interpreter, a hang or a violated property fails the test.

Hypothesis runs with a fixed seed (``derandomize``); the examples per target are
scaled by ``CYRNN_FUZZ_SCALE`` (default 3: about 15-50 s per backend on 2 cores).
The backends' subprocesses start together when the first of these tests runs (each
is one thread: on 2 cores three at once end in about half the time one after the
other); each test then waits for its own. Each subprocess may use at most 8 GiB of
address space, so a runaway allocation ends in MemoryError (a failure) instead of
the machine's OOM killer.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cyrnn
from conftest import BACKENDS, BackgroundRun  # the CPU backends

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    started = {}
    for backend in BACKENDS:
        env = dict(os.environ,
                   PYTHONPATH=str(PACKAGE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        started[backend] = BackgroundRun(
            [sys.executable, str(SCRIPT), backend, SCALE], tmp_path_factory.mktemp("fuzz"),
            cwd=ROOT, env=env, preexec_fn=_limit_memory if os.name == "posix" else None)
    yield started
    for run in started.values():
        run.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_never_crashes_and_matches_the_reference(backend, runs):
    # 170 s for one subprocess alone; the three share the cores
    returncode, stdout, stderr = runs[backend].result(timeout=360)
    proc = subprocess.CompletedProcess([], returncode, stdout, stderr)
    report = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    counts = dict((k, int(v)) for k, v in re.findall(r"([\w.]+:\w+) (\d+)", summary))
    for target in TARGETS:  # not vacuous: every target saw good input and bad input
        names = [k for k in counts if k.rsplit(":", 1)[0] == target or k.startswith(target + ".")]
        ok = sum(counts[k] for k in names if k.endswith(":ok"))
        bad = sum(counts[k] for k in names if k.endswith(":error"))
        assert ok > 0 and bad > 0, f"{target}: {ok} accepted, {bad} refused\n{summary}"
