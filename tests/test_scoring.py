"""cyrnn.scoring: a saved model scores exactly as the object that saved it, imports
little, streams exactly, and serves threads."""

import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cyrnn
from cyrnn import scoring
from conftest import bf16_kernels_or_skip as _bf16_dot_or_skip

ESTIMATORS = ["LSTMClassifier", "GRUClassifier", "SimpleRNNClassifier",
              "LSTMRegressor", "GRURegressor", "SimpleRNNRegressor"]


def _fit(name, X, n, seqs=False, labels=None, **kw):
    cls = getattr(cyrnn, name)
    rng = np.random.default_rng(1)
    if seqs:
        steps = [len(x) for x in X] if isinstance(X, list) else [np.shape(X)[1]] * n
        if name.endswith("Classifier"):
            y = [rng.integers(0, 3, size=t) for t in steps]
        else:
            y = [rng.normal(size=t) for t in steps]
        if not isinstance(X, list):
            y = np.array(y)
    elif name.endswith("Classifier"):
        y = rng.integers(0, 3, size=n) if labels is None else labels
    else:
        y = rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(hidden_size=6, max_iter=2, random_state=0, return_sequences=seqs,
                   **kw).fit(X, y)


def _same(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _check_scorer(est, tmp_path, inputs):
    path = tmp_path / "model.cyrnn"
    est.save(path)
    sc = scoring.load(path)
    assert sc.kind == f"cyrnn.{type(est).__name__}"
    assert sc.n_features_in_ == est.n_features_in_
    for X in inputs:
        _same(sc.predict(X), est.predict(X))
        if hasattr(est, "predict_proba"):
            _same(sc.predict_proba(X), est.predict_proba(X))
            _same(sc.predict_log_proba(X), est.predict_log_proba(X))
            np.testing.assert_array_equal(sc.classes_, est.classes_)
    return sc


@pytest.mark.parametrize("name", ESTIMATORS)
def test_scorer_equals_estimator_every_kind(name, tmp_path, rng):
    X = rng.normal(size=(30, 9, 2))
    ragged = [rng.normal(size=(3 + i % 6, 2)) for i in range(30)]
    est = _fit(name, X, 30)
    _check_scorer(est, tmp_path, [X, X[:1], X[:1, :4], ragged, ragged[:1],
                                  X.astype(np.float32), X[:, :, :].transpose(0, 1, 2)[::2]])


@pytest.mark.parametrize("name", ["GRUClassifier", "LSTMRegressor"])
def test_scorer_sequences_bidirectional_tables_tokens_float64(name, tmp_path, rng):
    ragged = [rng.normal(size=(3 + i % 6, 2)) for i in range(30)]
    est = _fit(name, ragged, 30, seqs=True, bidirectional=True, num_layers=2,
               dtype="float64")
    _check_scorer(est, tmp_path, [ragged, ragged[:1], rng.normal(size=(4, 7, 2))])
    table = rng.normal(size=(30, 8))
    _check_scorer(_fit(name, table, 30), tmp_path, [table, table[:1]])
    ids = rng.integers(0, 12, size=(30, 10))
    ids[:, 0] = 1 + ids[:, 0] % 11
    ids[::3, :4] = 0  # pre-padding
    est = _fit(name, ids, 30, vocab_size=12, embedding_dim=4)
    ragged_ids = [rng.integers(1, 12, size=2 + i % 5) for i in range(30)]
    _check_scorer(est, tmp_path, [ids, ids[:1], ragged_ids])


def test_scorer_string_classes_and_binary(tmp_path, rng):
    X = rng.normal(size=(20, 5, 3))
    labels = np.where(X[:, -1, 0] > 0, "yes", "no")
    sc = _check_scorer(_fit("LSTMClassifier", X, 20, labels=labels), tmp_path, [X, X[:1]])
    assert list(sc.classes_) == ["no", "yes"]
    assert sc.predict_proba(X).shape == (20, 2)


@pytest.mark.parametrize("name", ["GRUClassifier", "LSTMRegressor"])
def test_dataframe_column_names_survive_save_and_are_checked(name, tmp_path, rng):
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame(rng.normal(size=(30, 6)), columns=[f"t{i}" for i in range(6)])
    est = _fit(name, table, 30)
    assert list(est.feature_names_in_) == list(table.columns)
    reordered = table[table.columns[::-1]]
    sc = _check_scorer(est, tmp_path, [table, table[:1]])
    loaded = cyrnn.load(tmp_path / "model.cyrnn")
    mixed = table.set_axis(["t0", "t1", "t2", "t3", "t4", 5], axis=1)
    messages = set()
    for obj in (est, sc, loaded):  # (check_scorer saved the file)
        assert list(obj.feature_names_in_) == list(table.columns)
        with pytest.raises(ValueError, match="feature names should match") as info:
            obj.predict(reordered)
        messages.add(str(info.value))
        with pytest.warns(UserWarning, match="fitted with feature names"):
            obj.predict(table.to_numpy())
        with pytest.raises(TypeError, match="all input features have string names"):
            obj.predict(mixed)
    assert len(messages) == 1  # scikit-learn's message, from the scorer too
    plain = _fit(name, table.to_numpy(), 30)  # fitted without names: a DataFrame warns
    assert not hasattr(plain, "feature_names_in_")
    plain.save(tmp_path / "plain.cyrnn")
    sc = scoring.load(tmp_path / "plain.cyrnn")
    assert sc.feature_names_in_ is None
    for obj in (plain, sc):
        with pytest.warns(UserWarning, match="fitted without feature names"):
            obj.predict(table)


@pytest.mark.parametrize("name, kw, y_shape", [
    ("LSTMClassifier", {}, None), ("GRUClassifier", {}, None),
    ("SimpleRNNClassifier", {"dtype": "float64"}, None), ("LSTMRegressor", {}, None),
    ("GRURegressor", {"dtype": "float64"}, (3,)), ("SimpleRNNRegressor", {}, (2,)),
    ("LSTMRegressor", {"return_sequences": True}, None)])
def test_scorer_one_compiled_call(name, kw, y_shape, tmp_path, rng):
    """On the Cython backend a scorer's predict_proba (a regressor's predict) of an exact
    array is one compiled call, post-processing included (ScoringCall): the estimator's
    result exactly, binary and softmax probabilities, one and several targets, float32
    and float64 models; any other input goes the general way, with the same results
    and errors."""
    pytest.importorskip("cyrnn._cython_kernels")
    X = rng.normal(size=(12, 7, 3))
    seqs = kw.pop("return_sequences", False)
    if y_shape is not None:
        est = getattr(cyrnn, name)(hidden_size=5, max_iter=2, random_state=0, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, rng.normal(size=(12,) + y_shape))
    else:
        labels = (np.arange(12) % 2) if name == "GRUClassifier" else None  # binary
        est = _fit(name, X, 12, seqs=seqs, labels=labels, **kw)
    est.save(tmp_path / "m.cyrnn")
    from cyrnn import sequences as S
    for sc in (scoring.load(tmp_path / "m.cyrnn"), scoring.from_estimator(est),
               scoring.load(tmp_path / "m.cyrnn", weights="packed")):
        call = sc._fast_call
        assert type(call).__name__ == "ScoringCall"
        public = sc.predict_proba if hasattr(sc, "predict_proba") else sc.predict
        ref = est.predict_proba if hasattr(est, "predict_proba") else est.predict
        data = sc.model.params.data

        def before(x):  # the Python one-call path of the builds before ScoringCall
            raw = sc._plan.call_infer(data, x)  # (the plan's packed weights, if any)
            if hasattr(sc, "predict_proba"):
                return S.class_probabilities(raw, sc._binary)
            return S.regression_output(raw, sc._spec)
        for x in (X, X[:1], X[:1, :1], X.astype(np.float32), X[:1].astype(np.float32)):
            got = call(data, x)
            if x.dtype != sc.model.dtype and sc.model.dtype == np.float64:
                assert got is None  # float32 input to a float64 model: converted first
                continue
            _same(got, before(x))
            _same(public(x), got)
            if sc.weights is None:
                _same(ref(x), got)
        big = np.repeat(X, 30, axis=0)  # more rows than one fused call takes
        sub = X.view(type("Sub", (np.ndarray,), {}))
        for x in (X[:, ::2], sub, X[:, :, :2], X[..., None], X[:, :0], big,
                  X.astype(np.int64)):
            assert call(data, x) is None
        for x in (X[:, ::2], big, sub):
            _same(public(x), ref(x))
        nan = X[:1].copy()
        nan[0, 1, 1] = np.nan
        assert call(data, nan) is None  # the general path judges the values
        with pytest.raises(ValueError, match="NaN"):
            public(nan)
    _same(est._predict_fast(X), ref(X))  # the estimator's own calls take it too
    for x in (X, X[:1]):
        fast = ref(x)
        est.set_params(n_jobs=1)  # no one-call path: the general path's equal results
        assert est._predict_fast(x) is None
        _same(ref(x), fast)
        est.set_params(n_jobs=None)
    with pytest.raises(ValueError, match="post must be one of"):
        type(call)(sc._plan.spec, None, "probabilities", 3, 4)
    with pytest.raises(ValueError, match="positive"):
        type(call)(sc._plan.spec, None, "raw", 0, 4)
    with pytest.raises(ValueError):  # a malformed spec, checked once when bound
        type(call)(np.zeros(3, np.int64), None, "raw", 3, 4)
    numba_sc = scoring.load(tmp_path / "m.cyrnn", backend="numba")
    assert numba_sc._fast_call is None  # no such call there: the Python one-call path
    np.testing.assert_allclose(numba_sc.predict(X[:1]).astype(float),  # (other kernels)
                               est.predict(X[:1]).astype(float), rtol=1e-4, atol=1e-5)


def test_scorer_rejects_bad_input_like_the_estimator(tmp_path, rng):
    X = rng.normal(size=(5, 6, 2))
    est = _fit("LSTMClassifier", X, 5)
    est.save(tmp_path / "m.cyrnn")
    sc = scoring.load(tmp_path / "m.cyrnn")
    bad = X.copy()
    bad[0, 2, 1] = np.nan
    for f in (sc.predict_proba, est.predict_proba):
        with pytest.raises(ValueError, match="NaN"):
            f(bad)
        with pytest.raises(ValueError, match="features"):
            f(X[:, :, :1])
    with pytest.raises(ValueError, match="too large"):
        sc.predict_proba(np.full((1, 3, 2), 1e300))


def test_scoring_imports_little(tmp_path, rng):
    """Importing cyrnn.scoring, loading, predicting, sampling text (the scorer's and the
    ``cyrnn sample`` command's), ``cyrnn info`` and setting the thread budget (as the README recommends
    for scoring) imports no scikit-learn, SciPy statistics, Numba or llvmlite; the
    budget reaches Numba when its backend loads later."""
    X = rng.normal(size=(10, 6, 3))
    est = _fit("LSTMClassifier", X, 10)
    est.save(tmp_path / "clf.cyrnn")
    lm = cyrnn.CharLanguageModel(hidden_size=8, embedding_dim=4, max_epochs=1, random_state=0)
    lm.fit(["abc", "bcd", "cab"]).save(tmp_path / "lm.cyrnn")
    seq = cyrnn.Sequential([cyrnn.GRU(3, 5), cyrnn.Dense(5, 2)])
    seq.save(tmp_path / "seq.cyrnn")
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import cyrnn.scoring as s
        import cyrnn
        cyrnn.set_num_threads(1)
        x = np.zeros((1, 6, 3))
        a = s.load({str(tmp_path / 'clf.cyrnn')!r}); a.predict_proba(x); a.step(x[:, 0])
        b = s.load({str(tmp_path / 'lm.cyrnn')!r}); b.predict_proba(np.ones((1, 3), np.int64))
        b.sample(2, random_state=0)
        # the command line writes with the scorer too: `cyrnn sample` imports no more
        import contextlib, io
        from cyrnn.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as written:
            assert main(["sample", {str(tmp_path / 'lm.cyrnn')!r}, "-n", "2"]) == 0
            assert main(["info", {str(tmp_path / 'lm.cyrnn')!r}]) == 0
        assert len(written.getvalue().splitlines()) == 2 + 15  # 2 names, 15 info lines
        c = s.load({str(tmp_path / 'seq.cyrnn')!r}); c.predict(x); c.step(x[:, 0])
        bad = [m for m in sys.modules if m.split('.')[0] in ('sklearn', 'numba', 'llvmlite')
               or m.startswith(('scipy.stats', 'scipy.special'))]
        print(sorted(bad))
        import cyrnn.backends.numba, numba
        assert numba.get_num_threads() == 1 and cyrnn.get_num_threads() == 1
        # the Cython backend loaded scipy's cython_blas alone: scipy.linalg still imports
        import scipy.linalg
        from scipy.linalg import cython_blas
        assert scipy.linalg.cython_blas is cython_blas
        assert np.allclose(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)), 0.5)
    """)
    # the cyrnn under test (the installed package in CI), not a source tree in the
    # working directory, which a clean clone has not built
    env = dict(os.environ, PYTHONPATH=str(Path(cyrnn.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=env)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ----------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------
CELLS = [("SimpleRNN", {}), ("SimpleRNN", {"activation": "relu"}), ("LSTM", {}),
         ("LSTM", {"peephole": True}), ("GRU", {}), ("GRU", {"reset_after": False})]


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("cls, kw", CELLS)
def test_step_equals_whole_sequence(cls, kw, backend, tmp_path, rng):
    """Every cell, an Embedding, stacked and chained recurrent layers and a Dense:
    stepping a batch of streams equals the whole-sequence run, exactly."""
    Cell = getattr(cyrnn, cls)
    model = cyrnn.Sequential([
        cyrnn.Embedding(11, 4, random_state=0),
        Cell(4, 6, num_layers=2, backend=backend, random_state=1, **kw),
        cyrnn.GRU(6, 5, backend=backend, random_state=2),
        cyrnn.Dense(5, 3, random_state=3)])
    model.save(tmp_path / "seq.cyrnn")
    sc = scoring.load(tmp_path / "seq.cyrnn")
    ids = rng.integers(1, 11, size=(3, 7))
    whole = model.forward(ids)
    np.testing.assert_array_equal(sc.predict(ids), whole)
    state = None
    for t in range(ids.shape[1]):
        y1, _ = model.step(ids[:, t], state)  # Sequential.step agrees
        y, state = sc.step(ids[:, t], state)
        np.testing.assert_array_equal(y, whole[:, t])
        np.testing.assert_array_equal(y1, whole[:, t])
    # one stream alone, then the float-input model of the same cell (layer.step too)
    layer = Cell(3, 4, num_layers=2, backend=backend, random_state=4, **kw)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    out, _ = layer(x)
    st = None
    for t in range(6):
        h, st = layer.step(x[:, t], st)
        np.testing.assert_array_equal(h, out[:, t])


@pytest.mark.parametrize("cls, kw", CELLS)
def test_step_equals_long_sequences(cls, kw, tmp_path, rng):
    """Hidden sizes and sequences where the packed (4+ rows) and unpacked kernels'
    sums differ in the last bit: every batch size steps exactly as it runs whole, a
    sequence's first steps equal a shorter sequence's, the scorer (which packs its
    weights once for 4+ rows) equals the model (which packs per call) and the
    model's own layer.step, and weights packed for every call step exactly too."""
    Cell = getattr(cyrnn, cls)
    layer = Cell(3, 48, num_layers=2, random_state=1, return_sequences=True, **kw)
    model = cyrnn.Sequential([layer, cyrnn.Dense(48, 2, random_state=2)])
    model.save(tmp_path / "long.cyrnn")
    T = 40
    for n, weights in [(1, None), (3, None), (4, None), (6, None), (9, None), (33, None),
                       (6, "packed")]:
        sc = scoring.load(tmp_path / "long.cyrnn", weights=weights)
        x = rng.normal(size=(n, T, 3)).astype(np.float32)
        whole = sc.predict(x)
        if weights is None:
            np.testing.assert_array_equal(whole, model.forward(x))
            np.testing.assert_array_equal(sc.predict(x[:, :5]), whole[:, :5])
            if sc._plan is not None and sc._plan.can_pack:
                # packed once, by the first call of 4+ rows only
                assert (sc._plan.packed.nbytes > 0) == (n >= 4)
        state = st = None
        for t in range(T):
            y, state = sc.step(x[:, t], state)
            np.testing.assert_array_equal(y, whole[:, t], err_msg=f"n={n} t={t}")
        if weights is None and n in (3, 6):
            seq, _ = layer(x)
            for t in range(T):
                h, st = layer.step(x[:, t], st)
                np.testing.assert_array_equal(h, seq[:, t], err_msg=f"layer n={n} t={t}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, H", [("LSTM", 256), ("GRU", 296)])
def test_step_equals_whole_on_weights_that_stream(cls, H, dtype, tmp_path, rng):
    """One-row products on a recurrent weight of 1 MB or more take the own kernel on
    every CPU (it prefetches the weight rows as they stream from memory; the rule in
    src/gemm.pxi), the input projections of a stacked layer on such weights
    prefetch too: stepping still equals running whole, bit for bit, at 1 and 2
    rows, for the scorer and for layer.step."""
    from cyrnn import _cython_kernels as kernels

    gates = 4 if cls == "LSTM" else 3
    if "CYRNN_SMALL_GEMM_ROWS" not in os.environ:
        isz = np.dtype(dtype).itemsize
        assert kernels.own_small_gemm(1, gates * H * H * isz, isz)
    layer = getattr(cyrnn, cls)(5, H, num_layers=2, random_state=1, return_sequences=True,
                                dtype=dtype)
    model = cyrnn.Sequential([layer, cyrnn.Dense(H, 3, random_state=2, dtype=dtype)])
    model.save(tmp_path / "big.cyrnn")
    sc = scoring.load(tmp_path / "big.cyrnn")
    for n in (1, 2):
        x = rng.normal(size=(n, 9, 5)).astype(dtype)
        whole = sc.predict(x)
        np.testing.assert_array_equal(whole, model.forward(x))
        state = st = None
        seq, _ = layer(x)
        for t in range(x.shape[1]):
            y, state = sc.step(x[:, t], state)
            np.testing.assert_array_equal(y, whole[:, t], err_msg=f"n={n} t={t}")
            h, st = layer.step(x[:, t], st)
            np.testing.assert_array_equal(h, seq[:, t], err_msg=f"layer n={n} t={t}")


def _small_team_runs(run):
    """``run()`` (a list of arrays) on 1, 2 and 3 threads with the small-batch team on
    from 0 bytes and nothing held off (a busy machine must not turn the team off nor
    make the regions serial): ``{threads: outputs}``, ``{threads: team regions}``;
    asserts that 2 and 3 threads give one thread's outputs bit for bit."""
    from cyrnn import _cython_kernels as kernels

    runs, counts = {}, {}
    saved = (kernels.set_num_threads(1), kernels._set_small_team_min_bytes(0),
             kernels._set_team_share(0), kernels.set_contention_hold(0))
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            start = kernels._path_counts()["small_team_forward"]
            runs[threads] = run()
            counts[threads] = kernels._path_counts()["small_team_forward"] - start
    finally:
        kernels.set_num_threads(saved[0])
        kernels._set_small_team_min_bytes(saved[1])
        kernels._set_team_share(saved[2])
        kernels.set_contention_hold(saved[3])
    for threads in (2, 3):
        assert len(runs[threads]) == len(runs[1])
        for i, (a, b) in enumerate(zip(runs[1], runs[threads])):
            np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads, output {i}")
    return runs, counts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["lstm", "lstm_peephole_relu_hard", "gru", "gru_linear_hard",
                                  "gru_cho", "rnn_tanh"])
def test_small_team_equals_one_thread_to_the_bit(name, dtype, rng):
    """The small-batch team (src/fused.pxi, ``_small_team_op``: an inference of up to
    15 rows whose products take the own kernel or the packed kernels, input projections
    and recurrent products split by columns between the threads, two barriers per step)
    gives the one-thread results bit for bit, on 2 and 3 threads: whole sequences with
    a mask and initial states, both directions, and steps of a stacked layer. Cho's GRU
    (two products per step) stays on one thread."""
    from fused_harness import CELLS
    from cyrnn import _cython_kernels as kernels

    Cls, kw = {c[0]: (c[1], c[2]) for c in CELLS}[name]
    H = {cyrnn.LSTM: 256, cyrnn.GRU: 296, cyrnn.SimpleRNN: 512}[Cls]  # W_hh of 1 MB or more
    G = {cyrnn.LSTM: 4, cyrnn.GRU: 3, cyrnn.SimpleRNN: 1}[Cls]
    wbytes = G * H * H * np.dtype(dtype).itemsize
    rows = [n for n in (1, 2)
            if kernels.own_small_gemm(n, wbytes, np.dtype(dtype).itemsize)]
    if not rows:
        pytest.skip("CYRNN_SMALL_GEMM_ROWS sends one-row products to BLAS")
    bidir = Cls(5, H, num_layers=2, bidirectional=True, return_sequences=True, dtype=dtype,
                random_state=1, **kw)
    stacked = Cls(5, H, num_layers=2, return_sequences=True, dtype=dtype, random_state=2, **kw)
    T = 17  # from 16 rows the input projections take the transposed kernel (cyrnn_projt_ld)
    # 4 and 5 rows: the packed path (weights packed per call; a step of 4 streams reads
    # them as stored, WF_RAW), whose kernels' sums do not depend on the columns either
    inputs = {n: (rng.normal(size=(n, T, 5)).astype(dtype),
                  rng.normal(size=(4, n, H)).astype(dtype)) for n in rows + [4, 5]}

    def run():
        out = []
        for n, (x, h0) in inputs.items():
            state = (h0, h0[::-1].copy()) if Cls is cyrnn.LSTM else h0
            seq, hn = bidir.forward(x, lengths=np.arange(T, T - n, -1), initial_state=state,
                                    training=False)
            out += [seq, *(hn if isinstance(hn, tuple) else (hn,))]
            st = None
            for t in range(T):
                h, st = stacked.step(x[:, t], st)
                out += [h, *(st if isinstance(st, tuple) else (st,))]
        return out

    _, counts = _small_team_runs(run)
    assert counts[1] == 0
    # per row count: the bidirectional call's 2 ops (one region each, both directions
    # in it) and T steps of the stacked layer's 2 ops
    assert counts[2] == counts[3] == (0 if name == "gru_cho" else len(inputs) * (2 + 2 * T))


@pytest.mark.parametrize("weights, dtype", [("packed", np.float32), ("packed", np.float64),
                                           ("bfloat16", np.float32)])
@pytest.mark.parametrize("name", ["lstm", "lstm_peephole", "gru", "gru_cho", "rnn_tanh"])
def test_small_team_on_weights_packed_once(name, weights, dtype, tmp_path, rng):
    """The small-batch team on a scorer's weights packed once (float32, float64 or
    bfloat16, whose panels pack k in pairs: odd sizes here): each thread projects its
    columns of every row's inputs (both directions, two blocks of steps) and computes
    its panels of each step's product; predictions and steps equal one thread's bit
    for bit, on 2 and 3 threads."""
    from fused_harness import CELLS

    Cls, kw = {c[0]: (c[1], c[2]) for c in CELLS}[name]
    H = 41
    T = 11  # two blocks of steps (STEP_BLOCK = 8)
    bidir = cyrnn.Sequential([Cls(5, H, num_layers=2, bidirectional=True, random_state=1,
                                  return_sequences=True, dtype=dtype, **kw),
                              cyrnn.Dense(2 * H, 3, dtype=dtype)])
    stacked = cyrnn.Sequential([Cls(5, H, num_layers=2, random_state=2, dtype=dtype,
                                    return_sequences=True, **kw), cyrnn.Dense(H, 3, dtype=dtype)])
    bidir.save(tmp_path / "b.cyrnn")
    stacked.save(tmp_path / "s.cyrnn")
    sb = scoring.load(tmp_path / "b.cyrnn", weights=weights)
    ss = scoring.load(tmp_path / "s.cyrnn", weights=weights)
    xs = {n: rng.normal(size=(n, T, 5)).astype(dtype) for n in (1, 2, 3)}

    def run():
        out = []
        for x in xs.values():
            out.append(sb.predict(x))
            state = None
            for t in range(T):
                y, state = ss.step(x[:, t], state)
                out += [y, *(state if isinstance(state, tuple) else (state,))]
        return out

    _, counts = _small_team_runs(run)
    # per row count: the bidirectional predict's 2 ops and T steps of 2 ops
    assert counts[1] == 0
    assert counts[2] == counts[3] == (0 if name == "gru_cho" else 3 * (2 + 2 * T))


def test_small_team_under_concurrent_streams(rng):
    """Several Python threads stepping their own streams through one stacked layer, each
    call on a small-batch team of its own (so more threads than cores, whose barriers
    stall and whose hold may step in): every stream equals its sequential run."""
    from cyrnn import _cython_kernels as kernels

    if not kernels.own_small_gemm(1, 4 * 256 * 256 * 4, 4):
        pytest.skip("CYRNN_SMALL_GEMM_ROWS sends one-row products to BLAS")
    layer = cyrnn.LSTM(8, 256, num_layers=2, return_sequences=True, random_state=4)
    streams = rng.normal(size=(4, 12, 8)).astype(np.float32)
    saved = (kernels.set_num_threads(2), kernels._set_small_team_min_bytes(0),
             kernels.set_contention_hold(0))
    try:
        start = kernels._path_counts()["small_team_forward"]
        expected = [layer.forward(streams[k:k + 1], training=False) for k in range(4)]
        assert kernels._path_counts()["small_team_forward"] > start or \
            kernels.contention_state()["team_held"] > 0

        def work(k):
            state, ys = None, []
            for t in range(12):
                y, state = layer.step(streams[k:k + 1, t], state)
                ys.append(y)
            return np.stack(ys, 1), state

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, [k for _ in range(3) for k in range(4)]))
    finally:
        kernels.set_num_threads(saved[0])
        kernels._set_small_team_min_bytes(saved[1])
        kernels.set_contention_hold(saved[2])
    for i, (seq, (h, c)) in enumerate(results):
        k = i % 4
        np.testing.assert_array_equal(seq, expected[k][0], err_msg=f"stream {k}")
        np.testing.assert_array_equal(h, expected[k][1][0], err_msg=f"stream {k}")
        np.testing.assert_array_equal(c, expected[k][1][1], err_msg=f"stream {k}")


def test_small_gemm_rule():
    """The documented rule (src/gemm.pxi, SMALL_GEMM_ROWS): own kernels for up to 7
    rows without AVX-512; with it BLAS, except one row on a weight of 1 MB or more,
    and except float32 forward products of 1-3 rows, which take the own kernel
    (cyrnn_dotrows) at any size."""
    from cyrnn import _cython_kernels as kernels

    if "CYRNN_SMALL_GEMM_ROWS" in os.environ:
        pytest.skip("CYRNN_SMALL_GEMM_ROWS replaces the rule")
    mb = 1 << 20
    for isz in (0, 4, 8):  # backward, float32 forward, float64 forward
        def own(n, b):
            return kernels.own_small_gemm(n, b, isz)
        assert not own(8, 4 * mb) and not own(8, 1000)
        if kernels.pgemm_isa() == "avx512f" and isz == 4:
            assert all(own(n, b) for n in range(1, 4) for b in (1000, mb, 64 * mb))
            assert not own(4, 1000) and not own(7, 64 * mb)
        elif kernels.pgemm_isa() == "avx512f":
            assert own(1, mb) and own(1, 64 * mb)
            assert not own(1, mb - 1) and not own(2, 64 * mb) and not own(7, 1000)
        else:
            assert all(own(n, b) for n in range(1, 8) for b in (1000, mb, 64 * mb))


@pytest.mark.parametrize("name", ["LSTMClassifier", "GRURegressor"])
def test_estimator_scorer_streams(name, tmp_path, rng):
    """Many-to-one: the step output is the prediction for the sequence so far;
    return_sequences: the prediction at this step."""
    X = rng.normal(size=(8, 6, 2))
    for seqs in (False, True):
        est = _fit(name, X, 8, seqs=seqs)
        est.save(tmp_path / "m.cyrnn")
        sc = scoring.load(tmp_path / "m.cyrnn")
        whole = sc.predict_proba(X) if hasattr(sc, "predict_proba") else sc.predict(X)
        state = None
        for t in range(6):
            y, state = sc.step(X[:, t], state)
            if seqs:
                np.testing.assert_array_equal(y, whole[:, t])
            else:
                f = est.predict_proba if hasattr(est, "predict_proba") else est.predict
                np.testing.assert_array_equal(y, f(X[:, :t + 1]))


def test_bidirectional_and_padding_steps_are_refused(tmp_path, rng):
    X = rng.normal(size=(10, 5, 2))
    est = _fit("LSTMRegressor", X, 10, bidirectional=True)
    est.save(tmp_path / "b.cyrnn")
    sc = scoring.load(tmp_path / "b.cyrnn")
    assert not sc.streamable
    with pytest.raises(ValueError, match="bidirectional"):
        sc.step(X[:, 0])
    ids = rng.integers(1, 9, size=(10, 5))
    est = _fit("GRUClassifier", ids, 10, vocab_size=9)
    est.save(tmp_path / "t.cyrnn")
    sc = scoring.load(tmp_path / "t.cyrnn")
    with pytest.raises(ValueError, match="padding"):
        sc.step(np.array([3, 0]))


def test_step_one_compiled_call(tmp_path, rng):
    """On the Cython backend a scorer's step with exact arguments is one compiled call,
    post-processing included (StepCall): the same outputs and states as the Python
    one-call path (CompiledPlan.step) for a Sequential, the estimators and a language
    model; anything else returns None before any work and takes the checked path."""
    pytest.importorskip("cyrnn._cython_kernels")
    X = rng.normal(size=(10, 6, 3))
    seq = cyrnn.Sequential([cyrnn.LSTM(3, 5, num_layers=2, random_state=0),
                            cyrnn.Dense(5, 2, random_state=1)])
    scorers = [scoring.Scorer(seq)]
    for name, labels in (("GRUClassifier", np.arange(10) % 2), ("LSTMClassifier", None),
                         ("SimpleRNNRegressor", None)):
        est = _fit(name, X, 10, labels=labels)
        est.save(tmp_path / "m.cyrnn")
        scorers.append(scoring.load(tmp_path / "m.cyrnn"))
    est = _fit("LSTMClassifier", X, 10, seqs=True)  # return_sequences
    est.save(tmp_path / "m.cyrnn")
    scorers += [scoring.load(tmp_path / "m.cyrnn"),
                scoring.load(tmp_path / "m.cyrnn", weights="packed")]
    est = cyrnn.GRURegressor(hidden_size=5, max_iter=1, random_state=0, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, rng.normal(size=(10, 2)))  # two targets, float64
    scorers.append(scoring.from_estimator(est))
    lm = cyrnn.CharLanguageModel(cell="gru", hidden_size=8, max_epochs=1, random_state=0)
    lm.fit(["abcab", "bcabca", "cab"])
    lm.save(tmp_path / "lm.cyrnn")
    scorers.append(scoring.load(tmp_path / "lm.cyrnn"))
    for sc in scorers:
        call = sc._step_call
        assert type(call).__name__ == "StepCall", sc.kind
        ids = sc._step_fast[0]
        data = sc.model.params.data
        dtype = sc.model.dtype
        xs = (rng.integers(1, 5, size=(6, 3)) if ids
              else rng.normal(size=(6, 3, 3)).astype(dtype))
        state = ref_state = None
        for t in range(6):
            got = call(data, xs[t], state)
            y_ref, ref_state = sc._fast_step(xs[t], ref_state)
            _same(got[0], sc._step_output(y_ref))
            for a, b in zip(np.ravel(got[1][0]), np.ravel(ref_state[0])):
                _same(a, b)
            y_pub, s_pub = sc.step(xs[t], state)
            _same(y_pub, got[0])
            state = got[1]
        st = state[0]
        has_c = type(st) is tuple
        h = st[0] if has_c else st
        sub = type("Sub", (np.ndarray,), {})

        def wrap(a):
            return [(a, st[1]) if has_c else a]
        x0 = xs[0]
        other = np.float32 if dtype == np.float64 else np.float64
        nots = [(x0.view(sub), state), (x0[::-1] if ids else x0[:, ::-1], state),
                (x0[:1], state), (x0[:0], None),
                (x0.astype(np.dtype(np.int64 if ids else dtype).newbyteorder()), state),
                (x0, state * 2), (x0, tuple(state)), (x0, wrap(h.view(sub))),
                (x0, wrap(h.astype(h.dtype.newbyteorder()))), (x0, wrap(h[:, :1])),
                (x0, wrap(h.astype(other))), (x0, [list(st)] if has_c else [(h, h)])]
        if not ids:
            nots.append((x0.astype(other), state))
        for x, s_ in nots:
            assert call(data, x, s_) is None
        bad = h.copy()
        bad.flat[0] = np.nan
        assert call(data, x0, wrap(bad)) is None  # values: the checked path judges
        with pytest.raises(ValueError):
            sc.step(x0, wrap(bad))
    with pytest.raises(ValueError, match="post must be one of"):
        type(call)(scorers[0]._plan.spec, None, "labels", False, 3, 2, 5, True)
    with pytest.raises(ValueError, match="positive"):
        type(call)(scorers[0]._plan.spec, None, "raw", False, 0, 2, 5, True)
    seq_numba = cyrnn.Sequential([cyrnn.LSTM(3, 5, backend="numba", random_state=0)])
    assert scoring.Scorer(seq_numba)._step_call is None  # plan.step's Python path there


@pytest.mark.parametrize("cls", [cyrnn.LSTM, cyrnn.GRU, cyrnn.SimpleRNN])
def test_layer_and_sequential_steps_one_compiled_call(cls, rng):
    """layer.step and Sequential.step of exact arguments are one compiled call too
    (CompiledPlan.raw_step_call, kept with the plan): the outputs and states of the
    Python path (plan.step) bit for bit, in each one's state layout; other forms fall
    back; after use_packed_weights the kept call is built again."""
    pytest.importorskip("cyrnn._cython_kernels")
    layer = cls(3, 6, num_layers=2, random_state=0)
    model = cyrnn.Sequential([cyrnn.Embedding(9, 3, random_state=1),
                              cls(3, 6, num_layers=2, random_state=0),
                              cyrnn.Dense(6, 2, random_state=2)])
    x = rng.normal(size=(5, 4, 3)).astype(np.float32)
    ids = rng.integers(0, 9, size=(5, 4))
    for obj, xs, wrap in ((layer, x, False), (model, ids, True)):
        plan = obj._plan()
        call = plan.raw_step_call(obj._step_form, wrap)
        assert type(call).__name__ == "StepCall"
        assert plan.raw_step_call(obj._step_form, wrap) is call  # kept
        lstm = cls is cyrnn.LSTM
        state = ref = None  # ref: the layer's layout, (h, c) or h
        for t in range(4):
            inp = np.ascontiguousarray(xs[:, t], np.int64 if wrap else np.float32)
            direct = call(obj.params.data, inp, state)  # what step makes first
            assert direct is not None
            y, state_new = obj.step(inp, state)
            h0, c0 = (None, None) if ref is None else (ref if lstm else (ref, None))
            y_ref, h_n, c_n = plan.step(obj.params.data, inp, h0, c0, (2, 5, 6))
            ref = (h_n, c_n) if lstm else h_n
            for out, st in ((y, state_new), direct):
                _same(out, y_ref)
                assert type(st) is (list if wrap else type(ref))
                got = st[0] if wrap else st
                for a, b in zip(got if lstm else (got,), ref if lstm else (ref,)):
                    _same(a, b)
            state = state_new
        inp = np.ascontiguousarray(xs[:, 0], np.int64 if wrap else np.float32)
        other = state[0] if wrap else [state]  # the other object's layout
        assert call(obj.params.data, inp, other) is None
        y, _ = obj.step(inp, state)  # (its own layout is taken)
        plan.use_packed_weights("native", auto=True)
        again = plan.raw_step_call(obj._step_form, wrap)
        assert again is not call and plan._raw_step[0] is plan.packed  # built again
        _same(obj.step(inp, state)[0], y)  # (auto: the same kernels at 5 rows)
    two = cyrnn.Sequential([cls(3, 4, random_state=0), cls(4, 5, random_state=1)])
    assert two._step_form() is None  # two recurrent layers: the flat-state path
    masked = cyrnn.Sequential([cyrnn.Embedding(9, 3, mask_zero=True), cls(3, 4)])
    assert masked._step_form() is None  # padding rows: the masked path
    y, st = masked.step(np.array([0, 4]), None)
    np.testing.assert_array_equal(y[0], 0)  # (the padding row's output)


def test_step_checks_its_arguments(tmp_path, rng):
    """The one-call path of step takes exact arguments only; anything else gets the
    checked path and its errors (or its conversions)."""
    model = cyrnn.Sequential([cyrnn.LSTM(3, 4, num_layers=2, random_state=0),
                              cyrnn.Dense(4, 2, random_state=1)])
    sc = scoring.Scorer(model)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    y, state = sc.step(x)
    y64, state64 = sc.step(x.astype(np.float64))  # converted
    np.testing.assert_array_equal(y, y64)
    y2, _ = sc.step(x, [list(state[0])])  # a list pair: the checked path, same result
    np.testing.assert_array_equal(y2, sc.step(x, state)[0])
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sc.step(bad, state)
    h, c = state[0]
    with pytest.raises(ValueError):
        sc.step(x, [(h, np.full_like(c, np.inf))])
    with pytest.raises(ValueError, match="shape"):
        sc.step(x, [(h[:, :1], c[:, :1])])


# ----------------------------------------------------------------------------
# threads, the language model, Sequential files
# ----------------------------------------------------------------------------
def test_concurrent_calls_equal_sequential(tmp_path, rng):
    X = rng.normal(size=(10, 20, 8))
    est = cyrnn.LSTMClassifier(hidden_size=16, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, rng.integers(0, 2, 10))
    est.save(tmp_path / "m.cyrnn")
    sc = scoring.load(tmp_path / "m.cyrnn")
    inputs = [rng.normal(size=(1 + i % 3, 20, 8)) for i in range(40)]
    expected = [sc.predict_proba(x) for x in inputs]
    streams = rng.normal(size=(4, 20, 8))

    def work(k):
        for _ in range(5):
            for i in range(k, len(inputs), 4):
                np.testing.assert_array_equal(sc.predict_proba(inputs[i]), expected[i])
                np.testing.assert_array_equal(est.predict_proba(inputs[i]), expected[i])
        state = None
        for t in range(20):
            y, state = sc.step(streams[k:k + 1, t], state)
        return y

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))  # re-raises a thread's failure
    for k in range(4):
        np.testing.assert_array_equal(results[k], sc.predict_proba(streams[k:k + 1])[0:1])


def test_language_model_scorer(tmp_path):
    lm = cyrnn.CharLanguageModel(cell="gru", hidden_size=8, embedding_dim=None, max_epochs=1,
                                 random_state=0)
    lm.fit(["abcab", "bcda", "cabd"]).save(tmp_path / "lm.cyrnn")
    sc = scoring.load(tmp_path / "lm.cyrnn")
    assert isinstance(sc, scoring.LanguageModelScorer)
    ids = np.concatenate([[1], sc.encode("abcd")])[None]
    logits = lm.model_.forward(ids).astype(np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    proba = sc.predict_proba(ids)  # the compiled softmax: NumPy's formula to rounding
    np.testing.assert_allclose(proba, expected, rtol=1e-14, atol=0)
    assert sc.decode(sc.predict(ids)[0]) == lm.decode(logits.argmax(-1)[0])
    state = None
    for t in range(ids.shape[1]):
        p, state = sc.step(ids[:, t], state)
        np.testing.assert_array_equal(p, proba[:, t])
    # the language model's own loss: the 4 characters, then the end marker (id 2)
    logp = np.log(np.append(expected[0, np.arange(4), ids[0, 1:]], expected[0, 4, 2]))
    assert abs(-logp.mean() - lm.per_char_loss(["abcd"])) < 1e-5


NAMES = ["Aardonyx", "Abelisaurus", "Allosaurus", "Brachiosaurus", "Diplodocus",
         "Stegosaurus", "Triceratops", "Velociraptor"]
POEMS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
         "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
         "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"]


@pytest.mark.parametrize("options", [
    dict(cell="lstm", embedding_dim=6),
    dict(cell="gru", embedding_dim=None, num_layers=2, dtype=np.float64),
    dict(cell="lstm", embedding_dim=4, peephole=True, backend="numpy"),
    dict(cell="rnn", embedding_dim=5, text=True)])
def test_language_model_scorer_writes_what_the_model_writes(options, tmp_path):
    """The scorer samples with the model's code (cyrnn.generation.CharSampler): the same
    random_state gives the same texts, one-hot and embedded inputs, stacked layers,
    peepholes, prefixes, top-k, a 'text' model's default length, poems."""
    options = dict(options)
    text = options.pop("text", False)
    lm = cyrnn.CharLanguageModel(hidden_size=12, max_epochs=2, batch_size=4, random_state=0,
                                 **options)
    lm.fit_text(" ".join(NAMES)) if text else lm.fit(NAMES + POEMS)
    lm.save(tmp_path / "lm.cyrnn")
    sc = scoring.load(tmp_path / "lm.cyrnn")
    assert (sc.mode_, sc.max_length_, sc.vocab_size_) == (lm.mode_, lm.max_length_,
                                                          lm.vocab_size_)
    assert sc.vocabulary_ == lm.vocabulary_ and sc.info() == lm.info()
    for kwargs in (dict(n=6, random_state=3), dict(n=4, temperature=0.6, top_k=3, prefix="Ste",
                                                  random_state=9),
                   dict(n=3, max_length=7, temperature=1.7, random_state=1)):
        assert sc.sample(**kwargs) == lm.sample(**kwargs), kwargs
    assert sc.sample(5, random_state=np.random.default_rng(2)) == \
        lm.sample(5, random_state=np.random.default_rng(2))
    if not text:
        for kwargs in (dict(n=2, head="春白千床", random_state=0),
                       dict(n=2, form="regulated", start="春眠", top_k=5, random_state=4)):
            assert sc.sample_poem(**kwargs) == lm.sample_poem(**kwargs), kwargs
    # without random_state: fresh entropy, not the training seed
    draws = [sc.sample(8, temperature=3.0) for _ in range(2)]
    assert draws[0] != draws[1]
    with pytest.raises(ValueError, match="unknown characters '#Z'"):
        sc.sample(1, prefix="Z#")
    with pytest.raises(TypeError, match="text must be a str"):
        sc.encode(b"Ab")
    with pytest.raises(ValueError, match="token ids must be in"):
        sc.decode([0, sc.vocab_size_])
    with pytest.raises(ValueError, match="temperature"):
        sc.sample(1, temperature=0)


def test_sequential_save_and_load(tmp_path, rng):
    model = cyrnn.Sequential([
        cyrnn.LSTM(3, 5, bidirectional=True, merge_mode="sum", num_layers=2, random_state=0),
        cyrnn.SimpleRNN(5, 4, activation="relu", return_sequences=False, use_bias=False,
                        random_state=1),
        cyrnn.Dense(4, 2, random_state=2), cyrnn.Activation("sigmoid")])
    path = model.save(tmp_path / "s.cyrnn")
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    back = cyrnn.load(path)
    assert isinstance(back, cyrnn.Sequential)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
    np.testing.assert_array_equal(scoring.load(path).predict(x), model.forward(x))

    class Custom(cyrnn.Dense):
        pass
    with pytest.raises(TypeError, match="cannot save"):
        cyrnn.Sequential([cyrnn.GRU(3, 4), Custom(4, 1)]).save(tmp_path / "c.cyrnn")
    # a crafted size is refused before anything is built
    from cyrnn import persistence
    kind, meta, arrays = persistence.load_archive(path)
    meta["layers"][0]["hidden_size"] = 10**9
    persistence.save_archive(tmp_path / "bad.cyrnn", kind, meta, arrays)
    with pytest.raises(ValueError, match="parameter vector"):
        scoring.load(tmp_path / "bad.cyrnn")
    # so is a crafted depth: counted, not listed (2**40 layers was a MemoryError)
    meta["layers"][0]["hidden_size"] = 5
    meta["layers"][0]["num_layers"] = 2**40
    persistence.save_archive(tmp_path / "bad.cyrnn", kind, meta, arrays)
    for load in (cyrnn.load, scoring.load):
        with pytest.raises(ValueError, match="parameter vector"):
            load(tmp_path / "bad.cyrnn")
    meta["layers"][0]["num_layers"] = 2
    # flags must be booleans: a truthy 1 was counted as one direction and built as two
    meta["layers"][0]["hidden_size"] = 5
    for key, value in [("bidirectional", 1), ("use_bias", "no"), ("go_backwards", "yes")]:
        layer = dict(meta["layers"][0])
        layer[key] = value
        persistence.save_archive(tmp_path / "bad.cyrnn", kind,
                                 dict(meta, layers=[layer] + meta["layers"][1:]), arrays)
        for load in (cyrnn.load, scoring.load):
            with pytest.raises(ValueError, match=f"{key} must be true or false"):
                load(tmp_path / "bad.cyrnn")


# ----------------------------------------------------------------------------
# weights packed once (weights="packed" / "bfloat16")
# ----------------------------------------------------------------------------
def _bf16_model(model):
    """A copy of ``model`` whose packed weights are rounded to bfloat16 by torch (an
    implementation nobody here wrote), biases and embeddings left as they are."""
    torch = pytest.importorskip("torch")
    import copy
    ref = copy.deepcopy(model)
    data = ref.params.data
    for off, size in model._plan().packed_weight_ranges():
        w = torch.from_numpy(data[off:off + size].copy())
        data[off:off + size] = w.to(torch.bfloat16).to(torch.float32).numpy()
    return ref


def test_bfloat16_round_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 3.4028235e38, -3.4028235e38,
                        1e-45, -1e-40, 1.00390625, 1.01171875, 65504.0, 2.0 ** -126],
                       np.float32)
    # ties: the 16 dropped bits exactly 0x8000, odd and even kept halves
    ties = (np.arange(1 << 15, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    ties = ties[np.isfinite(ties)]
    a = np.concatenate([special, ties, rng.standard_normal(10000).astype(np.float32) * 1e3])
    ours = scoring.bfloat16_round(a)
    theirs = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, theirs)  # NaN == NaN in assert_array_equal


@pytest.mark.parametrize("cls, kw", CELLS)
def test_packed_and_bfloat16_weights(cls, kw, tmp_path, rng):
    """weights='packed' equals the model up to rounding; 'bfloat16' equals (to float32
    rounding) the model with its weights rounded to bfloat16 by torch, whole sequences
    and steps alike; stepping equals the whole sequence exactly."""
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    Cell = getattr(cyrnn, cls)
    model = cyrnn.Sequential([
        cyrnn.Embedding(11, 5, random_state=0),
        Cell(5, 9, num_layers=2, random_state=1, **kw),
        Cell(9, 7, random_state=2, **kw),
        cyrnn.Dense(7, 3, random_state=3)])
    model.save(tmp_path / "seq.cyrnn")
    ids = rng.integers(1, 11, size=(3, 8))
    rounded = _bf16_model(model)
    for weights, ref in (("packed", model), ("bfloat16", rounded)):
        sc = scoring.load(tmp_path / "seq.cyrnn", weights=weights)
        whole = sc.predict(ids)
        # the calls went through the block packed once, in the format asked for
        packed = sc._plan.packed
        assert packed.format == ("bfloat16" if weights == "bfloat16" else "native")
        assert packed.nbytes > 0
        np.testing.assert_allclose(whole, ref.forward(ids), rtol=2e-5, atol=2e-6)
        state = None
        for t in range(ids.shape[1]):
            y, state = sc.step(ids[:, t], state)
            np.testing.assert_array_equal(y, whole[:, t])
        for k in range(3):  # one stream alone: the one-row kernels
            np.testing.assert_array_equal(sc.predict(ids[k:k + 1]), whole[k:k + 1])
    assert not np.array_equal(rounded.params.data, model.params.data)


def test_bfloat16_weights_estimators_and_language_model(tmp_path, rng):
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    X = rng.normal(size=(12, 6, 3))
    est = _fit("LSTMClassifier", X, 12)
    est.save(tmp_path / "c.cyrnn")
    sc = scoring.load(tmp_path / "c.cyrnn", weights="bfloat16")
    ref = _bf16_model(est.model_)
    raw = ref.forward(X.astype(np.float32)).astype(np.float64)
    p = np.exp(raw - raw.max(-1, keepdims=True))
    np.testing.assert_allclose(sc.predict_proba(X), p / p.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sc.classes_, est.classes_)
    lm = cyrnn.CharLanguageModel(cell="lstm", hidden_size=8, embedding_dim=4, max_epochs=1,
                                 random_state=0)
    lm.fit(["abcab", "bcda", "cabd"]).save(tmp_path / "lm.cyrnn")
    lsc = scoring.load(tmp_path / "lm.cyrnn", weights="bfloat16")
    ids = np.concatenate([[1], lsc.encode("abcd")])[None]
    logits = _bf16_model(lm.model_).forward(ids).astype(np.float64)
    np.testing.assert_allclose(lsc.predict_proba(ids).sum(-1), 1.0, rtol=1e-12)
    assert lsc.decode(lsc.predict(ids)[0]) == lm.decode(logits.argmax(-1)[0])


def test_packed_weights_refused_where_they_cannot_apply(tmp_path, rng):
    model = cyrnn.Sequential([cyrnn.GRU(3, 4, random_state=0, dtype=np.float64)])
    model.save(tmp_path / "f64.cyrnn")
    with pytest.raises(ValueError, match="weights must be one of"):
        scoring.load(tmp_path / "f64.cyrnn", weights="float16")
    with pytest.raises(ValueError, match="float32 model"):
        scoring.load(tmp_path / "f64.cyrnn", weights="bfloat16")
    with pytest.raises(ValueError, match="Cython backend"):
        scoring.load(tmp_path / "f64.cyrnn", backend="numpy", weights="packed")
    if "cython" not in cyrnn.backends.available():
        return
    from cyrnn import _cython_kernels as kernels
    sc = scoring.load(tmp_path / "f64.cyrnn", weights="packed")
    x = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(sc.predict(x), model.forward(x), rtol=1e-12, atol=1e-12)
    # a packed block serves the buffer it was made from only
    pw = kernels.PackedWeights()
    plan = model._plan()
    kernels.infer(plan.spec, model.params.data, x, weights=pw)
    with pytest.raises(ValueError, match="another model"):
        kernels.infer(plan.spec, model.params.data.copy(), x, weights=pw)
    with pytest.raises(ValueError, match="'native' or 'bfloat16'"):
        kernels.PackedWeights("int8")


def test_bfloat16_weights_serve_threads(tmp_path, rng):
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    model = cyrnn.Sequential([cyrnn.LSTM(8, 32, num_layers=2, random_state=0)])
    model.save(tmp_path / "m.cyrnn")
    inputs = [rng.normal(size=(1 + i % 5, 12, 8)).astype(np.float32) for i in range(24)]
    expected = [scoring.load(tmp_path / "m.cyrnn", weights="bfloat16").predict(x)
                for x in inputs]
    sc = scoring.load(tmp_path / "m.cyrnn", weights="bfloat16")  # packs on its first call

    def work(k):
        for i in range(k, len(inputs), 4):
            np.testing.assert_array_equal(sc.predict(inputs[i]), expected[i])
        return True

    with ThreadPoolExecutor(4) as pool:  # the first calls race to pack
        assert all(pool.map(work, range(4)))
    assert sc._plan.packed.nbytes > 0


# ----------------------------------------------------------------------------
# bfloat16 arithmetic (compute="bfloat16": AVX-512 BF16's VDPBF16PS)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n, K, C", [(1, 1, 1), (1, 33, 70), (2, 31, 5), (3, 64, 33),
                                     (9, 17, 100), (17, 96, 64), (40, 257, 40),
                                     (5, 9001, 3), (64, 100, 64), (33, 1024, 96)])
def test_bf16_dot_kernel_rounds_both_operands(n, K, C, rng):
    """The bfloat16-arithmetic product equals x @ w.T computed in float64 on both
    operands rounded to bfloat16 (nearest even, by torch's rule: bfloat16_round) up to
    float32 accumulation, for one and two rows (the one-row kernel), tiles with
    partial rows and panels, odd K (a zero high half in the last pair) and a row too
    long for the stack scratch (K 9001); each row alone gives the batch's bits; the
    widening bfloat16 kernel keeps x unrounded."""
    kernels = _bf16_dot_or_skip()
    x = (rng.standard_normal((n, K)) * 3).astype(np.float32)
    w = rng.standard_normal((C, K)).astype(np.float32)
    xr, wr = (scoring.bfloat16_round(a).astype(np.float64) for a in (x, w))
    y = kernels._packed_product(x, w, "bfloat16_dot")
    scale = np.abs(xr) @ np.abs(wr).T
    tol = 4 * K * np.finfo(np.float32).eps * scale + 1e-30
    assert np.all(np.abs(y - xr @ wr.T) <= tol)
    for i in range(n):
        np.testing.assert_array_equal(kernels._packed_product(x[i:i + 1], w, "bfloat16_dot"),
                                      y[i:i + 1])
    widened = kernels._packed_product(x, w, "bfloat16")
    assert np.all(np.abs(widened - x.astype(np.float64) @ wr.T) <= tol)
    if K > 1:  # x's rounding shows
        assert not np.array_equal(widened, y)
    # adding into an output (the recurrent product onto the input projection): each
    # row alone again gives the batch's bits
    base = rng.standard_normal((n, C)).astype(np.float32)
    acc = kernels._packed_product(x, w, "bfloat16_dot", add_to=base)
    tol2 = 4 * (K + 2) * np.finfo(np.float32).eps * (scale + np.abs(base))
    assert np.all(np.abs(acc - (base + xr @ wr.T)) <= tol2)
    for i in (0, n - 1):
        np.testing.assert_array_equal(
            kernels._packed_product(x[i:i + 1], w, "bfloat16_dot", add_to=base[i:i + 1]),
            acc[i:i + 1])


_KERNEL_PATH_SCRIPT = """
import sys
import numpy as np
from cyrnn import _cython_kernels as k
from cyrnn.scoring import bfloat16_round
rng = np.random.default_rng(0)
eps = np.finfo(np.float32).eps
x = (rng.standard_normal((40, 300)) * 3).astype(np.float32)
w = rng.standard_normal((70, 300)).astype(np.float32)
xr, wr = (bfloat16_round(a).astype(np.float64) for a in (x, w))
scale = np.abs(xr) @ np.abs(wr).T
y = k._packed_product(x, w, "bfloat16_dot")
checks = [bool(np.all(np.abs(y - xr @ wr.T) <= 4 * 300 * eps * scale))]
checks.append(all(np.array_equal(k._packed_product(x[i:i + 1], w, "bfloat16_dot"), y[i:i + 1])
                  for i in range(40)))
# adding into an output, as the recurrent products do
base = rng.standard_normal((40, 70)).astype(np.float32)
acc = k._packed_product(x, w, "bfloat16_dot", add_to=base)
checks.append(bool(np.all(np.abs(acc - (base + xr @ wr.T))
                          <= 4 * 302 * eps * (scale + np.abs(base)))))
checks.append(np.array_equal(k._packed_product(x[:1], w, "bfloat16_dot", add_to=base[:1]),
                             acc[:1]))
# the weight gradients (dg^T x and dg^T x2 from one rounding of dg; column sums)
dg = rng.standard_normal((600, 200)).astype(np.float32)
a = rng.standard_normal((600, 48)).astype(np.float32)
a2 = rng.standard_normal((600, 40)).astype(np.float32)
got = k.wgrad(dg, a, -1, a2, True)
dgr = bfloat16_round(dg).astype(np.float64)
for g, o in ((got[0], a), (got[2], a2)):
    ref = dgr.T @ bfloat16_round(o).astype(np.float64)
    checks.append(bool(np.allclose(g, ref, rtol=1e-5, atol=1e-5 * np.sqrt(600))))
checks.append(bool(np.allclose(got[1], dg.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)))
np.save(sys.argv[1], np.concatenate([y.ravel(), got[0].ravel()]))
print(k.bf16_tiles_in_use(), all(checks), checks)
"""


def test_bf16_dot_kernels_with_and_without_amx_tiles(tmp_path):
    """On a CPU with AMX-BF16 the bfloat16-arithmetic products (the forward and
    backward products, with and without adding into their output, and the weight
    gradients) run on the tiles (TDPBF16PS) unless CYRNN_AMX=0, which keeps the
    VDPBF16PS kernels: both rounded correctly and row-independent, each in its own
    process (the pick is made once per process), so an AMX machine still tests the
    VDPBF16PS kernels. Elsewhere the tiles are never in use."""
    _bf16_dot_or_skip()
    from test_numba_kernels import _installed_env
    flags = set()
    if sys.platform.startswith("linux"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    has_amx = {"amx_tile", "amx_bf16"} <= flags
    seen = {}
    for amx in ("1", "0"):
        env = _installed_env(CYRNN_AMX=amx)
        out = subprocess.run([sys.executable, "-c", _KERNEL_PATH_SCRIPT, str(tmp_path / amx)],
                             capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        seen[amx] = out.stdout.split(None, 2)
    assert seen["0"][:2] == ["False", "True"], seen["0"]
    assert seen["1"][1] == "True", seen["1"]
    if has_amx and seen["1"][0] == "False":
        # the CPU lists AMX but the kernel refused the tile state (Linux before 5.16,
        # a seccomp filter): the VDPBF16PS kernels ran in both processes
        pytest.skip("AMX listed but the OS did not grant the tile state")
    assert seen["1"][0] == str(has_amx)
    if has_amx:  # the two instruction sets sum a tile's k-pairs in different orders
        assert not np.array_equal(np.load(tmp_path / "1.npy"), np.load(tmp_path / "0.npy"))


@pytest.mark.parametrize("cls, kw", CELLS)
def test_bf16_arithmetic_scorer(cls, kw, tmp_path, rng):
    """compute='bfloat16': every cell kind, stacked and chained layers, an Embedding
    (mask_zero, a sequence of padding only in the batch) and a Dense head: stepping
    equals the whole sequence exactly, a row alone equals its batch, and whole
    sequences stay near the float32 model (the rounded activations move them, so they
    differ from weights='bfloat16' alone). One step from a given state whose values
    (and the inputs) are bfloat16 numbers equals the float32 model on bfloat16-rounded
    weights (the products then multiply exact values; only the order of the float32
    sums differs)."""
    _bf16_dot_or_skip()
    Cell = getattr(cyrnn, cls)
    big = cyrnn.Sequential([cyrnn.Embedding(11, 5, mask_zero=True, random_state=0),
                            Cell(5, 9, num_layers=2, random_state=1, **kw),
                            Cell(9, 7, random_state=2, **kw), cyrnn.Dense(7, 3, random_state=3)])
    big.save(tmp_path / "seq.cyrnn")
    sc = scoring.load(tmp_path / "seq.cyrnn", compute="bfloat16")
    assert (sc.weights, sc.compute) == ("bfloat16", "bfloat16")
    assert sc._plan.packed.arithmetic == "bfloat16"
    ids = rng.integers(1, 11, size=(5, 8))
    ids[1, :3] = 0  # pre-padding
    whole = sc.predict(ids)
    state = None
    full = [0, 2, 3, 4]  # the streams without padding (a step refuses id 0)
    for t in range(ids.shape[1]):
        y, state = sc.step(ids[full, t], state)
        np.testing.assert_array_equal(y, whole[full, t])
    for k in range(5):
        np.testing.assert_array_equal(sc.predict(ids[k:k + 1]), whole[k:k + 1])
    # a sequence of padding only beside them: zeros, and the other rows unchanged
    padded = sc.predict(np.concatenate([ids, np.zeros((1, 8), np.int64)]))
    np.testing.assert_array_equal(padded[:5], whole)
    np.testing.assert_array_equal(padded[5], 0)
    np.testing.assert_allclose(whole, big.forward(ids), rtol=0, atol=3e-2)
    widened = scoring.load(tmp_path / "seq.cyrnn", weights="bfloat16").predict(ids)
    assert not np.array_equal(widened, whole)

    model = cyrnn.Sequential([Cell(5, 9, num_layers=2, random_state=1, **kw)])
    model.save(tmp_path / "one.cyrnn")
    sc = scoring.load(tmp_path / "one.cyrnn", compute="bfloat16")
    ref = _bf16_model(model)
    x = scoring.bfloat16_round(rng.normal(size=(3, 5)).astype(np.float32))
    h0 = scoring.bfloat16_round(rng.normal(size=(2, 3, 9)).astype(np.float32) * 0.5)
    state = (h0, rng.normal(size=(2, 3, 9)).astype(np.float32)) if cls == "LSTM" else h0
    y, (st,) = sc.step(x, [state])
    y_ref, st_ref = ref.recurrent_layers[0].step(x, state)
    # the stacked layer's second layer multiplies the first's output, which the
    # reference does not round: the first layer's new state is compared tightly, the
    # second's (and the output, its h) loosely
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-2)
    for a, b in zip(st if isinstance(st, tuple) else (st,),
                    st_ref if isinstance(st_ref, tuple) else (st_ref,)):
        if kw.get("reset_after", True):  # Cho's GRU multiplies r * h, rounded too
            np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2)


def test_bf16_arithmetic_estimators_and_language_model(tmp_path, rng):
    """compute='bfloat16' through an estimator's and a language model's scorer: the
    estimator's labels and post-processing, probabilities near the float32 scorer's,
    streamed steps equal to the whole sequences."""
    _bf16_dot_or_skip()
    X = rng.normal(size=(12, 6, 3))
    est = _fit("LSTMClassifier", X, 12)
    est.save(tmp_path / "c.cyrnn")
    sc = scoring.load(tmp_path / "c.cyrnn", compute="bfloat16")
    assert sc.compute == "bfloat16"
    p = sc.predict_proba(X)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, est.predict_proba(X), rtol=0, atol=2e-2)
    np.testing.assert_array_equal(sc.classes_, est.classes_)
    np.testing.assert_array_equal(sc.predict(X), sc.classes_[p.argmax(-1)])
    state = None
    for t in range(X.shape[1]):
        p_t, state = sc.step(X[:, t], state)
    np.testing.assert_array_equal(p_t, p)
    lm = cyrnn.CharLanguageModel(cell="gru", hidden_size=8, embedding_dim=4, max_epochs=1,
                                 random_state=0)
    lm.fit(["abcab", "bcda", "cabd"]).save(tmp_path / "lm.cyrnn")
    lsc = scoring.load(tmp_path / "lm.cyrnn", compute="bfloat16")
    ids = np.concatenate([[1], lsc.encode("abcd")])[None]
    whole = lsc.predict_proba(ids)
    np.testing.assert_allclose(whole.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(whole, scoring.load(tmp_path / "lm.cyrnn").predict_proba(ids),
                               rtol=0, atol=2e-2)
    state = None
    for t in range(ids.shape[1]):
        q, state = lsc.step(ids[:, t], state)
        np.testing.assert_array_equal(q, whole[:, t])


def test_bf16_arithmetic_small_team(tmp_path, rng):
    """The small-batch team on weights multiplied in bfloat16 arithmetic: each thread
    rounds the rows it multiplies itself; predictions and steps equal one thread's bit
    for bit."""
    _bf16_dot_or_skip()
    stacked = cyrnn.Sequential([cyrnn.LSTM(5, 41, num_layers=2, random_state=2,
                                           return_sequences=True), cyrnn.Dense(41, 3)])
    stacked.save(tmp_path / "s.cyrnn")
    sc = scoring.load(tmp_path / "s.cyrnn", compute="bfloat16")
    assert sc._plan.packed.arithmetic == "bfloat16"
    xs = [rng.normal(size=(n, 11, 5)).astype(np.float32) for n in (1, 2, 3)]

    def run():
        out = []
        for x in xs:
            out.append(sc.predict(x))
            state = None
            for t in range(x.shape[1]):
                y, state = sc.step(x[:, t], state)
                out += [y, *state]
        return out

    _, counts = _small_team_runs(run)
    assert counts[1] == 0
    assert counts[2] == counts[3] == 3 * (2 + 2 * 11)


def test_bf16_arithmetic_falls_back_and_refuses(tmp_path, rng, monkeypatch):
    """Without AVX-512 BF16, compute='bfloat16' warns and keeps float32 arithmetic on
    the bfloat16 weights (the results of weights='bfloat16'); bad combinations raise
    before anything is loaded."""
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    from cyrnn.backends import cython_backend
    from cyrnn import _cython_kernels as kernels
    model = cyrnn.Sequential([cyrnn.GRU(4, 6, random_state=0), cyrnn.Dense(6, 2)])
    model.save(tmp_path / "m.cyrnn")
    x = rng.normal(size=(3, 7, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="compute must be one of"):
        scoring.load(tmp_path / "m.cyrnn", compute="float16")
    with pytest.raises(ValueError, match="weights='bfloat16'"):
        scoring.load(tmp_path / "m.cyrnn", weights="packed", compute="bfloat16")
    with pytest.raises(ValueError, match="compute='bfloat16'.*Cython backend"):
        scoring.load(tmp_path / "m.cyrnn", backend="numpy", compute="bfloat16")
    if "numba" in cyrnn.backends.available():
        with pytest.raises(ValueError, match="compute='bfloat16'.*Cython backend"):
            scoring.load(tmp_path / "m.cyrnn", backend="numba", compute="bfloat16")
    # a model the compiled plan does not cover is told so, not sent to the Cython
    # backend its layers already run on
    cyrnn.Sequential([cyrnn.Masking(0.0), cyrnn.GRU(4, 6)]).save(tmp_path / "mask.cyrnn")
    with pytest.raises(ValueError, match=r"weights='packed' needs a model that runs as one "
                                         r"compiled call.*\(this one has Masking, GRU;"):
        scoring.load(tmp_path / "mask.cyrnn", weights="packed")
    cyrnn.Sequential([cyrnn.GRU(4, 6, dtype=np.float64)]).save(tmp_path / "f64.cyrnn")
    with pytest.raises(ValueError, match="compute='bfloat16'.*float32 model"):
        scoring.load(tmp_path / "f64.cyrnn", compute="bfloat16")
    with pytest.raises(ValueError, match="bfloat16 weights"):
        kernels.PackedWeights("native", False, "bfloat16")
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
        kernels.PackedWeights("bfloat16", False, "int8")
    f32 = scoring.load(tmp_path / "m.cyrnn", compute="float32")
    assert (f32.weights, f32.compute) == (None, "float32")
    np.testing.assert_array_equal(f32.predict(x), scoring.load(tmp_path / "m.cyrnn").predict(x))
    monkeypatch.setattr(cython_backend, "bf16_arithmetic_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="AVX-512 BF16"):
        sc = scoring.load(tmp_path / "m.cyrnn", compute="bfloat16")
    assert (sc.weights, sc.compute) == ("bfloat16", "float32")
    assert sc._plan.packed.arithmetic == "float32"
    np.testing.assert_array_equal(
        sc.predict(x), scoring.load(tmp_path / "m.cyrnn", weights="bfloat16").predict(x))
    if not kernels.bf16_arithmetic_available():
        with pytest.raises(ValueError, match="AVX-512 BF16"):
            kernels.PackedWeights("bfloat16", False, "bfloat16")


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_probabilities_follow_the_numpy_rule(binary, dtype, rng):
    """The extension's probabilities (one call after the model call) are NumPy's
    formula to rounding, NaN/inf included, and every path takes them."""
    from cyrnn import sequences as S
    from cyrnn._cython_kernels import probabilities
    O = 1 if binary else 5
    rule = S._sigmoid_pair if binary else S._softmax
    for shape in [(O,), (1, O), (9, O), (2, 3, O), (5000, O)]:  # the last without the GIL
        r = (rng.normal(size=shape) * 40).astype(dtype)
        r.flat[0] = np.nan
        if r.size > 2:
            r.flat[-1] = np.inf
            r.flat[-2] = -np.inf
        got = probabilities(r, binary)
        with np.errstate(all="ignore"):
            expected = rule(r.astype(np.float64))
        assert got.dtype == np.float64 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)
        np.testing.assert_array_equal(S.class_probabilities(r, binary), got)
    r = rng.normal(size=(6, O)).astype(dtype)
    assert probabilities(r[::2], binary) is None  # not contiguous: NumPy's rule runs
    np.testing.assert_allclose(S.class_probabilities(r[::2], binary),
                               rule(r[::2].astype(np.float64)), rtol=1e-14)
    assert probabilities(r.astype(np.int64), binary) is None
    assert probabilities([0.5], binary) is None
    if binary:
        assert probabilities(np.zeros((3, 2), dtype), True) is None  # one logit only


def test_float64_input_scores_as_converted_float32(tmp_path, rng):
    """A float32 model's fast path converts float64 input inside the compiled call:
    the same predictions as converting first."""
    X = rng.normal(size=(12, 7, 2))
    for name in ("LSTMClassifier", "GRURegressor"):
        est = _fit(name, X, 12, dtype="float32")
        sc = _check_scorer(est, tmp_path, [X, X[:1]])
        _same(sc.predict(X), sc.predict(X.astype(np.float32)))
        if hasattr(sc, "predict_proba"):
            _same(sc.predict_proba(X[:1]), est.predict_proba(X[:1].astype(np.float32)))
        big = X[:1].copy()
        big[0, 0, 0] = 1e39  # inf in float32: refused with the estimator's error
        with pytest.raises(ValueError):
            sc.predict(big)
        with pytest.raises(ValueError):
            est.predict(big)


def _steps(model, x):
    state, out = None, []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        out.append(y)
    return np.stack(out, 1)


@pytest.mark.parametrize("rnn", [cyrnn.LSTM, cyrnn.GRU, cyrnn.SimpleRNN])
@pytest.mark.parametrize("many_to_one", [False, True])
def test_masked_steps_equal_the_whole_sequence(rnn, many_to_one, tmp_path, rng):
    """A padding row under a first Masking layer (or id 0 under mask_zero) is a masked
    step, as in the whole sequence: states kept, recurrent output zero (a many-to-one
    layer's: its kept state). Stepping fed it as ordinary input before."""
    def head(layers):
        if many_to_one:
            layers.append(rnn(layers[-1].output_size, 5, random_state=1,
                              return_sequences=False))
        dense = cyrnn.Dense(layers[-1].output_size, 2, random_state=0)
        dense.params["bias"][...] = 0.25  # the Dense of a zero output is not zero
        return cyrnn.Sequential(layers + [dense])

    x = rng.normal(size=(3, 6, 3)).astype(np.float32)
    x[0, 2] = x[1, 5] = x[2, 0] = 0.0
    model = head([cyrnn.Masking(0.0), rnn(3, 4, num_layers=2, random_state=0)])
    ids = rng.integers(1, 6, size=(5, 6))  # 4+ rows: the packed kernels
    ids[0, 2] = ids[1, 0] = ids[4, 5] = 0
    ids[3] = 0  # padding only
    tokens = head([cyrnn.Embedding(6, 3, mask_zero=True, random_state=0),
                   rnn(3, 4, random_state=0)])
    for m, inp in ((model, x), (tokens, ids)):
        got = _steps(m, inp)
        if many_to_one:
            for t in range(inp.shape[1]):
                np.testing.assert_array_equal(got[:, t], m.forward(inp[:, :t + 1]))
        else:
            np.testing.assert_array_equal(got, m.forward(inp))
        m.save(tmp_path / "m.cyrnn")
        np.testing.assert_array_equal(_steps(scoring.load(tmp_path / "m.cyrnn"), inp), got)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "softmax", "selu",
                                        "log_softmax"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_layer_path_models_step_exactly(activation, n, rng):
    """Models the fused plan does not take (Activation, a Dense before the recurrent
    layer) step bit for bit as they run whole, at any row count: the layer path's
    inference runs each recurrent layer's fused call and its Dense layers through the
    extension's row-independent product (BLAS's sums follow the row count: 3e-8 before)."""
    x = rng.normal(size=(n, 12, 3)).astype(np.float32)
    for layers in ([cyrnn.LSTM(3, 8, random_state=0), cyrnn.Activation(activation),
                    cyrnn.Dense(8, 2, random_state=0)],
                   [cyrnn.Dense(3, 8, random_state=0), cyrnn.GRU(8, 8, random_state=0),
                    cyrnn.Dense(8, 2, random_state=0), cyrnn.Activation(activation)]):
        model = cyrnn.Sequential(layers)
        assert model._plan() is None
        np.testing.assert_array_equal(_steps(model, x), model.forward(x))


def test_go_backwards_layers_are_refused_in_steps(tmp_path, rng):
    """A go_backwards layer reads the sequence from its end: stepping it ran it
    forwards, silently (0.4 off)."""
    layer = cyrnn.LSTM(3, 8, go_backwards=True, random_state=0)
    model = cyrnn.Sequential([layer, cyrnn.Dense(8, 2, random_state=0)])
    x_t = rng.normal(size=(1, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="go_backwards"):
        layer.step(x_t, None)
    with pytest.raises(ValueError, match="go_backwards"):
        model.step(x_t, None)
    model.save(tmp_path / "gb.cyrnn")
    sc = scoring.load(tmp_path / "gb.cyrnn")
    assert not sc.streamable
    with pytest.raises(ValueError, match="go_backwards"):
        sc.step(x_t)


def test_scorers_refuse_pickling_with_a_clear_error(tmp_path, rng):
    import copy
    import pickle

    X = rng.normal(size=(10, 5, 2))
    est = _fit("LSTMRegressor", X, 10)
    est.save(tmp_path / "m.cyrnn")
    for sc in (scoring.load(tmp_path / "m.cyrnn"), scoring.from_estimator(est)):
        with pytest.raises(TypeError, match="cannot be pickled .* cyrnn.scoring.load"):
            pickle.dumps(sc)
        with pytest.raises(TypeError, match="cannot be pickled"):
            copy.deepcopy(sc)
        shallow = copy.copy(sc)  # shares the model, as before
        assert shallow.model is sc.model
    pickle.loads(pickle.dumps(est))  # the estimator itself pickles
