#!/usr/bin/env python
"""cyrnn on a local Dask cluster: a grid search, ragged prediction, a large saved model.

Run from the repository root (needs the ``dask`` extra)::

    PYTHONPATH=. python benchmarks/bench_dask.py            # about 3-4 min on 2 busy cores
    PYTHONPATH=. python benchmarks/bench_dask.py --quick    # smoke run, smaller sizes

Three measurements, each on ``distributed.LocalCluster``\\ s of worker processes with 1
thread (``processes=True``, 127.0.0.1), every worker under ``cyrnn.scaleout.ThreadBudget(1)``:

1. **Grid search**: 8 candidates x 2 folds of ``GRUClassifier`` (embedding 500 x 32) on
   the bundled IMDB subset (2,000 reviews, last 150 ids, 3 epochs), ``refit=False``,
   through ``cyrnn.scaleout.parallel_backend(scatter=[X, y])``, on 1 worker and on 2;
   wall clock and their ratio. The cluster is started (and a probe task run on every
   worker) before the clock starts. The sequential search in this process (1 thread)
   gives the scores every run must reproduce.
2. **Ragged prediction**: 100,000 reviews (test-split reviews drawn with replacement,
   last 200 ids) scored by the searched architecture fitted once: one ``predict`` call
   in this process (1 thread); the same list as a ``dask.bag`` of 16 partitions with
   dask's threaded scheduler (2 threads, kernels at 1 thread each: they release the
   GIL); and ``cyrnn.scaleout.predict_bag`` on the 2-worker cluster with the bag
   already in the workers' memory (``persist``) and the model loaded from its file,
   fetched as a list (``bag.compute()``: 100,000 pickled NumPy scalars) and as one
   array per partition (``dask.compute(*bag.to_delayed())``, concatenated here).
   Sequences per second; every run must return the one-call predictions. Control,
   without Dask: two plain processes, each predicting one half, started together
   (the slower one's time): what two processes get from this machine at the time.
3. **First-task latency with a large saved model**: a GRU with a 200,000 x 64
   embedding (a ~100 MB file with its optimizer state), scored with ``predict_bag``
   from its path by a fresh 2-worker cluster over 16 partitions: the task stream's
   duration of each worker's first task (which loads the file) against the median of
   the other tasks, and the number of loads per worker (``cache_info``).

Prints the results and writes ``benchmarks/results/dask.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import load_average, machine_info, write_json  # noqa: E402


def cluster(n_workers):
    from distributed import Client, LocalCluster

    from cyrnn import scaleout

    lc = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None, silence_logs=40)
    client = Client(lc)
    client.register_plugin(scaleout.ThreadBudget(1))
    client.wait_for_workers(n_workers, timeout=120)
    # import cyrnn's estimators everywhere before any clock starts
    client.run(lambda: __import__("cyrnn.estimators") and None)
    return lc, client


def close(lc, client):
    client.close()
    lc.close()


def grid_search(args, results):
    import cyrnn
    from cyrnn import scaleout
    from cyrnn.datasets import load_imdb_subset
    from sklearn.model_selection import GridSearchCV
    from threadpoolctl import threadpool_limits

    X_train, y_train, _, _ = load_imdb_subset()
    n = args.grid_samples
    X = [x[-150:] for x in X_train[:n]]
    y = np.asarray(y_train[:n])
    grid = {"hidden_size": [16, 32], "learning_rate": [1e-3, 3e-3], "batch_size": [64, 128]}

    def search():
        est = cyrnn.GRUClassifier(vocab_size=500, embedding_dim=32, max_iter=args.grid_epochs,
                                  random_state=0)
        return GridSearchCV(est, grid, cv=2, refit=False)

    out = {"candidates": 8, "folds": 2, "samples": n, "epochs": args.grid_epochs}
    t = time.perf_counter()
    with threadpool_limits(limits=1):
        reference = search().fit(X, y)
    out["sequential_in_process_s"] = time.perf_counter() - t
    print(f"grid search, sequential in this process: {out['sequential_in_process_s']:.1f} s")
    for workers in (1, 2):
        lc, client = cluster(workers)
        try:
            out[f"load_before_{workers}w"] = load_average()
            t = time.perf_counter()
            with scaleout.parallel_backend(scatter=[X, y]):
                remote = search().fit(X, y)
            out[f"workers_{workers}_s"] = time.perf_counter() - t
        finally:
            close(lc, client)
        same = all(np.array_equal(remote.cv_results_[k], reference.cv_results_[k])
                   for k in reference.cv_results_ if k.startswith("split"))
        out[f"workers_{workers}_same_scores"] = bool(same)
        print(f"grid search, {workers} worker(s): {out[f'workers_{workers}_s']:.1f} s "
              f"(scores identical to sequential: {same})")
    out["ratio_1w_over_2w"] = out["workers_1_s"] / out["workers_2_s"]
    print(f"grid search speed-up, 2 workers vs 1: {out['ratio_1w_over_2w']:.2f}x")
    results["grid_search"] = out


def ragged_prediction(args, results, tmp):
    import dask
    import dask.bag as db
    from distributed import wait

    import cyrnn
    from cyrnn import scaleout
    from cyrnn.datasets import load_imdb_subset

    X_train, y_train, X_test, _ = load_imdb_subset()
    clf = cyrnn.GRUClassifier(vocab_size=500, embedding_dim=32, hidden_size=32, max_iter=2,
                              random_state=0).fit([x[-150:] for x in X_train[:2000]],
                                                  y_train[:2000])
    path = os.path.join(tmp, "imdb-gru.cyrnn")
    clf.save(path)
    rng = np.random.default_rng(0)
    seqs = [X_test[i][-200:] for i in rng.integers(0, len(X_test), args.n_sequences)]
    steps = sum(len(s) for s in seqs)
    out = {"sequences": len(seqs), "mean_length": steps / len(seqs), "partitions": 16}

    cyrnn.set_num_threads(1)
    clf.predict(seqs[:256])                                   # warm-up
    t = time.perf_counter()
    expected = clf.predict(seqs)
    out["local_one_call_s"] = time.perf_counter() - t

    bag = db.from_sequence(seqs, npartitions=16)
    t = time.perf_counter()
    got = scaleout.predict_bag(clf, bag).compute(scheduler="threads", num_workers=2)
    out["local_threads_2_s"] = time.perf_counter() - t
    assert np.array_equal(np.asarray(got), expected)

    lc, client = cluster(2)
    try:
        remote_bag = bag.persist()
        wait(remote_bag)
        client.run(scaleout.load_cached, path)    # the model on every worker first
        out["load_before_cluster"] = load_average()
        t = time.perf_counter()
        got = scaleout.predict_bag(path, remote_bag).compute()
        out["cluster_2_workers_list_s"] = time.perf_counter() - t
        assert np.array_equal(np.asarray(got), expected)
        t = time.perf_counter()
        parts = scaleout.predict_bag(path, remote_bag).to_delayed()
        got = np.concatenate(dask.compute(*parts))
        out["cluster_2_workers_s"] = time.perf_counter() - t
        assert np.array_equal(got, expected)
    finally:
        close(lc, client)
    out["control_two_processes_s"] = two_processes(path, seqs, tmp)
    for key in ("local_one_call_s", "local_threads_2_s", "cluster_2_workers_list_s",
                "cluster_2_workers_s", "control_two_processes_s"):
        out[key.replace("_s", "_seq_per_s")] = len(seqs) / out[key]
        print(f"ragged prediction, {key[:-2]}: {out[key]:.2f} s, "
              f"{len(seqs) / out[key]:,.0f} sequences/s")
    results["ragged_prediction"] = out


CONTROL = r"""
import sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
import cyrnn
cyrnn.set_num_threads(1)
model = cyrnn.load(sys.argv[1])
with np.load(sys.argv[2]) as d:
    tokens, offsets = d["tokens"], d["offsets"]
seqs = [tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
model.predict(seqs[:256])
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
t = time.perf_counter()
model.predict(seqs)
print(time.perf_counter() - t)
"""


def two_processes(path, seqs, tmp):
    """Control without Dask: two plain processes predict one half each, started
    together; the slower one's time. What 2 processes get from this machine."""
    import subprocess

    procs, start = [], time.time() + 15
    for i, half in enumerate((seqs[:len(seqs) // 2], seqs[len(seqs) // 2:])):
        data = os.path.join(tmp, f"half{i}.npz")
        np.savez(data, tokens=np.concatenate(half),
                 offsets=np.concatenate([[0], np.cumsum([len(s) for s in half])]))
        procs.append(subprocess.Popen([sys.executable, "-c", CONTROL, path, data, str(start)],
                                      stdout=subprocess.PIPE, text=True,
                                      env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE))))
    times = [float(p.communicate(timeout=300)[0].split()[-1]) for p in procs]
    if time.time() < start:
        raise RuntimeError("the control processes finished before their start time")
    return max(times)


def large_model_latency(args, results, tmp):
    import dask.bag as db
    from distributed import get_task_stream

    import cyrnn
    from cyrnn import scaleout

    rng = np.random.default_rng(1)
    vocab = args.large_vocab
    X = [rng.integers(1, vocab, size=int(rng.integers(20, 120))) for _ in range(400)]
    y = rng.integers(0, 2, size=len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = cyrnn.GRUClassifier(vocab_size=vocab, embedding_dim=64, hidden_size=64,
                                  max_iter=1, batch_size=100, random_state=0).fit(X, y)
    path = os.path.join(tmp, "large.cyrnn")
    big.save(path)
    t = time.perf_counter()
    cyrnn.load(path)
    out = {"file_mb": os.path.getsize(path) / 1e6, "parameters": int(big.model_.params.size),
           "local_load_s": time.perf_counter() - t}
    seqs = [rng.integers(1, vocab, size=int(rng.integers(20, 200))) for _ in range(4000)]
    bag = db.from_sequence(seqs, npartitions=16)
    lc, client = cluster(2)
    try:
        bag = bag.persist()
        with get_task_stream(client) as ts:
            t = time.perf_counter()
            scaleout.predict_bag(path, bag).compute()
            out["first_compute_s"] = time.perf_counter() - t
        loads = client.run(scaleout.cache_info)
    finally:
        close(lc, client)
    tasks = sorted((d for d in ts.data if "predict_partition" in str(d["key"])),
                   key=lambda d: min(s["start"] for s in d["startstops"]))
    firsts, rest, seen = [], [], set()
    for d in tasks:
        dur = sum(s["stop"] - s["start"] for s in d["startstops"] if s["action"] == "compute")
        (rest if d["worker"] in seen else firsts).append(dur)
        seen.add(d["worker"])
    out["first_task_per_worker_s"] = firsts
    out["other_tasks_median_s"] = float(np.median(rest)) if rest else None
    out["loads_per_worker"] = sorted(v["loads"] for v in loads.values())
    print(f"large model ({out['file_mb']:.0f} MB, {out['parameters']:,} parameters): local "
          f"cyrnn.load {out['local_load_s']:.2f} s; first task per worker "
          f"{', '.join(f'{v:.2f}' for v in firsts)} s, other tasks median "
          f"{out['other_tasks_median_s']:.3f} s; loads per worker {out['loads_per_worker']}")
    results["large_model"] = out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "dask.json"))
    args = parser.parse_args()
    args.grid_samples, args.grid_epochs = (400, 1) if args.quick else (2000, 3)
    args.n_sequences = 5000 if args.quick else 100_000
    args.large_vocab = 20_000 if args.quick else 200_000

    warnings.simplefilter("ignore", category=UserWarning)
    from sklearn.exceptions import ConvergenceWarning
    warnings.simplefilter("ignore", category=ConvergenceWarning)
    results = {"machine": machine_info(), "quick": args.quick,
               "command": "PYTHONPATH=. python benchmarks/bench_dask.py"
                          + (" --quick" if args.quick else "")}
    import dask
    import dask_ml
    import distributed
    results["versions"] = {"dask": dask.__version__, "distributed": distributed.__version__,
                           "dask_ml": dask_ml.__version__}
    print(f"load average at start: {results['machine']['load_average']}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        grid_search(args, results)
        ragged_prediction(args, results, tmp)
        large_model_latency(args, results, tmp)
    results["total_s"] = time.perf_counter() - t0
    results["load_average_end"] = load_average()
    print(f"load average at end: {results['load_average_end']}; total {results['total_s']:.0f} s")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
