"""The cell table (``cyrnn/cells.py``) and what derives from it: layer options and
their errors, estimator and language-model parameters, the CLI's choices, the
peephole LSTM through every public entry point, and Keras's activations."""

import inspect

import numpy as np
import pytest

import cyrnn
from cyrnn import cells, cli, persistence
from cyrnn.backends import spec
from cyrnn.language_model import CharLanguageModel

NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "John", "Ken", "Dennis"]


def test_table_is_consistent():
    assert [row.code for row in cells.CELL_TABLE] == list(range(cells.N_CELLS))
    assert [a.code for a in cells.ACTIVATION_TABLE] == list(range(cells.N_ACTIVATIONS))
    for row in cells.CELL_TABLE:
        assert hasattr(cyrnn, row.layer), row
        cell = cells.Cell(row.name)
        assert cell.row is row and cell.code == row.code and cell.is_default
        assert set(row.activations) <= set(cells.ACTIVATIONS)
        assert set(row.recurrent_activations) <= set(cells.ACTIVATIONS)
        assert cells.resolve(row.family, **row.options) is row
        layer = getattr(cyrnn, row.layer)(2, 3, **row.options)
        assert layer.cell.row is row
        assert len(layer.params.names) == 4 + bool(row.peepholes)
    assert cells.FAMILIES == ("rnn", "lstm", "gru")


def test_spec_constants_are_defined_once():
    consts = spec.constants()
    assert consts["SPEC_VERSION"] == 3 and consts["SPEC_WIDTH"] >= consts["RNN_DROP"] + 1
    model = cyrnn.Sequential([cyrnn.LSTM(3, 4, peephole=True, activation="relu",
                                         recurrent_activation="hard_sigmoid"),
                              cyrnn.Dense(4, 2)])
    s = model.inference_spec()
    rec = s[spec.SPEC_HEADER:spec.SPEC_HEADER + spec.SPEC_WIDTH]
    assert rec[0] == spec.OP_RNN
    assert (rec[spec.RNN_CELL], rec[spec.RNN_ACT], rec[spec.RNN_RACT]) == (
        cells.CELL_CODES["lstm_peephole"], cells.ACT_RELU, cells.ACT_HARD_SIGMOID)
    assert rec[spec.RNN_PEEP] == model.params.offsets["0.weight_peephole_l0"]


@pytest.mark.parametrize("cls,kwargs,error,match", [
    (cyrnn.LSTM, dict(foo=1), TypeError, "LSTM got an unexpected keyword argument 'foo'"),
    (cyrnn.GRU, dict(peephole=True), TypeError, "GRU got an unexpected keyword"),
    (cyrnn.SimpleRNN, dict(reset_after=False), TypeError, "SimpleRNN got an unexpected"),
    (cyrnn.LSTM, dict(activation="elu"), ValueError, "LSTM activation must be one of"),
    (cyrnn.GRU, dict(recurrent_activation="tanh"), ValueError,
     "GRU recurrent_activation must be one of"),
    (cyrnn.SimpleRNN, dict(recurrent_activation="sigmoid"), TypeError, "unexpected keyword"),
    (cyrnn.LSTM, dict(activation=3), TypeError, "activation must be a string"),
])
def test_layer_option_errors(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(2, 3, **kwargs)


@pytest.mark.parametrize("cls", [cyrnn.LSTM, cyrnn.GRU], ids=["LSTM", "GRU"])
def test_activation_is_never_silently_ignored(cls, backend):
    """The defect this table fixed: LSTM(activation='relu') used to compute tanh. Every
    (activation, recurrent_activation) pair gives its own output, equal to the reference's."""
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    row = cells.Cell(cls.cell_kind).row
    outs = {}
    for act in row.activations:
        for ract in row.recurrent_activations:
            kw = dict(activation=act, recurrent_activation=ract, random_state=0)
            out = cls(3, 4, backend=backend, **kw)(x)[0]
            np.testing.assert_allclose(out, cls(3, 4, backend="numpy", **kw)(x)[0],
                                       rtol=1e-4, atol=1e-5)
            outs[act, ract] = out
    for a in outs:
        for b in outs:
            if a < b:
                assert np.abs(outs[a] - outs[b]).max() > 1e-3, (a, b)
    assert cyrnn.GRU(3, 4, activation=None).cell.activation == "linear"  # Keras: None = linear


@pytest.mark.parametrize("est_cls", cyrnn.estimators.ESTIMATORS, ids=lambda c: c.__name__)
def test_estimator_cell_parameters_derive_from_the_table(est_cls):
    params = inspect.signature(est_cls).parameters
    family = est_cls._cell
    rows = cells.kinds_of(family)
    for name in est_cls._cell_params:
        assert name in params
        if name == "activation":
            assert est_cls._parameter_constraints[name][0].options == set(rows[0].activations)
        else:
            assert name in set().union(*(r.options for r in rows))
    assert "peephole" in params if family == "lstm" else "peephole" not in params


@pytest.mark.parametrize("est_cls", [cyrnn.LSTMClassifier, cyrnn.LSTMRegressor],
                         ids=lambda c: c.__name__)
def test_peephole_estimators_fit_save_load(est_cls, backend, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6, 3))
    y = (X[:, :, 0].sum(1) > 0).astype(int) if est_cls is cyrnn.LSTMClassifier \
        else X[:, :, 0].sum(1)
    est = est_cls(peephole=True, hidden_size=8, max_iter=3, backend=backend,
                  random_state=0).fit(X, y)
    assert "0.weight_peephole_l0" in est.model_.params.names
    assert np.abs(est.model_.params["0.weight_peephole_l0"]).max() > 0  # it trained
    path = est.save(tmp_path / "m.cyrnn")
    loaded = cyrnn.load(path)
    assert loaded.peephole is True
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    with pytest.raises(ValueError, match="peephole"):
        est_cls(peephole="yes").fit(X, y)


def test_files_written_before_the_peephole_option_still_load(tmp_path):
    """An LSTM estimator file from before the table had no cell options at all."""
    X = np.random.default_rng(0).normal(size=(30, 5, 2))
    est = cyrnn.LSTMRegressor(hidden_size=4, max_iter=2, backend="numpy",
                              random_state=0).fit(X, X[:, 0, 0])
    kind, meta, arrays = persistence.load_archive(est.save(tmp_path / "new.cyrnn"))
    assert meta["spec"]["cell_options"] == {"peephole": False}
    meta["spec"]["cell_options"] = {}
    old = persistence.save_archive(tmp_path / "old.cyrnn", kind, meta, arrays)
    loaded = cyrnn.load(old)
    assert loaded.peephole is False
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    # the missing option took its default, so the architecture still matches: training on
    # (warm start, partial_fit) accepts the loaded model instead of refusing a changed one
    assert loaded._spec["cell_options"] == {"peephole": False}
    loaded.partial_fit(X, X[:, 0, 0])
    loaded.set_params(warm_start=True, max_iter=1).fit(X, X[:, 0, 0])


def test_language_model_peephole(backend, tmp_path):
    lm = CharLanguageModel(cell="lstm", peephole=True, hidden_size=8, embedding_dim=4,
                           max_epochs=2, backend=backend, random_state=0).fit(NAMES)
    assert lm.info()["cell"] == "lstm_peephole"
    samples = lm.sample(3, prefix="A", random_state=1)
    assert all(s.startswith("A") for s in samples)
    # the generate kernel and the model's own forward agree: the reference samples alike
    lm.backend = "numpy"
    assert lm.sample(3, prefix="A", random_state=1) == samples
    lm.backend = backend
    loaded = cyrnn.load(lm.save(tmp_path / "lm.cyrnn"))
    assert loaded.peephole is True and loaded.sample(3, random_state=2) == lm.sample(
        3, random_state=2)
    with pytest.raises(ValueError, match="peephole=True needs cell='lstm'"):
        CharLanguageModel(cell="gru", peephole=True)


def test_cli_choices_come_from_the_table(capsys):
    assert cli.CELLS == cells.FAMILIES
    with pytest.raises(SystemExit):
        cli.main(["train", "x.txt", "--cell", "peephole"])
    assert "invalid choice" in capsys.readouterr().err


def test_cells_without_peepholes_ignore_peep(backend):
    """The contract's rule (``Cell.peephole_weights``), the same in every backend: only a
    peephole cell reads ``peep``; a plain LSTM given weights computes a plain LSTM."""
    from cyrnn.backends import get_backend

    be = get_backend(backend)
    cell, rng = cells.Cell("lstm"), np.random.default_rng(3)
    T, N, H = 4, 2, 3
    xp = rng.normal(size=(T, N, 4 * H))
    w, b = rng.normal(size=(4 * H, H)), rng.normal(size=4 * H)
    h0, c0, peep = rng.normal(size=(N, H)), rng.normal(size=(N, H)), rng.normal(size=(3, H))
    plain = be.forward(cell, xp, w, b, h0, c0, None, True)
    given = be.forward(cell, xp, w, b, h0, c0, None, True, peep=peep)
    for a, e in zip(given[:3], plain[:3]):
        np.testing.assert_array_equal(a, e)
    grads = be.backward(cell, given[3], w, None, plain[0], None, None, None, peep=peep)
    expected = be.backward(cell, plain[3], w, None, plain[0], None, None, None)
    for a, e in zip(grads, expected):
        assert (a is None) == (e is None)
        if e is not None:
            np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(be.step(cell, xp[0], w, b, h0, c0, peep=peep)[0],
                                  be.step(cell, xp[0], w, b, h0, c0)[0])
