"""Every backend against ONNX's reference implementation (``onnx.reference``), an
implementation nobody here wrote: LSTM with and without peepholes (ONNX's ``P``),
GRU in both forms (``linear_before_reset`` 1 = reset_after, 0 = Cho), and the
tanh RNN, one layer, forward and bidirectional.

``onnx.reference`` applies ``P`` but ignores ``sequence_lens``, ``activations`` and
``clip``, so these runs are unmasked with default activations; masks and other
activations are covered by finite differences (``tests/test_gradients.py``).

Layout mapping (what ``cyrnn.cells`` documents): ONNX stacks the LSTM gates
i, o, f, c (cyrnn: i, f, g, o), the GRU gates z, r, h (cyrnn: r, z, n), and ``P``
as p_i, p_o, p_f (cyrnn's ``weight_peephole`` rows: p_i, p_f, p_o).
"""

import numpy as np
import pytest

import cyrnn

onnx = pytest.importorskip("onnx", reason="the test extra installs onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

N, T, D, H = 3, 7, 4, 5
# ONNX gate block -> cyrnn gate block, per family
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
PEEP_ORDER = [0, 2, 1]  # ONNX p_i, p_o, p_f from cyrnn rows p_i, p_f, p_o


def _blocks(w, order):
    return np.concatenate([w[k * H:(k + 1) * H] for k in order], axis=0)


def _onnx_run(layer, x, h0, c0):
    """Run ``layer``'s weights through onnx.reference; returns (Y, Y_h, Y_c)."""
    cell, fam = layer.cell, layer.cell.kind
    order, dirs = GATE_ORDER[fam], layer.num_directions
    W, R, B, P = [], [], [], []
    for d in range(dirs):
        w_ih, w_hh, b_ih, b_hh = (layer.params[n] for n in layer._names(0, d))
        W.append(_blocks(w_ih, order))
        R.append(_blocks(w_hh, order))
        B.append(np.concatenate([_blocks(b_ih[:, None], order)[:, 0],
                                 _blocks(b_hh[:, None], order)[:, 0]]))
        if cell.peephole:
            P.append(layer.params[layer._peephole_name(0, d)][PEEP_ORDER].reshape(-1))
    op = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[fam]
    inputs = {"X": x.transpose(1, 0, 2), "W": np.stack(W), "R": np.stack(R), "B": np.stack(B),
              "initial_h": h0}
    names = ["X", "W", "R", "B", "", "initial_h"]
    if fam == "lstm":
        inputs["initial_c"] = c0
        names.append("initial_c")
        if cell.peephole:
            inputs["P"] = np.stack(P)
            names.append("P")
    attrs = {"hidden_size": H, "direction": "bidirectional" if dirs == 2 else "forward"}
    if fam == "gru":
        attrs["linear_before_reset"] = int(cell.reset_after)
    outputs = ["Y", "Y_h"] + (["Y_c"] if fam == "lstm" else [])
    node = helper.make_node(op, names, outputs, **attrs)
    dt = TensorProto.DOUBLE
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, dt, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, dt, [None] * (4 if k == "Y" else 3))
         for k in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model).run(None, inputs)


CASES = [
    ("lstm", dict()), ("lstm-peephole", dict(peephole=True)),
    ("gru-reset-after", dict(reset_after=True)), ("gru-cho", dict(reset_after=False)),
    ("rnn-tanh", dict()),
]
CLASSES = {"lstm": cyrnn.LSTM, "gru": cyrnn.GRU, "rnn": cyrnn.SimpleRNN}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("name,options", CASES, ids=[c[0] for c in CASES])
def test_matches_onnx_reference(name, options, bidirectional, backend):
    rng = np.random.default_rng(len(name) + 10 * bidirectional)
    layer = CLASSES[name.split("-")[0]](D, H, bidirectional=bidirectional, backend=backend,
                                        dtype=np.float64, random_state=0, **options)
    layer.params.data[...] += rng.normal(scale=0.3, size=layer.params.size)  # nonzero P, biases
    dirs = layer.num_directions
    x = rng.normal(size=(N, T, D))
    h0 = rng.normal(size=(dirs, N, H))
    c0 = rng.normal(size=(dirs, N, H)) if layer.cell.has_cell_state else None
    out, state = layer(x, initial_state=(h0, c0) if c0 is not None else h0)
    expected = _onnx_run(layer, x, h0, c0)
    Y = expected[0]  # (T, dirs, N, H)
    got = out.reshape(N, T, dirs, H).transpose(1, 2, 0, 3)
    np.testing.assert_allclose(got, Y, rtol=1e-9, atol=1e-11)
    h_n = state[0] if c0 is not None else state
    np.testing.assert_allclose(h_n, expected[1], rtol=1e-9, atol=1e-11)
    if c0 is not None:
        np.testing.assert_allclose(state[1], expected[2], rtol=1e-9, atol=1e-11)


def test_peepholes_change_the_output(backend):
    """Guards the comparison above: with P = 0 ONNX's LSTM is the plain one, so a
    backend that ignored its peepholes would still match there."""
    layer = cyrnn.LSTM(D, H, peephole=True, backend=backend, dtype=np.float64, random_state=0)
    x = np.random.default_rng(1).normal(size=(N, T, D))
    plain, _ = layer(x)
    layer.params["weight_peephole_l0"][...] = 0.5
    peep, _ = layer(x)
    assert np.abs(peep - plain).max() > 1e-3
