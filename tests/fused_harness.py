"""Models for the fused-call tests: a backend's fused path against the NumPy layer path."""

import copy

import numpy as np

import cyrnn

CELLS = [
    ("lstm", cyrnn.LSTM, {}),
    ("gru", cyrnn.GRU, {}),
    ("gru_cho", cyrnn.GRU, {"reset_after": False}),
    ("rnn_tanh", cyrnn.SimpleRNN, {}),
    ("rnn_relu", cyrnn.SimpleRNN, {"activation": "relu"}),
    ("rnn_sigmoid", cyrnn.SimpleRNN, {"activation": "sigmoid"}),
    ("rnn_linear", cyrnn.SimpleRNN, {"activation": "linear"}),
    ("lstm_peephole", cyrnn.LSTM, {"peephole": True}),
    ("lstm_peephole_relu_hard", cyrnn.LSTM, {"peephole": True, "activation": "relu",
                                             "recurrent_activation": "hard_sigmoid"}),
    ("gru_linear_hard", cyrnn.GRU, {"activation": "linear",
                                    "recurrent_activation": "hard_sigmoid"}),
    ("gru_cho_sigmoid_hard", cyrnn.GRU, {"reset_after": False, "activation": "sigmoid",
                                         "recurrent_activation": "hard_sigmoid"}),
]
# The peephole LSTM and non-default activations / gate activations of the cell table.
CELLS += [
    ("lstm_peephole", cyrnn.LSTM, {"peephole": True}),
    ("lstm_peephole_sigmoid_hard", cyrnn.LSTM,
     {"peephole": True, "activation": "sigmoid", "recurrent_activation": "hard_sigmoid"}),
    ("lstm_relu_hard", cyrnn.LSTM, {"activation": "relu", "recurrent_activation": "hard_sigmoid"}),
    ("gru_linear_hard", cyrnn.GRU, {"activation": "linear", "recurrent_activation": "hard_sigmoid"}),
    ("gru_cho_relu", cyrnn.GRU, {"reset_after": False, "activation": "relu"}),
    ("rnn_linear", cyrnn.SimpleRNN, {"activation": "linear"}),
]


def build_model(backend, Cls, kw, dtype, *, num_layers=1, seq=False, stacked=1, embed=None,
                mask_zero=False, heads=(3,), truncate=None, D=5, H=7):
    """``[Embedding(embed, D)] + stacked x Cls(num_layers) + Dense heads``, every parameter
    drawn nonzero (biases start at 0: a term left out would not show otherwise)."""
    layers = []
    if embed is not None:
        layers.append(cyrnn.Embedding(embed, D, mask_zero=mask_zero, dtype=dtype,
                                      random_state=3))
    for s in range(stacked):
        last = s == stacked - 1
        layers.append(Cls(D if s == 0 else H, H, num_layers=num_layers,
                          return_sequences=seq or not last, backend=backend, dtype=dtype,
                          bptt_truncate=truncate, random_state=10 + s, **kw))
    width = H
    for k, out in enumerate(heads):
        layers.append(cyrnn.Dense(width, out, dtype=dtype, random_state=20 + k))
        width = out
    model = cyrnn.Sequential(layers)
    model.params.data[...] = np.random.default_rng(7).uniform(-0.6, 0.6, model.params.size)
    return model


def reference(model):
    """The same model (same parameters) on the NumPy backend's layer path."""
    ref = copy.deepcopy(model)
    for layer in ref.recurrent_layers:
        layer.backend = "numpy"
    assert ref._plan() is None
    return ref
