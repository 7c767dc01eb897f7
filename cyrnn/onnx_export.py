"""``to_onnx``: recurrent layers, ``Sequential`` models and the estimators as ONNX graphs.

Standard operators only: ONNX's ``RNN``, ``LSTM`` (``P`` for peepholes) and ``GRU``
(``linear_before_reset`` 1 for ``reset_after=True``, 0 for Cho's form), one node per
stacked layer (bidirectional layers as one ``direction="bidirectional"`` node),
``Gather`` for embeddings, ``MatMul``/``Add`` for Dense, ``Sigmoid``/``Softmax`` heads.
Activations map through the cell table (``cyrnn.cells.ACTIVATION_TABLE``): linear is
``Affine(1, 0)``, Keras 3's hard_sigmoid ``HardSigmoid(1/6, 0.5)``.

Masks. A ``lengths`` input (post-padding, as cyrnn's ``lengths=``) is the nodes'
``sequence_lens``. A mask computed from the data (``Embedding(mask_zero=True)``,
``Masking``) may mark any steps, pre-padding and gaps included, which
``sequence_lens`` cannot express directly; the graph therefore moves each sequence's
valid steps to the front (a stable ``TopK`` on the step index, ``GatherND``), runs the
recurrent nodes with ``sequence_lens`` = the number of valid steps, and moves the
outputs back (zeros at masked steps). That is exactly cyrnn's masking rule (masked
steps keep the state and output zeros), so every mask cyrnn accepts is exported.

``go_backwards`` (Keras: the padded sequence runs last step first, outputs in
processing order) is the node's other direction (``reverse``; for a bidirectional
layer the two directions' weights swap places) followed by reversing the output's time
axis. onnx is imported here only: it is never a runtime requirement.
"""

from __future__ import annotations

import numpy as np

from .cells import ACTIVATIONS
from .layers import Activation, Dense, Embedding, Masking, RecurrentLayer
from .model import Sequential
from .sequences import one_target

OPSET = 18
# ONNX gate blocks from cyrnn's (cyrnn: lstm i,f,g,o; gru r,z,n. ONNX: i,o,f,c; z,r,h)
GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
PEEP_ORDER = [0, 2, 1]  # ONNX P = p_i, p_o, p_f; cyrnn rows p_i, p_f, p_o
OP_TYPES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# cyrnn activation -> (ONNX name, alpha, beta); alpha/beta None: the function takes none
ONNX_ACTIVATIONS = {"tanh": ("Tanh", None, None), "relu": ("Relu", None, None),
                    "sigmoid": ("Sigmoid", None, None), "linear": ("Affine", 1.0, 0.0),
                    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5)}
assert set(ONNX_ACTIVATIONS) == set(ACTIVATIONS), "every activation of the cell table"


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the onnx extra installs it
        raise ImportError("to_onnx needs the onnx package: pip install 'cyrnn[onnx]'") from exc
    return onnx


class _Graph:
    """Nodes and initializers under construction, with fresh value names."""

    def __init__(self, dtype):
        self.onnx = _onnx()
        self.dtype = np.dtype(dtype)
        self.elem = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.inits, self._n = [], [], 0

    def fresh(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, value, base="c", dtype=None):
        arr = np.asarray(value, dtype if dtype is not None else self.dtype)
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr.copy(order="C"), name))
        return name

    def i64(self, values, base="i"):
        return self.const(np.asarray(values, np.int64), base, np.int64)

    def op(self, op_type, inputs, n_out=1, outputs=None, **attrs):
        outs = outputs or [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if len(outs) == 1 else outs


class _Masks:
    """The validity of each step, time-major: None (all valid), ``lengths`` (post-padding:
    ``sequence_lens`` as is) or a data mask (valid steps moved to the front and back)."""

    def __init__(self, g, T, lengths=None, valid=None):
        self.g, self.T = g, T
        self.lengths, self.valid = lengths, valid
        self.seq_lens = None
        if valid is not None:
            if lengths is not None:
                steps = g.op("Unsqueeze", [g.op("Range", [g.i64(0), T, g.i64(1)]), g.i64([1])])
                valid = g.op("And", [valid, g.op("Less", [steps, g.op("Unsqueeze", [
                    lengths, g.i64([0])])])])
            self.valid = valid
            vi = g.op("Cast", [valid], to=7)                            # (T, N) int64
            steps = g.op("Unsqueeze", [g.op("Range", [g.i64(0), T, g.i64(1)]), g.i64([1])])
            key = g.op("Add", [steps, g.op("Mul", [g.op("Sub", [g.i64(1), vi]), T])])
            keyT = g.op("Transpose", [key], perm=[1, 0])                # (N, T), distinct
            K = g.op("Unsqueeze", [T, g.i64([0])])
            _, self.perm = g.op("TopK", [keyT, K], n_out=2, axis=1, largest=0, sorted=1)
            _, self.inv = g.op("TopK", [self.perm, K], n_out=2, axis=1, largest=0, sorted=1)
            self.count = g.op("ReduceSum", [vi, g.i64([0])], keepdims=0)  # (N,) int64
            self.seq_lens = g.op("Cast", [self.count], to=6)
            self.keep = g.op("Unsqueeze", [g.op("Cast", [valid], to=g.elem), g.i64([2])])
        elif lengths is not None:
            self.seq_lens = g.op("Cast", [lengths], to=6)

    def _gather(self, seq, index):
        g = self.g
        bm = g.op("Transpose", [seq], perm=[1, 0, 2])
        out = g.op("GatherND", [bm, g.op("Unsqueeze", [index, g.i64([2])])], batch_dims=1)
        return g.op("Transpose", [out], perm=[1, 0, 2])

    def compact(self, seq):
        """Valid steps first (data masks only)."""
        return seq if self.valid is None else self._gather(seq, self.perm)

    def restore(self, seq):
        """Steps back in place, zeros at masked steps (data masks only)."""
        if self.valid is None:
            return seq
        return self.g.op("Mul", [self._gather(seq, self.inv), self.keep])


def _rnn_nodes(g, layer, seq, masks, prefix):
    """The nodes of one cyrnn recurrent layer on the time-major value ``seq`` (T, N, F).
    Returns (output, [h_n per stacked layer], [c_n ...]) with output time-major
    (T, N, F') for ``return_sequences``, else (N, F'); a pair when merge_mode=None."""
    cell, fam, H = layer.cell, layer.cell.kind, layer.hidden_size
    dirs = layer.num_directions
    order = GATE_ORDER[fam]
    # go_backwards: cyrnn's forward direction is ONNX's reverse one (and vice versa)
    slots = [1, 0] if (layer.go_backwards and dirs == 2) else list(range(dirs))
    direction = ("bidirectional" if dirs == 2
                 else "reverse" if layer.go_backwards else "forward")

    def blocks(w):
        return np.concatenate([w[k * H:(k + 1) * H] for k in order], axis=0)

    acts = []
    if fam == "lstm":
        acts = [cell.recurrent_activation, cell.activation, cell.activation]
    elif fam == "gru":
        acts = [cell.recurrent_activation, cell.activation]
    else:
        acts = [cell.activation]
    attrs = {"hidden_size": H, "direction": direction}
    if fam == "gru":
        attrs["linear_before_reset"] = int(cell.reset_after)
    if not cell.is_default:
        names, alphas, betas = [], [], []
        for a in acts * dirs:
            name, alpha, beta = ONNX_ACTIVATIONS[a]
            names.append(name)
            if alpha is not None:
                alphas.append(alpha)
            if beta is not None:
                betas.append(beta)
        attrs["activations"] = names
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    x = masks.compact(seq)
    h_ns, c_ns = [], []
    Y = Y_h = None
    for sub in range(layer.num_layers):
        W, R, B, P = [], [], [], []
        for slot in range(dirs):
            d = slots[slot]
            w_ih, w_hh, b_ih, b_hh = (layer.params[n] for n in layer._names(sub, d))
            W.append(blocks(w_ih))
            R.append(blocks(w_hh))
            B.append(np.concatenate([blocks(b_ih[:, None])[:, 0], blocks(b_hh[:, None])[:, 0]]))
            if cell.peephole:
                P.append(layer.params[layer._peephole_name(sub, d)][PEEP_ORDER].reshape(-1))
        name = f"{prefix}_l{sub}"
        ins = [x, g.const(np.stack(W), name + "_W"), g.const(np.stack(R), name + "_R"),
               g.const(np.stack(B), name + "_B"), masks.seq_lens or ""]
        if cell.peephole:
            ins += ["", "", g.const(np.stack(P), name + "_P")]
        while ins and ins[-1] == "":
            ins.pop()
        n_out = 3 if fam == "lstm" else 2
        outs = g.op(OP_TYPES[fam], ins, n_out=n_out, **attrs)
        Y, Y_h = outs[0], outs[1]                               # (T, dirs, N, H), (dirs, N, H)
        if slots != list(range(dirs)):
            Y = g.op("Gather", [Y, g.i64(slots)], axis=1)
            Y_h = g.op("Gather", [Y_h, g.i64(slots)], axis=0)
        h_ns.append(Y_h)
        if fam == "lstm":
            Y_c = outs[2]
            if slots != list(range(dirs)):
                Y_c = g.op("Gather", [Y_c, g.i64(slots)], axis=0)
            c_ns.append(Y_c)
        if sub < layer.num_layers - 1:
            x = _merge(g, layer, Y, axis=1)
    if layer.return_sequences:
        if layer._separate_outputs:
            parts = [g.op("Gather", [Y, g.i64(k)], axis=1) for k in range(2)]
            out = [_to_processing_order(g, layer, masks.restore(p)) for p in parts]
        else:
            out = _to_processing_order(g, layer, masks.restore(_merge(g, layer, Y, axis=1)))
    else:
        if layer._separate_outputs:
            out = [g.op("Gather", [Y_h, g.i64(k)], axis=0) for k in range(2)]
        else:
            out = _merge(g, layer, Y_h, axis=0)
    return out, h_ns, c_ns


def _to_processing_order(g, layer, seq):
    """go_backwards: outputs in processing order, i.e. the time axis reversed."""
    if not layer.go_backwards:
        return seq
    return g.op("Slice", [seq, g.i64([-1]), g.i64([np.iinfo(np.int64).min]), g.i64([0]),
                          g.i64([-1])])


def _merge(g, layer, Y, axis):
    """Merge the direction axis ``axis`` of Y (ONNX's direction axis) by ``merge_mode``."""
    if layer.num_directions == 1:
        return g.op("Squeeze", [Y, g.i64([axis])])
    mode = layer.merge_mode
    if mode == "concat":
        # move the direction axis just before H, then flatten the two
        perm = [0, 2, 1, 3] if axis == 1 else [1, 0, 2]
        moved = g.op("Transpose", [Y], perm=perm)
        shape = g.i64([0, 0, -1] if axis == 1 else [0, -1])
        return g.op("Reshape", [moved, shape])
    if mode == "sum":
        return g.op("ReduceSum", [Y, g.i64([axis])], keepdims=0)
    if mode == "ave":
        return g.op("ReduceMean", [Y, g.i64([axis])], keepdims=0)
    return g.op("ReduceProd", [Y, g.i64([axis])], keepdims=0)  # mul


def _dense(g, layer, x):
    w = g.const(layer.params["weight"].T, "dense_W")
    return g.op("Add", [g.op("MatMul", [x, w]), g.const(layer.params["bias"], "dense_b")])


def _value_info(g, name, elem, shape):
    return g.onnx.helper.make_tensor_value_info(name, elem, shape)


def _sequential_body(g, layers, x_name, lengths_name):
    """Nodes for ``layers`` (a Sequential's, batch-first input ``x_name``). Returns the
    final value name and whether it still has a time axis (batch-first)."""
    first = layers[0]
    T = g.op("Gather", [g.op("Shape", [x_name]), g.i64([1])])      # (1,) int64
    T = g.op("Squeeze", [T, g.i64([0])])                               # scalar
    valid = None
    if isinstance(first, Embedding):
        ids_tm = g.op("Transpose", [x_name], perm=[1, 0])
        if first.mask_zero:
            valid = g.op("Not", [g.op("Equal", [ids_tm, g.i64(0)])])
        seq = g.op("Gather", [g.const(first.params["weight"], "embedding"), ids_tm], axis=0)
        layers = layers[1:]
    else:
        seq = g.op("Transpose", [x_name], perm=[1, 0, 2])
        if isinstance(first, Masking):
            differs = g.op("Not", [g.op("Equal", [seq, g.const(first.mask_value)])])
            valid = g.op("Cast", [g.op("ReduceMax", [g.op("Cast", [differs], to=6),
                                                     g.i64([2])], keepdims=0)], to=9)
            seq = g.op("Mul", [seq, g.op("Unsqueeze", [g.op("Cast", [valid], to=g.elem),
                                                       g.i64([2])])])
            layers = layers[1:]
    masks = _Masks(g, T, lengths_name, valid)
    is_seq = True
    for i, layer in enumerate(layers):
        if isinstance(layer, RecurrentLayer):
            if not is_seq:
                raise ValueError(f"{type(layer).__name__} after a many-to-one layer has no "
                                 "time axis to run over")
            seq, _, _ = _rnn_nodes(g, layer, seq, masks, f"rnn{i}")
            is_seq = layer.return_sequences
        elif type(layer) is Dense:
            seq = _dense(g, layer, seq)
        elif type(layer) is Activation:
            seq = _activation_nodes(g, layer.activation, seq)
        else:
            raise ValueError(f"to_onnx cannot export a {type(layer).__name__} layer "
                             "(exported: Embedding or Masking first, SimpleRNN, LSTM, GRU, "
                             "Dense, Activation)")
    if is_seq:
        if isinstance(seq, list):
            seq = [g.op("Transpose", [s], perm=[1, 0, 2]) for s in seq]
        else:
            seq = g.op("Transpose", [seq], perm=[1, 0, 2])
    return seq, is_seq


# The Activation layer's functions as one ONNX node each (op, attributes); silu and
# relu6 are built below. Keras 3's constants, rounded to float32 where ONNX stores them.
_ACTIVATION_OPS = {
    "linear": ("Identity", {}), "tanh": ("Tanh", {}), "relu": ("Relu", {}),
    "sigmoid": ("Sigmoid", {}), "softmax": ("Softmax", {"axis": -1}),
    "log_softmax": ("LogSoftmax", {"axis": -1}),
    "hard_sigmoid": ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    "hard_silu": ("HardSwish", {}), "softplus": ("Softplus", {}), "softsign": ("Softsign", {}),
    "elu": ("Elu", {"alpha": 1.0}),
    "selu": ("Selu", {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.2}), "exponential": ("Exp", {}),
}


def _activation_nodes(g, name, x):
    """The Activation layer ``name`` applied to ``x``."""
    if name == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "relu6":
        return g.op("Clip", [x, g.const(0.0), g.const(6.0)])
    op, attrs = _ACTIVATION_OPS[name]
    return g.op(op, [x], **attrs)


def _model(g, inputs, outputs, doc):
    onnx = g.onnx
    graph = onnx.helper.make_graph(g.nodes, "cyrnn", inputs, outputs, initializer=g.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="cyrnn", doc_string=doc)
    model.ir_version = min(model.ir_version, 10)  # readable by ONNX Runtime releases since 1.20
    onnx.checker.check_model(model, full_check=True)
    return model


def _inputs(g, first, lengths, feature_dim, batch_first=True):
    onnx = g.onnx
    if isinstance(first, Embedding):
        x = _value_info(g, "x", onnx.TensorProto.INT64, ["N", "T"])
    else:
        shape = ["N", "T", feature_dim] if batch_first else ["T", "N", feature_dim]
        x = _value_info(g, "x", g.elem, shape)
    ins = [x]
    if lengths:
        ins.append(_value_info(g, "lengths", onnx.TensorProto.INT64, ["N"]))
    return ins


def _check_exportable(layers):
    for layer in layers:
        if isinstance(layer, RecurrentLayer) and layer.cell.row.onnx is None:
            raise ValueError(f"the {layer.cell.name} cell has no ONNX operator")  # pragma: no cover


def _export_layer(layer, lengths):
    g = _Graph(layer.dtype)
    _check_exportable([layer])
    ins = _inputs(g, layer, lengths, layer.input_size, layer.batch_first)
    x = "x"
    seq = x if not layer.batch_first else g.op("Transpose", [x], perm=[1, 0, 2])
    T = g.op("Squeeze", [g.op("Gather", [g.op("Shape", [seq]), g.i64([0])]), g.i64([0])])
    masks = _Masks(g, T, "lengths" if lengths else None, None)
    out, h_ns, c_ns = _rnn_nodes(g, layer, seq, masks, "rnn")
    H = layer.hidden_size
    outs = []
    names = ["output_forward", "output_backward"] if isinstance(out, list) else ["output"]
    values = out if isinstance(out, list) else [out]
    for name, value in zip(names, values):
        if layer.return_sequences and layer.batch_first:
            value = g.op("Transpose", [value], perm=[1, 0, 2])
        g.op("Identity", [value], outputs=[name])
        width = H if isinstance(out, list) else layer.output_size
        shape = (["N", "T", width] if layer.batch_first else ["T", "N", width]) \
            if layer.return_sequences else ["N", width]
        outs.append(_value_info(g, name, g.elem, shape))
    if layer.return_state:
        LD = layer.num_layers * layer.num_directions
        for name, parts in (("h_n", h_ns), ("c_n", c_ns)):
            if parts:
                g.op("Concat", parts, outputs=[name], axis=0)
                outs.append(_value_info(g, name, g.elem, [LD, "N", H]))
    return _model(g, ins, outs, f"cyrnn {layer!r}")


def _export_sequential(model, lengths):
    g = _Graph(model.dtype)
    layers = model.layers
    _check_exportable(layers)
    first = layers[0]
    feat = (first.input_size if isinstance(first, RecurrentLayer) else None)
    ins = _inputs(g, first, lengths, feat)
    out, is_seq = _sequential_body(g, layers, "x", "lengths" if lengths else None)
    outs = []
    values = out if isinstance(out, list) else [out]
    names = ["output_forward", "output_backward"] if isinstance(out, list) else ["output"]
    for name, value in zip(names, values):
        g.op("Identity", [value], outputs=[name])
        outs.append(_value_info(g, name, g.elem, ["N", "T", None] if is_seq else ["N", None]))
    return _model(g, ins, outs, "cyrnn Sequential")


def _export_estimator(est, lengths):
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    model, spec = est.model_, est._spec
    g = _Graph(model.dtype)
    first = model.layers[0]
    feat = spec["input"]["step_features"] if not isinstance(first, Embedding) else None
    ins = _inputs(g, first, lengths, feat)
    raw, is_seq = _sequential_body(g, model.layers, "x", "lengths" if lengths else None)
    onnx = g.onnx
    shape = ["N", "T"] if is_seq else ["N"]
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if spec["target"]["binary"]:
            p = g.op("Sigmoid", [raw])
            proba = g.op("Concat", [g.op("Sub", [g.const(1.0), p]), p], axis=-1)
        else:
            proba = g.op("Softmax", [raw], axis=-1)
        g.op("Identity", [proba], outputs=["probabilities"])
        best = g.op("ArgMax", [proba], axis=-1, keepdims=0, select_last_index=0)
        if classes.dtype.kind in "US":
            table = onnx.helper.make_tensor(g.fresh("classes"), onnx.TensorProto.STRING,
                                            [len(classes)],
                                            [str(c).encode() for c in classes])
            g.inits.append(table)
            label_type = onnx.TensorProto.STRING
            tname = table.name
        else:
            tname = g.const(classes, "classes", classes.dtype)
            label_type = onnx.helper.np_dtype_to_tensor_dtype(classes.dtype)
        g.op("Gather", [tname, best], outputs=["label"], axis=0)
        outs = [_value_info(g, "label", label_type, shape),
                _value_info(g, "probabilities", g.elem, shape + [len(classes)])]
    else:
        scalar = one_target(spec)
        value = g.op("Squeeze", [raw, g.i64([-1])]) if scalar else raw
        g.op("Identity", [value], outputs=["output"])
        outs = [_value_info(g, "output", g.elem,
                            shape if scalar else shape + [spec["n_outputs"]])]
    return _model(g, ins, outs, f"cyrnn {type(est).__name__}")


def to_onnx(obj, path=None, *, lengths=False):
    """An ONNX model (``onnx.ModelProto``, opset 18) computing what ``obj`` computes.

    Parameters
    ----------
    obj : RecurrentLayer, Sequential or a fitted cyrnn estimator
        Inference only (no dropout). Initial states are zero.
    path : str or path-like, optional
        Also write the model there.
    lengths : bool, default False
        Add an int64 input ``lengths`` (n,): valid steps per sequence, post-padding, as
        cyrnn's ``lengths=`` (it becomes the recurrent nodes' ``sequence_lens``).

    Returns
    -------
    onnx.ModelProto
        Input ``x``: (N, T, features) floats of the model's dtype ((T, N, features) for
        a layer with ``batch_first=False``), or (N, T) int64 ids after an Embedding;
        batch and time axes are dynamic. Outputs: a layer's ``output`` (or
        ``output_forward``/``output_backward`` for ``merge_mode=None``), ``h_n`` and
        ``c_n`` when it returns its state; a Sequential's ``output``; a regressor's
        ``output`` (shaped as ``predict``); a classifier's ``label`` and
        ``probabilities`` (as ``predict`` and ``predict_proba``).
    """
    from .estimators.base import BaseSequenceModel

    if isinstance(obj, RecurrentLayer):
        model = _export_layer(obj, lengths)
    elif isinstance(obj, Sequential):
        model = _export_sequential(obj, lengths)
    elif isinstance(obj, BaseSequenceModel):
        model = _export_estimator(obj, lengths)
    else:
        raise TypeError(f"to_onnx exports cyrnn recurrent layers, Sequential models and "
                        f"estimators, not {type(obj).__name__}")
    if path is not None:
        _onnx().save_model(model, path)
    return model


__all__ = ["to_onnx"]
