"""SimpleRNN, LSTM and GRU layers: one class, parametrised by the cell.

Shared code does everything except the recurrent time loop: validation, the
input projection of all steps (one GEMM), directions, stacking, merge modes,
dropout and the input-side gradients. The time loop is the backend's
(``cyrnn.backends``; contract in ``docs/architecture.md``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import _validation as V
from ..backends import check_backend_name, get_backend
from ..cells import Cell, kinds_of
from ..plan import backend_plan, layer_plannable, validity_mask
from .base import Layer, glorot_uniform, kept_for_backward, orthogonal

MERGE_MODES = ("concat", "sum", "mul", "ave", None)
# Keras options cyrnn has no equivalent of: the option, the value that is accepted
# (Keras's default), and what to use instead.
_KERAS_REFUSED = {
    "stateful": (False, "carry state explicitly: pass initial_state and keep the returned "
                        "state (return_state=True), or train long sequences with "
                        "cyrnn.training.tbptt"),
    "recurrent_dropout": (0.0, "use dropout (between stacked layers); for long sequences "
                               "cyrnn.training.tbptt"),
}


def _no_prefix(i):
    return ""


def _exact(a, dtype, ndim, features):
    """``a`` is already in the form the kernels take: a C-contiguous ndarray of ``dtype``
    with ``ndim`` dimensions and ``features`` in the last one."""
    return (type(a) is np.ndarray and a.dtype == dtype and a.ndim == ndim
            and a.shape[-1] == features and a.flags.c_contiguous)


def _surely_finite(a):
    """True when every value of ``a`` is finite, decided with one dot product (a sum of
    squares that overflows, or NaN, answers False: callers then run the full check)."""
    return math.isfinite(np.vdot(a, a)) if a.size else True


class PlannedCache:
    """What a fused training forward of a layer keeps for its backward."""

    __slots__ = ("plan", "fused", "n", "T")

    def __init__(self, plan, fused, n, T):
        self.plan, self.fused, self.n, self.T = plan, fused, n, T


def _no_none_entry(what, names, pair):
    """TypeError for a None entry of a state pair (forward's ``initial_state``,
    ``step``'s ``state``): the kernels would read an empty state (NaN outputs on the
    compiled layer path); None for the whole state is what means zeros."""
    for name, value in zip(names, pair):
        if value is None:
            raise TypeError(f"{what} must be a pair of arrays ({', '.join(names)}), got "
                            f"None for {name} (None for the whole state starts from zeros)")


class RecurrentLayer(Layer):
    """A (stacked, optionally bidirectional) recurrent layer.

    Parameters
    ----------
    input_size : int
        Features per step.
    hidden_size : int
    num_layers : int, default 1
        Stacked layers; layer ``l > 0`` reads the merged output of layer ``l - 1``.
    bidirectional : bool, default False
    merge_mode : {'concat', 'sum', 'mul', 'ave', None}, default 'concat'
        How the two directions' outputs are combined (at every stacked layer, as
        when stacking Keras ``Bidirectional`` layers; 'concat' is PyTorch's rule).
        None (Keras): ``output`` is the list ``[forward, backward]`` (one layer
        only, since a stacked layer needs one input).
    go_backwards : bool, default False
        Keras's option: process the (padded) sequence from its last step to its
        first; outputs are in processing order (reversed time), masks too.
    use_bias : bool, default True
        False: the bias tensors stay in the layout (PyTorch's names and offsets) but
        are held at zero: initialised to zero and never given a gradient.
    dropout : float, default 0
        Dropout on the outputs of every stacked layer but the last, training only.
    batch_first : bool, default True
        Input and output are (batch, time, features); False: (time, batch, features).
    return_sequences : bool, default True
        False: ``output`` is the merged final hidden states of the top layer
        (many-to-one), (n, H * directions) with ``merge_mode='concat'``, else (n, H):
        the forward direction's last valid output and, bidirectional, the reverse
        direction's final state (its output at the first step), as in PyTorch/Keras.
    return_state : bool, default True
        True: calls return ``(output, state)``; False: ``output`` only.
    bptt_truncate : int or None, default None
        Truncated BPTT depth ``k``: a gradient this layer receives at step ``t``
        (from the loss, or from the layer above) flows back through at most ``k``
        earlier valid steps of each of its stacked layers. Truncation is per layer:
        with ``num_layers`` = L, a loss term at step ``t`` reaches steps down to
        ``t - L*k`` in the bottom layer (the layer below takes the gradients at steps
        ``t-k .. t`` as new sources); for one layer it equals truncating each loss
        term separately (PyTorch's detach recipe). None: full BPTT.
    backend : str, default 'auto'
        See :func:`cyrnn.backends.available`.
    dtype : {float32, float64}, default float32
    random_state : None, int or numpy Generator
        Seeds initialisation and dropout.

    Attributes
    ----------
    params : ParameterBuffer
        PyTorch names and layout: ``weight_ih_l{k}[_reverse]`` (G*H, D_in),
        ``weight_hh_l{k}[_reverse]`` (G*H, H), ``bias_ih_l{k}[_reverse]``,
        ``bias_hh_l{k}[_reverse]`` (G*H,), gates stacked i,f,g,o (LSTM), r,z,n (GRU);
        a peephole LSTM adds ``weight_peephole_l{k}[_reverse]`` (3, H), rows p_i, p_f, p_o.
    cell : cyrnn.cells.Cell
        The cell (its row of the cell table, activations).
    """

    cell_kind = None  # the cell family (cyrnn.cells.FAMILIES), set by subclasses

    def __init__(self, input_size, hidden_size, num_layers=1, *, bidirectional=False,
                 merge_mode="concat", dropout=0.0, batch_first=True, return_sequences=True,
                 return_state=True, bptt_truncate=None, go_backwards=False, use_bias=True,
                 backend="auto", dtype=np.float32, random_state=None, **cell_options):
        name = type(self).__name__
        for key, (accepted, instead) in _KERAS_REFUSED.items():
            if key in cell_options:
                value = cell_options.pop(key)
                if value != accepted:
                    raise TypeError(f"{name} has no {key}={value!r} (Keras's option): "
                                    f"{instead}")
        self.input_size = V.check_int(input_size, "input_size", minimum=1)
        self.hidden_size = V.check_int(hidden_size, "hidden_size", minimum=1)
        self.num_layers = V.check_int(num_layers, "num_layers", minimum=1)
        self.bidirectional = bool(bidirectional)
        self.merge_mode = (None if merge_mode is None
                           else V.check_choice(merge_mode, "merge_mode", MERGE_MODES[:-1]))
        if self.merge_mode is None and self.bidirectional and self.num_layers > 1:
            raise ValueError("merge_mode=None returns the two directions separately, so it "
                             "needs num_layers=1 (stack layers instead)")
        self.go_backwards = bool(go_backwards)
        self.use_bias = bool(use_bias)
        self.dropout = V.check_float(dropout, "dropout", 0.0, 1.0, include_max=False)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout acts between stacked layers only; with num_layers=1 it "
                          "has no effect", UserWarning, stacklevel=3)
        self.batch_first = bool(batch_first)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.bptt_truncate = V.check_int(bptt_truncate, "bptt_truncate", minimum=0, allow_none=True)
        self.backend = check_backend_name(backend)
        self.dtype = V.check_dtype(dtype)
        self.cell = self._make_cell(cell_options)
        self._rng = V.check_rng(random_state)
        self._cache = None
        self._build_params()
        self.reset_parameters(self._rng)

    def _make_cell(self, options):
        """The cell of this layer's family selected by ``options`` (its row of
        :data:`cyrnn.cells.CELL_TABLE`), with errors naming this class."""
        name = type(self).__name__
        rows = kinds_of(self.cell_kind)
        allowed = set().union(*(row.options for row in rows)) | {"activation"}
        if rows[0].recurrent_activation is not None:
            allowed.add("recurrent_activation")
        for key, value in options.items():
            if key not in allowed:
                raise TypeError(f"{name} got an unexpected keyword argument {key!r}")
            if key in ("activation", "recurrent_activation"):
                if value is None and key == "activation":
                    options[key] = value = "linear"  # Keras: None means no activation
                if not isinstance(value, str):
                    raise TypeError(f"{name} {key} must be a string, got "
                                    f"{type(value).__name__}")
        return Cell(self.cell_kind, **options)

    # ------------------------------------------------------------ parameters
    @property
    def num_directions(self):
        """2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Features of the output per step."""
        if self.bidirectional and self.merge_mode == "concat":
            return 2 * self.hidden_size
        return self.hidden_size

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.output_size

    def _names(self, layer, direction):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        return (f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}")

    def _peephole_name(self, layer, direction):
        """The (3, H) peephole weights' name, or None for cells without them."""
        if not self.cell.n_peepholes:
            return None
        return f"weight_peephole_l{layer}" + ("_reverse" if direction else "")

    def param_specs(self):
        GH, H = self.cell.n_gates * self.hidden_size, self.hidden_size
        specs = []
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                w_ih, w_hh, b_ih, b_hh = self._names(layer, d)
                specs += [(w_ih, (GH, self._layer_input_size(layer))), (w_hh, (GH, H)),
                          (b_ih, (GH,)), (b_hh, (GH,))]
                peep = self._peephole_name(layer, d)
                if peep is not None:
                    specs.append((peep, (self.cell.n_peepholes, H)))
        return specs

    def reset_parameters(self, random_state=None, forget_bias=1.0):
        """The cell table's rule (Keras defaults): Glorot-uniform ``weight_ih``,
        orthogonal ``weight_hh`` blocks, zero biases, the forget-gate bias
        ``forget_bias`` (in ``bias_ih``) for cells with a forget gate (none when
        ``use_bias`` is False), zero peepholes."""
        rng = V.check_rng(random_state)
        H, G = self.hidden_size, self.cell.n_gates
        forget = self.cell.row.forget_gate
        if forget is not None:  # (checked before any parameter changes)
            forget_bias = V.check_float(forget_bias, "forget_bias")
            V.to_dtype(np.float64(forget_bias), self.dtype, "forget_bias")  # inf once stored
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                w_ih, w_hh, b_ih, b_hh = self._names(layer, d)
                p = self.params
                p[w_ih][...] = glorot_uniform(rng, p.shapes[w_ih], self.dtype)
                p[w_hh][...] = np.concatenate([orthogonal(rng, H, self.dtype) for _ in range(G)])
                p[b_ih][...] = 0
                p[b_hh][...] = 0
                if forget is not None and self.use_bias:
                    p[b_ih][forget * H:(forget + 1) * H] = forget_bias
                peep = self._peephole_name(layer, d)
                if peep is not None:
                    p[peep][...] = 0

    # ------------------------------------------------------------ fast lookups
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_views", None)  # derived from params; rebuilt on first use
        state.pop("_plan_cache", None)  # holds backend functions; rebuilt on first use
        if isinstance(state.get("_cache"), PlannedCache):
            state["_cache"] = None  # a compiled backend's cache block does not copy
        return state

    def _backend(self):
        return get_backend(self.backend)

    def _tensor_views(self):
        """Per (layer, direction): (w_ih, w_hh, b_ih, b_hh, peep) value views and the
        same five gradient views (``peep`` None without peepholes). Cached while
        ``params`` keeps its storage (optimizers and ``load_state_dict`` write into it
        in place; ``rehome`` replaces it)."""
        p = self.params
        cached = self.__dict__.get("_views")
        if cached is not None and cached[0] is p.data and cached[1] is p.grad:
            return cached[2]
        views = {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                names = self._names(layer, d) + (self._peephole_name(layer, d),)
                views[layer, d] = (tuple(None if n is None else p[n] for n in names),
                                   tuple(None if n is None else p.grad_of(n) for n in names))
        self._views = (p.data, p.grad, views)
        return views

    # ------------------------------------------------------------ validation
    def _check_inputs(self, x, lengths, mask, initial_state):
        x = V.check_array(x, "x", 3, self.dtype, feature_size=self.input_size)
        n, T = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        if lengths is not None and mask is not None:
            raise ValueError("give either lengths or mask, not both")
        if lengths is not None:
            mask = V.lengths_to_mask(V.check_lengths(lengths, n, T), T)
        elif mask is not None:
            mask = V.check_mask(mask, (n, T) if self.batch_first else (T, n))
            if not self.batch_first:
                mask = mask.T
        # time-major from here on
        x_tm = np.ascontiguousarray(x.transpose(1, 0, 2) if self.batch_first else x)
        mask_tm = None if mask is None or mask.all() else np.ascontiguousarray(mask.T)
        state = self._check_state(initial_state, n)
        return x_tm, mask_tm, state

    def _check_state(self, initial_state, n):
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if initial_state is None:
            zeros = np.zeros((LD, n, H), self.dtype)
            return (zeros, zeros.copy()) if self.cell.has_cell_state else (zeros, None)
        if self.cell.has_cell_state:
            if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
                raise TypeError("LSTM initial_state must be a tuple (h0, c0)")
            h0, c0 = initial_state
            _no_none_entry("LSTM initial_state", ("h0", "c0"), initial_state)
        else:
            h0, c0 = initial_state, None
        h0 = V.check_array(h0, "initial_state h0", 3, self.dtype)
        if h0.shape != (LD, n, H):
            raise ValueError(f"initial_state h0 must have shape {(LD, n, H)}, got {h0.shape}")
        if c0 is not None:
            c0 = V.check_array(c0, "initial_state c0", 3, self.dtype)
            if c0.shape != (LD, n, H):
                raise ValueError(f"initial_state c0 must have shape {(LD, n, H)}, got {c0.shape}")
        return h0, c0

    @property
    def _separate_outputs(self):
        """merge_mode=None on a bidirectional layer: output is [forward, backward]."""
        return self.bidirectional and self.merge_mode is None

    # ------------------------------------------------------------ merge
    def _merge(self, outs):
        if len(outs) == 1:
            return outs[0]
        a, b = outs
        if self.merge_mode is None:
            return [a, b]
        if self.merge_mode == "concat":
            return np.concatenate([a, b], axis=-1)
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) * 0.5

    def _unmerge(self, d, outs):
        """Gradient of ``_merge`` with respect to each direction's output."""
        if len(outs) == 1:
            return [d]
        H = self.hidden_size
        if self.merge_mode is None:
            return list(d)
        if self.merge_mode == "concat":
            return [d[..., :H], d[..., H:]]
        if self.merge_mode == "sum":
            return [d, d]
        if self.merge_mode == "mul":
            return [d * outs[1], d * outs[0]]
        return [d * 0.5, d * 0.5]

    # ------------------------------------------------------------ forward
    def __call__(self, x, lengths=None, mask=None, initial_state=None, training=None):
        return self.forward(x, lengths=lengths, mask=mask, initial_state=initial_state,
                            training=training)

    def forward(self, x, lengths=None, mask=None, initial_state=None, training=None):
        """Run the layer.

        Parameters
        ----------
        x : array (n, T, input_size) (``batch_first``) or (T, n, input_size)
        lengths : array (n,) of ints in [1, T], optional
            Valid steps come first (post-padding).
        mask : bool array (n, T) (or (T, n) when not ``batch_first``), optional
            Valid steps anywhere (pre-padding, gaps). Masked steps leave the state
            unchanged and output zeros.
        initial_state : h0, or (h0, c0) for LSTM; each (layers * directions, n, H)
        training : bool, optional
            Overrides ``self.training`` for this call.

        Returns
        -------
        output : (n, T, output_size) or (n, output_size) if not ``return_sequences``
        state : h_n, or (h_n, c_n) for LSTM; each (layers * directions, n, H)
            (only when ``return_state``)
        """
        training = self._resolve_training(training)
        plan = self._plan()
        if plan is not None:
            res = self._planned_forward(plan, x, lengths, mask, initial_state, training)
            if res is not None:
                return res
        self.params.to_host()  # the layer path reads the host arrays
        x_tm, mask_tm, (h0, c0) = self._check_inputs(x, lengths, mask, initial_state)
        x_tm = kept_for_backward(x_tm, x, training)
        out, h_n, c_n, cache = self._forward_tm(x_tm, mask_tm, h0, c0, training)
        self._cache = cache
        return self._package(out, h_n, c_n, batch_first=self.batch_first)

    # ------------------------------------------------------------ compiled plan
    def _plan(self):
        """This layer's :class:`cyrnn.plan.CompiledPlan` (one fused backend call per
        forward, backward or step), or None on the NumPy reference backend. Cached;
        rebuilt when an option the spec depends on changes."""
        key = (self._backend(), self.return_sequences, self.merge_mode, self.dropout > 0,
               self.use_bias, layer_plannable(self))
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        plan = backend_plan([self], self.params, _no_prefix, [self])
        self._plan_cache = (key, plan)
        return plan

    def _plan_supported(self):
        """Whether the fused calls implement this layer's options: not Keras's
        ``go_backwards`` or ``merge_mode=None`` (two outputs) yet."""
        return not (self.go_backwards or self._separate_outputs)

    def _planned_inputs(self, plan, x, lengths, mask, initial_state, training):
        """``(x, valid, h0, c0)`` in the exact form of the fused calls (batch-first,
        C-contiguous; ``valid`` an (n, T) bool mask or None; flat states or None), or
        None when an argument is invalid: the layer path then raises its error, in its
        order (x first)."""
        try:
            # an exact-form x goes straight to the kernel, which checks its values before
            # anything changes and declines: the layer path then raises the validators'
            # error
            if not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == 3
                    and x.shape[2] == self.input_size):
                x = V.check_array(x, "x", 3, self.dtype, feature_size=self.input_size)
            if self.batch_first:
                n, T = x.shape[0], x.shape[1]
            else:
                n, T = x.shape[1], x.shape[0]
                x = x.transpose(1, 0, 2)
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            valid = validity_mask(lengths, mask, n, T, self.batch_first)
            h0 = c0 = None
            if initial_state is not None:
                h0, c0 = plan.flat_states([self._check_state(initial_state, n)])
        except (TypeError, ValueError):
            return None
        return x, valid, h0, c0

    def _planned_forward(self, plan, x, lengths, mask, initial_state, training):
        """``forward`` as one fused backend call, or None (the layer path runs)."""
        args = self._planned_inputs(plan, x, lengths, mask, initial_state, training)
        if args is None:
            return None
        x, valid, h0, c0 = args
        n, T = x.shape[0], x.shape[1]
        data = self.params.data
        if training:
            res = plan.forward_train(data, x, valid, h0, c0, self.dtype)
            if res is None:
                return None
            out, h_n, c_n, fused = res
            self._cache = PlannedCache(plan, fused, n, T)
        else:
            res = plan.infer(plan.spec, data, x, valid, h0, c0, self.return_state)
            if res is None:
                return None
            self._cache = None
            out, h_n, c_n = res if self.return_state else (res, None, None)
        if self.return_sequences and not self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        if not self.return_state:
            return out
        return out, plan.split_states(h_n, c_n, n)[0]

    def _forward_checked(self, x, mask, initial_state, training):
        """``forward`` for :class:`cyrnn.Sequential`, which has already validated ``x``
        (a finite (n, T, F) array of this dtype, batch-first) and ``mask`` ((n, T)
        bool or None): only the feature count and the state are checked here."""
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x has {x.shape[-1]} features per step, "
                             f"expected {self.input_size}")
        if not training:
            # inference: the fused call layer(x) makes (the one step() makes too, so a
            # Sequential's layer path steps exactly as it runs whole sequences)
            plan = self._plan()
            if plan is not None:
                res = self._planned_forward(plan, x, None, mask, initial_state, False)
                if res is not None:
                    return res
        state = self._check_state(initial_state, x.shape[0])
        x_tm = x.transpose(1, 0, 2)
        if not x_tm.flags.c_contiguous:
            x_tm = np.ascontiguousarray(x_tm)
        x_tm = kept_for_backward(x_tm, x, training)
        mask_tm = None if mask is None or mask.all() else np.ascontiguousarray(mask.T)
        out, h_n, c_n, cache = self._forward_tm(x_tm, mask_tm, state[0], state[1], training)
        self._cache = cache
        return self._package(out, h_n, c_n, batch_first=True)

    def _forward_tm(self, x_tm, mask_tm, h0, c0, training):
        """Time-major forward on validated input. Returns (out, h_n, c_n, cache)."""
        backend = self._backend()
        views = self._tensor_views()
        mm = getattr(backend, "matmul", None)
        cell = self.cell
        if self.go_backwards:  # Keras: the padded sequence and its mask, last step first
            x_tm = x_tm[::-1]
            mask_tm = None if mask_tm is None else mask_tm[::-1]
        inp = x_tm
        h_n, c_n = np.empty_like(h0), (np.empty_like(c0) if c0 is not None else None)
        caches = []
        for layer in range(self.num_layers):
            outs, layer_caches = [], []
            for d in range(self.num_directions):
                (w_ih, w_hh, b_ih, b_hh, peep), _ = views[layer, d]
                k = layer * self.num_directions + d
                src = inp[::-1] if d else inp
                m = None if mask_tm is None else (mask_tm[::-1] if d else mask_tm)
                xp = project(src, w_ih, b_ih, mm)
                if m is not None:
                    m = np.ascontiguousarray(m)
                h_seq, h_n[k], c_T, kcache = backend.forward(
                    cell, xp, w_hh, b_hh, h0[k], None if c0 is None else c0[k],
                    m, keep_cache=training, peep=peep)
                if c_n is not None:
                    c_n[k] = c_T
                outs.append(h_seq[::-1] if d else h_seq)
                layer_caches.append((src, m, kcache))
            out = self._merge(outs)
            drop = None
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                drop = (self._rng.random(out.shape) < keep).astype(self.dtype) / keep
                out = out * drop
            caches.append((layer_caches, outs, drop))
            inp = out
        if not self.return_sequences:
            top = self.num_layers - 1
            finals = [h_n[top * self.num_directions + d] for d in range(self.num_directions)]
            out = self._merge(finals)
        cache = None
        if training:
            cache = {"layers": caches, "mask": mask_tm, "h_n": h_n.copy(), "steps": x_tm.shape[0]}
        return out, h_n, c_n, cache

    def _package(self, out, h_n, c_n, batch_first):
        if self.return_sequences and batch_first:
            if isinstance(out, list):  # merge_mode=None
                out = [np.ascontiguousarray(o.transpose(1, 0, 2)) for o in out]
            else:
                out = np.ascontiguousarray(out.transpose(1, 0, 2))
        if not self.return_state:
            return out
        return out, ((h_n, c_n) if self.cell.has_cell_state else h_n)

    # ------------------------------------------------------------ backward
    def backward(self, d_output=None, d_state=None, input_grad=True):
        """Backpropagate through the last forward, which must have run in training
        mode (an inference forward in between drops the training forward's cache:
        RuntimeError).

        Parameters
        ----------
        d_output : array shaped like ``output``, or None
        d_state : gradient on ``state`` (h_n, or (h_n, c_n)), each entry may be None
        input_grad : bool, default True
            False skips the GEMM that computes ``dx`` (a model's first layer in
            training needs no gradient on its input) and returns ``dx = None``.

        Returns
        -------
        dx : array shaped like ``x`` (None when ``input_grad`` is False)
        d_initial_state : dh0, or (dh0, dc0) for LSTM

        Parameter gradients are added to ``self.params.grad``.
        """
        cache = self._require_cache()
        if isinstance(cache, PlannedCache):
            return self._planned_backward(cache, d_output, d_state, input_grad)
        dh_n, dc_n = self._check_state_grads(d_state, cache["h_n"].shape[1])
        if d_output is not None:
            # merge_mode=None: one gradient per direction, stacked on a leading axis
            d_output = self._d_output_array(d_output)
            T, n = cache["steps"], cache["h_n"].shape[1]
            F = self.output_size
            expected = ((n, T, F) if self.batch_first else (T, n, F)) \
                if self.return_sequences else (n, F)
            if self._separate_outputs:
                expected = (2,) + expected
            if d_output.shape != expected:
                raise ValueError(f"d_output must have shape {expected}, got {d_output.shape}")
            if self.return_sequences and self.batch_first:
                d_output = np.swapaxes(d_output, -3, -2)
        dx, dh0, dc0 = self._backward_tm(cache, d_output, dh_n, dc_n, input_grad)
        if self.go_backwards and dx is not None:
            dx = dx[::-1]
        self._cache = None  # one backward per training forward, as torch frees its graph
        if self.batch_first and dx is not None:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, ((dh0, dc0) if self.cell.has_cell_state else dh0)

    def _check_state_grads(self, d_state, n):
        """``(dh_n, dc_n)`` of ``d_state`` (h_n's gradient, or (h_n's, c_n's); entries
        may be None), each checked to be ``(layers * directions, n, hidden)``, before
        anything runs (the kernels read that many values)."""
        if isinstance(d_state, (tuple, list)):
            if len(d_state) != 2:
                raise ValueError("d_state must be the gradient on h_n, or a pair (on h_n, "
                                 f"on c_n), got a sequence of {len(d_state)}")
            dh_n, dc_n = d_state
        else:
            dh_n, dc_n = d_state, None
        if dc_n is not None and not self.cell.has_cell_state:
            raise ValueError(f"d_state has a gradient on c_n, but a {type(self).__name__} "
                             "has no cell state")
        shape = (self.num_layers * self.num_directions, n, self.hidden_size)
        out = []
        for name, value in (("h", dh_n), ("c", dc_n)):
            if value is not None:
                value = V._numeric_array(value, f"the gradient on the final state {name}")
                if value.shape != shape:
                    raise ValueError(f"the gradient on the final state {name} must have "
                                     f"shape {shape} (layers * directions, batch, hidden), "
                                     f"got {value.shape}")
            out.append(value)
        return out

    def _expected_d_output(self, n, T):
        F = self.output_size
        if not self.return_sequences:
            return (n, F)
        return (n, T, F) if self.batch_first else (T, n, F)

    def _d_output_array(self, d_output):
        """``d_output`` in this layer's dtype: real numbers (strings, complex values and
        objects that are not numbers raise TypeError, as ``forward``'s input does)."""
        return V._numeric_array(d_output, "d_output").astype(self.dtype, copy=False)

    def _planned_backward(self, cache, d_output, d_state, input_grad):
        """``backward`` of a fused training forward: one fused backend call."""
        plan, n, T = cache.plan, cache.n, cache.T
        if d_output is not None:
            d_output = self._d_output_array(d_output)
            expected = self._expected_d_output(n, T)
            if d_output.shape != expected:
                raise ValueError(f"d_output must have shape {expected}, got {d_output.shape}")
            if self.return_sequences and not self.batch_first:
                d_output = d_output.transpose(1, 0, 2)
            d_output = np.require(d_output, requirements="CA")
        dh_n, dc_n = plan.flat_grads([d_state], n, self.dtype)
        dx, dh0, dc0 = plan.backward(self.params.data, self.params.grad, cache.fused,
                                     d_output, dh_n, dc_n, bool(input_grad))
        self._cache = None
        if dx is not None and not self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        shape = (self.num_layers * self.num_directions, n, self.hidden_size)
        dh0 = dh0.reshape(shape)
        return dx, ((dh0, dc0.reshape(shape)) if self.cell.has_cell_state else dh0)

    def _backward_tm(self, cache, d_out, dh_n, dc_n, input_grad=True):
        backend = self._backend()
        views = self._tensor_views()
        mm = getattr(backend, "matmul", None)
        cell, D = self.cell, self.num_directions
        layers = cache["layers"]
        LD = self.num_layers * D
        n, H = cache["h_n"].shape[1], self.hidden_size
        dh_n = np.zeros((LD, n, H), self.dtype) if dh_n is None else np.array(dh_n, self.dtype)
        if cell.has_cell_state:
            dc_n = np.zeros((LD, n, H), self.dtype) if dc_n is None else np.asarray(dc_n, self.dtype)
        dh0 = np.empty((LD, n, H), self.dtype)
        dc0 = np.empty((LD, n, H), self.dtype) if cell.has_cell_state else None
        top = self.num_layers - 1
        d_seq = None
        if d_out is not None and not self.return_sequences:
            finals = [cache["h_n"][top * D + d] for d in range(D)]
            for d, g in enumerate(self._unmerge(d_out, finals)):
                dh_n[top * D + d] += g
        elif d_out is not None:
            d_seq = d_out
        for layer in range(top, -1, -1):
            layer_caches, outs, drop = layers[layer]
            if d_seq is not None and drop is not None:
                d_seq = d_seq * drop
            d_outs = self._unmerge(d_seq, outs) if d_seq is not None else [None] * D
            d_inp = None
            need_dsrc = layer > 0 or input_grad
            for d in range(D):
                src, m, kcache = layer_caches[d]
                (w_ih, w_hh, _, _, peep), (g_wih, g_whh, g_bih, g_bhh, g_peep) = views[layer, d]
                k = layer * D + d
                dh_seq = d_outs[d]
                if dh_seq is not None:
                    dh_seq = np.ascontiguousarray(dh_seq[::-1] if d else dh_seq)
                dxp, dh0[k], dc0_k, dw_hh, db_hh, dpeep = backend.backward(
                    cell, kcache, w_hh, m, dh_seq, np.ascontiguousarray(dh_n[k]),
                    None if dc0 is None else np.ascontiguousarray(dc_n[k]), self.bptt_truncate,
                    peep=peep)
                if g_peep is not None:
                    g_peep += dpeep
                if dc0 is not None:
                    dc0[k] = dc0_k
                GH = dxp.shape[-1]
                dxp2 = dxp.reshape(-1, GH)
                src2 = src.reshape(-1, src.shape[-1])
                if (mm is not None and dxp2.dtype == src2.dtype == g_wih.dtype
                        and dxp2.flags.c_contiguous and g_wih.flags.c_contiguous
                        and w_ih.flags.c_contiguous):
                    mm(dxp2, True, np.ascontiguousarray(src2), False, g_wih, 1.0)
                    if need_dsrc:
                        dsrc = np.empty(src2.shape, self.dtype)
                        mm(dxp2, False, w_ih, False, dsrc, 0.0)
                        dsrc = dsrc.reshape(src.shape)
                else:
                    g_wih += dxp2.T @ src2
                    if need_dsrc:
                        dsrc = (dxp2 @ w_ih).reshape(src.shape)
                g_whh += dw_hh
                if self.use_bias:
                    g_bih += dxp2.sum(axis=0)
                    g_bhh += db_hh
                if not need_dsrc:
                    continue
                dsrc = dsrc[::-1] if d else dsrc
                d_inp = dsrc if d_inp is None else d_inp + dsrc
            d_seq = d_inp
        return d_seq, dh0, dc0

    # ------------------------------------------------------------ generation
    def _check_step_input(self, x_t, state):
        """``x_t`` and the state of :meth:`step` as contiguous arrays of the layer's dtype,
        the state of shape ``(num_layers, n, H)`` (the kernels read exactly that much)."""
        if not _exact(x_t, self.dtype, 2, self.input_size):
            x_t = np.ascontiguousarray(V.check_array(x_t, "x_t", 2, self.dtype,
                                                     feature_size=self.input_size))
        elif not _surely_finite(x_t):
            V.check_array(x_t, "x_t", 2, self.dtype)  # raises, naming the problem
        h, c = self._check_step_state(state, x_t.shape[0])
        return x_t, h, c

    def _exact_step_args(self, x_t, state):
        """``(x_t, h, c)`` when :meth:`step`'s arguments are already in the kernel's form
        (C-contiguous arrays of the layer's dtype and shapes; the state None or as
        ``step`` returned it), else None. Values are not looked at: the fused call
        declines non-finite ``x_t`` or states, and :meth:`step` then runs the checks."""
        if (type(x_t) is not np.ndarray or x_t.dtype != self.dtype or x_t.ndim != 2
                or x_t.shape[1] != self.input_size or not x_t.flags.c_contiguous):
            return None
        hc = self._exact_state(state, x_t.shape[0])
        return None if hc is None else (x_t, hc[0], hc[1])

    def _exact_state(self, state, n):
        """``(h, c)`` (``c`` None without a cell state) when a :meth:`step` state for
        ``n`` rows is already in the kernel's form: None (new zeros), or C-contiguous
        aligned arrays of the layer's dtype and shape as ``step`` returned them; else
        None. Values are not looked at: the fused call declines non-finite states."""
        shape = (self.num_layers, n, self.hidden_size)
        cell = self.cell.has_cell_state
        if state is None:
            return np.zeros(shape, self.dtype), (np.zeros(shape, self.dtype) if cell else None)
        if cell:
            if type(state) is not tuple or len(state) != 2:
                return None
            h, c = state
        else:
            h, c = state, None
        for a in ((h, c) if cell else (h,)):
            if (type(a) is not np.ndarray or a.shape != shape or a.dtype != self.dtype
                    or not (a.flags.c_contiguous and a.flags.aligned)):
                return None
        return h, c

    def _check_step_state(self, state, n):
        """A :meth:`step` state as contiguous ``(num_layers, n, H)`` arrays ``(h, c)``
        (``c`` None without a cell state); None means zeros."""
        shape = (self.num_layers, n, self.hidden_size)
        if state is None:
            h = np.zeros(shape, self.dtype)
            return h, (np.zeros(shape, self.dtype) if self.cell.has_cell_state else None)
        if self.cell.has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{type(self).__name__} step state must be a pair (h, c)")
            _no_none_entry(f"{type(self).__name__} step state", ("h", "c"), state)
            parts = [("state h", state[0]), ("state c", state[1])]
        else:
            parts = [("state", state)]
        arrays = []
        for name, value in parts:
            if (type(value) is np.ndarray and value.shape == shape and value.dtype == self.dtype
                    and value.flags.c_contiguous and value.flags.aligned
                    and _surely_finite(value)):
                arrays.append(value)  # the common case, checked cheaply
                continue
            arr = V.check_array(value, name, 3, self.dtype)
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (layers, batch, hidden), "
                                 f"got {arr.shape}")
            arrays.append(np.require(arr, requirements="CA"))
        return (arrays[0], arrays[1]) if len(arrays) == 2 else (arrays[0], None)

    def _step_form(self):
        """``(ids, features, num_layers, hidden_size, has_c)`` of :meth:`step` as one
        compiled call (``CompiledPlan.raw_step_call``)."""
        return False, self.input_size, self.num_layers, self.hidden_size, \
            self.cell.has_cell_state

    def _stream_refusal(self):
        """Why :meth:`step` cannot run this layer, or None: a layer that reads a
        sequence from its end needs the steps still to come."""
        if self.bidirectional:
            return ("it is bidirectional, and its reverse direction needs the steps still "
                    "to come")
        if self.go_backwards:
            return "it reads the sequence from its last step (go_backwards=True)"
        return None

    def step(self, x_t, state):
        """One time step for every stacked layer (inference; not bidirectional or
        ``go_backwards`` layers, which read the sequence from its end: ValueError).

        Parameters
        ----------
        x_t : (n, input_size) array
        state : h, or (h, c) for LSTM, each (num_layers, n, H)

        Returns
        -------
        output : (n, H) the top layer's new hidden state
        state : the new state, same structure
        """
        why = self._stream_refusal()
        if why is not None:
            raise ValueError(f"step() cannot run this layer: {why}")
        plan = self._plan()
        if plan is not None:  # one fused call: infer over one step, states in and out
            call = plan.raw_step_call(self._step_form, False)
            if call is not None:  # exact arguments: one compiled call, else None
                res = call(self.params.data, x_t, state)
                if res is not None:
                    return res
            args = self._exact_step_args(x_t, state)
            if args is None:  # the checks, then the same call
                args = self._check_step_input(x_t, state)
            inp, h, c = args
            res = plan.step(self.params.data, inp, h, c, h.shape)
            if res is not None:
                out, h_n, c_n = res
                return out, ((h_n, c_n) if c is not None else h_n)
        inp, h, c = self._check_step_input(x_t, state)
        backend = self._backend()
        h_new, c_new = np.empty_like(h), (np.empty_like(c) if c is not None else None)
        views = self._tensor_views()
        for layer in range(self.num_layers):
            (w_ih, w_hh, b_ih, b_hh, peep), _ = views[layer, 0]
            xp = inp @ w_ih.T + b_ih
            h_new[layer], c_l = backend.step(self.cell, xp, w_hh, b_hh, h[layer],
                                             None if c is None else c[layer], peep=peep)
            if c_new is not None:
                c_new[layer] = c_l
            inp = h_new[layer]
        return inp, ((h_new, c_new) if c is not None else h_new)

    def to_torch_state_dict(self):
        """The parameters as a ``state_dict`` for the matching torch module (see
        :func:`cyrnn.interop.to_torch_state_dict`; torch is imported only here)."""
        from ..interop import to_torch_state_dict
        return to_torch_state_dict(self)

    def __repr__(self):
        extra = f", bidirectional=True, merge_mode={self.merge_mode!r}" if self.bidirectional else ""
        extra += ", go_backwards=True" if self.go_backwards else ""
        extra += ", use_bias=False" if not self.use_bias else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra})")


def project(x_tm, w_ih, b_ih, matmul=None):
    """Input projection for all steps at once: (T, N, D) -> (T, N, G*H), one GEMM.

    ``matmul``: a backend's ``matmul(a, trans_a, b, trans_b, out, beta)`` (the
    Cython backend routes it through its own BLAS and blocking rule), else NumPy.
    """
    T, N, D = x_tm.shape
    x2 = np.ascontiguousarray(x_tm).reshape(T * N, D)
    if matmul is not None and x2.dtype == w_ih.dtype and w_ih.flags.c_contiguous:
        xp = np.empty((T * N, w_ih.shape[0]), x2.dtype)
        matmul(x2, False, w_ih, True, xp, 0.0)
    else:
        xp = x2 @ w_ih.T
    xp += b_ih
    return xp.reshape(T, N, -1)


class SimpleRNN(RecurrentLayer):
    """Elman RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Takes ``activation`` ('tanh' default, 'relu', 'sigmoid', 'linear') besides the
    :class:`RecurrentLayer` parameters.
    """

    cell_kind = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, *, activation="tanh", **kwargs):
        super().__init__(input_size, hidden_size, num_layers, activation=activation, **kwargs)


class LSTM(RecurrentLayer):
    """Long short-term memory, PyTorch gate order i, f, g, o; state ``(h, c)``.

    Parameters (besides those of :class:`RecurrentLayer`)
    ----------
    forget_bias : float, default 1.0
        Initial forget-gate bias (Keras's ``unit_forget_bias``).
    peephole : bool, default False
        Peephole connections (Gers & Schmidhuber): ``i = sig(a_i + p_i c_{t-1})``,
        ``f = sig(a_f + p_f c_{t-1})``, ``o = sig(a_o + p_o c_t)``, with per-layer and
        direction weights ``weight_peephole_l{k}`` (3, H), rows p_i, p_f, p_o,
        initialised to zero. ONNX's ``P`` input holds the same vectors in the order
        i, o, f. PyTorch has no peephole LSTM (``to_torch_state_dict`` refuses it).
    activation : {'tanh', 'relu', 'sigmoid', 'linear'}, default 'tanh'
        The candidate ``g`` and the output ``act(c_t)`` nonlinearity (Keras's).
    recurrent_activation : {'sigmoid', 'hard_sigmoid'}, default 'sigmoid'
        The gates' nonlinearity; hard_sigmoid is Keras 3's ``clip(x/6 + 1/2, 0, 1)``.
    """

    cell_kind = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, *, forget_bias=1.0,
                 peephole=False, activation="tanh", recurrent_activation="sigmoid", **kwargs):
        self.forget_bias = V.check_float(forget_bias, "forget_bias")
        super().__init__(input_size, hidden_size, num_layers, peephole=bool(peephole),
                         activation=activation, recurrent_activation=recurrent_activation,
                         **kwargs)

    @property
    def peephole(self):
        """Whether the gates see the cell state (peephole connections)."""
        return self.cell.peephole

    def reset_parameters(self, random_state=None, forget_bias=None):
        super().reset_parameters(random_state,
                                 self.forget_bias if forget_bias is None else forget_bias)


class GRU(RecurrentLayer):
    """Gated recurrent unit, gate order r, z, n.

    ``reset_after=True`` (default) is PyTorch/cuDNN's form, ``False`` Cho et al.'s
    original: the reset gate multiplies the state before the recurrent product.
    ``activation`` (the candidate ``n``; tanh, relu, sigmoid, linear) and
    ``recurrent_activation`` (the r and z gates; sigmoid, hard_sigmoid) as Keras's.
    """

    cell_kind = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, reset_after=True,
                 activation="tanh", recurrent_activation="sigmoid", **kwargs):
        super().__init__(input_size, hidden_size, num_layers, reset_after=bool(reset_after),
                         activation=activation, recurrent_activation=recurrent_activation,
                         **kwargs)
