"""Opt-in bfloat16 arithmetic in training (``Sequential.train_compute``, the estimators'
``train_compute``): the forward's products are those of the bfloat16 scorer, the
backward's products (weight gradients included) round both operands, bias gradients stay
float32, and models still learn; elsewhere a clear error or a warning and float32."""

import warnings

import numpy as np
import pytest

import cyrnn
from cyrnn import scoring
from cyrnn.training import train_step
from conftest import bf16_kernels_or_skip as _kernels_or_skip

CELLS = [("SimpleRNN", {}), ("SimpleRNN", {"activation": "relu"}), ("LSTM", {}),
         ("LSTM", {"peephole": True}), ("GRU", {}), ("GRU", {"reset_after": False})]


def _bf16(a):
    """``a`` rounded to bfloat16 (nearest even), as float64."""
    return scoring.bfloat16_round(np.asarray(a, np.float32)).astype(np.float64)


def _fused(model, x, arithmetic, d_out_seed=0, **kw):
    """One fused training forward and backward: (output, grad, dx)."""
    plan = model._plan()
    data = model.params.data
    out, _, _, cache = plan.train_forward(plan.spec, data, x, None, None, None, None,
                                          arithmetic)
    d_out = np.random.default_rng(d_out_seed).normal(size=out.shape).astype(np.float32)
    grad = np.zeros_like(data)
    dx, _, _ = plan.train_backward(plan.spec, data, grad, cache, d_out, plan.truncations(),
                                   None, None, True)
    return out, grad, dx


@pytest.mark.parametrize("cls, kw", CELLS)
@pytest.mark.parametrize("n", [1, 6])
def test_training_forward_equals_bf16_scorer(cls, kw, n, tmp_path, rng):
    """The training forward in bfloat16 arithmetic gives the compute='bfloat16'
    scorer's outputs bit for bit (stacked layers, a bidirectional one, a Dense head;
    one row and a batch: both packed whatever the batch), and its gradients stay near
    float32's while differing from them."""
    _kernels_or_skip()
    Cell = getattr(cyrnn, cls)
    model = cyrnn.Sequential([Cell(4, 12, num_layers=2, random_state=1, **kw),
                              Cell(12, 8, bidirectional=True, random_state=2, **kw),
                              cyrnn.Dense(16, 3, random_state=3)])
    model.save(tmp_path / "m.cyrnn")
    x = rng.normal(size=(n, 9, 4)).astype(np.float32)
    out16, g16, dx16 = _fused(model, x, "bfloat16")
    sc = scoring.load(tmp_path / "m.cyrnn", compute="bfloat16")
    np.testing.assert_array_equal(out16, sc.predict(x))
    out32, g32, dx32 = _fused(model, x, "float32")
    np.testing.assert_allclose(out16, out32, rtol=0, atol=5e-2)
    assert not np.array_equal(g16, g32)
    # each tensor against its own size (relu's kinks, which a rounding can move, and its
    # unbounded recurrence let the Elman relu cell drift further)
    rel = 0.1 if kw.get("activation") == "relu" else 0.05
    for name in model.params:
        a, b = model.params._view(g16, name), model.params._view(g32, name)
        assert np.linalg.norm(a - b) <= rel * np.linalg.norm(b) + 1e-6, name
    np.testing.assert_allclose(dx16, dx32, rtol=0, atol=5e-2 * np.abs(dx32).max())


def test_backward_products_round_both_operands(rng):
    """One step of an Elman cell from a zero state: ``dx = dg W_ih`` and the weight
    gradient ``dW_ih = dg^T x`` equal the products of the bfloat16-rounded operands
    (float64 reference), far closer than the float32 products; the bias gradient is
    the float32 sum of ``dg``."""
    _kernels_or_skip()
    D, H, n = 96, 64, 8
    model = cyrnn.Sequential([cyrnn.SimpleRNN(D, H, return_sequences=False, random_state=0)])
    x = rng.normal(size=(n, 1, D)).astype(np.float32)
    out, grad, dx = _fused(model, x, "bfloat16", d_out_seed=5)
    d_out = np.random.default_rng(5).normal(size=out.shape).astype(np.float32)
    w_ih = model.layers[0].params["weight_ih_l0"]
    b = (model.layers[0].params["bias_ih_l0"].astype(np.float64)
         + model.layers[0].params["bias_hh_l0"])
    # the forward: tanh of the rounded product
    np.testing.assert_allclose(out, np.tanh(_bf16(x[:, 0]) @ _bf16(w_ih).T + b),
                               rtol=0, atol=2e-6)
    dg = (d_out.astype(np.float64) * (1.0 - out.astype(np.float64) ** 2)).astype(np.float32)
    err_bf16 = np.abs(dx[:, 0] - _bf16(dg) @ _bf16(w_ih)).max()
    err_f32 = np.abs(dx[:, 0] - dg.astype(np.float64) @ w_ih).max()
    assert err_bf16 < err_f32 / 20, (err_bf16, err_f32)
    view = model.params._view(grad, "0.weight_ih_l0")
    err_bf16 = np.abs(view - _bf16(dg).T @ _bf16(x[:, 0])).max()
    err_f32 = np.abs(view - dg.astype(np.float64).T @ x[:, 0]).max()
    assert err_bf16 < err_f32 / 20, (err_bf16, err_f32)
    np.testing.assert_allclose(model.params._view(grad, "0.bias_ih_l0"),
                               dg.astype(np.float64).sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, C, K, K2", [(3, 5, 7, 0), (257, 33, 20, 9), (600, 512, 128, 32),
                                            (513, 17, 1, 3)])
def test_weight_gradient_kernel_in_bf16(rows, C, K, K2, rng):
    """``wgrad(..., bf16=True)``: ``dg^T x`` (and ``dg^T x2`` from the same strips) equal
    float64 products of the rounded operands to float32 accumulation error, at odd row
    counts (a last row pair of one), strip and panel tails; the column sums are
    float32's; the thread count changes nothing."""
    kernels = _kernels_or_skip()
    dg = rng.normal(size=(rows, C)).astype(np.float32)
    x = rng.normal(size=(rows, K)).astype(np.float32)
    x2 = rng.normal(size=(rows, K2)).astype(np.float32) if K2 else None
    got = kernels.wgrad(dg, x, -1, x2, True)
    tol = 1e-5 * np.sqrt(rows)  # float32 sums; the float32 products are ~1e-2 sqrt(rows) off
    np.testing.assert_allclose(got[0], _bf16(dg).T @ _bf16(x), rtol=1e-5, atol=tol)
    np.testing.assert_allclose(got[1], dg.astype(np.float64).sum(0), rtol=1e-5, atol=tol)
    assert np.abs(got[0] - dg.astype(np.float64).T @ x).max() > 20 * tol
    if K2:
        np.testing.assert_allclose(got[2], _bf16(dg).T @ _bf16(x2), rtol=1e-5, atol=tol)
        assert np.abs(got[2] - dg.astype(np.float64).T @ x2).max() > 20 * tol
    with cyrnn.threads.call_threads(1):
        one = kernels.wgrad(dg, x, -1, x2, True)
    for a, b in zip(got, one):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="bf16"):
        kernels.wgrad(dg.astype(np.float64), x.astype(np.float64), -1, None, True)


def test_sequential_train_compute(rng):
    """``train_compute`` on a Sequential: checked values, train_step runs the bfloat16
    products (the loss differs from float32's and falls), inference does not change."""
    _kernels_or_skip()

    def make():
        return cyrnn.Sequential([cyrnn.LSTM(3, 24, random_state=0),
                                 cyrnn.Dense(24, 1, random_state=1)])
    x = rng.normal(size=(16, 30, 3)).astype(np.float32)
    y = np.cumsum(x[..., :1], axis=1) * 0.1
    losses = {}
    for tc in ("float32", "bfloat16"):
        model = make()
        model.train_compute = tc
        assert model.train_compute == tc
        before = model.forward(x)
        np.testing.assert_array_equal(before, make().forward(x))  # inference: float32
        opt = cyrnn.optim.RMSProp(model.params, lr=0.01)
        losses[tc] = [train_step(model, opt, "mse", x, y) for _ in range(30)]
    assert losses["bfloat16"][0] != losses["float32"][0]
    assert abs(losses["bfloat16"][0] - losses["float32"][0]) < 1e-2 * losses["float32"][0]
    assert losses["bfloat16"][-1] < 0.5 * losses["bfloat16"][0]
    model = make()
    for bad in ("bf16", "float64", None, 1):
        with pytest.raises(ValueError, match="train_compute"):
            model.train_compute = bad
    with pytest.raises(ValueError, match="float32 model"):
        cyrnn.Sequential([cyrnn.LSTM(3, 4, dtype=np.float64)]).train_compute = "bfloat16"


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_train_compute_needs_the_cython_backend(backend, rng):
    if backend not in cyrnn.backends.available():
        pytest.skip(f"{backend} not available")
    model = cyrnn.Sequential([cyrnn.GRU(3, 8, backend=backend, random_state=0),
                              cyrnn.Dense(8, 1, random_state=1)])
    model.train_compute = "bfloat16"
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    y = np.zeros((4, 5, 1), np.float32)
    opt = cyrnn.optim.SGD(model.params, lr=0.1)
    before = model.params.data.copy()
    with pytest.raises(ValueError, match="needs the Cython backend"):
        train_step(model, opt, "mse", x, y)
    with pytest.raises(ValueError, match="needs the Cython backend"):
        model.forward(x, training=True)
    np.testing.assert_array_equal(model.params.data, before)
    model.forward(x)  # inference is not concerned


def test_without_bf16_the_steps_warn_and_run_float32(monkeypatch, rng):
    """Where the CPU has no AVX-512 BF16: one RuntimeWarning, then exactly the float32
    training."""
    if "cython" not in cyrnn.backends.available():
        pytest.skip("Cython backend not built")
    from cyrnn.backends import cython_backend
    monkeypatch.setattr(cython_backend, "bf16_arithmetic_available", lambda: False)

    def run(tc):
        model = cyrnn.Sequential([cyrnn.LSTM(3, 8, random_state=0),
                                  cyrnn.Dense(8, 1, random_state=1)])
        model.train_compute = tc
        opt = cyrnn.optim.Adam(model.params, lr=0.01)
        x = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
        y = np.zeros((5, 7, 1), np.float32)
        return [train_step(model, opt, "mse", x, y) for _ in range(3)], model
    with pytest.warns(RuntimeWarning, match="AVX-512 BF16") as record:
        loss16, m16 = run("bfloat16")
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    loss32, m32 = run("float32")
    assert loss16 == loss32
    np.testing.assert_array_equal(m16.params.data, m32.params.data)


def test_kernel_arguments():
    kernels = _kernels_or_skip()
    model = cyrnn.Sequential([cyrnn.LSTM(3, 4, random_state=0)])
    plan = model._plan()
    x = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="arithmetic must be"):
        kernels.train_forward(plan.spec, model.params.data, x, None, None, None, None, "bf16")
    m64 = cyrnn.Sequential([cyrnn.LSTM(3, 4, random_state=0, dtype=np.float64)])
    p64 = m64._plan()
    with pytest.raises(ValueError, match="float32 parameters"):
        kernels.train_forward(p64.spec, m64.params.data, x.astype(np.float64), None, None,
                              None, None, "bfloat16")


def _cosine(n=240, T=20):
    s = np.cos(np.arange(n + T + 1) * 0.1).astype(np.float32)
    X = np.stack([s[i:i + T] for i in range(n)])[:, :, None]
    return X, s[T:T + n]


def test_estimators_train_in_bf16():
    """An estimator with train_compute='bfloat16' learns the course's cosine task about as
    well as float32, differs from it, predicts in float32 (its model's own forward),
    and the parameter is checked."""
    _kernels_or_skip()
    X, y = _cosine()
    kw = dict(hidden_size=24, max_iter=25, random_state=0, batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        f32 = cyrnn.LSTMRegressor(**kw).fit(X, y)
        b16 = cyrnn.LSTMRegressor(train_compute="bfloat16", **kw).fit(X, y)
    assert b16.model_.train_compute == "bfloat16"
    assert b16.loss_curve_ != f32.loss_curve_
    rmse = {k: float(np.sqrt(np.mean((e.predict(X) - y) ** 2)))
            for k, e in (("f32", f32), ("b16", b16))}
    assert rmse["b16"] < max(2 * rmse["f32"], 0.05), rmse
    np.testing.assert_array_equal(b16.predict(X), b16.model_.forward(X)[:, 0].astype(np.float64))
    clf = cyrnn.GRUClassifier(hidden_size=8, max_iter=3, random_state=0,
                              train_compute="bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, (y > 0).astype(int))
    assert clf.get_params()["train_compute"] == "bfloat16"
    with pytest.raises(ValueError, match="needs dtype='float32'"):
        cyrnn.LSTMRegressor(train_compute="bfloat16", dtype="float64", max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="train_compute"):
        cyrnn.LSTMRegressor(train_compute="half", max_iter=1).fit(X, y)
    if "numba" in cyrnn.backends.available():
        with pytest.raises(ValueError, match="needs the Cython backend"):
            cyrnn.LSTMRegressor(train_compute="bfloat16", backend="numba",
                                max_iter=1).fit(X, y)


def test_language_model_trains_in_bf16(tmp_path):
    """The language model (fit on names and fit_text, whose tbptt carries states) with
    bfloat16 products: its loss falls, it samples, and it saves and loads the parameter."""
    _kernels_or_skip()
    names = ["aardonyx", "abelisaurus", "achelousaurus", "achillobator", "acrocanthosaurus",
             "aegyptosaurus", "afrovenator", "agilisaurus", "alamosaurus", "albertaceratops"]
    lm = cyrnn.CharLanguageModel(hidden_size=16, max_epochs=8, batch_size=4, random_state=0,
                                 train_compute="bfloat16").fit(names)
    assert lm.model_.train_compute == "bfloat16"
    assert lm.loss_curve_[-1] < lm.loss_curve_[0]
    assert isinstance(lm.sample(random_state=0)[0], str)
    lm.save(tmp_path / "lm.cyrnn")
    assert cyrnn.load(tmp_path / "lm.cyrnn").train_compute == "bfloat16"
    text = lm.fit_text(" ".join(names) * 3)
    assert text.loss_curve_[-1] < text.loss_curve_[0]
    with pytest.raises(ValueError, match="train_compute"):
        cyrnn.CharLanguageModel(train_compute="bfloat", max_epochs=1).fit(names)
    with pytest.raises(ValueError, match="dtype=float32"):
        cyrnn.CharLanguageModel(train_compute="bfloat16", dtype=np.float64,
                                max_epochs=1).fit(names)


def test_team_mode_takes_bf16_with_the_same_results(rng):
    """The team mode of big ops (forced here) runs the bfloat16 training forward and
    gives what the row chunks give, bit for bit, and so does the backward."""
    kernels = _kernels_or_skip()
    model = cyrnn.Sequential([cyrnn.LSTM(6, 40, num_layers=2, random_state=0),
                              cyrnn.Dense(40, 2, random_state=1)])
    x = rng.normal(size=(64, 7, 6)).astype(np.float32)
    ref = _fused(model, x, "bfloat16")
    # two threads, and no hold on a busy machine (which would make the ops serial)
    saved = (kernels._set_team_min_bytes(0), kernels.set_num_threads(2),
             kernels.set_contention_hold(0))
    try:
        before = kernels._path_counts()["team_forward"]
        got = _fused(model, x, "bfloat16")
        assert kernels._path_counts()["team_forward"] > before  # the team mode ran
    finally:
        kernels._set_team_min_bytes(saved[0])
        kernels.set_num_threads(saved[1])
        kernels.set_contention_hold(saved[2])
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("C, K, K2", [(4096, 1100, 1100), (4096, 2100, 0)])
def test_weight_gradient_partials_too_big_split_and_stay_bf16(C, K, K2, rng):
    """Partials over 64 MiB (two blocks of rows, C x (K + K2) floats each): the pair is
    split, then dg's columns; every piece is still bfloat16 arithmetic."""
    kernels = _kernels_or_skip()
    rows = 300
    dg = rng.normal(size=(rows, C)).astype(np.float32)
    x = rng.normal(size=(rows, K)).astype(np.float32)
    x2 = rng.normal(size=(rows, K2)).astype(np.float32) if K2 else None
    got = kernels.wgrad(dg, x, -1, x2, True)
    bdg = _bf16(dg).T
    tol = 1e-5 * np.sqrt(rows)
    np.testing.assert_allclose(got[0], bdg @ _bf16(x), rtol=1e-5, atol=tol)
    np.testing.assert_allclose(got[1], dg.astype(np.float64).sum(0), rtol=1e-5, atol=tol)
    if K2:
        np.testing.assert_allclose(got[2], bdg @ _bf16(x2), rtol=1e-5, atol=tol)


def test_layers_off_the_compiled_plan_refuse_bf16(rng):
    _kernels_or_skip()
    model = cyrnn.Sequential([cyrnn.Masking(0.0), cyrnn.LSTM(3, 4, random_state=0)])
    model.train_compute = "bfloat16"
    if model._plan() is not None:
        pytest.skip("Masking takes the compiled plan now")
    with pytest.raises(ValueError, match="compiled plan"):
        model.forward(rng.normal(size=(2, 3, 3)).astype(np.float32), training=True)


def test_train_compute_survives_pickling_and_files(tmp_path):
    """An estimator's fitted model keeps train_compute through pickle and save/load (a
    warm start goes on in bfloat16); a Sequential's pickle does not carry the
    process's fallback warning."""
    import pickle
    _kernels_or_skip()
    X, y = _cosine(60, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = cyrnn.LSTMRegressor(hidden_size=8, max_iter=2, random_state=0,
                                  train_compute="bfloat16").fit(X, y)
    assert pickle.loads(pickle.dumps(est)).model_.train_compute == "bfloat16"
    est.save(tmp_path / "e.cyrnn")
    assert cyrnn.load(tmp_path / "e.cyrnn").model_.train_compute == "bfloat16"
    model = est.model_
    model._bf16_fallback = True
    assert "_bf16_fallback" not in pickle.loads(pickle.dumps(model)).__dict__


@pytest.mark.parametrize("cls", ["GRUClassifier", "LSTMRegressor"])
def test_check_estimator_with_bf16_training(cls):
    """scikit-learn's conformance checks hold with train_compute='bfloat16' too."""
    _kernels_or_skip()
    from sklearn.utils.estimator_checks import check_estimator

    from cyrnn.estimator_checks import expected_failed_checks
    est = getattr(cyrnn, cls)(train_compute="bfloat16", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = check_estimator(est, expected_failed_checks=expected_failed_checks(est),
                              on_fail=None)
    assert len(res) > 50
    assert [r["check_name"] for r in res if r["status"] == "failed"] == []
