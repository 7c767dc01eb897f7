"""The fused-call spec: the one definition of its format and of its checks.

A ``Sequential`` (or a single layer) is described to the compiled backends'
fused calls (``infer``, ``train_forward``, ``train_backward``) as an int64 array:
a header ``[SPEC_VERSION, n_ops, SPEC_WIDTH]`` and one ``SPEC_WIDTH``-long record
per op (unused fields 0). Offsets index the model's flat parameter buffer.

This module is the only place the layout is written down. The Numba backend
imports the constants (compile-time globals); the Cython build generates
``src/_constants.pxi`` from this file and from :mod:`cyrnn.cells`, so the three
cannot drift apart. Like :mod:`cyrnn.cells`, it imports only the standard
library (``setup.py`` loads both by path).

Records
-------
* embedding ``[OP_EMBED, vocab, dim, off_weight, mask_zero, frozen]``
  (frozen: a lookup table without gradient, e.g. the language model's one-hot input)
* recurrent, one per stacked layer ``[OP_RNN, cell_code, act_code, ract_code,
  input_size, hidden_size, off_w_ih, off_w_hh, off_b_ih, off_b_hh, off_peep,
  returns_sequence, directions, merge, off_w_ih_r, off_w_hh_r, off_b_ih_r,
  off_b_hh_r, off_peep_r, dropout]`` (codes from :mod:`cyrnn.cells`; ``off_peep``
  indexes the (3, H) peephole weights of a peephole LSTM, else 0; ``directions``
  1 or 2; ``merge`` one of the ``MERGE_*`` codes, how a bidirectional op combines
  its two directions' outputs; the ``_r`` offsets are the reverse direction's
  tensors (0 when ``directions`` is 1); ``dropout`` 1 when a training forward
  multiplies this op's output by a caller-given dropout mask)
* dense ``[OP_DENSE, in_features, out_features, off_weight, off_bias]``

The checks every backend applies before touching memory (same rules, same
messages): the header matches; codes lie in the table's ranges
(``0 <= cell_code < N_CELLS``, ``0 <= act_code, ract_code < N_ACTIVATIONS``);
sizes are positive; ``directions`` is 1 or 2 and ``merge`` a ``MERGE_*`` code;
every tensor (both directions') lies inside the parameter buffer (sums in
floating point, so corrupt huge values cannot wrap around); the first op is an
embedding or recurrent op; no recurrent op follows a many-to-one op; widths
chain (else the call declines and the layer path explains).
"""

from __future__ import annotations

try:  # a package import normally; by path from setup.py
    from ..cells import N_ACTIVATIONS, N_CELLS
except ImportError:  # pragma: no cover - setup.py loads cells.py itself first
    N_ACTIVATIONS = N_CELLS = None

SPEC_VERSION = 3
SPEC_HEADER = 3
SPEC_WIDTH = 20

OP_EMBED = 0
OP_RNN = 1
OP_DENSE = 2

# embedding record fields
EMB_VOCAB = 1
EMB_DIM = 2
EMB_W = 3
EMB_MASK_ZERO = 4
EMB_FROZEN = 5

# recurrent record fields
RNN_CELL = 1
RNN_ACT = 2
RNN_RACT = 3
RNN_IN = 4
RNN_HIDDEN = 5
RNN_W_IH = 6
RNN_W_HH = 7
RNN_B_IH = 8
RNN_B_HH = 9
RNN_PEEP = 10
RNN_SEQ = 11
RNN_DIRS = 12
RNN_MERGE = 13
RNN_W_IH_R = 14
RNN_W_HH_R = 15
RNN_B_IH_R = 16
RNN_B_HH_R = 17
RNN_PEEP_R = 18
RNN_DROP = 19

# merge codes of a bidirectional op (RecurrentLayer.merge_mode)
MERGE_CONCAT = 0
MERGE_SUM = 1
MERGE_MUL = 2
MERGE_AVE = 3
MERGE_CODES = {"concat": MERGE_CONCAT, "sum": MERGE_SUM, "mul": MERGE_MUL, "ave": MERGE_AVE}

# dense record fields
DENSE_IN = 1
DENSE_OUT = 2
DENSE_W = 3
DENSE_B = 4

# Error messages shared by the backends' checks.
ERRORS = {
    "header": "unsupported inference spec",
    "embed": "inference spec: embedding outside the parameter buffer",
    "first": "inference spec: the first op must be an embedding or recurrent",
    "cell": "inference spec: unknown cell",
    "order": "inference spec: recurrent op after a many-to-one op",
    "rnn": "inference spec: recurrent op outside the parameter buffer",
    "dense": "inference spec: dense op outside the parameter buffer",
    "op": "inference spec: unknown op",
    "dirs": "inference spec: directions must be 1 or 2 and merge a known mode",
}


def constants():
    """Every integer constant of this module (name -> value), for code generation."""
    return {k: v for k, v in globals().items()
            if k.isupper() and isinstance(v, int) and not isinstance(v, bool)}


def build(records):
    """The read-only int64 spec array of a list of records (lists of ints)."""
    import numpy as np

    spec = np.zeros(SPEC_HEADER + SPEC_WIDTH * len(records), np.int64)
    spec[:SPEC_HEADER] = (SPEC_VERSION, len(records), SPEC_WIDTH)
    for k, rec in enumerate(records):
        if len(rec) > SPEC_WIDTH:  # pragma: no cover - a programming error
            raise ValueError("spec record too long")
        start = SPEC_HEADER + k * SPEC_WIDTH
        spec[start:start + len(rec)] = rec
    spec.setflags(write=False)
    return spec


def rnn_record(cell, input_size, hidden_size, off_w_ih, off_w_hh, off_b_ih, off_b_hh,
               off_peep, returns_sequence, reverse=None, merge="concat", dropout=False):
    """A recurrent op's record (``cell`` a :class:`cyrnn.cells.Cell`); ``reverse``:
    the reverse direction's ``(off_w_ih, off_w_hh, off_b_ih, off_b_hh, off_peep)``
    for a bidirectional op, else None."""
    rec = [0] * SPEC_WIDTH
    rec[0] = OP_RNN
    rec[RNN_CELL], rec[RNN_ACT], rec[RNN_RACT] = cell.codes
    rec[RNN_IN] = input_size
    rec[RNN_HIDDEN] = hidden_size
    rec[RNN_W_IH], rec[RNN_W_HH], rec[RNN_B_IH], rec[RNN_B_HH] = (
        off_w_ih, off_w_hh, off_b_ih, off_b_hh)
    rec[RNN_PEEP] = off_peep
    rec[RNN_SEQ] = int(returns_sequence)
    rec[RNN_DIRS] = 1 if reverse is None else 2
    rec[RNN_MERGE] = MERGE_CODES[merge]
    if reverse is not None:
        (rec[RNN_W_IH_R], rec[RNN_W_HH_R], rec[RNN_B_IH_R], rec[RNN_B_HH_R],
         rec[RNN_PEEP_R]) = reverse
    rec[RNN_DROP] = int(dropout)
    return rec


def embed_record(vocab, dim, off_weight, mask_zero, frozen):
    rec = [0] * SPEC_WIDTH
    rec[0] = OP_EMBED
    rec[EMB_VOCAB], rec[EMB_DIM], rec[EMB_W] = vocab, dim, off_weight
    rec[EMB_MASK_ZERO], rec[EMB_FROZEN] = int(mask_zero), int(frozen)
    return rec


def dense_record(in_features, out_features, off_weight, off_bias):
    rec = [0] * SPEC_WIDTH
    rec[0] = OP_DENSE
    rec[DENSE_IN], rec[DENSE_OUT], rec[DENSE_W], rec[DENSE_B] = (
        in_features, out_features, off_weight, off_bias)
    return rec
