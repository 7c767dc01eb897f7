"""Sequential: the small model API that estimators and language models build on."""

from __future__ import annotations

import warnings
import weakref

import numpy as np

from . import _validation as V
from .layers import Activation, Dense, Embedding, Layer, Masking, RecurrentLayer
from .layers.base import Module
from .layers.recurrent import PlannedCache, _exact
from .params import ParameterBuffer
from .plan import backend_plan, build_spec, layer_plannable, validity_mask

# layer -> weak references to the Sequentials whose buffer holds its parameters (one
# model, and its shallow copies, which share the buffer)
_OWNERS = weakref.WeakKeyDictionary()


def _prefix(i):
    return f"{i}."


#: The arithmetic of a training step's weight products (:attr:`Sequential.train_compute`).
TRAIN_COMPUTE = ("float32", "bfloat16")


class Sequential(Module):
    """A stack of layers with one flat parameter buffer.

    Parameters
    ----------
    layers : list of Layer
        Typically ``[Embedding?] + recurrent layers + [Dense]``. Recurrent layers
        must be ``batch_first``; a recurrent layer with ``return_sequences=False``
        turns the sequence into one vector per sample (many-to-one). Each layer's input
        size must be the width the layers before it give (``ValueError`` otherwise).

    Attributes
    ----------
    params : ParameterBuffer
        Every layer's tensors, named ``"{index}.{name}"`` (e.g. ``"1.weight_ih_l0"``),
        in one contiguous ``data``/``grad`` pair; each layer's ``params`` are views into
        it, so an optimizer built on ``model.params`` updates every layer in one pass.
    training : bool
        Default mode for :meth:`forward` (False: inference, no caches, no dropout).
    train_compute : ``"float32"`` (default) or ``"bfloat16"``
        The arithmetic of a training step's matrix products (forward ``x W_ih^T``,
        ``h W_hh^T`` and the Dense products; backward their transposes ``dg W`` and the
        weight gradients ``dg^T x``, ``dg^T h``). ``"bfloat16"`` (float32 models on the
        Cython backend; opt-in) rounds both operands of those products to bfloat16 and
        accumulates in float32, with AVX-512 BF16's ``VDPBF16PS`` (PyTorch's CPU
        autocast does the same to its matrix products); the cell math, the bias,
        peephole and embedding gradients, the loss and the optimizer stay float32
        (parameters are float32 throughout), and inference (``training=False``) is not
        affected (serve with ``cyrnn.scoring.load(path, compute="bfloat16")`` for the
        same products). A training forward in bfloat16 (without dropout) equals that
        scorer's output bit for bit. On a CPU without AVX-512 BF16 the steps warn once
        (RuntimeWarning) and run float32; on another backend, or for layers the compiled
        plan does not take, they raise ValueError. A training setting: :meth:`save`
        does not store it (estimators keep theirs as a parameter).

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
            owned = any(ref() is not None for ref in _OWNERS.get(layer, ()))
            if owned and layer.params.size:  # they live in that model's buffer
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) already belongs to another "
                    "Sequential, whose buffer holds its parameters (cyrnn layers cannot be "
                    "shared between models): give this model copy.deepcopy(layer), or "
                    "build it from the other model's layers once that model is gone")
        with_params = [id(layer) for layer in layers if layer.params.size]
        if len(set(with_params)) != len(with_params):
            raise ValueError("a layer appears twice in the list (cyrnn layers cannot be "
                             "shared): use copy.deepcopy(layer) for a second copy")
        many_to_one = None  # the last recurrent layer so far, when it drops the time axis
        width = None  # features per step (or per item) after the layers so far
        for i, layer in enumerate(layers):
            need = (layer.input_size if isinstance(layer, RecurrentLayer)
                    else layer.in_features if isinstance(layer, Dense) else None)
            if need is not None and width is not None and need != width:
                raise ValueError(f"layer {i} ({type(layer).__name__}) expects {need} input "
                                 f"features per step, but the layers before it give {width}")
            if isinstance(layer, (RecurrentLayer, Dense, Embedding)):
                width = layer.output_size
            elif not isinstance(layer, (Masking, Activation)):  # (these keep the width)
                width = None  # a custom layer: its width is its own business
            if isinstance(layer, RecurrentLayer) and many_to_one is not None:
                raise ValueError(f"layer {i}: a recurrent layer needs sequences, but layer "
                                 f"{many_to_one} (return_sequences=False) gives one vector "
                                 "per sequence")
            if isinstance(layer, RecurrentLayer) and not layer.return_sequences:
                many_to_one = i
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
        self._train_compute = "float32"
        specs = [(f"{i}.{name}", shape) for i, layer in enumerate(layers)
                 for name, shape in layer.param_specs()]
        self.params = ParameterBuffer(specs, dtype=self.dtype)
        self._home_layers()

    def _home_layers(self):
        """Move every layer's parameters into this model's buffer and make the model
        their owner."""
        start = 0
        for layer in self.layers:
            end = start + layer.params.size
            layer.rehome(self.params.data[start:end], self.params.grad[start:end])
            if layer.params.size:  # (parameterless layers may serve several models)
                # every live model sharing this buffer (a shallow copy shares it too)
                _OWNERS[layer] = [ref for ref in _OWNERS.get(layer, ())
                                  if ref() is not None and ref() is not self] + [
                    weakref.ref(self)]
            start = end

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_plan_cache", None)  # holds backend functions; rebuilt on demand
        state.pop("_fused_cache", None)
        state.pop("_bf16_fallback", None)  # whether this process has warned
        state.pop("_estimator_scorer", None)  # an estimator's cached fast path
        return state

    def __setstate__(self, state):
        # Pickle/deepcopy turn the layers' views into separate arrays: re-home them into
        # this model's buffer so optimizers on model.params still reach every layer (the
        # buffer realigned itself when it was restored: ParameterBuffer.__setstate__).
        self.__dict__.update(state)
        self.__dict__.pop("_kinds_cache", None)
        self.__dict__.pop("_plan_cache", None)
        self._home_layers()

    @property
    def train_compute(self):
        """Arithmetic of the training steps' weight products: 'float32' (default) or
        'bfloat16' (opt-in, float32 models on the Cython backend; see the class
        docstring's Attributes)."""
        return self.__dict__.get("_train_compute", "float32")  # (pickles of older versions)

    @train_compute.setter
    def train_compute(self, value):
        if not isinstance(value, str) or value not in TRAIN_COMPUTE:
            raise ValueError(f"train_compute must be one of {TRAIN_COMPUTE}, got {value!r}")
        if value == "bfloat16" and self.dtype != np.float32:
            raise ValueError("train_compute='bfloat16' needs a float32 model, this one is "
                             f"{np.dtype(self.dtype).name}")
        self._train_compute = value
        self.__dict__.pop("_bf16_fallback", None)

    def _train_arithmetic(self, plan):
        """The ``arithmetic`` of this model's training forwards on ``plan`` (None: the
        layer path): ``"float32"`` or ``"bfloat16"`` (:attr:`train_compute`); raises
        ValueError where the backend has no bfloat16 products, warns once and gives
        ``"float32"`` where the CPU has none."""
        if self.train_compute == "float32":
            return "float32"
        if plan is None or not plan.can_pack:  # (the names only to say why)
            names = sorted({layer._backend().__name__.rsplit(".", 1)[-1].replace("_backend", "")
                            for layer in self._recurrent})
            if plan is None and names == ["cython"]:
                raise ValueError("train_compute='bfloat16' runs on the compiled plan, which "
                                 "this model's layers do not take (Masking, Activation, "
                                 "go_backwards or merge_mode=None take the layer path; "
                                 "docs/architecture.md)")
            raise ValueError("train_compute='bfloat16' needs the Cython backend (this model's "
                             "recurrent layers run on "
                             f"{', '.join(names) or 'nothing: it has none'})")
        if not plan._mod.bf16_arithmetic_available():
            if not self.__dict__.get("_bf16_fallback"):
                self._bf16_fallback = True
                warnings.warn("train_compute='bfloat16' needs a CPU with AVX-512 BF16; this "
                              "one has none, so training runs in float32 arithmetic",
                              RuntimeWarning, stacklevel=3)
            return "float32"
        return "bfloat16"

    def clear_caches(self):
        """Drop what the last training forward kept for backward (frees memory)."""
        for layer in self.layers:
            layer._cache = None
        self._fused_cache = None

    @property
    def recurrent_layers(self):
        """The recurrent layers among :attr:`layers`, in order."""
        return [layer for layer in self.layers if isinstance(layer, RecurrentLayer)]

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
        plan = self._plan()
        if training and self.train_compute != "float32":
            self._train_arithmetic(plan)  # raises before anything runs where it cannot
        if plan is not None:
            if (not training and lengths is None and mask is None and initial_states is None
                    and not return_states and type(x) is np.ndarray):
                # the common scoring call: the kernel takes x as it is or declines
                out = plan.infer(plan.spec, self.params.data, x)
                if out is not None:
                    self.clear_caches()
                    return out
            args = self._planned_inputs(plan, x, lengths, mask, initial_states, training)
            if args is not None:
                res = self._run_planned(plan, args, training, return_states)
                if res is not None:
                    return res
        self.params.to_host()  # the layer path reads the host arrays
        x, mask = self._input_mask(x, lengths, mask)
        return self._forward_checked(x, mask, initial_states, training, return_states)

    __call__ = forward  # model(x), as a torch or Keras model is called

    # ------------------------------------------------------------------
    # The compiled plan: every call in one fused backend call (docs/architecture.md).

    def _plan(self):
        """This model's :class:`cyrnn.plan.CompiledPlan`, or None when a layer resolves
        to the NumPy reference backend (or the layers have a shape the fused calls do
        not cover). Cached per layer list and the layer options the spec depends on."""
        key = [(layer._backend(), layer.return_sequences, layer.merge_mode,
                layer.dropout > 0, layer.use_bias, layer_plannable(layer)) if is_rnn
               else getattr(layer, "mask_zero", None) for layer, is_rnn in self._kinds]
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] is self.layers and cached[1] == key:
            return cached[2]
        recurrent = self._recurrent
        plan = (backend_plan(self.layers, self.params, _prefix, recurrent) if recurrent
                else None)
        self._plan_cache = (self.layers, key, plan)
        return plan

    def _planned_inputs(self, plan, x, lengths, mask, initial_states, training):
        """``(x, valid, h0, c0)`` in the exact form of the fused calls, or None when an
        argument is invalid (the layer path then raises its error, in its order) or the
        input needs the layer path (a sequence of padding only under ``mask_zero``, on a
        backend whose fused calls do not take one)."""
        first = self.layers[0]
        try:
            # an exact-form x goes straight to the kernel, which checks its values (NaN,
            # ids out of range) before anything changes and declines: the layer path then
            # raises the validators' error
            if isinstance(first, Embedding):
                if not (type(x) is np.ndarray and x.dtype == np.int64 and x.ndim == 2):
                    x = first.check_ids(x)
            elif not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == 3
                      and x.shape[2] == first.input_size):
                x = V.check_array(x, "x", 3, self.dtype, feature_size=(
                    first.input_size if isinstance(first, RecurrentLayer) else None))
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            n, T = x.shape[0], x.shape[1]
            valid = validity_mask(lengths, mask, n, T)
            if getattr(first, "mask_zero", False):
                nonzero = x != 0
                if not plan.empty_rows and not nonzero.any(axis=1).all():
                    return None  # padding only: the layer path (zero outputs)
                valid = nonzero if valid is None else (valid & nonzero)
            h0 = c0 = None
            if initial_states is not None:
                states = self._per_recurrent_layer(initial_states, "initial_states")
                h0, c0 = plan.flat_states([layer._check_state(state, n) for layer, state
                                           in zip(plan.recurrent, states)])
        except (TypeError, ValueError):
            return None
        return x, valid, h0, c0

    def _run_planned(self, plan, args, training, return_states):
        """Run the fused forward on checked ``args``; None if the backend declines."""
        x, valid, h0, c0 = args
        n = x.shape[0]
        if training:
            res = plan.forward_train(self.params.data, x, valid, h0, c0, self.dtype,
                                     self._train_arithmetic(plan))
            if res is None:
                return None
            out, h_n, c_n, fused = res
            self._out_shape = out.shape  # backward's d_output shape
            self.clear_caches()
            self._fused_cache = (plan, fused, n)
        else:
            res = plan.infer(plan.spec, self.params.data, x, valid, h0, c0, return_states)
            if res is None:
                return None
            self.clear_caches()  # as the layer path: inference keeps no cache
            if not return_states:
                return res
            out, h_n, c_n = res
        return (out, plan.split_states(h_n, c_n, n, True)) if return_states else out

    def _truncations(self):
        """``bptt_truncate`` per recurrent op of the spec (-1: full BPTT), int64."""
        return np.array([-1 if layer.bptt_truncate is None else layer.bptt_truncate
                         for layer in self._recurrent for _ in range(layer.num_layers)],
                        np.int64)

    def inference_spec(self):
        """The model as an int64 op list for a backend's fused calls, or None when it
        has a shape the fused path does not cover (see :func:`cyrnn.plan.build_spec`).

        The layout (records for embedding, recurrent and dense ops; offsets index
        ``params.data``) is defined once, in :mod:`cyrnn.backends.spec`.
        """
        return build_spec(self.layers, self.params.offsets, lambda i: f"{i}.")

    def _forward_checked(self, x, mask, initial_states, training, return_states):
        """``forward`` on input already validated by ``_input_mask`` (the layer path)."""
        initial_states = self._per_recurrent_layer(initial_states, "initial_states")
        # every given state checked before any layer runs (a layer's dropout draws
        # would otherwise advance its generator before a later state's error)
        for layer, state in zip(self._recurrent, initial_states):
            if state is not None:
                layer._check_state(state, len(x))
        self._fused_cache = None
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
                x = self._other_layer(layer, x, training)
        # backward's d_output shape (merge_mode=None last: both directions' outputs,
        # stacked on a leading axis as the layer's backward takes them)
        self._out_shape = ((len(x),) + x[0].shape if isinstance(x, (list, tuple))
                           else x.shape)
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
        forward, which must have run in training mode (an inference forward in between
        drops its cache: RuntimeError); adds parameter gradients into ``params.grad``.

        Returns the gradient on the input (None when the first layer is an Embedding, or
        when ``input_grad`` is False: training skips that GEMM).
        """
        fused = self.__dict__.get("_fused_cache")
        if fused is not None:
            plan, cache, n = fused
            if d_output is not None:  # the layer path's check and message
                d_output = self.layers[-1]._check_d_output(d_output, self._out_shape)
            d_out = (None if d_output is None
                     else np.require(d_output, requirements="CA"))
            dh_n, dc_n = plan.flat_grads(self._per_recurrent_layer(d_states, "d_states"), n,
                                         self.dtype)
            dx = plan.backward(self.params.data, self.params.grad, cache, d_out, dh_n, dc_n,
                               bool(input_grad))[0]
            self._fused_cache = None
            return dx
        kinds = self._kinds
        d_states = self._per_recurrent_layer(d_states, "d_states")
        n_rec = len(d_states)
        # every argument checked before the first layer's backward adds gradients
        kinds[-1][0]._require_cache()
        if d_output is not None:
            kinds[-1][0]._check_d_output(d_output, self.__dict__.get("_out_shape", ()))
        for layer, d_state in zip(self._recurrent, d_states):
            cache = layer._require_cache()
            layer._check_state_grads(d_state, cache.n if isinstance(cache, PlannedCache)
                                     else cache["h_n"].shape[1])
        r = n_rec
        d = d_output
        for i in range(len(kinds) - 1, -1, -1):
            layer, is_rnn = kinds[i]
            if is_rnn:
                r -= 1
                d, _ = layer.backward(d, d_states[r], input_grad=input_grad or i > 0)
            elif d is None:  # no output gradient (as the fused call takes it): nothing to
                layer._require_cache()  # add here; the layer's cache is used up
                layer._cache = None
            else:
                d = layer.backward(d)
        return d

    def _per_recurrent_layer(self, value, name):
        """``value`` (None, or a list, tuple or array with one entry per recurrent
        layer) as a list, checked before anything runs."""
        n = len(self._recurrent)
        if value is None:
            return [None] * n
        if not isinstance(value, (list, tuple, np.ndarray)) or getattr(value, "ndim", 1) == 0:
            raise TypeError(f"{name} must be a list (or tuple, or array) with one entry per "
                            f"recurrent layer ({n}), or None, got {type(value).__name__}")
        if len(value) != n:
            raise ValueError(f"{name} needs one entry per recurrent layer ({n}), got "
                             f"{len(value)}")
        return list(value)

    def step(self, x_t, states):
        """One generation step: ``x_t`` (n,) token ids or (n, features) -> (output, states).

        No recurrent layer may be bidirectional or ``go_backwards`` (ValueError);
        ``states`` as returned by :meth:`initial_states` or a previous call (None, or a
        None entry: zeros). One fused backend call on compiled backends. A padding row
        (an all-``mask_value`` row under a first ``Masking`` layer, id 0 under
        ``mask_zero``) is a masked step, as in :meth:`forward`: its states stay as they
        were and its recurrent outputs are zero (a many-to-one layer's: the state kept).
        """
        plan = self._plan()
        if plan is not None:
            call = plan.raw_step_call(self._step_form, True)
            if call is not None:  # exact arguments: one compiled call, else None
                res = call(self.params.data, x_t, states)
                if res is not None:
                    return res
        states = self._per_recurrent_layer(states, "states")
        if plan is not None:
            res = self._planned_step(plan, x_t, states)
            if res is not None:
                return res
        for layer in self._recurrent:  # before anything runs
            why = layer._stream_refusal()
            if why is not None:
                raise ValueError(f"step() cannot run this model: {why}")
        new_states, r, valid = [], 0, None
        first = self.layers[0]
        if isinstance(first, Masking):
            x_t = V.check_array(x_t, "x_t", 2, self.dtype)
            valid = first.compute_mask(x_t)
        for layer in self.layers:
            if isinstance(layer, Embedding):
                ids = layer.check_ids(x_t, ndim=1)
                if layer.mask_zero:
                    valid = ids != 0
                x_t = layer.params["weight"][ids]
            elif isinstance(layer, RecurrentLayer):
                out, st = layer.step(x_t, states[r])
                if valid is not None and not valid.all():
                    out, st = _hold_masked_rows(layer, ~valid, out, st, states[r])
                x_t = out
                new_states.append(st)
                r += 1
            else:
                x_t = self._other_layer(layer, x_t, False)
        return x_t, new_states

    def _step_form(self):
        """``(ids, features, num_layers, hidden_size, has_c)`` (``features`` 0 for token
        ids) when :meth:`step` of exact arguments can be one compiled call
        (``StepCall``): one recurrent layer
        that can stream, after an optional Embedding without ``mask_zero`` (whose
        padding rows need the masked path); else None."""
        recurrent = self._recurrent
        if len(recurrent) != 1 or recurrent[0]._stream_refusal() is not None:
            return None
        rnn, first = recurrent[0], self.layers[0]
        ids = isinstance(first, Embedding)
        if (ids and first.mask_zero) or not (ids or first is rnn):
            return None
        return (ids, 0 if ids else first.input_size, rnn.num_layers, rnn.hidden_size,
                rnn.cell.has_cell_state)

    def _other_layer(self, layer, x, training):
        """A non-recurrent layer's forward on the layer path. In inference, a Dense layer
        of a model whose recurrent layers run on a backend with a ``projection`` (the
        Cython backend's, whose sums do not depend on the rows beside each row) uses it,
        so that :meth:`step` gives the bits of the whole sequence (BLAS's sums depend on
        the row count)."""
        if not training and type(layer) is Dense:
            recurrent = self._recurrent
            project = getattr(recurrent[0]._backend(), "projection", None) if recurrent \
                else None
            xa = np.asarray(x)
            if (project is not None and xa.dtype == self.dtype and xa.size
                    and xa.shape[-1] == layer.in_features):
                x2 = np.ascontiguousarray(xa.reshape(-1, layer.in_features))
                y = project(x2, layer.params["weight"], layer.params["bias"])
                return y.reshape(xa.shape[:-1] + (layer.out_features,))
        return layer.forward(x, training=training)

    def _planned_step(self, plan, x_t, states):
        """:meth:`step` as ``infer`` over one step, or None (the layer path runs, and
        raises on bad input). Padding ids under ``mask_zero`` go to the fused call as
        masked rows, the kernels and masking of the whole sequence."""
        first = self.layers[0]
        mask = None
        try:
            if isinstance(first, Embedding):
                ids = first.check_ids(x_t, ndim=1)
                if first.mask_zero and not ids.all():
                    mask = np.ascontiguousarray((ids != 0)[:, None])
                x = np.ascontiguousarray(ids, np.int64)
            elif _exact(x_t, self.dtype, 2, first.input_size):
                x = x_t  # NaN/inf: the fused call declines, and the layer path raises
            else:
                x = np.ascontiguousarray(V.check_array(x_t, "x_t", 2, self.dtype,
                                                       feature_size=first.input_size))
            n = x.shape[0]
            checked = []
            for layer, state in zip(plan.recurrent, states):
                if layer.bidirectional:
                    return None
                exact = layer._exact_state(state, n)  # values: as x_t's
                checked.append(exact if exact is not None else layer._check_step_state(state, n))
        except (TypeError, ValueError):
            return None
        h0, c0 = plan.flat_states(checked)
        res = plan.step(self.params.data, x, h0, c0, None, mask)
        if res is None:
            return None
        out, h_n, c_n = res
        return out, plan.split_states(h_n, c_n, n)

    def save(self, path):
        """Save the model (layers and weights) to one file in cyrnn's safe format (no
        pickle; :mod:`cyrnn.model_io`). Load it with :func:`cyrnn.load` or, for scoring,
        :func:`cyrnn.scoring.load`. Returns ``path``."""
        from .model_io import save_sequential
        return save_sequential(self, path)

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


def _hold_masked_rows(layer, masked, out, state, before):
    """A step's result with the ``masked`` rows (bool, (n,)) made masked steps, as the
    whole-sequence loops make them: ``state`` (new arrays, changed in place) back to
    ``before`` (None: zeros), ``out`` (n, H) zero, or the kept top-layer ``h`` for a
    many-to-one layer (whose output is its final state)."""
    h0, c0 = layer._check_step_state(before, len(masked))
    h, c = state if isinstance(state, tuple) else (state, None)
    h[:, masked] = h0[:, masked]
    if c is not None:
        c[:, masked] = c0[:, masked]
    out = np.array(out, copy=True)
    out[masked] = h0[-1, masked] if not layer.return_sequences else 0
    return out, state

