"""The compiled plan of a model: what every call of a layer or a ``Sequential`` runs.

A model (a single recurrent layer, or a ``Sequential``'s layer list) is described
once as an int64 spec (:mod:`cyrnn.backends.spec`) and run by the backend's fused
calls: ``infer`` (inference, states in and out, single steps as ``T = 1``),
``train_forward`` and ``train_backward``. This module builds the spec, lays out
the states, and draws the dropout masks exactly as the layer path draws them.
"""

from __future__ import annotations

import numpy as np

from .backends import spec as _spec
from .cells import CELL_TABLE


def layer_plannable(layer):
    """Whether a recurrent layer's options are ones the fused calls implement
    (layers may declare otherwise through ``_plan_supported``)."""
    check = getattr(layer, "_plan_supported", None)
    return check() if check is not None else True


def build_spec(layers, offsets, prefix):
    """The int64 spec of ``layers`` (a Sequential's list, or ``[layer]``), or None when
    the list has a shape the fused calls do not cover.

    ``offsets`` maps parameter names to their offset in the flat buffer the calls
    will get; ``prefix(i)`` is layer ``i``'s name prefix in it ("" for a lone layer,
    ``"{i}."`` in a Sequential).

    Covered: ``[Embedding] recurrent+ (Dense | recurrent)*`` where no recurrent layer
    follows a many-to-one one; recurrent layers stacked, bidirectional with any merge
    mode, with dropout between their stacked layers (training). Embedding and Dense
    must be those exact classes (a subclass may change forward or backward), except an
    Embedding subclass that declares ``_fused_frozen = True`` (a frozen lookup table).
    """
    from .layers import Dense, Embedding, RecurrentLayer  # the layers import this module

    records, seq, seen_rnn = [], True, False
    for i, layer in enumerate(layers):
        pre = prefix(i)
        frozen = bool(getattr(type(layer), "_fused_frozen", False))
        if type(layer) is Embedding or (isinstance(layer, Embedding) and frozen):
            if i != 0:
                return None
            records.append(_spec.embed_record(layer.vocab_size, layer.embedding_dim,
                                              offsets[f"{pre}weight"], layer.mask_zero,
                                              frozen))
        elif isinstance(layer, RecurrentLayer):
            if not seq or not layer_plannable(layer):
                return None
            for sub in range(layer.num_layers):
                dirs = []
                for d in range(layer.num_directions):
                    w_ih, w_hh, b_ih, b_hh = layer._names(sub, d)
                    peep = layer._peephole_name(sub, d)
                    dirs.append((offsets[pre + w_ih], offsets[pre + w_hh], offsets[pre + b_ih],
                                 offsets[pre + b_hh],
                                 0 if peep is None else offsets[pre + peep]))
                last = sub == layer.num_layers - 1
                records.append(_spec.rnn_record(
                    layer.cell, layer._layer_input_size(sub), layer.hidden_size, *dirs[0],
                    layer.return_sequences or not last,
                    reverse=dirs[1] if len(dirs) == 2 else None,
                    merge=layer.merge_mode or "concat",
                    dropout=layer.dropout > 0 and not last))
            seq = layer.return_sequences
            seen_rnn = True
        elif type(layer) is Dense and seen_rnn:
            records.append(_spec.dense_record(layer.in_features, layer.out_features,
                                              offsets[f"{pre}weight"], offsets[f"{pre}bias"]))
        else:
            return None
    return _spec.build(records)


def validity_mask(lengths, mask, n, T, batch_first=True):
    """The (n, T) C-contiguous bool mask of valid steps for ``lengths`` or ``mask`` (None
    when neither is given), checked by the layer path's validators (which raise)."""
    from . import _validation as V

    if lengths is None and mask is None:
        return None
    if lengths is not None and mask is not None:
        raise ValueError("give either lengths or mask, not both")
    if lengths is not None:
        return V.lengths_to_mask(V.check_lengths(lengths, n, T), T)
    valid = V.check_mask(mask, (n, T) if batch_first else (T, n))
    return np.ascontiguousarray(valid if batch_first else valid.T)


def draw_dropout(recurrent_layers, T, N, dtype):
    """The dropout multipliers of a training forward, drawn from each layer's generator
    in the order and shapes the layer path draws them (so both paths make the same
    masks): for every layer with ``dropout > 0``, every stacked layer but its last, a
    time-major ``(T, N, output_size)`` array of ``0`` or ``1 / keep``. Returns the list
    of arrays (empty when no layer drops)."""
    out = []
    for layer in recurrent_layers:
        if layer.dropout > 0 and layer.num_layers > 1:
            keep = 1.0 - layer.dropout
            for _ in range(layer.num_layers - 1):
                shape = (T, N, layer.output_size)
                out.append((layer._rng.random(shape) < keep).astype(dtype) / keep)
    return out


class CompiledPlan:
    """A model's spec bound to its backend's fused calls, with the state layout.

    ``recurrent``: the model's recurrent layers in order (their states, one after the
    other, are the flat state arrays of the calls)."""

    __slots__ = ("spec", "infer", "train_forward", "train_backward", "recurrent",
                 "has_c", "_blocks", "n_ops", "_no_bias", "_dropping", "_trunc", "_mod",
                 "packed", "takes_float64", "takes_steps", "empty_rows", "call_infer",
                 "_step_infer", "_raw_step")

    def __init__(self, spec, mod, recurrent):
        self.spec = spec
        self._mod = mod
        self.packed = None  # the PackedWeights every infer uses (use_packed_weights)
        # infer converts float64 features of a float32 model itself
        self.takes_float64 = getattr(mod, "INFER_TAKES_FLOAT64", False)
        # infer takes one step in step form and shapes the states it returns (step())
        self.takes_steps = getattr(mod, "INFER_TAKES_STEPS", False)
        # the fused calls take sequences with no valid step (padding only under
        # mask_zero: zero outputs, the state carried), so such a batch runs fused too
        self.empty_rows = getattr(mod, "FUSED_EMPTY_ROWS", False)
        # (every call binds the backend's infer here, when the plan is built)
        self.infer = self._step_infer = infer = mod.infer
        self._raw_step = None  # raw_step_call's (packed weights, StepCall or None)

        def call_infer(data, x):
            # infer(spec, data, x): outputs only, no mask, zero states (the scorers'
            # one-call path where their backend has no ScoringCall, and for input that
            # call declines; use_packed_weights replaces it with its own)
            return infer(spec, data, x, None, None, None, False)
        self.call_infer = call_infer
        self.train_forward = mod.train_forward
        self.train_backward = mod.train_backward
        self.recurrent = tuple(recurrent)
        self.has_c = any(layer.cell.has_cell_state for layer in recurrent)
        # per layer: (rows of its state, hidden size, has a cell state)
        self._blocks = tuple((layer.num_layers * layer.num_directions, layer.hidden_size,
                              layer.cell.has_cell_state) for layer in recurrent)
        self.n_ops = sum(layer.num_layers for layer in recurrent)
        # use_bias=False: biases held at zero, so their gradients must stay untouched
        self._no_bias = tuple(layer for layer in recurrent if not getattr(layer, "use_bias", True))
        # layers drawing dropout masks (dropout > 0 is part of every plan's cache key)
        self._dropping = tuple(layer for layer in recurrent
                               if layer.dropout > 0 and layer.num_layers > 1)
        self._trunc = (None, None)

    def backward(self, data, grad, cache, d_out, dh_n=None, dc_n=None, input_grad=False):
        """``train_backward`` with the layers' truncations; returns ``(dx, dh0, dc0)``.
        The bias gradients of ``use_bias=False`` layers are left as they were."""
        held = [(g, g.copy()) for layer in self._no_bias
                for (_, grads) in layer._tensor_views().values() for g in grads[2:4]]
        res = self.train_backward(self.spec, data, grad, cache, d_out, self.truncations(),
                                  dh_n, dc_n, input_grad)
        for g, saved in held:
            g[...] = saved
        return res

    def device_session(self, params):
        """A session keeping ``params`` (this model's buffer) on the device while it
        trains, from a backend that has them (the CUDA backend's
        ``resident_session``), else None; None too when a layer has
        ``use_bias=False`` (:meth:`backward` restores those gradients on the host)."""
        begin = getattr(self._mod, "resident_session", None)
        return None if begin is None or self._no_bias else begin(params)

    @property
    def can_pack(self):
        """Whether the backend keeps packed weights (:meth:`use_packed_weights`)."""
        return hasattr(self._mod, "PackedWeights")

    def use_packed_weights(self, fmt, auto=False, arithmetic="float32"):
        """Make every ``infer`` of this plan use weights packed once, in ``fmt``
        (``"native"`` or ``"bfloat16"``), on the first call, from the parameter
        buffer that call passes (the Cython backend's ``PackedWeights``; the buffer
        must not change afterwards). ``"bfloat16"`` packs the weights
        :meth:`packed_weight_ranges` lists, rounded to nearest even. ``auto``
        (native only): only the calls that would pack per call use them, so results
        stay exactly those of the unpacked plan. ``arithmetic="bfloat16"``
        (``"bfloat16"`` weights, a CPU with AVX-512 BF16): the products round the
        activations to bfloat16 too (``PackedWeights``)."""
        packer = getattr(self._mod, "PackedWeights", None)
        if packer is None:
            raise ValueError("packed weights need the Cython backend (this model's "
                             f"layers run on {self._mod.__name__.rsplit('.', 1)[-1]})")
        weights, infer, spec = packer(fmt, auto, arithmetic), self._mod.infer, self.spec

        def packed_infer(spec, data, x, mask=None, h0=None, c0=None, return_state=False,
                         _weights=None, state_shape=None, step=False):
            # infer's signature; the weights are always this plan's
            return infer(spec, data, x, mask, h0, c0, return_state, weights, state_shape, step)

        def call_infer(data, x):
            # the scorers' one-call path without the wrapper's frame (at batch 1 each
            # Python frame is a tenth of a microsecond held under the GIL)
            return infer(spec, data, x, None, None, None, False, weights)
        self.infer = packed_infer
        self.call_infer = call_infer
        self.packed = weights

    def scoring_call(self, post, features, max_rows):
        """The backend's one compiled call for a scorer's whole-sequence path
        (``ScoringCall``: ``infer`` with zero states and the estimator's
        post-processing ``post``, on this plan's packed weights as they are now), or
        None when the backend has none (the scorers then use :attr:`call_infer`)."""
        make = getattr(self._mod, "ScoringCall", None)
        return None if make is None else make(self.spec, self.packed, post, features,
                                              max_rows)

    def step_call(self, post, ids, features, num_layers, hidden_size, has_c, wrap=True):
        """The backend's one compiled call for a streaming step of a model with one
        recurrent layer (``StepCall``: :meth:`step` with the states in
        ``Sequential.step``'s layout, or the layer's with ``wrap=False``, and the
        post-processing ``post``, on this plan's packed weights as they are now), or
        None when the backend has none."""
        return self._step_call(self.packed, post, (ids, features, num_layers, hidden_size,
                                                   has_c), wrap)

    def _step_call(self, packed, post, form, wrap):
        make = getattr(self._mod, "StepCall", None)
        return None if make is None or form is None else make(self.spec, packed, post,
                                                               *form, wrap)

    def raw_step_call(self, form, wrap):
        """:meth:`step_call` without post-processing for the layer or model this plan
        serves (their ``step``), built on the first call from ``form()`` (``(ids,
        features, num_layers, hidden_size, has_c)``, or None when its step is not one
        such call) and kept with the plan together with the packed weights it was
        built on (after :meth:`use_packed_weights` the next call builds it again);
        None where there is none."""
        packed = self.packed  # (read once: the call is built on exactly these)
        kept = self._raw_step
        if kept is None or kept[0] is not packed:
            kept = self._raw_step = (packed, self._step_call(packed, "raw", form(), wrap))
        return kept[1]

    def step(self, data, x_t, h0=None, c0=None, state_shape=None, mask=None):
        """One time step of every op in one ``infer`` call. ``x_t``: (n, F) features or
        (n,) int64 ids, in the exact form ``infer`` takes; ``h0``/``c0``: the flat (or
        any-shaped) states or None (zeros); ``mask``: None or the (n, 1) bool valid
        rows (a masked row keeps its state, as in a whole sequence). Returns ``(y_t,
        h_n, c_n)``, ``y_t`` (n, F_out) and the states of ``state_shape`` (None: flat),
        or None when ``infer`` declines. Backends whose ``infer`` takes the step form do
        the shaping in the compiled call (at batch 1 each NumPy call after it costs
        0.3-1 us)."""
        if self.takes_steps:
            # positional: keyword parsing costs a compiled call about 0.3 us; the
            # backend's infer itself with this plan's packed weights (or None), not
            # the wrapper use_packed_weights installs (one Python frame less)
            return self._step_infer(self.spec, data, x_t, mask, h0, c0, True, self.packed,
                                    state_shape, True)
        res = self.infer(self.spec, data, x_t[:, None], mask, h0, c0, True)
        if res is None:
            return None
        out, h_n, c_n = res
        if state_shape is not None:
            h_n = h_n.reshape(state_shape)
            c_n = None if c_n is None else c_n.reshape(state_shape)
        return (out[:, 0] if out.ndim == 3 else out), h_n, c_n

    def packed_weight_ranges(self):
        """``(offset, size)`` in the parameter buffer of every weight the packed
        kernels read (each recurrent op's ``W_ih`` and ``W_hh``, both directions, and
        each Dense weight; not biases, peepholes or embedding tables)."""
        sp, S = self.spec, _spec
        out = []
        for o in range(int(sp[1])):
            rec = sp[S.SPEC_HEADER + o * S.SPEC_WIDTH:][:S.SPEC_WIDTH]
            if rec[0] == S.OP_RNN:
                D, H = int(rec[S.RNN_IN]), int(rec[S.RNN_HIDDEN])
                G = CELL_TABLE[int(rec[S.RNN_CELL])].n_gates * H
                for k_ih, k_hh in ((S.RNN_W_IH, S.RNN_W_HH), (S.RNN_W_IH_R, S.RNN_W_HH_R))[
                        :int(rec[S.RNN_DIRS])]:
                    out += [(int(rec[k_ih]), G * D), (int(rec[k_hh]), G * H)]
            elif rec[0] == S.OP_DENSE:
                out.append((int(rec[S.DENSE_W]), int(rec[S.DENSE_IN] * rec[S.DENSE_OUT])))
        return out

    def truncations(self):
        """``bptt_truncate`` per recurrent op (-1: full BPTT), int64 (read-only; cached
        while the layers' values stay the same)."""
        key = [layer.bptt_truncate for layer in self.recurrent]
        if self._trunc[0] != key:
            # (k at least the sequence length is full BPTT: a k beyond int64 is capped)
            arr = np.array([-1 if k is None else min(k, 2**62)
                            for layer, k in zip(self.recurrent, key)
                            for _ in range(layer.num_layers)], np.int64)
            arr.setflags(write=False)
            self._trunc = (key, arr)
        return self._trunc[1]

    def flat_states(self, checked):
        """The flat ``(h0, c0)`` of checked per-layer ``(h, c-or-None)`` pairs (each
        ``(L*D, n, H)`` of the dtype)."""
        if len(checked) == 1:  # the kernels take aligned, C-contiguous arrays
            return tuple(a if a is None or (a.flags.c_contiguous and a.flags.aligned)
                         else np.require(a, requirements="CA") for a in checked[0])
        h0 = np.concatenate([h.ravel() for h, _ in checked])
        c0 = None
        if self.has_c:
            c0 = np.concatenate([(np.zeros(h.size, h.dtype) if c is None else c.ravel())
                                 for h, c in checked])
        return h0, c0

    def split_states(self, h_n, c_n, n, returned_only=False):
        """Per-layer state values (h, or (h, c)) of the flat ``h_n``/``c_n``;
        ``returned_only``: None for layers built with ``return_state=False`` (as the
        layer path of ``Sequential.forward(return_states=True)`` gives them)."""
        out, pos = [], 0
        for layer, (rows, H, has_c) in zip(self.recurrent, self._blocks):
            size = rows * n * H
            if returned_only and not layer.return_state:
                out.append(None)
            else:
                h = h_n[pos:pos + size].reshape(rows, n, H)
                out.append((h, c_n[pos:pos + size].reshape(rows, n, H)) if has_c else h)
            pos += size
        return out

    def flat_grads(self, d_states, n, dtype):
        """Flat ``(dh_n, dc_n)`` for per-layer state gradients (entries may be None),
        each checked by its layer as on the layer path."""
        if d_states is not None and len(d_states) != len(self._blocks):
            raise ValueError(f"d_states needs one entry per recurrent layer "
                             f"({len(self._blocks)}), got {len(d_states)}")
        if d_states is None or all(d is None for d in d_states):
            return None, None
        hs, cs = [], []
        for layer, (rows, H, has_c), d in zip(self.recurrent, self._blocks, d_states):
            dh, dc = layer._check_state_grads(d, n)
            for value, parts in ((dh, hs), (dc, cs)):
                parts.append(np.zeros((rows, n, H), dtype) if value is None
                             else np.asarray(value, dtype))
        dh_n = np.ascontiguousarray(np.concatenate([a.ravel() for a in hs]))
        dc_n = np.ascontiguousarray(np.concatenate([a.ravel() for a in cs])) if self.has_c \
            else None
        return dh_n, dc_n

    def forward_train(self, data, x, valid, h0, c0, dtype, arithmetic="float32"):
        """``train_forward`` with dropout masks drawn from the layers' generators; when
        the backend declines (None) the generators are put back, so the layer path that
        runs instead draws the same masks. ``arithmetic="bfloat16"``: the Cython
        backend's bfloat16 products (:attr:`cyrnn.Sequential.train_compute`)."""
        extra = () if arithmetic == "float32" else (arithmetic,)
        if not self._dropping:
            return self.train_forward(self.spec, data, x, valid, h0, c0, None, *extra)
        saved = [layer._rng.bit_generator.state for layer in self._dropping]
        res = self.train_forward(self.spec, data, x, valid, h0, c0,
                                 self.dropout(x.shape[1], x.shape[0], dtype), *extra)
        if res is None:
            for layer, state in zip(self._dropping, saved):
                layer._rng.bit_generator.state = state
        return res

    def dropout(self, T, n, dtype):
        """The flat dropout multipliers of a training forward (None: no dropout)."""
        drops = draw_dropout(self.recurrent, T, n, dtype)
        if not drops:
            return None
        return drops[0].ravel() if len(drops) == 1 else np.concatenate(
            [d.ravel() for d in drops])


def backend_plan(layers, params, prefix, recurrent):
    """The :class:`CompiledPlan` of a layer list whose recurrent layers all resolve to one
    backend with fused calls, else None."""
    mods = {id(mod): mod for mod in (layer._backend() for layer in recurrent)}
    if len(mods) != 1:
        return None
    mod = next(iter(mods.values()))
    if getattr(mod, "train_backward", None) is None or getattr(mod, "infer", None) is None:
        return None
    spec = build_spec(layers, params.offsets, prefix)
    if spec is None:
        return None
    return CompiledPlan(spec, mod, recurrent)
