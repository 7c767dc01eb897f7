"""Per-call overhead of the compiled plan: the Python work around the fused call.

For a layer call ``layer(x)``, ``Sequential.forward(x)``, ``layer.step`` and
``Sequential.step`` at batch 1, the time of the public call minus the time of the bare
backend call it makes (``infer`` with the same arguments), interleaved, medians of
repeated samples. The difference is validation, plan lookup, output allocation and
packaging.

With ``--scoring``: the same for production scoring at score-b1 (a fitted
``LSTMClassifier``, hidden 64, one (50, 8) sequence): ``Scorer.predict_proba``,
``Scorer.predict``, the estimator's ``predict_proba``/``predict`` (float32 input, and
float64 input, which is converted), ``Scorer.step``, each against the bare compiled call
the public call makes (all interleaved: the median over rounds of the best of 3 samples,
which holds up on a shared machine); then the breakdown of the scorer's glue, each piece
timed alone. ``--steps T`` cuts the sequence to T time steps (1: the glue is a larger
share of each call).

    python benchmarks/bench_overhead.py                 # cython and numba
    python benchmarks/bench_overhead.py --backends cython --scoring [--steps 1]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (interleaved_times, load_average, markdown_table,  # noqa: E402
                     score_b1_classifier)


def cases(backend, B=1, T=12, D=27, H=50):
    import cyrnn

    rng = np.random.default_rng(0)
    layer = cyrnn.LSTM(D, H, backend=backend, random_state=0).eval()
    model = cyrnn.Sequential([cyrnn.LSTM(D, H, return_state=False, backend=backend,
                                         random_state=0)])
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    x_t = np.ascontiguousarray(x[:, 0])
    state = (np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32))
    lp, mp = layer._plan(), model._plan()
    x1 = np.ascontiguousarray(x_t[:, None, :])
    return {
        "layer(x)": (lambda: layer(x),
                     lambda: lp.infer(lp.spec, layer.params.data, x, None, None, None, True)),
        "Sequential.forward(x)": (lambda: model.forward(x),
                                  lambda: mp.infer(mp.spec, model.params.data, x)),
        "layer.step(x_t, state)": (lambda: layer.step(x_t, state),
                                   lambda: lp.infer(lp.spec, layer.params.data, x1, None,
                                                    state[0], state[1], True)),
        "Sequential.step(x_t, states)": (lambda: model.step(x_t, [state]),
                                         lambda: mp.infer(mp.spec, model.params.data, x1,
                                                          None, state[0], state[1], True)),
    }


def scoring_cases(backend, steps=50):
    from cyrnn import scoring

    est, X = score_b1_classifier()
    est.set_params(backend=backend)  # (the fitted network moves with it)
    sc = scoring.from_estimator(est)
    x32 = np.ascontiguousarray(X[:1, :steps])
    x64 = x32.astype(np.float64)
    plan, data = sc._plan, est.model_.params.data
    x_t = x32[:, 0]
    state = sc.initial_state(1)
    h, c = state[0]
    # the compiled calls the public calls make: since 2026-12-04 the scorer's
    # ScoringCall and StepCall (the probabilities included); from b5d92d0
    # plan.call_infer and, for a step, the infer the plan bound with its packed weights
    # passed straight to it; a build before it went through plan.infer, the packed
    # weights' wrapper
    fast_call = getattr(sc, "_fast_call", None)
    call_infer = getattr(plan, "call_infer", None)
    step_infer = getattr(plan, "_step_infer", plan.infer)

    def bare():
        if fast_call is not None:
            return fast_call(data, x32)
        if call_infer is not None:
            return call_infer(data, x32)
        return plan.infer(plan.spec, data, x32, None, None, None, False)

    step_call = getattr(sc, "_step_call", None)

    def bare_step():
        if step_call is not None:  # StepCall, the probabilities included
            return step_call(data, x_t, state)
        # (the step form, as plan.step passes it)
        return step_infer(plan.spec, data, x_t, None, h, c, True, plan.packed, h.shape, True)
    return {
        "Scorer.predict_proba(x32)": (lambda: sc.predict_proba(x32), bare),
        "Scorer.predict_proba(x64)": (lambda: sc.predict_proba(x64), bare),
        "Scorer.predict(x32)": (lambda: sc.predict(x32), bare),
        "LSTMClassifier.predict_proba(x32)": (lambda: est.predict_proba(x32), bare),
        "LSTMClassifier.predict_proba(x64)": (lambda: est.predict_proba(x64), bare),
        "LSTMClassifier.predict(x32)": (lambda: est.predict(x32), bare),
        "Scorer.step(x_t, state)": (lambda: sc.step(x_t, state), bare_step),
    }, (sc, est, x32, x64, bare)


def breakdown(sc, est, x32, x64, bare, repeats):
    """The scorer's glue piece by piece (each timed alone, interleaved)."""
    from cyrnn import sequences as S

    model = est.model_
    plan, data = sc._plan, model.params.data
    raw32 = plan.infer(plan.spec, data, x32, None, None, None, False)  # the logits
    proba = S.class_probabilities(raw32, True)
    pieces = {
        "input checks in Python (_fast_raw's: the path of builds without ScoringCall)": lambda: (
            type(x32) is not np.ndarray or x32.ndim != 3 or x32.shape[2] != 8
            or not 0 < x32.shape[0] <= 256 or x32.shape[1] == 0 or x32.dtype.kind != "f"
            or x32.dtype != model.dtype or not x32.flags.c_contiguous),
        "bare fused call on the float64 input (it converts the input itself)": lambda: plan.infer(
            plan.spec, data, x64, None, None, None, False),
        "(for comparison: converting it first, errstate + astype)": lambda: _cast(
            x64, model.dtype),
        "probabilities of the float32 output (one compiled call)": lambda: S.class_probabilities(
            raw32, True),
        "labels (argmax, classes_)": lambda: S.class_labels(proba, sc.classes_),
        "estimator: scorer lookup (cached on the model, checked against its layers' "
        "backends)": lambda: (model.__dict__.get("_estimator_scorer"),
                              tuple([getattr(layer, "backend", None) for layer in model.layers])),
        "the compiled call the public call makes (ScoringCall: probabilities included)": bare,
    }
    t = interleaved_times(pieces, repeats=repeats, warmup=5)
    return [[name, f"{t[name].median * 1e6:.2f}"] for name in pieces]


def _cast(x, dtype):
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["cython", "numba"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--scoring", action="store_true", help="score-b1 scoring calls only")
    ap.add_argument("--steps", type=int, default=50,
                    help="with --scoring: time steps of the one sequence (score-b1: 50; 1 "
                         "leaves the glue a larger share of each call)")
    args = ap.parse_args(argv)
    if args.scoring:
        return main_scoring(args)
    rows = []
    for be in args.backends:
        for name, (public, bare) in cases(be).items():
            t = interleaved_times({"public": public, "bare": bare}, repeats=args.repeats,
                                  warmup=5)
            p, b = t["public"].median, t["bare"].median
            rows.append([be, name, f"{p * 1e6:.1f}", f"{b * 1e6:.1f}", f"{(p - b) * 1e6:.1f}"])
    print(f"# bench_overhead: LSTM 27 -> 50, batch 1, 12 steps (steps: 1); load "
          f"{load_average()}")
    print(markdown_table(["backend", "call", "public us", "bare fused call us",
                          "overhead us"], rows))
    return 0


def rounds_of_minima(cases, rounds, number=300, best_of=3):
    """Per case: the median over ``rounds`` interleaved rounds of the best of ``best_of``
    samples of ``number`` calls (s per call). On a shared machine the best of a few
    samples drops the ones another process preempted; the median over rounds keeps a
    slow phase of the machine from favouring one case."""
    import timeit

    per = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            per[k].append(min(timeit.repeat(fn, number=number, repeat=best_of)) / number)
    return {k: float(np.median(v)) for k, v in per.items()}


def main_scoring(args):
    rows, pieces = [], None
    for be in args.backends:
        cs, extra = scoring_cases(be, args.steps)
        bare = next(iter(cs.values()))[1]
        cases = {"bare infer": bare, **{name: public for name, (public, _) in cs.items()},
                 "bare infer (one step)": cs["Scorer.step(x_t, state)"][1]}
        t = rounds_of_minima(cases, args.repeats)
        for name in cs:
            b = t["bare infer (one step)" if "step" in name else "bare infer"]
            p = t[name]
            rows.append([be, name, f"{p * 1e6:.1f}", f"{b * 1e6:.1f}", f"{(p - b) * 1e6:.1f}"])
        if pieces is None:
            pieces = breakdown(*extra, args.repeats)
    print(f"# bench_overhead --scoring: LSTMClassifier 8 -> 64, one ({args.steps}, 8) sequence "
          f"(step: one time step); median over {args.repeats} interleaved rounds of the best "
          f"of 3 samples of 300 calls; load {load_average()}")
    print(markdown_table(["backend", "call", "public us", "bare fused call us",
                          "overhead us"], rows))
    print(f"\n# the glue piece by piece ({args.backends[0]})")
    print(markdown_table(["piece", "us"], pieces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
