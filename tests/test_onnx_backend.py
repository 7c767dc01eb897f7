"""``cyrnn.onnx_backend``: ONNX's own node tests for RNN, LSTM and GRU, graphs that
``cyrnn.to_onnx`` writes, every attribute honoured, and the refusals by name."""

import os
import re
import unittest
import warnings

import numpy as np
import pytest

import cyrnn

onnx = pytest.importorskip("onnx", reason="the onnx extra installs onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from cyrnn import onnx_backend  # noqa: E402

NODE_TESTS = r"^test_(lstm|gru|simple_rnn|rnn)_"


def _node_tests():
    """ONNX's node tests for the recurrent operators (built in code by the onnx wheel)."""
    import onnx.backend.test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suite = onnx.backend.test.BackendTest(onnx_backend, __name__)
    suite.include(NODE_TESTS)
    return suite


def test_onnx_node_tests_pass():
    """BackendTest with include(NODE_TESTS): the 18 node tests (defaults, initial bias,
    batchwise, reverse, bidirectional, peepholes, sequence_lens) on CPU must pass; the
    runner skips the rest (other operators, and the CUDA variants: not our device)."""
    suite = _node_tests()
    pattern = re.compile(NODE_TESTS)
    tests = [t for t in suite.test_suite if pattern.search(t.id().rsplit(".", 1)[-1])]
    cpu = {t.id().rsplit(".", 1)[-1] for t in tests if t.id().endswith("_cpu")}
    expected = {f"test_{op}_{case}_cpu" for op in ("lstm", "gru", "simple_rnn")
                for case in ("defaults", "with_initial_bias", "batchwise", "reverse",
                             "bidirectional")}
    expected |= {"test_lstm_with_peepholes_cpu", "test_gru_seq_length_cpu",
                 "test_rnn_seq_length_cpu"}
    assert len(expected) == 18 and expected <= cpu, sorted(expected - cpu)
    with open(os.devnull, "w") as sink:
        result = unittest.TextTestRunner(verbosity=0, stream=sink).run(
            unittest.TestSuite(tests))
    problems = [(t.id(), e[-300:]) for t, e in result.errors + result.failures]
    assert not problems, problems
    assert result.testsRun == len(tests)
    assert {t.id() for t, _ in result.skipped} == {t.id() for t in tests} - {
        t.id() for t in tests if t.id().endswith("_cpu")}


def _node(op, attrs, inputs, outputs=("Y", "Y_h")):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def _model(node, feeds, dt=TensorProto.FLOAT):
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "sequence_lens" else dt,
                                       v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, dt, [None] * (4 if o == "Y" else 3))
         for o in node.output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op,G", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_attributes_against_onnx_reference(op, G, layout, direction, backend):
    """Initial states, biases, layout, direction and linear_before_reset against
    onnx.reference (which ignores sequence_lens: all full here)."""
    rng = np.random.default_rng(G + layout)
    T, N, D, H = 5, 3, 4, 2
    dirs = 2 if direction == "bidirectional" else 1
    feeds = {"X": rng.normal(size=(T, N, D) if layout == 0 else (N, T, D)),
             "W": rng.normal(size=(dirs, G * H, D)), "R": rng.normal(size=(dirs, G * H, H)),
             "B": rng.normal(size=(dirs, 2 * G * H))}
    hshape = (dirs, N, H) if layout == 0 else (N, dirs, H)
    feeds["initial_h"] = rng.normal(size=hshape)
    names = ["X", "W", "R", "B", "", "initial_h"]
    outputs = ["Y", "Y_h"]
    attrs = {"hidden_size": H, "direction": direction, "layout": layout}
    if op == "LSTM":
        feeds["initial_c"] = rng.normal(size=hshape)
        feeds["P"] = rng.normal(size=(dirs, 3 * H))
        names += ["initial_c", "P"]
        outputs.append("Y_c")
    if op == "GRU":
        attrs["linear_before_reset"] = int(rng.integers(2))
    feeds = {k: v.astype(np.float64) for k, v in feeds.items()}
    model = _model(_node(op, attrs, names, outputs), feeds, TensorProto.DOUBLE)
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = onnx_backend.prepare(model, backend=backend).run(feeds)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_and_activations_match_cyrnn_layers(direction, backend):
    """sequence_lens and non-default activations against the cyrnn layer they were
    exported from (whose ``lengths`` start at 1; zero: the next test)."""
    layer = cyrnn.LSTM(3, 4, bidirectional=direction == "bidirectional",
                       go_backwards=direction == "reverse", activation="relu",
                       recurrent_activation="hard_sigmoid", peephole=True, backend=backend,
                       dtype=np.float64, random_state=0)
    layer.params.data[...] += np.random.default_rng(0).normal(scale=0.3, size=layer.params.size)
    x = np.random.default_rng(1).normal(size=(4, 6, 3))
    lengths = np.array([6, 2, 1, 4])
    exported = cyrnn.to_onnx(layer, lengths=True)
    got = onnx_backend.prepare(exported, backend=backend).run({"x": x, "lengths": lengths})
    out, (h, c) = layer(x, lengths=lengths)
    for e, g in zip([out, h, c], got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op,G", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_zero_length_sequences_keep_their_initial_state(op, G, direction, backend):
    """A sequence_lens of 0: ONNX leaves Y_h/Y_c open (onnx/onnx#1674); cyrnn returns the
    initial state, as its masked rows keep theirs (and as TensorFlow does), where ONNX
    Runtime returns zeros. Y and the other rows agree with ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra installs onnxruntime")
    rng = np.random.default_rng(3)
    T, N, D, H, nd = 4, 3, 2, 3, 2 if direction == "bidirectional" else 1
    feeds = {"X": rng.normal(size=(T, N, D)), "W": rng.normal(size=(nd, G * H, D)),
             "R": rng.normal(size=(nd, G * H, H)), "B": rng.normal(size=(nd, 2 * G * H)),
             "sequence_lens": np.array([0, 2, 4], np.int32),
             "initial_h": rng.normal(size=(nd, N, H))}
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        feeds["initial_c"] = rng.normal(size=(nd, N, H))
        outputs.append("Y_c")
    feeds = {k: v if k == "sequence_lens" else v.astype(np.float32) for k, v in feeds.items()}
    model = _model(_node(op, {"hidden_size": H, "direction": direction}, feeds, outputs),
                   feeds)
    got = onnx_backend.prepare(model, backend=backend).run(feeds)
    runtime = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], runtime[0], rtol=1e-5, atol=1e-6)   # Y: zeros in row 0
    assert not got[0][:, :, 0].any()
    initial = [feeds["initial_h"], feeds.get("initial_c")]
    for g, r, s in zip(got[1:], runtime[1:], initial):
        np.testing.assert_allclose(g[:, 1:], r[:, 1:], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(g[:, 0], s[:, 0])   # ONNX Runtime 1.32: zeros


def test_exported_models_run(backend):
    """A Sequential with an embedding, a data mask with gaps and all padding, two
    recurrent layers, float64 (which ONNX Runtime does not run)."""
    model = cyrnn.Sequential([
        cyrnn.Embedding(7, 3, mask_zero=True, dtype=np.float64, random_state=0),
        cyrnn.GRU(3, 4, bidirectional=True, merge_mode="ave", reset_after=False,
                  backend=backend, dtype=np.float64, random_state=0),
        cyrnn.SimpleRNN(4, 3, activation="linear", return_sequences=False, backend=backend,
                        dtype=np.float64, random_state=1),
        cyrnn.Dense(3, 2, dtype=np.float64, random_state=0)])
    ids = np.array([[1, 0, 2, 3, 0], [0, 0, 4, 5, 6], [0, 0, 0, 0, 0]])
    rep = onnx_backend.prepare(cyrnn.to_onnx(model), backend=backend)
    np.testing.assert_allclose(rep.run([ids])[0], model.forward(ids), rtol=1e-10, atol=1e-12)


def _lstm_model(**attrs):
    T, N, D, H = 2, 1, 2, 2
    feeds = {"X": np.ones((T, N, D), np.float32), "W": np.ones((1, 4 * H, D), np.float32),
             "R": np.ones((1, 4 * H, H), np.float32)}
    return _model(_node("LSTM", {"hidden_size": H, **attrs}, ["X", "W", "R"]), feeds)


@pytest.mark.parametrize("attrs,message", [
    (dict(clip=1.0), "LSTM attribute clip"),
    (dict(input_forget=1), "LSTM attribute input_forget=1"),
    (dict(activations=["Sigmoid", "Softsign", "Softsign"]), "activation Softsign"),
    (dict(activations=["HardSigmoid", "Tanh", "Tanh"]), r"HardSigmoid with alpha=None"),
    (dict(activations=["Sigmoid", "Tanh", "Relu"]), "g=tanh and h=relu differ"),
    (dict(activations=["Tanh", "Tanh", "Tanh"]), "recurrent_activation must be one of"),
])
def test_refusals_name_the_attribute(attrs, message):
    with pytest.raises(ValueError, match=message):
        onnx_backend.prepare(_lstm_model(**attrs))


def test_other_operators_and_devices_are_refused():
    node = helper.make_node("Conv", ["X", "W"], ["Y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4)
                               for n in "XW"],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)])
    model = helper.make_model(graph)
    assert not onnx_backend.CyrnnBackend.is_compatible(model)
    with pytest.raises(ValueError, match="'Conv' is not one of them"):
        onnx_backend.prepare(model)
    assert onnx_backend.supports_device("CPU") and not onnx_backend.supports_device("CUDA")
    with pytest.raises(ValueError, match="sequence_lens"):
        T, N = 2, 1
        node = _node("GRU", {"hidden_size": 1}, ["X", "W", "R", "", "sequence_lens"])
        feeds = {"X": np.ones((T, N, 1), np.float32), "W": np.ones((1, 3, 1), np.float32),
                 "R": np.ones((1, 3, 1), np.float32),
                 "sequence_lens": np.array([3], np.int32)}
        onnx_backend.prepare(_model(node, feeds)).run(feeds)


@pytest.mark.parametrize("make", [
    lambda torch: torch.nn.GRU(3, 4, batch_first=True),
    lambda torch: torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
    lambda torch: torch.nn.RNN(3, 4, nonlinearity="relu")])
def test_torch_exports_run(make, backend):
    # torch.onnx.export puts Constant / ConstantOfShape / Expand around its recurrent
    # nodes (the zero initial states): every such export was refused
    torch = pytest.importorskip("torch")
    import io

    module = make(torch).eval()
    x = torch.randn(2, 5, 3)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=18)
    rep = onnx_backend.prepare(onnx.load_from_string(buf.getvalue()), backend=backend)
    with torch.no_grad():
        expected = [t.numpy() for t in (module(x)[0],)]
    np.testing.assert_allclose(rep.run([x.numpy()])[0], expected[0], rtol=1e-5, atol=1e-6)


def test_run_node_runs_one_node_and_checks_it():
    # run_node was the base class's, which returns None
    rng = np.random.default_rng(0)
    X, W, R = (rng.normal(size=s).astype(np.float32) for s in [(5, 2, 3), (1, 12, 3), (1, 12, 4)])
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT,
                                                                          a.shape)
                                            for n, a in zip("XWR", (X, W, R))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("Y", "Y_h")])
    expected = ReferenceEvaluator(helper.make_model(graph)).run(None, {"X": X, "W": W, "R": R})
    out = onnx_backend.run_node(node, [X, W, R])
    assert len(out) == 2
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="clip"):
        onnx_backend.run_node(helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=4,
                                               clip=1.0), [X, W, R])
    # outputs of another type than the first input (typed by shape inference)
    shape, = onnx_backend.run_node(helper.make_node("Shape", ["X"], ["S"]), [X])
    np.testing.assert_array_equal(shape, X.shape)
    cast, = onnx_backend.run_node(helper.make_node("Cast", ["X"], ["C"], to=TensorProto.INT64),
                                  [np.full((2, 2), 2.7, np.float32)])
    assert cast.dtype == np.int64 and (cast == 2).all()


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_input_shapes_are_checked_before_the_kernels(backend):
    """X of the wrong width ran: the Cython kernels read past W (SGEMM's 'illegal value'
    and garbage, or plausible wrong numbers), a short B past b_hh (NaN)."""
    T, N, D, H = 4, 2, 3, 5
    rng = np.random.default_rng(0)
    feeds = {"X": rng.normal(size=(T, N, D)).astype(np.float32),
             "W": rng.normal(size=(1, 3 * H, D)).astype(np.float32),
             "R": rng.normal(size=(1, 3 * H, H)).astype(np.float32),
             "B": rng.normal(size=(1, 6 * H)).astype(np.float32),
             "initial_h": rng.normal(size=(1, N, H)).astype(np.float32)}
    node = _node("GRU", {"hidden_size": H}, ["X", "W", "R", "B", "", "initial_h"])
    rep = onnx_backend.prepare(_model(node, feeds), backend=backend)
    rep.run(feeds)
    bad = [("X", rng.normal(size=(T, N, 6)), "X has 6 features per step, but W takes 3"),
           ("X", rng.normal(size=(T, N, 2)), "X has 2 features"),
           ("X", rng.normal(size=(T, N)), "X must be a 3-D float tensor"),
           ("B", rng.normal(size=(1, 3 * H)), r"B has shape \(1, 15\), expected \(1, 30\)"),
           ("R", rng.normal(size=(1, 3 * H, H + 1)), "R"),
           ("initial_h", rng.normal(size=(1, N + 1, H)), "initial_h has shape")]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=message):
            rep.run([value.astype(np.float32) if k == name else v for k, v in feeds.items()])


def test_mixed_float_types_are_refused():
    """ONNX's type constraint: X, W, R (and B, P, the states) share one type T, as ONNX
    Runtime enforces; a float32 W under a float64 X ran in float64."""
    H = 2
    X = np.ones((2, 1, 2), np.float64)
    W, R = np.ones((1, 4 * H, 2), np.float32), np.ones((1, 4 * H, H), np.float64)
    with pytest.raises(ValueError, match="input W is float32 but X is float64"):
        onnx_backend.run_recurrent("LSTM", {"hidden_size": H}, X, W, R)
    h0 = np.zeros((1, 1, H), np.float32)
    with pytest.raises(ValueError, match="input initial_h is float32 but X is float64"):
        onnx_backend.run_recurrent("LSTM", {"hidden_size": H}, X, W.astype(np.float64), R,
                                   initial_h=h0)
