"""The cell descriptor passed to every backend's kernels."""

from __future__ import annotations

from dataclasses import dataclass

CELL_KINDS = ("rnn", "lstm", "gru")
ACTIVATIONS = ("tanh", "relu", "sigmoid")
N_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True)
class Cell:
    """What a recurrent cell computes; kernels dispatch on it.

    Parameters
    ----------
    kind : {'rnn', 'lstm', 'gru'}
    activation : {'tanh', 'relu', 'sigmoid'}
        SimpleRNN only.
    reset_after : bool
        GRU only. True: ``n = tanh(x_n + r * (W_hn h + b_hn))`` (PyTorch/cuDNN);
        False: ``n = tanh(x_n + W_hn (r * h) + b_hn)`` (Cho et al., 2014).
    """

    kind: str
    activation: str = "tanh"
    reset_after: bool = True

    def __post_init__(self):
        if self.kind not in CELL_KINDS:
            raise ValueError(f"cell kind must be one of {CELL_KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def n_gates(self) -> int:
        return N_GATES[self.kind]

    @property
    def has_cell_state(self) -> bool:
        return self.kind == "lstm"

    @property
    def kind_code(self) -> int:
        """0 rnn, 1 lstm, 2 gru (for compiled kernels)."""
        return CELL_KINDS.index(self.kind)

    @property
    def activation_code(self) -> int:
        """0 tanh, 1 relu, 2 sigmoid (for compiled kernels)."""
        return ACTIVATIONS.index(self.activation)
