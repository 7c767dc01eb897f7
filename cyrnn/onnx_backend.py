"""An ONNX backend (``onnx.backend.base.Backend``) that runs recurrent graphs on cyrnn.

``prepare(model) -> rep`` and ``rep.run(inputs)``, as ONNX's backend API defines them.
``RNN``, ``LSTM`` and ``GRU`` nodes run on cyrnn's kernels (the backend chosen by
``backend=``, default 'auto': the compiled ones where built); the other operators that
:func:`cyrnn.to_onnx` emits (``Gather``, ``MatMul``, ``Transpose``, ``TopK``...), and
those ``torch.onnx.export`` puts around an exported ``nn.RNN``/``LSTM``/``GRU``
(``Constant``, ``ConstantOfShape``, ``Expand``), run on ``onnx.reference``, which this
module extends with the three recurrent operators. Graphs with any other operator are
refused at ``prepare``. ``run_node`` runs one node (checked as ``prepare`` checks it).

Every attribute of the three operators is honoured or refused with an error naming it:
``direction`` (forward, reverse, bidirectional), ``layout`` (0 and 1), ``hidden_size``,
``sequence_lens`` (each value in [0, T]), ``initial_h``/``initial_c``, ``P``,
``linear_before_reset``, and ``activations`` in the cell table (Tanh, Relu, Sigmoid,
Affine(1, 0) = linear, HardSigmoid(1/6, 0.5) = Keras 3's hard_sigmoid; LSTM's g and h
must agree, since cyrnn's ``activation`` is both); ``clip`` and ``input_forget=1``,
other activations and float types other than float32/float64 are refused.

A sequence of length 0 (``sequence_lens``) gets zeros in ``Y`` and its initial state in
``Y_h``/``Y_c``, as cyrnn's masked rows keep theirs (and as TensorFlow does); ONNX leaves
this case open (onnx/onnx#1674), and ONNX Runtime returns zeros there.

ONNX's node tests for these operators pass (``tests/test_onnx_backend.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .backends import check_backend_name, get_backend
from .cells import Cell
from .layers.recurrent import project
from .onnx_export import GATE_ORDER, PEEP_ORDER

FAMILIES = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
# ONNX activation -> (cyrnn activation, the alpha and beta it must have or None)
_ACTIVATIONS = {"tanh": ("tanh", None), "relu": ("relu", None), "sigmoid": ("sigmoid", None),
                "affine": ("linear", (1.0, 0.0)), "hardsigmoid": ("hard_sigmoid", (1 / 6, 0.5))}
# ONNX activations that take an alpha / a beta (they consume activation_alpha/beta in order)
_TAKES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu",
                "softplus"}
_TAKES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_DEFAULTS = {"rnn": ["Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}
# Operators that cyrnn.to_onnx emits besides the recurrent ones, and those that
# torch.onnx.export puts around an exported RNN/LSTM/GRU (Constant, ConstantOfShape,
# Expand: its zero initial states); run by onnx.reference.
OTHER_OPS = frozenset({
    "Add", "And", "ArgMax", "Cast", "Concat", "Equal", "Gather", "GatherND", "Identity",
    "Less", "MatMul", "Gemm", "Mul", "Not", "Range", "ReduceMax", "ReduceMean", "ReduceProd",
    "ReduceSum", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Squeeze", "Sub", "TopK",
    "Transpose", "Unsqueeze", "ReverseSequence", "Tanh", "Relu", "Constant",
    "ConstantOfShape", "Expand"})
SUPPORTED_OPS = frozenset(FAMILIES) | OTHER_OPS


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _cells(op_type, attrs, dirs, has_peepholes):
    """One cyrnn Cell per direction from a recurrent node's attributes (refusing what
    cyrnn does not compute, by name)."""
    fam = FAMILIES[op_type]
    if attrs.get("clip") is not None:
        raise ValueError(f"cyrnn.onnx_backend: {op_type} attribute clip is not supported "
                         "(cyrnn's cells do not clip their pre-activations)")
    if attrs.get("input_forget"):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} attribute input_forget=1 is not "
                         "supported (cyrnn's LSTM has separate input and forget gates)")
    names = [_text(a) for a in (attrs.get("activations") or _DEFAULTS[fam] * dirs)]
    per = len(_DEFAULTS[fam])
    if len(names) != per * dirs:
        raise ValueError(f"cyrnn.onnx_backend: {op_type} activations needs {per * dirs} "
                         f"functions ({per} per direction), got {names}")
    alphas = list(attrs.get("activation_alpha") or [])
    betas = list(attrs.get("activation_beta") or [])
    acts = []
    for name in names:
        key = name.lower()
        alpha = alphas.pop(0) if key in _TAKES_ALPHA and alphas else None
        beta = betas.pop(0) if key in _TAKES_BETA and betas else None
        if key not in _ACTIVATIONS:
            raise ValueError(f"cyrnn.onnx_backend: {op_type} activation {name} is not "
                             f"supported (supported: Tanh, Relu, Sigmoid, Affine(1, 0), "
                             f"HardSigmoid(1/6, 0.5))")
        act, params = _ACTIVATIONS[key]
        if params is not None and (alpha is None or beta is None
                                   or not np.allclose([alpha, beta], params, atol=1e-6)):
            raise ValueError(f"cyrnn.onnx_backend: {op_type} activation {name} with "
                             f"alpha={alpha}, beta={beta} is not supported (only "
                             f"alpha={params[0]:.6g}, beta={params[1]:.6g}: cyrnn's {act})")
        acts.append(act)
    cells = []
    for d in range(dirs):
        a = acts[d * per:(d + 1) * per]
        if fam == "rnn":
            cells.append(Cell("rnn", activation=a[0]))
            continue
        if fam == "lstm" and a[1] != a[2]:
            raise ValueError(f"cyrnn.onnx_backend: LSTM activations g={a[1]} and h={a[2]} "
                             "differ (cyrnn's activation is both)")
        try:
            if fam == "lstm":
                cells.append(Cell("lstm", activation=a[1], recurrent_activation=a[0],
                                  peephole=has_peepholes))
            else:
                cells.append(Cell("gru", activation=a[1], recurrent_activation=a[0],
                                  reset_after=bool(attrs.get("linear_before_reset") or 0)))
        except ValueError as exc:
            raise ValueError(f"cyrnn.onnx_backend: {op_type} activations {a}: {exc}") from exc
    return cells


def _unblock(w, order, H):
    """ONNX gate blocks -> cyrnn's (inverse of cyrnn.onnx_export's GATE_ORDER)."""
    inv = np.argsort(order)
    return np.concatenate([w[k * H:(k + 1) * H] for k in inv], axis=0)


def _tensor(op_type, name, a, ndim):
    """Input ``name`` as a float array of ``ndim`` dimensions (ValueError otherwise)."""
    arr = np.asarray(a)
    if arr.ndim != ndim or arr.dtype.kind != "f":
        raise ValueError(f"cyrnn.onnx_backend: {op_type} input {name} must be a {ndim}-D "
                         f"float tensor, got shape {arr.shape} of {arr.dtype}")
    return arr


def _expect(op_type, name, shape, expected):
    if tuple(shape) != tuple(expected):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} input {name} has shape "
                         f"{tuple(shape)}, expected {tuple(expected)} (from X and R)")


def run_recurrent(op_type, attrs, X, W, R, B=None, sequence_lens=None, initial_h=None,
                  initial_c=None, P=None, backend="auto"):
    """One ``RNN``/``LSTM``/``GRU`` node on cyrnn's kernels. Returns (Y, Y_h[, Y_c])."""
    fam = FAMILIES[op_type]
    if X.dtype not in (np.float32, np.float64):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} on {X.dtype} is not supported "
                         "(float32 and float64 only)")
    dt = X.dtype
    direction = _text(attrs.get("direction") or "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} direction {direction!r} is not valid")
    layout = int(attrs.get("layout") or 0)
    if layout not in (0, 1):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} layout {layout} is not valid")
    dirs = 2 if direction == "bidirectional" else 1
    reverse = [False, True] if dirs == 2 else [direction == "reverse"]
    if layout == 1:
        X = np.swapaxes(X, 0, 1)
        initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
        initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
    X, W, R = (_tensor(op_type, name, a, 3) for name, a in (("X", X), ("W", W), ("R", R)))
    T, N, D = X.shape
    H = R.shape[-1]
    if attrs.get("hidden_size") not in (None, H):
        raise ValueError(f"cyrnn.onnx_backend: {op_type} hidden_size={attrs['hidden_size']} "
                         f"but R has {H} columns")
    if W.shape[0] != dirs:
        raise ValueError(f"cyrnn.onnx_backend: {op_type} direction={direction} needs W "
                         f"with {dirs} directions, got {W.shape[0]}")
    cells = _cells(op_type, attrs, dirs, P is not None)
    G = cells[0].n_gates
    # every shape against X's and R's before a kernel reads them (the compiled kernels
    # trust them: a wrong one read past the arrays), as ONNX Runtime refuses them
    if T == 0 or N == 0 or D == 0 or H == 0:
        raise ValueError(f"cyrnn.onnx_backend: {op_type} needs non-empty X and R, got X "
                         f"{X.shape} and R {R.shape}")
    if W.shape[2] != D:
        raise ValueError(f"cyrnn.onnx_backend: {op_type} input X has {D} features per step, "
                         f"but W takes {W.shape[2]}")
    _expect(op_type, "W", W.shape, (dirs, G * H, D))
    _expect(op_type, "R", R.shape, (dirs, G * H, H))
    if B is not None:
        B = _tensor(op_type, "B", B, 2)
        _expect(op_type, "B", B.shape, (dirs, 2 * G * H))
    if P is not None:
        P = _tensor(op_type, "P", P, 2)
        _expect(op_type, "P", P.shape, (dirs, 3 * H))
    for name, a in (("initial_h", initial_h), ("initial_c", initial_c)):
        if a is not None:
            _expect(op_type, name, _tensor(op_type, name, a, 3).shape, (dirs, N, H))
    # one type T for X, W, R, B, P and the initial states (ONNX's type constraint, which
    # ONNX Runtime enforces); a float32 W under a float64 X was run in float64
    for name, a in (("W", W), ("R", R), ("B", B), ("P", P), ("initial_h", initial_h),
                    ("initial_c", initial_c)):
        if a is not None and np.asarray(a).dtype != dt:
            raise ValueError(f"cyrnn.onnx_backend: {op_type} input {name} is "
                             f"{np.asarray(a).dtype} but X is {dt}: ONNX requires one type "
                             "for X, W, R, B, P and the initial states")
    mask = None
    if sequence_lens is not None:
        lens = np.asarray(sequence_lens).astype(np.int64)
        if lens.shape != (N,) or lens.min(initial=0) < 0 or lens.max(initial=0) > T:
            raise ValueError(f"cyrnn.onnx_backend: {op_type} sequence_lens must be {N} values "
                             f"in [0, {T}], got {lens.tolist()}")
        if not (lens == T).all():
            mask = np.ascontiguousarray(np.arange(T)[:, None] < lens[None, :])
    zeros = np.zeros((dirs, N, H), dt)
    h0 = zeros if initial_h is None else np.asarray(initial_h, dt)
    c0 = zeros if initial_c is None else np.asarray(initial_c, dt)
    B = np.zeros((dirs, 2 * G * H), dt) if B is None else B
    mod = get_backend(backend)
    order = GATE_ORDER[fam]
    Y = np.zeros((T, dirs, N, H), dt)
    Y_h = np.empty((dirs, N, H), dt)
    Y_c = np.empty((dirs, N, H), dt) if fam == "lstm" else None
    for d in range(dirs):
        cell = cells[d]
        w_ih = np.ascontiguousarray(_unblock(W[d], order, H), dt)
        w_hh = np.ascontiguousarray(_unblock(R[d], order, H), dt)
        b_ih = np.ascontiguousarray(_unblock(B[d, :G * H], order, H), dt)
        b_hh = np.ascontiguousarray(_unblock(B[d, G * H:], order, H), dt)
        peep = (np.ascontiguousarray(P[d].reshape(3, H)[PEEP_ORDER], dt) if P is not None
                else None)
        src = X[::-1] if reverse[d] else X
        m = None if mask is None else np.ascontiguousarray(mask[::-1] if reverse[d] else mask)
        xp = project(np.ascontiguousarray(src, dt), w_ih, b_ih, getattr(mod, "matmul", None))
        h_seq, h_T, c_T, _ = mod.forward(
            cell, np.ascontiguousarray(xp), w_hh, b_hh, np.ascontiguousarray(h0[d]),
            None if Y_c is None else np.ascontiguousarray(c0[d]), m, keep_cache=False,
            peep=peep)
        Y[:, d] = h_seq[::-1] if reverse[d] else h_seq
        Y_h[d] = h_T
        if Y_c is not None:
            Y_c[d] = c_T
    if layout == 1:
        Y = Y.transpose(2, 0, 1, 3)
        Y_h = Y_h.transpose(1, 0, 2)
        Y_c = None if Y_c is None else Y_c.transpose(1, 0, 2)
    return (Y, Y_h) if Y_c is None else (Y, Y_h, Y_c)


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _op_classes(backend):
    """``onnx.reference`` implementations of RNN, LSTM and GRU running on ``backend``."""

    def make(op_type):
        def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None,
                 P=None, **_):
            return run_recurrent(op_type, _attrs(self.onnx_node), X, W, R, B, sequence_lens,
                                 initial_h, initial_c, P, backend=backend)
        return type(op_type, (OpRun,), {"op_domain": "", "_run": _run})

    return [make(op) for op in FAMILIES]


class CyrnnRep(BackendRep):
    """A prepared model: ``run(inputs)`` returns its outputs (a tuple of arrays)."""

    def __init__(self, model, backend="auto"):
        self.model = model
        self._evaluator = ReferenceEvaluator(model, new_ops=_op_classes(backend))
        inits = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(self.input_names, inputs))
        return tuple(self._evaluator.run(None, feeds))


class CyrnnBackend(Backend):
    """``onnx.backend.base.Backend`` for recurrent graphs, on cyrnn's kernels (CPU)."""

    @classmethod
    def supports_device(cls, device):
        return str(device).upper().split(":")[0] == "CPU"

    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return all(n.domain in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS
                   for n in model.graph.node)

    @classmethod
    def prepare(cls, model, device="CPU", backend="auto", **kwargs):
        """Check ``model`` (its operators; the recurrent nodes' attributes) and return a
        :class:`CyrnnRep`. ``backend``: the cyrnn backend the recurrent nodes run on."""
        if isinstance(model, (str, bytes)) and not isinstance(model, onnx.ModelProto):
            model = onnx.load_model_from_string(model) if isinstance(model, bytes) \
                else onnx.load(model)
        if not cls.supports_device(device):
            raise ValueError(f"cyrnn.onnx_backend runs on CPU, not {device!r}")
        check_backend_name(backend)
        super().prepare(model, device, **kwargs)
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                raise ValueError(f"cyrnn.onnx_backend runs recurrent graphs (RNN, LSTM, GRU "
                                 f"and the operators cyrnn.to_onnx emits); "
                                 f"{node.op_type!r} is not one of them")
            if node.op_type in FAMILIES:
                attrs = _attrs(node)
                direction = _text(attrs.get("direction") or "forward")
                has_p = len(node.input) > 7 and node.input[7] != ""
                _cells(node.op_type, attrs, 2 if direction == "bidirectional" else 1, has_p)
        return CyrnnRep(model, backend)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        """Run one node on ``inputs`` (arrays, in the order of ``node.input``, empty
        names skipped) and return its outputs (a tuple), as ONNX's backend API
        defines it; the node is checked as :meth:`prepare` checks it."""
        names = [name for name in node.input if name]
        arrays = [np.asarray(a) for a in inputs]
        if len(arrays) != len(names):
            raise ValueError(f"{node.op_type} node has {len(names)} inputs, got "
                             f"{len(arrays)} arrays")
        info = onnx.helper.make_tensor_value_info
        elem = [onnx.helper.np_dtype_to_tensor_dtype(a.dtype) for a in arrays]
        graph = onnx.helper.make_graph(
            [node], "run_node", [info(n, e, a.shape) for n, e, a in zip(names, elem, arrays)],
            # typed by ONNX's shape inference below
            [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n])
        opset = kwargs.pop("opset_version", None) or onnx.defs.onnx_opset_version()
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        model = onnx.shape_inference.infer_shapes(model)
        return cls.prepare(model, device, **kwargs).run(dict(zip(names, arrays)))


prepare = CyrnnBackend.prepare
run_model = CyrnnBackend.run_model
run_node = CyrnnBackend.run_node
supports_device = CyrnnBackend.supports_device

__all__ = ["CyrnnBackend", "CyrnnRep", "prepare", "run_model", "supports_device",
           "run_recurrent", "SUPPORTED_OPS"]
