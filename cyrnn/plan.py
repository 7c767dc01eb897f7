"""The compiled plan of a model: what every call of a layer or a ``Sequential`` runs.

A model (a single recurrent layer, or a ``Sequential``'s layer list) is described
once as an int64 spec (:mod:`cyrnn.backends.spec`) and run by the backend's fused
calls: ``infer`` (inference, states in and out, single steps as ``T = 1``),
``train_forward`` and ``train_backward``. This module builds the spec, lays out
the states, and draws the dropout masks exactly as the layer path draws them.
"""

from __future__ import annotations

from .backends import spec as _spec
from .layers import Dense, Embedding, RecurrentLayer


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
                    reverse=dirs[1] if len(dirs) == 2 else None, merge=layer.merge_mode,
                    dropout=layer.dropout > 0 and not last))
            seq = layer.return_sequences
            seen_rnn = True
        elif type(layer) is Dense and seen_rnn:
            records.append(_spec.dense_record(layer.in_features, layer.out_features,
                                              offsets[f"{pre}weight"], offsets[f"{pre}bias"]))
        else:
            return None
    return _spec.build(records)


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
