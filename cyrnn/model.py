"""Sequential: the small model API that estimators and language models build on."""

from __future__ import annotations

import numpy as np

from . import _validation as V
from .backends import spec as _spec
from .layers import Dense, Embedding, Layer, Masking, RecurrentLayer
from .params import ParameterBuffer


_NO_FUSION = object()  # "take the layer path" (see Sequential._fused_mask)


class _FusedCalls:
    """A backend's fused entry points bound to one model spec; ``masks``: whether they
    take a validity mask (the backend's ``FUSED_MASKS``)."""

    __slots__ = ("spec", "infer", "train_forward", "train_backward", "masks")

    def __init__(self, spec, infer, train_forward, train_backward, masks=False):
        self.spec = spec
        self.infer = infer
        self.train_forward = train_forward
        self.train_backward = train_backward
        self.masks = masks


class Sequential:
    """A stack of layers with one flat parameter buffer.

    Parameters
    ----------
    layers : list of Layer
        Typically ``[Embedding?] + recurrent layers + [Dense]``. Recurrent layers
        must be ``batch_first``; a recurrent layer with ``return_sequences=False``
        turns the sequence into one vector per sample (many-to-one).

    Attributes
    ----------
    params : ParameterBuffer
        Every layer's tensors, named ``"{index}.{name}"`` (e.g. ``"1.weight_ih_l0"``),
        in one contiguous ``data``/``grad`` pair; each layer's ``params`` are views into
        it, so an optimizer built on ``model.params`` updates every layer in one pass.
    training : bool
        Default mode for :meth:`forward` (False: inference, no caches, no dropout).

    Examples
    --------
    >>> import numpy as np, cyrnn
    >>> model = cyrnn.Sequential([cyrnn.LSTM(3, 8, return_sequences=False, random_state=0),
    ...                           cyrnn.Dense(8, 1, random_state=0)])
    >>> x = np.zeros((4, 10, 3), np.float32)
    >>> model.forward(x).shape
    (4, 1)
    """

    def __init__(self, layers):
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError("Sequential needs a non-empty list of cyrnn layers")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) != 1:
            raise ValueError(f"all layers must share one dtype, got {sorted(map(str, dtypes))}")
        for i, layer in enumerate(layers):
            if isinstance(layer, RecurrentLayer) and not layer.batch_first:
                raise ValueError(f"layer {i}: recurrent layers in a Sequential must be batch_first")
            if isinstance(layer, (Embedding, Masking)) and i != 0:
                raise ValueError(f"{type(layer).__name__} can only be the first layer")
            if (isinstance(layer, RecurrentLayer) and layer._separate_outputs
                    and i != len(layers) - 1):
                raise ValueError(f"layer {i}: a layer with merge_mode=None returns two outputs, "
                                 "so it can only be the last layer")
        self.layers = layers
        self.dtype = layers[0].dtype
        self.training = False
        specs = [(f"{i}.{name}", shape) for i, layer in enumerate(layers)
                 for name, shape in layer.param_specs()]
        self.params = ParameterBuffer(specs, dtype=self.dtype)
        start = 0
        for layer in layers:
            end = start + layer.params.size
            layer.rehome(self.params.data[start:end], self.params.grad[start:end])
            start = end

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_infer_cache", None)  # holds a backend function; rebuilt on demand
        return state

    def __setstate__(self, state):
        # Pickle/deepcopy turn the layers' views into separate arrays: re-home them into
        # this model's buffer so optimizers on model.params still reach every layer.
        self.__dict__.update(state)
        self.__dict__.pop("_kinds_cache", None)
        self.__dict__.pop("_infer_cache", None)
        start = 0
        for layer in self.layers:
            end = start + layer.params.size
            layer.rehome(self.params.data[start:end], self.params.grad[start:end])
            start = end

    def clear_caches(self):
        """Drop what the last training forward kept for backward (frees memory)."""
        for layer in self.layers:
            layer._cache = None

    @property
    def recurrent_layers(self):
        return [layer for layer in self.layers if isinstance(layer, RecurrentLayer)]

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        self.params.zero_grad()

    def state_dict(self):
        return self.params.state_dict()

    def load_state_dict(self, state, strict=True):
        self.params.load_state_dict(state, strict=strict)

    # ------------------------------------------------------------------
    def _input_mask(self, x, lengths, mask):
        """Validate ``x`` enough to derive its (n, T) mask, before any layer runs."""
        first = self.layers[0]
        if isinstance(first, Embedding):
            ids = first.check_ids(x)
            n, T = ids.shape
            x = ids
        else:
            x = V.check_array(x, "x", 3, self.dtype,
                              feature_size=(first.input_size if isinstance(first, RecurrentLayer)
                                            else None))
            n, T = x.shape[:2]
        if lengths is not None and mask is not None:
            raise ValueError("give either lengths or mask, not both")
        if lengths is not None:
            mask = V.lengths_to_mask(V.check_lengths(lengths, n, T), T)
        elif mask is not None:
            mask = V.check_mask(mask, (n, T))
        if isinstance(first, (Embedding, Masking)):
            # a sequence of padding only is all masked: zero outputs, as in Keras
            data_mask = first.compute_mask(x)
            if data_mask is not None:
                mask = data_mask if mask is None else (mask & data_mask)
        return x, mask

    def forward(self, x, lengths=None, mask=None, initial_states=None, training=None,
                return_states=False):
        """Run all layers.

        Parameters
        ----------
        x : (n, T, features) floats, or (n, T) token ids when the first layer is an Embedding
        lengths : (n,) ints, optional;  mask : (n, T) bools, optional
        initial_states : list with one entry (or None) per recurrent layer, optional
        training : bool, optional (default ``self.training``)
        return_states : bool
            Also return the final state of every recurrent layer (for stateful training
            and generation).

        Returns
        -------
        output : (n, T, out) or (n, out) array;  states : list (if ``return_states``)

        A sequence with no valid step (all padding under ``mask_zero`` or
        :class:`~cyrnn.layers.Masking`, or an all-False mask row) keeps its initial
        state: its recurrent outputs are zeros, as in Keras.
        """
        training = self.training if training is None else bool(training)
        if not training and initial_states is None and not return_states:
            fused = self._fused()
            valid = self._fused_mask(fused, x, lengths, mask)
            if valid is not _NO_FUSION:
                out = (fused.infer(fused.spec, self.params.data, x) if valid is None
                       else fused.infer(fused.spec, self.params.data, x, valid))
                if out is not None:
                    self.clear_caches()  # as the layer path: inference keeps no cache
                    return out
        x, mask = self._input_mask(x, lengths, mask)
        return self._forward_checked(x, mask, initial_states, training, return_states)

    # ------------------------------------------------------------------
    # Fused inference: one backend call for the whole model (docs/architecture.md).

    def _fused(self):
        """The fused calls of this model's backend (``infer``, and ``train_forward`` /
        ``train_backward`` or None) with the spec, when the whole model can run in one
        backend call; else None. Cached per layer list and backend choice."""
        layers = self.layers
        # what the spec depends on besides the layer list (attributes users may change)
        key = tuple((layer.backend, layer.return_sequences) if is_rnn
                    else getattr(layer, "mask_zero", None) for layer, is_rnn in self._kinds)
        cached = self.__dict__.get("_infer_cache")
        if cached is not None and cached[0] is layers and cached[1] == key:
            return cached[2]
        plan = None
        spec = self.inference_spec()
        if spec is not None:
            mods = {id(layer._backend()): layer._backend() for layer in self._recurrent}
            mod = next(iter(mods.values())) if len(mods) == 1 else None
            if mod is not None and hasattr(mod, "infer"):
                plan = _FusedCalls(spec, mod.infer, getattr(mod, "train_forward", None),
                                   getattr(mod, "train_backward", None),
                                   bool(getattr(mod, "FUSED_MASKS", False)))
        self._infer_cache = (layers, key, plan)
        return plan

    def _fused_mask(self, fused, x, lengths, mask):
        """The validity mask a fused call takes for ``lengths``/``mask``: None (all
        valid), an (n, T) bool array, or ``_NO_FUSION`` when the call must take the
        layer path (no fused calls, a backend without masks, input the validators
        should judge in the layer path's order)."""
        if fused is None:
            return _NO_FUSION
        if lengths is None and mask is None:
            return None
        if (not fused.masks or (lengths is not None and mask is not None)
                or type(x) is not np.ndarray or x.ndim < 2):
            return _NO_FUSION
        n, T = x.shape[:2]
        try:
            if lengths is not None:
                return V.lengths_to_mask(V.check_lengths(lengths, n, T), T)
            return np.ascontiguousarray(V.check_mask(mask, (n, T)))
        except (TypeError, ValueError):
            return _NO_FUSION  # the layer path raises, after checking x first

    def _fused_training(self):
        """The fused calls when a training step can run in one forward and one backward
        backend call (the backend has them; no dropout between stacked layers), else
        None. Used by :func:`cyrnn.training.train_step`."""
        plan = self._fused()
        if plan is None or plan.train_forward is None:
            return None
        if any((layer.dropout > 0 and layer.num_layers > 1) or not layer.use_bias
                   for layer in self._recurrent):
            return None  # dropout between layers; biases held at zero (use_bias=False)
        return plan

    def _truncations(self):
        """``bptt_truncate`` per recurrent op of the spec (-1: full BPTT), int64."""
        return np.array([-1 if layer.bptt_truncate is None else layer.bptt_truncate
                         for layer in self._recurrent for _ in range(layer.num_layers)],
                        np.int64)

    def inference_spec(self):
        """The model as an int64 op list for a backend's fused calls, or None when it
        has a shape the fused path does not cover (bidirectional layers, a recurrent
        layer that is not first after an optional Embedding, layers after a many-to-one
        layer other than Dense, subclasses of Embedding or Dense).

        The layout (records for embedding, recurrent and dense ops; offsets index
        ``params.data``) is defined once, in :mod:`cyrnn.backends.spec`.
        """
        records, seq, seen_rnn = [], True, False
        offsets = self.params.offsets
        for i, (layer, is_rnn) in enumerate(self._kinds):
            # exact types: a subclass may change forward/backward, which the fused
            # kernels would not know; a subclass can declare itself a frozen lookup
            # table (``_fused_frozen``: forward unchanged, no gradient)
            frozen = bool(getattr(type(layer), "_fused_frozen", False))
            if type(layer) is Embedding or (isinstance(layer, Embedding) and frozen):
                records.append(_spec.embed_record(layer.vocab_size, layer.embedding_dim,
                                                  offsets[f"{i}.weight"], layer.mask_zero,
                                                  frozen))
            elif is_rnn:
                if not seq or layer.num_directions != 1 or layer.go_backwards:
                    return None
                for sub in range(layer.num_layers):
                    w_ih, w_hh, b_ih, b_hh = layer._names(sub, 0)
                    peep = layer._peephole_name(sub, 0)
                    last = sub == layer.num_layers - 1
                    records.append(_spec.rnn_record(
                        layer.cell, layer._layer_input_size(sub), layer.hidden_size,
                        offsets[f"{i}.{w_ih}"], offsets[f"{i}.{w_hh}"], offsets[f"{i}.{b_ih}"],
                        offsets[f"{i}.{b_hh}"], 0 if peep is None else offsets[f"{i}.{peep}"],
                        layer.return_sequences or not last))
                seq = layer.return_sequences
                seen_rnn = True
            elif type(layer) is Dense and seen_rnn:
                records.append(_spec.dense_record(layer.in_features, layer.out_features,
                                                  offsets[f"{i}.weight"], offsets[f"{i}.bias"]))
            else:
                return None
        return _spec.build(records)

    def _forward_checked(self, x, mask, initial_states, training, return_states):
        """``forward`` on input already validated by ``_input_mask``."""
        recurrent = self._recurrent
        if initial_states is None:
            initial_states = [None] * len(recurrent)
        if len(initial_states) != len(recurrent):
            raise ValueError(f"initial_states needs {len(recurrent)} entries, "
                             f"got {len(initial_states)}")
        states, r = [], 0
        for layer, is_rnn in self._kinds:
            if is_rnn:
                result = layer._forward_checked(x, mask, initial_states[r], training)
                x, state = result if layer.return_state else (result, None)
                states.append(state)
                r += 1
                if not layer.return_sequences:
                    mask = None
            else:
                x = layer.forward(x, training=training)
        return (x, states) if return_states else x

    @property
    def _kinds(self):
        """(layer, is recurrent) pairs, computed once per layer list."""
        cached = self.__dict__.get("_kinds_cache")
        if cached is None or cached[0] is not self.layers or len(cached[1]) != len(self.layers):
            kinds = [(layer, isinstance(layer, RecurrentLayer)) for layer in self.layers]
            cached = (self.layers, kinds)
            self._kinds_cache = cached
        return cached[1]

    @property
    def _recurrent(self):
        return [layer for layer, is_rnn in self._kinds if is_rnn]

    def _output_mask_of(self, mask):
        """The output mask for an input mask already validated by ``_input_mask``."""
        for layer, is_rnn in self._kinds:
            if is_rnn and not layer.return_sequences:
                return None
        return mask

    def output_mask(self, x, lengths=None, mask=None):
        """The (n, T) validity mask of the output steps (None: all valid or no time axis)."""
        x, mask = self._input_mask(x, lengths, mask)
        return self._output_mask_of(mask)

    def backward(self, d_output, d_states=None, input_grad=True):
        """Backpropagate ``d_output`` (and optional final-state gradients) through the last
        training-mode forward; adds parameter gradients into ``params.grad``.

        Returns the gradient on the input (None when the first layer is an Embedding, or
        when ``input_grad`` is False: training skips that GEMM).
        """
        kinds = self._kinds
        n_rec = sum(is_rnn for _, is_rnn in kinds)
        d_states = [None] * n_rec if d_states is None else list(d_states)
        r = n_rec
        d = d_output
        for i in range(len(kinds) - 1, -1, -1):
            layer, is_rnn = kinds[i]
            if is_rnn:
                r -= 1
                d, _ = layer.backward(d, d_states[r], input_grad=input_grad or i > 0)
            else:
                d = layer.backward(d)
        return d

    def step(self, x_t, states):
        """One generation step: ``x_t`` (n,) token ids or (n, features) -> (output, states).

        Every recurrent layer must be unidirectional; ``states`` as returned by
        :meth:`initial_states` or a previous call.
        """
        new_states, r = [], 0
        for layer in self.layers:
            if isinstance(layer, Embedding):
                x_t = layer.params["weight"][layer.check_ids(x_t, ndim=1)]
            elif isinstance(layer, RecurrentLayer):
                x_t, st = layer.step(x_t, states[r])
                new_states.append(st)
                r += 1
            else:
                x_t = layer.forward(x_t, training=False)
        return x_t, new_states

    def initial_states(self, n):
        """Zero states for ``n`` sequences, one entry per recurrent layer."""
        out = []
        for layer in self.recurrent_layers:
            shape = (layer.num_layers * layer.num_directions, n, layer.hidden_size)
            h = np.zeros(shape, self.dtype)
            out.append((h, np.zeros(shape, self.dtype)) if layer.cell.has_cell_state else h)
        return out

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n])"


__all__ = ["Sequential"]
