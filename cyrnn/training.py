"""Training loops shared by estimators and language models.

``train_step`` is one forward/backward/update on a batch. ``tbptt`` is chunked
truncated BPTT, TBPTT(k1, k2), over long sequences: the sequence is cut into
chunks of ``k1`` steps, the recurrent state is carried (detached) from one chunk
to the next, parameters are updated after every chunk, and inside a chunk each
gradient a recurrent layer receives goes back through at most ``k2`` of its steps
(per layer: see :func:`tbptt`). ``check_divergence``
is the divergence rule of every fit loop (the estimators' and
``CharLanguageModel``'s), ``evaluate_loss`` a batch's loss in inference mode.
"""

from __future__ import annotations

import numpy as np

from . import _validation as V
from .layers import RecurrentLayer
from .losses import LOSSES, get_loss


def train_step(model, optimizer, loss, x, y, lengths=None, mask=None, initial_states=None,
               sample_weight=None, return_states=False):
    """One update: zero grads, forward (training), loss, backward, ``optimizer.step()``.

    ``loss`` is a name from :data:`cyrnn.losses.LOSSES` or a function
    ``(pred, target, sample_weight=, mask=) -> (value, grad)``. Per-step losses use the
    model's output mask, so padded steps contribute nothing. Returns the loss value
    (and the final recurrent states if ``return_states``).
    """
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    if not callable(loss_fn):
        raise TypeError(f"loss must be a loss name or a function, got {type(loss).__name__}")
    plan = model._plan() if hasattr(model, "_planned_inputs") else None
    if getattr(model, "train_compute", "float32") != "float32":
        model._train_arithmetic(plan)  # raises before anything runs where it cannot
    if plan is not None:
        # one fused forward and one fused backward (docs/architecture.md); arguments
        # the fast checks do not take go to the layer path below, which judges them
        args = model._planned_inputs(plan, x, lengths, mask, initial_states, True)
        if args is not None:
            xc, valid = args[0], args[1]
            out_mask = model._output_mask_of(valid)
            check_loss_inputs(loss_fn, _output_shape(model, xc.shape), y, sample_weight,
                              out_mask)
            # the fused forward changes nothing when it declines (e.g. NaN in x: the
            # layer path below raises); gradients are zeroed once it has run
            res = model._run_planned(plan, args, True, return_states)
            if res is not None:
                out, states = res if return_states else (res, None)
                model.zero_grad()
                value, grad = loss_fn(out, y, sample_weight=sample_weight, mask=out_mask)
                model.backward(grad, input_grad=False)  # checked there, as below
                optimizer.step()
                return (value, states) if return_states else value
    if hasattr(model, "_forward_checked"):
        model.params.to_host()  # the layer path reads the host arrays
        # Validate once (x, lengths, mask), before any state changes.
        x, in_mask = model._input_mask(x, lengths, mask)
        out_mask = model._output_mask_of(in_mask)
        check_loss_inputs(loss_fn, _output_shape(model, x.shape), y, sample_weight,
                          out_mask)
        # the forward checks the initial states; gradients are zeroed once it has run
        out, states = model._forward_checked(x, in_mask, initial_states, True, True)
        model.zero_grad()
    else:  # a model-like object without the validated fast path
        out_mask = model.output_mask(x, lengths=lengths, mask=mask)
        out, states = model.forward(x, lengths=lengths, mask=mask,
                                    initial_states=initial_states, training=True,
                                    return_states=True)
        check_loss_inputs(loss_fn, out.shape, y, sample_weight, out_mask)
        model.zero_grad()
    value, grad = loss_fn(out, y, sample_weight=sample_weight, mask=out_mask)
    model.backward(grad, input_grad=False)  # no gradient on the data itself
    optimizer.step()
    return (value, states) if return_states else value


def _output_shape(model, x_shape):
    """The output shape of a :class:`~cyrnn.Sequential` for input of shape ``x_shape``
    (``(n, T, features)``, or ``(n, T)`` token ids), known before anything runs.

    Raises ``ValueError`` for a last layer with ``merge_mode=None``: its two outputs
    are no loss's prediction.
    """
    n, T = x_shape[0], x_shape[1]
    seq, width = True, (x_shape[2] if len(x_shape) > 2 else None)
    for layer in model.layers:
        if isinstance(layer, RecurrentLayer) and not layer.return_sequences:
            seq = False
        width = getattr(layer, "output_size", width)  # Activation keeps the width
    last = model.layers[-1]
    if isinstance(last, RecurrentLayer) and last._separate_outputs:
        raise ValueError("the last layer has merge_mode=None, which returns two outputs (one "
                         "per direction); training needs one output: give it a merge mode "
                         "or add a layer after it")
    return (n, T, width) if seq else (n, width)


def check_loss_inputs(loss_fn, out_shape, y, sample_weight=None, mask=None):
    """Check the targets and weights of a training step against the output shape,
    before any state changes.

    Raises ``TypeError``/``ValueError`` naming the problem: targets of the wrong
    shape (one per output, or one label per item for softmax: ``(n, T)`` targets for
    an ``(n, T, 1)`` output, never its transpose), NaN or infinite targets, labels
    that are not whole numbers in ``[0, n_classes)``, binary targets outside
    ``[0, 1]``, sample weights that are negative, non-finite or of the wrong shape, or
    no valid item with a positive weight. Targets of a custom loss function are its
    own business; its sample weights are checked.
    """
    lead = tuple(out_shape[:-1])
    if sample_weight is not None:
        sw = V._numeric_array(sample_weight, "sample_weight")
        if sw.shape not in ((lead[0],), lead):
            allowed = f"({lead[0]},)" + (f" or {lead}" if len(lead) > 1 else "")
            raise ValueError(f"sample_weight must have shape {allowed}, got {sw.shape}")
        if sw.dtype.kind == "b":
            raise TypeError("sample_weight must hold numbers, got booleans")
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight must be finite and non-negative")
        w = sw.reshape(sw.shape + (1,) * (len(lead) - sw.ndim)).astype(bool)
        if mask is not None:
            w = w & np.asarray(mask, bool)
        if not w.any():
            raise ValueError("no valid item has a positive sample_weight: nothing to learn")
    name = getattr(loss_fn, "__name__", None)
    if LOSSES.get(name) is not loss_fn:
        return  # a custom loss: its targets are its own business
    y = V._numeric_array(y, "y")
    if y.dtype.kind == "b" and name != "sigmoid_binary_cross_entropy":
        raise TypeError(f"y must hold numbers, got booleans (loss {name!r})")
    if name == "softmax_cross_entropy":
        if y.shape not in (lead, lead + (1,)):
            raise ValueError(f"softmax labels must have shape {lead} (one class index per "
                             f"output), got {y.shape}")
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ValueError("softmax labels must be whole numbers (class indices), got "
                             "fractions, NaN or infinity")
        n_classes = out_shape[-1]
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"softmax labels must be class indices in [0, {n_classes}), got "
                             f"min {y.min()}, max {y.max()}")
        return
    if y.shape != tuple(out_shape) and not (out_shape[-1] == 1 and y.shape == lead):
        raise ValueError(f"y must have the output's shape {tuple(out_shape)}"
                         + (f" (or {lead})" if out_shape[-1] == 1 else "")
                         + f", got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity")
    if name == "sigmoid_binary_cross_entropy" and y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"binary targets must lie in [0, 1], got min {y.min()}, max {y.max()}")


def _detach(states):
    return [None if s is None else
            (tuple(a.copy() for a in s) if isinstance(s, tuple) else s.copy()) for s in states]


def tbptt(model, optimizer, loss, x, y, k1, k2=None, initial_states=None, sample_weight=None):
    """Chunked truncated BPTT over long sequences (stateful training).

    Parameters
    ----------
    model : Sequential whose recurrent layers return sequences (many-to-many)
    optimizer : a :mod:`cyrnn.optim` optimizer on ``model``
    loss : str or callable, as in :func:`train_step`
    x : (n, T, ...) inputs;  y : per-step targets (n, T, ...)
    k1 : int
        Chunk length: parameters are updated every ``k1`` steps.
    k2 : int, optional (default ``k1``)
        Gradient depth: each gradient a recurrent layer receives flows through at most
        ``k2`` of its steps (its own and ``k2 - 1`` before it), never across a chunk
        boundary, so ``k2 <= k1``. ``k1 = k2 = T`` is full BPTT. ``k2 = k1`` (the
        usual TBPTT: full BPTT inside each chunk) equals PyTorch's detach-per-chunk
        training for any model; ``k2 < k1`` truncates per layer (the layer's
        ``bptt_truncate``), which equals truncating each loss term through the
        whole model for one recurrent layer, while in a stack the gradients a
        lower layer receives at steps ``t-k2+1 .. t`` each go ``k2 - 1`` steps
        further back.
    initial_states : list, optional
        States to start from (e.g. the end of the previous batch).

    Returns
    -------
    losses : list of float, one per chunk (chunks of padding only are skipped)
    states : the final (detached) states, to carry into the next call
    """
    k1 = V.check_int(k1, "k1", minimum=1)
    k2 = k1 if k2 is None else V.check_int(k2, "k2", minimum=1)
    if k2 > k1:
        raise ValueError(f"k2 ({k2}) > k1 ({k1}): gradients cannot cross a chunk boundary; "
                         "use a longer chunk")
    recurrent = model.recurrent_layers
    if any(not layer.return_sequences for layer in recurrent):
        raise ValueError("tbptt needs recurrent layers with return_sequences=True")
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    if not callable(loss_fn):
        raise TypeError(f"loss must be a loss name or a function, got {type(loss).__name__}")
    # The whole sequence's inputs and targets are checked before the first chunk trains
    # (each chunk's train_step checks its own again): a bad late chunk changes nothing.
    x, in_mask = model._input_mask(x, None, None)
    out_mask = model._output_mask_of(in_mask)
    check_loss_inputs(loss_fn, _output_shape(model, x.shape), y, sample_weight, out_mask)
    y = np.asarray(y)
    T = x.shape[1]
    chunks = _tbptt_chunks(T, k1, out_mask, sample_weight)
    saved = [layer.bptt_truncate for layer in recurrent]
    states = initial_states
    losses = []
    try:
        for layer in recurrent:
            layer.bptt_truncate = None if k2 >= k1 else k2 - 1
        for start, stop in chunks:
            # per-step weights (n, T): the chunk's steps
            sw = (sample_weight if sample_weight is None or np.ndim(sample_weight) < 2
                  else np.asarray(sample_weight)[:, start:stop])
            value, states = train_step(model, optimizer, loss_fn, x[:, start:stop],
                                       y[:, start:stop], initial_states=states,
                                       sample_weight=sw, return_states=True)
            states = _detach(states)
            losses.append(value)
    finally:
        for layer, k in zip(recurrent, saved):
            layer.bptt_truncate = k
    return losses, states


def _tbptt_chunks(T, k1, out_mask, sample_weight):
    """The ``(start, stop)`` chunks :func:`tbptt` trains on: chunks where every step is
    padding are left out (no update; padded steps carry the state unchanged, so the
    next chunk starts from the same state), and a chunk whose valid steps all have
    zero weight raises ``ValueError`` before anything trains."""
    chunks = []
    sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    for start in range(0, T, k1):
        stop = min(start + k1, T)
        valid = None if out_mask is None else np.asarray(out_mask[:, start:stop], bool)
        if valid is not None and not valid.any():
            continue
        if sw is not None:
            w = sw[:, None] if sw.ndim == 1 else sw[:, start:stop]
            if not ((w > 0) & (True if valid is None else valid)).any():
                raise ValueError(f"steps {start} to {stop - 1} (a chunk of k1 = {k1}) have no "
                                 "valid step with a positive sample_weight: nothing to learn")
        chunks.append((start, stop))
    return chunks


#: An epoch whose mean loss exceeds this many times the reference loss ends training
#: with an error (see :func:`check_divergence`).
DIVERGENCE_FACTOR = 10.0


def check_divergence(loss_curve, params, start_loss=None, baseline=None,
                     advice="lower learning_rate, set clip_norm, or scale the inputs and "
                            "targets"):
    """Raise ``ValueError`` if training has diverged; the rule of every fit loop.

    Training has diverged when a parameter is NaN or infinite, or when the epoch
    just finished, ``loss_curve[-1]``, has a mean loss above ``DIVERGENCE_FACTOR``
    (10) times the *reference*: the largest of the first epoch's loss and the best
    loss so far (``loss_curve[:-1]``, which continues across warm starts), of
    ``start_loss`` and of ``baseline``. A learning rate far too large ruins the model
    within its first updates, so the first epoch cannot be its own reference: fit
    loops pass the model's loss on the call's data before the call trains it as
    ``start_loss``, on every call: for a warm start or ``partial_fit`` on data the
    model fits badly (a new regime), that loss is above the earlier epochs', and
    training on it is no divergence. After earlier epochs it counts up to
    ``DIVERGENCE_FACTOR`` times their largest reference, so that a model diverging a
    few times over in each of several calls on the same data (each starting where the
    last ended) is still caught, at 100 times, and a new regime is tolerated up to a
    start 10 times above the earlier references (the first and the best epoch's
    losses and ``baseline``; when they are all 0 or less, the start counts whole).
    ``baseline``, the loss of an all-zero output on the current call's data, keeps a
    warm start or ``partial_fit`` on data with larger targets (a loss larger than the
    earlier epochs', but near what predicting zero costs) from counting as diverged; a
    diverged model's loss is far above both.

    With sane settings the loss never rises tenfold above its starting value (the
    examples and the quality tests never come near it), while a diverged fit (e.g.
    ``learning_rate=1e3``) reaches 100-10**6 times it within an epoch.

    Parameters
    ----------
    loss_curve : list of float
        Mean loss of every epoch so far, the last one being judged.
    params : ndarray
        The flat parameter vector.
    start_loss : float, optional
        The loss on the current call's data before the call trained (inference mode).
    baseline : float, optional
        The loss of an all-zero output on the data of the current call.
    """
    if not np.isfinite(params).all():
        raise ValueError(f"training diverged: the parameters became NaN or infinite in epoch "
                         f"{len(loss_curve)}; {advice}")
    earlier = list(loss_curve[:-1])
    history = [earlier[0], min(earlier)] if earlier else []
    if history and baseline is not None:
        history.append(baseline)
    refs = list(history)
    if start_loss is not None:
        # after earlier epochs, the call's start counts up to DIVERGENCE_FACTOR times
        # them: a model diverging a little in each of several calls on the same data
        # (each call starting where the last ended) is still caught, at 100 times
        refs.append(min(start_loss, DIVERGENCE_FACTOR * max(history))
                    if history and max(history) > 0 else start_loss)
        if not history and baseline is not None:
            refs.append(baseline)
    if not refs or not loss_curve:
        return
    reference = max(refs)
    if reference > 0 and loss_curve[-1] > DIVERGENCE_FACTOR * reference:
        raise ValueError(f"training diverged: the loss of epoch {len(loss_curve)} "
                         f"({loss_curve[-1]:.4g}) is more than {DIVERGENCE_FACTOR:g} times "
                         f"its reference {reference:.4g} (the largest of the loss at the "
                         f"start of the call, at most {DIVERGENCE_FACTOR:g} times the others, "
                         f"of the first and the best epoch, and of predicting zero); {advice}")


def zero_output_loss(model, loss, x, y, lengths=None, mask=None, sample_weight=None):
    """The loss of an all-zero output of ``model``'s shape on one batch (no forward):
    the scale of the targets, a reference of :func:`check_divergence`."""
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    out_mask = model.output_mask(x, lengths=lengths, mask=mask)
    out = np.zeros(_output_shape(model, np.shape(x)), model.dtype)
    return float(loss_fn(out, y, sample_weight=sample_weight, mask=out_mask)[0])


def evaluate_loss(model, loss, x, y, lengths=None, mask=None, sample_weight=None):
    """The loss of ``model`` on one batch, in inference mode (no dropout, no update).

    Used by the fit loops for the untrained model's loss (:func:`check_divergence`).
    """
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    out_mask = model.output_mask(x, lengths=lengths, mask=mask)
    out = model.forward(x, lengths=lengths, mask=mask, training=False)
    return float(loss_fn(out, y, sample_weight=sample_weight, mask=out_mask)[0])
