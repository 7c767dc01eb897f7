"""Shared helpers for the cyrnn benchmark scripts (timing, machine info, tables).

Nothing here imports cyrnn, torch or onnxruntime at module level, so any benchmark
script can import it first and decide itself what to import (and in which order).

Timing model
------------
A *sample* is the mean time of ``number`` back-to-back calls of a function
(``number`` is chosen so that one sample lasts at least ``min_sample_seconds``,
which keeps timer resolution and per-sample jitter out of sub-millisecond cases).
Every reported figure is the **median** of the samples, with the **IQR**
(75th - 25th percentile) as the spread. Warm-up calls (JIT compilation, first-touch
allocation, thread-pool start-up) are never timed.

:func:`interleaved_times` takes *several* cases and samples them round-robin (one
sample of each case per round). On a shared, noisy machine the load drifts over
seconds; interleaving exposes every case to the same drift, so ratios between cases
are much more stable than when each case is timed in its own block.
:func:`median_time` is the one-case form.

Libraries with thread pools (OpenBLAS, OpenMP, ONNX Runtime) keep their worker threads
spinning for a while after each call (OpenBLAS: about 2**28 cycles, ~0.1 s). Sampled one
call at a time, the next case then runs against the previous library's spinning threads.
``interleaved_times(..., block=k, settle_seconds=s)`` visits the cases round-robin but
takes ``k`` samples per visit, after at least ``s`` seconds of untimed calls of the case
itself (never a sleep: a sample right after an idle pause ran up to 8x slower here, with
every thread of every pool asleep).

Fairness of a comparison: :func:`run_alone` times a case in a fresh process started with
:data:`START_ENV` (the environment before any benchmarked library was imported) and
:func:`fairness` compares it with the in-run figure (:data:`FAIR_TOLERANCE`).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

# The environment as it was before cyrnn, torch or ONNX Runtime were imported (scripts
# import this module first). cyrnn's Cython and Numba backends set OMP_WAIT_POLICY=PASSIVE
# in os.environ when they load (unless it is set); a child process given os.environ would
# inherit it, and PyTorch's libgomp, loading under PASSIVE, ran its 2-thread medium LSTM
# 3-4x slower here. Child processes that stand for "a fresh process" get this copy.
START_ENV = dict(os.environ)
FAIR_TOLERANCE = 0.15     # in-run vs alone: larger relative differences make a ratio unfair

__all__ = [
    "Timing",
    "Case",
    "median_time",
    "interleaved_times",
    "cpu_model",
    "cpu_count",
    "load_average",
    "cpu_share",
    "blas_info",
    "machine_info",
    "gemm_gflops",
    "markdown_table",
    "fmt_time_ms",
    "fmt_ratio",
    "write_json",
    "START_ENV",
    "FAIR_TOLERANCE",
    "run_alone",
    "fairness",
    "busy_loop",
    "memory_status",
    "reset_peak_rss",
]


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Summary of the samples of one case (all times in seconds per call)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int                 # samples taken
    number: int            # calls per sample
    warmup: int            # untimed calls before sampling
    times: list = field(default_factory=list, repr=False)
    stopped_by: str = "repeats"   # 'repeats' or 'max_seconds'

    @property
    def iqr(self):
        return self.q3 - self.q1

    @property
    def rel_iqr(self):
        """IQR / median (0.05 means the middle half of the samples spans 5%)."""
        return self.iqr / self.median if self.median > 0 else float("nan")

    def to_dict(self, keep_times=True):
        d = asdict(self)
        d["iqr"] = self.iqr
        d["rel_iqr"] = self.rel_iqr
        if not keep_times:
            d.pop("times")
        return d

    @classmethod
    def from_times(cls, times, number=1, warmup=0, stopped_by="repeats"):
        t = np.asarray(times, dtype=np.float64)
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        return cls(median=float(med), q1=float(q1), q3=float(q3), min=float(t.min()),
                   max=float(t.max()), n=int(t.size), number=int(number), warmup=int(warmup),
                   times=[float(v) for v in t], stopped_by=stopped_by)


def _hook(fn, name):
    hook = getattr(fn, name, None)
    if hook is not None:
        hook()


def _calibrate(fn, warmup, min_sample_seconds, max_number, max_warmup_seconds=None):
    """Run ``warmup`` untimed calls (at least one, and fewer once they have taken
    ``max_warmup_seconds``); return the calls per sample."""
    last = None
    spent = 0.0
    done = 0
    _hook(fn, "before_sample")
    try:
        for _ in range(max(1, warmup)):
            done += 1
            t0 = time.perf_counter()
            fn()
            last = time.perf_counter() - t0
            spent += last
            if max_warmup_seconds is not None and spent >= max_warmup_seconds:
                break
    finally:
        _hook(fn, "after_sample")
    if min_sample_seconds <= 0 or last <= 0:
        return 1, done
    return int(min(max_number, max(1, math.ceil(min_sample_seconds / last)))), done


def _sample(fn, number, disable_gc):
    enabled = gc.isenabled()
    _hook(fn, "before_sample")
    if disable_gc:
        gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if disable_gc and enabled:
            gc.enable()
        _hook(fn, "after_sample")


def _settle(fn, seconds):
    """Untimed calls of ``fn`` (at least one) for about ``seconds``."""
    _hook(fn, "before_sample")
    try:
        t0 = time.perf_counter()
        fn()
        while time.perf_counter() - t0 < seconds:
            fn()
    finally:
        _hook(fn, "after_sample")


class Case:
    """A callable with untimed ``before_sample`` / ``after_sample`` hooks."""

    def __init__(self, fn, before_sample=None, after_sample=None):
        self.fn = fn
        if before_sample is not None:
            self.before_sample = before_sample
        if after_sample is not None:
            self.after_sample = after_sample

    def __call__(self):
        return self.fn()


def interleaved_times(cases, repeats=20, warmup=2, max_seconds=None, min_repeats=3,
                      min_sample_seconds=0.002, max_number=10000, disable_gc=True,
                      repeats_per_case=None, on_warmup=None, max_warmup_seconds=None,
                      block=1, settle_seconds=0.0):
    """Time several cases round-robin; return ``{name: Timing}``.

    Parameters
    ----------
    cases : dict name -> zero-argument callable
        A case may have ``before_sample()`` / ``after_sample()`` attributes (see
        :class:`Case`): they run around every sample and the warm-up, untimed (e.g. to
        set a library's thread count for that case only).
    repeats : int
        Samples per case (upper bound).
    warmup : int
        Untimed calls per case before sampling (at least one is always made; it also
        calibrates ``number``).
    max_seconds : float or None
        Sampling time budget per case (warm-up excluded). A case stops sampling once
        it has spent this long and has at least ``min_repeats`` samples.
    min_sample_seconds : float
        Each sample runs ``number = ceil(min_sample_seconds / t_call)`` calls (at most
        ``max_number``); 0 means one call per sample.
    repeats_per_case : dict name -> int, optional
        Per-case caps on the number of samples (e.g. for a slow reference backend).
    on_warmup : callable(name), optional
        Called before each case is warmed up (for progress messages).
    max_warmup_seconds : float, optional
        Stop a case's warm-up early once it has taken this long (default: ``max_seconds / 4``
        when ``max_seconds`` is given). The first call always runs, whatever it costs (JIT).
    block : int
        Samples per visit of a case (1: strict round-robin, one sample per case per round).
    settle_seconds : float
        On every visit, untimed calls of the case (at least one) until this long has passed,
        so that the thread pools of the case visited before have gone idle and this case's
        have woken up. 0 (default): none.
    """
    cap = {name: int(repeats) for name in cases}
    for name, r in (repeats_per_case or {}).items():
        if name in cap:
            cap[name] = max(1, min(cap[name], int(r)))
    if max_warmup_seconds is None and max_seconds is not None:
        max_warmup_seconds = max_seconds / 4
    numbers, warmed = {}, {}
    for name, fn in cases.items():
        if on_warmup is not None:
            on_warmup(name)
        numbers[name], warmed[name] = _calibrate(fn, warmup, min_sample_seconds, max_number,
                                                 max_warmup_seconds)
    times = {name: [] for name in cases}
    spent = {name: 0.0 for name in cases}
    stopped = {name: "repeats" for name in cases}
    active = list(cases)
    while active:
        for name in list(active):
            if settle_seconds > 0 and len(cases) > 1:
                _settle(cases[name], settle_seconds)
            for _ in range(max(1, int(block))):
                t = _sample(cases[name], numbers[name], disable_gc)
                times[name].append(t)
                spent[name] += t * numbers[name]
                n = len(times[name])
                if n >= cap[name]:
                    active.remove(name)
                    break
                if max_seconds is not None and spent[name] >= max_seconds and n >= min_repeats:
                    stopped[name] = "max_seconds"
                    active.remove(name)
                    break
    return {name: Timing.from_times(times[name], numbers[name], warmed[name], stopped[name])
            for name in cases}


def median_time(fn, repeats=20, warmup=2, max_seconds=None, min_repeats=3,
                min_sample_seconds=0.002, max_number=10000, disable_gc=True):
    """Median (and IQR) of repeated timings of ``fn()``; returns a :class:`Timing`.

    See :func:`interleaved_times` for the parameters.
    """
    return interleaved_times({"fn": fn}, repeats=repeats, warmup=warmup,
                             max_seconds=max_seconds, min_repeats=min_repeats,
                             min_sample_seconds=min_sample_seconds, max_number=max_number,
                             disable_gc=disable_gc)["fn"]


# ----------------------------------------------------------------------------- machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def cpu_count():
    """Cores this process may run on (affinity), and the machine's logical CPUs."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"usable": usable, "logical": os.cpu_count()}


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_share(seconds=0.3, threads=1):
    """Fraction of a core that each of ``threads`` busy threads actually gets right now.

    Spins ``threads`` threads (hashing a 1 MB buffer, which releases the GIL) for about
    ``seconds`` and compares their CPU time with the wall time: ~1.0 on an idle machine,
    ~0.5 when every core is shared with one other busy process. A cheap load probe to store
    next to the timings.
    """
    import threading

    shares = []

    def spin():
        import hashlib
        buf = bytes(1 << 20)
        t_cpu0, t0 = time.thread_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            hashlib.sha256(buf).digest()
        shares.append((time.thread_time() - t_cpu0) / (time.perf_counter() - t0))

    workers = [threading.Thread(target=spin) for _ in range(max(1, threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return round(float(np.mean(shares)), 3)


def blas_info():
    """threadpoolctl's view of the loaded BLAS / OpenMP libraries (import the libraries
    you care about first)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"error": "threadpoolctl not installed"}
    keep = ("user_api", "internal_api", "prefix", "filepath", "version", "num_threads",
            "threading_layer", "architecture")
    return [{k: v for k, v in lib.items() if k in keep} for lib in threadpool_info()]


ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
            "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE", "MKL_ENABLE_INSTRUCTIONS",
            "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "NUMBA_NUM_THREADS", "CYRNN_NATIVE")


def _version(module_name):
    try:
        mod = __import__(module_name)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def machine_info(env_snapshot=None):
    """CPU, cores, library versions, BLAS, relevant environment variables, date.

    ``env_snapshot`` lets the caller pass the environment as it was at start-up (some
    libraries set variables such as OMP_WAIT_POLICY when imported).
    """
    env = env_snapshot if env_snapshot is not None else {k: os.environ.get(k) for k in ENV_VARS}
    flags = set(cpu_flags())
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_simd": [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                     if f in flags],
        "cores": cpu_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in
                     ("numpy", "scipy", "torch", "onnxruntime", "onnx", "numba", "cyrnn",
                      "threadpoolctl")},
        "blas": blas_info(),
        "env": env,
    }


# ----------------------------------------------------------------------------- gemm peak
def gemm_gflops(n=4096, dtype=np.float32, repeats=5, warmup=1, max_seconds=None,
                torch_too=True, threads=None):
    """Measure square GEMM throughput (GFLOP/s = 2 n^3 / median time).

    Returns ``{source: {"gflops": ..., "timing": Timing dict}, "best": ..., "best_source": ...}``
    for NumPy's BLAS (``a @ b``) and, when torch is importable and ``torch_too``, for
    ``torch.matmul``, ``torch.nn.Linear`` and the oneDNN (mkldnn) linear.
    ``threads`` (optional) sets ``torch.set_num_threads`` for the torch cases (restored).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    flops = 2.0 * n ** 3
    cases = {"numpy": lambda: a @ b}
    errors = {}
    torch = None
    if torch_too:
        try:
            import torch
        except ImportError:
            torch = None
    saved_threads = None
    if torch is not None:
        tdt = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        lin = torch.nn.Linear(n, n, bias=False).to(tdt)
        with torch.no_grad():
            lin.weight.copy_(tb.T)
        cases["torch_matmul"] = lambda: torch.matmul(ta, tb)

        def run_linear():
            with torch.inference_mode():
                lin(ta)
        cases["torch_linear"] = run_linear
        if tdt == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                from torch.utils import mkldnn as mkldnn_utils
                mlin = mkldnn_utils.to_mkldnn(torch.nn.Linear(n, n, bias=False))
                ma = ta.to_mkldnn()

                def run_mkldnn():
                    with torch.inference_mode():
                        mlin(ma)
                run_mkldnn()
                cases["torch_onednn_linear"] = run_mkldnn
            except Exception as exc:  # pragma: no cover - depends on the torch build
                errors["torch_onednn_linear"] = f"{type(exc).__name__}: {exc}"
        if threads is not None:
            saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(threads))
    try:
        res = interleaved_times(cases, repeats=repeats, warmup=warmup, max_seconds=max_seconds,
                                min_repeats=min(3, repeats), min_sample_seconds=0.0)
    finally:
        if saved_threads is not None:
            torch.set_num_threads(saved_threads)
    out = {"n": n, "dtype": np.dtype(dtype).name, "flops": flops}
    best, best_src = 0.0, None
    for name, t in res.items():
        g = flops / t.median / 1e9
        out[name] = {"gflops": g, "gflops_q1_q3": [flops / t.q3 / 1e9, flops / t.q1 / 1e9],
                     "timing": t.to_dict()}
        if g > best:
            best, best_src = g, name
    out["errors"] = errors
    out["best"] = best
    out["best_source"] = best_src
    return out


# ----------------------------------------------------------------------------- output
def fmt_time_ms(t, spread=True):
    """'1.234 (±2%)' from a Timing (± is IQR / median)."""
    if t is None:
        return "–"
    ms = t.median * 1e3
    digits = 3 if ms < 10 else (2 if ms < 100 else 1)
    s = f"{ms:.{digits}f}"
    if spread and t.median > 0:
        s += f" (±{100 * t.rel_iqr:.0f}%)"
    return s


def fmt_ratio(r):
    if r is None or not np.isfinite(r):
        return "–"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def markdown_table(headers, rows):
    """A GitHub-flavoured Markdown table (rows: lists of strings)."""
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_default(obj):
    if isinstance(obj, Timing):
        return obj.to_dict()
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default, allow_nan=True)
        f.write("\n")


# ----------------------------------------------------------------------------- fairness
def run_alone(argv, env=None, timeout=None):
    """Run ``[sys.executable, *argv]`` in a fresh process with :data:`START_ENV` (or ``env``)
    and return the JSON object on the last line of its stdout."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                         env=START_ENV if env is None else env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fairness(in_run, alone, tolerance=FAIR_TOLERANCE):
    """Compare an in-run median with the same case's median alone in a fresh process."""
    diff = in_run / alone - 1
    return {"in_run": in_run, "alone": alone, "diff": diff, "tolerance": tolerance,
            "ok": abs(diff) <= tolerance}


# ----------------------------------------------------------------------------- contention
@contextmanager
def busy_loop(n=1):
    """``n`` pure-Python busy-loop processes (``while True: pass``, unpinned) for the duration
    of the ``with`` block; killed on exit, also on errors and KeyboardInterrupt. Yields their
    pids."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          stdin=subprocess.DEVNULL, env=START_ENV))
        time.sleep(0.2)             # let them get going
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# ----------------------------------------------------------------------------- memory
def memory_status():
    """``{"VmRSS": bytes, "VmHWM": bytes}`` of this process (Linux ``/proc/self/status``;
    falls back to ``ru_maxrss`` for the peak, with VmRSS None)."""
    try:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) * 1024
        return out
    except OSError:
        import resource
        return {"VmRSS": None,
                "VmHWM": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def reset_peak_rss():
    """Reset this process's peak resident set size (VmHWM) to its current RSS (writes 5 to
    ``/proc/self/clear_refs``, Linux >= 4.0). Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- scoring
def score_b1_classifier(seed=0):
    """The score-b1 model of the scoring benchmarks: an ``LSTMClassifier`` with hidden 64
    on (50, 8) float32 sequences, fitted for one epoch on 16 random ones; returns
    ``(estimator, X)``."""
    import warnings

    import cyrnn

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((16, 50, 8)).astype(np.float32)
    est = cyrnn.LSTMClassifier(hidden_size=64, max_iter=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, rng.integers(0, 2, 16))
    return est, X


def run_configs(names, run_one, threads):
    """``run_one(name, folder)`` for every configuration name (one temporary folder for
    all), with the machine's load and CPU share per thread before and after:
    ``(results, meta)``, ``meta`` holding ``machine``, ``threads``, ``load``,
    ``cpu_share``, ``seconds`` and ``line`` (a one-line summary of them to print)."""
    import tempfile

    info = machine_info()
    start, load0 = time.perf_counter(), load_average()
    share0 = cpu_share(threads=threads)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            print(f"[{name}] ...", flush=True)
            results[name] = run_one(name, folder)
    load1, share1 = load_average(), cpu_share(threads=threads)
    seconds = time.perf_counter() - start
    line = (f"{info['cpu_model']} ({', '.join(info['cpu_simd'])}); threads {threads}; "
            f"load {load0} -> {load1}, CPU share per thread {share0:.2f} -> {share1:.2f}; "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}; {seconds:.0f} s")
    return results, {"machine": info, "threads": threads, "load": [load0, load1],
                     "cpu_share": [share0, share1], "seconds": seconds, "line": line}


def config_parser(description, configs, max_seconds):
    """The options the per-configuration scripts share: ``--configs`` (default
    ``configs``), ``--repeats`` (15), ``--max-seconds`` (``max_seconds``), ``--json``."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--configs", default=configs)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max-seconds", type=float, default=max_seconds)
    ap.add_argument("--json", default=None)
    return ap


def ratio_cell(ratio, fair, name):
    """A table cell: ``ratio`` ("1.23x"), or why there is none (``fair``: the
    competitor's :func:`fairness` record; ``name``: the competitor)."""
    if ratio:
        return f"{ratio:.2f}x"
    return (f"no ratio ({name} in-run {fair['in_run'] * 1e3:.3g} ms, alone "
            f"{fair['alone'] * 1e3:.3g})")

