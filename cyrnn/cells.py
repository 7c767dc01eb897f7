"""The cell table: the one list of recurrent cell kinds and activations.

Everything that depends on which cells exist derives from the rows below: gate
counts and cache sizes, the integer codes the compiled backends dispatch on (the
Cython build generates its constants from this file, the Numba backend reads
them as compile-time globals), the range checks of the fused spec, the options
the layers, estimators, language model and CLI accept, the interop names, and the
test harness's list of cells.

This module imports nothing outside the standard library, so ``setup.py`` can
load it by path at build time.

Adding a cell kind: a row here, its gate math in one place per backend
(``numpy_backend.cell_forward``/``cell_backward``, ``src/cells.pxi``,
``cyrnn/backends/numba/cells.py``), and the layer option that selects it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Activations. ``code`` is what the kernels dispatch on; every derivative is
# expressed through the activation's output y (so the backward pass needs only
# the cached post-activation values).
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    name: str
    code: int
    formula: str
    derivative: str  # through y = f(a)
    onnx: str        # ONNX activation name (with alpha/beta where needed)
    keras: str


ACTIVATION_TABLE = (
    Activation("tanh", 0, "tanh(a)", "1 - y^2", "Tanh", "tanh"),
    Activation("relu", 1, "max(a, 0)", "1 if y > 0 else 0", "Relu", "relu"),
    Activation("sigmoid", 2, "1 / (1 + exp(-a))", "y (1 - y)", "Sigmoid", "sigmoid"),
    Activation("linear", 3, "a", "1", "Affine(alpha=1, beta=0)", "linear"),
    # Keras 3's definition (not Keras 2's 0.2 a + 0.5).
    Activation("hard_sigmoid", 4, "clip(a / 6 + 1/2, 0, 1)", "1/6 if 0 < y < 1 else 0",
               "HardSigmoid(alpha=1/6, beta=0.5)", "hard_sigmoid"),
)
ACTIVATIONS = {a.name: a for a in ACTIVATION_TABLE}
ACT_TANH, ACT_RELU, ACT_SIGMOID, ACT_LINEAR, ACT_HARD_SIGMOID = range(len(ACTIVATION_TABLE))
N_ACTIVATIONS = len(ACTIVATION_TABLE)


# ---------------------------------------------------------------------------
# Cell kinds.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CellKind:
    """One row of the cell table.

    Attributes
    ----------
    name : str
        The kind's name (``Cell.name``).
    code : int
        What the compiled kernels and the fused spec dispatch on.
    family : {'rnn', 'lstm', 'gru'}
        The public layer family (``SimpleRNN``, ``LSTM``, ``GRU``): kinds of one
        family share the layer class and the state tuple.
    layer : str
        The cyrnn layer class; ``options`` are the layer keywords that select
        this kind within the family.
    gates : tuple of str
        Gate blocks of ``weight_ih``/``weight_hh``/biases, in storage order.
    state : tuple of str
        The recurrent state (``('h',)`` or ``('h', 'c')``).
    activation, activations : str, tuple of str
        Default and allowed ``activation`` (candidate / output nonlinearity).
    recurrent_activation, recurrent_activations : str or None, tuple of str
        Default and allowed gate activation (None: the kind has no gates).
    aux : str or None
        The extra per-step value the backward pass needs besides states and gates.
    peepholes : tuple of str
        Peephole vectors (each (H,)), stored as ``weight_peephole`` (len, H).
    init : str
        The initialisation rule (``RecurrentLayer.reset_parameters``).
    forget_gate : int or None
        Gate index whose ``bias_ih`` block gets ``forget_bias``.
    torch, onnx, keras : str or None
        The same cell in PyTorch, ONNX and Keras 3 (None: no equivalent).
    """

    name: str
    code: int
    family: str
    layer: str
    options: dict = field(hash=False, compare=False)
    gates: tuple
    state: tuple
    activation: str
    activations: tuple
    recurrent_activation: str | None
    recurrent_activations: tuple
    aux: str | None
    peepholes: tuple
    init: str
    forget_gate: int | None
    torch: str | None
    onnx: str
    keras: str | None

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    @property
    def has_cell_state(self) -> bool:
        return "c" in self.state

    @property
    def has_aux(self) -> bool:
        return self.aux is not None

    @property
    def n_peepholes(self) -> int:
        return len(self.peepholes)

    def n_params(self, input_size, hidden_size, directions=1) -> int:
        """Parameters of one layer of this cell (per direction: W_ih, W_hh, two biases,
        the peepholes), from the sizes alone (Python integers: no overflow)."""
        G, H = self.n_gates, hidden_size
        return directions * (G * H * (input_size + H + 2) + self.n_peepholes * H)


_KERAS_INIT = ("Keras's scheme: Glorot-uniform weight_ih, zero biases, orthogonal weight_hh "
               "per gate block (Keras: the whole kernel semi-orthogonal)")
_RNN_ACTS = ("tanh", "relu", "sigmoid", "linear")
_GATE_ACTS = ("sigmoid", "hard_sigmoid")

CELL_TABLE = (
    CellKind("rnn", 0, "rnn", "SimpleRNN", {}, ("h",), ("h",), "tanh", _RNN_ACTS,
             None, (), None, (), _KERAS_INIT, None,
             "torch.nn.RNN(nonlinearity=tanh|relu)", "RNN", "keras.layers.SimpleRNN"),
    CellKind("lstm", 1, "lstm", "LSTM", {"peephole": False}, ("i", "f", "g", "o"),
             ("h", "c"), "tanh", _RNN_ACTS, "sigmoid", _GATE_ACTS, None, (),
             _KERAS_INIT + "; forget-gate bias_ih = forget_bias (1)", 1,
             "torch.nn.LSTM", "LSTM", "keras.layers.LSTM"),
    CellKind("gru", 2, "gru", "GRU", {"reset_after": True}, ("r", "z", "n"), ("h",),
             "tanh", _RNN_ACTS, "sigmoid", _GATE_ACTS, "W_hn h + b_hn", (), _KERAS_INIT, None,
             "torch.nn.GRU", "GRU(linear_before_reset=1)", "keras.layers.GRU(reset_after=True)"),
    CellKind("gru_cho", 3, "gru", "GRU", {"reset_after": False}, ("r", "z", "n"), ("h",),
             "tanh", _RNN_ACTS, "sigmoid", _GATE_ACTS, "r * h", (), _KERAS_INIT, None,
             None, "GRU(linear_before_reset=0)", "keras.layers.GRU(reset_after=False)"),
    CellKind("lstm_peephole", 4, "lstm", "LSTM", {"peephole": True}, ("i", "f", "g", "o"),
             ("h", "c"), "tanh", _RNN_ACTS, "sigmoid", _GATE_ACTS, None, ("i", "f", "o"),
             _KERAS_INIT + "; forget-gate bias_ih = forget_bias (1); zero peepholes", 1,
             None, "LSTM with P (ONNX order i, o, f)", None),
)
CELLS = {k.name: k for k in CELL_TABLE}
CELL_CODES = {k.name: k.code for k in CELL_TABLE}
N_CELLS = len(CELL_TABLE)
FAMILIES = tuple(dict.fromkeys(k.family for k in CELL_TABLE))  # ('rnn', 'lstm', 'gru')
assert all(k.code == i for i, k in enumerate(CELL_TABLE)), "codes are row indices"


def kinds_of(family):
    """The rows of one family (e.g. 'gru': gru, gru_cho)."""
    return tuple(k for k in CELL_TABLE if k.family == family)


def resolve(family, **options):
    """The row of ``family`` selected by layer options (e.g. ``reset_after=False``).

    Options a family does not have raise TypeError; unknown values ValueError.
    """
    rows = kinds_of(family)
    if not rows:
        raise ValueError(f"cell family must be one of {FAMILIES}, got {family!r}")
    known = set().union(*(r.options for r in rows))
    for key in options:
        if key not in known:
            raise TypeError(f"{rows[0].layer} got an unexpected keyword argument {key!r}")
    for row in rows:
        if all(bool(options.get(k, v)) == v for k, v in row.options.items()):
            return row
    raise ValueError(f"no {family} cell with options {options}")  # pragma: no cover


@dataclass(frozen=True)
class Cell:
    """What a recurrent cell computes; every backend's kernels dispatch on it.

    Parameters
    ----------
    kind : {'rnn', 'lstm', 'gru'} or a row name of :data:`CELL_TABLE`
        The family (with ``reset_after``/``peephole`` choosing the row) or the row.
    activation : str, optional
        Candidate / output nonlinearity (row default: tanh).
    reset_after : bool, default True
        GRU only. True: ``n = act(x_n + r * (W_hn h + b_hn))`` (PyTorch/cuDNN);
        False: ``n = act(x_n + W_hn (r * h) + b_hn)`` (Cho et al., 2014).
    peephole : bool, default False
        LSTM only: gates see the cell state (i, f: ``c_{t-1}``; o: ``c_t``).
    recurrent_activation : str, optional
        Gate nonlinearity of LSTM and GRU (row default: sigmoid).
    """

    kind: str
    activation: str | None = None
    reset_after: bool = True
    peephole: bool = False
    recurrent_activation: str | None = None

    def __post_init__(self):
        if self.kind in CELLS and self.kind not in FAMILIES:
            row = CELLS[self.kind]
            object.__setattr__(self, "kind", row.family)
            object.__setattr__(self, "reset_after", row.options.get("reset_after", True))
            object.__setattr__(self, "peephole", row.options.get("peephole", False))
        if self.kind not in FAMILIES:
            raise ValueError(f"cell kind must be one of {FAMILIES}, got {self.kind!r}")
        if self.kind != "gru":
            object.__setattr__(self, "reset_after", True)
        if self.kind != "lstm" and self.peephole:
            raise ValueError("peephole=True needs an LSTM cell")
        row = self.row
        act = row.activation if self.activation is None else self.activation
        if act not in row.activations:
            raise ValueError(f"{row.layer} activation must be one of {row.activations}, "
                             f"got {act!r}")
        object.__setattr__(self, "activation", act)
        ract = self.recurrent_activation
        if row.recurrent_activation is None:
            if ract is not None:
                raise ValueError(f"{row.layer} has no gates: recurrent_activation does not "
                                 f"apply")
        else:
            ract = row.recurrent_activation if ract is None else ract
            if ract not in row.recurrent_activations:
                raise ValueError(f"{row.layer} recurrent_activation must be one of "
                                 f"{row.recurrent_activations}, got {ract!r}")
        object.__setattr__(self, "recurrent_activation", ract)

    @property
    def row(self) -> CellKind:
        """This cell's row of the table."""
        if self.kind == "lstm":
            return CELLS["lstm_peephole" if self.peephole else "lstm"]
        if self.kind == "gru":
            return CELLS["gru" if self.reset_after else "gru_cho"]
        return CELLS[self.kind]

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def n_gates(self) -> int:
        return self.row.n_gates

    @property
    def has_cell_state(self) -> bool:
        return self.row.has_cell_state

    @property
    def has_aux(self) -> bool:
        return self.row.has_aux

    @property
    def n_peepholes(self) -> int:
        return self.row.n_peepholes

    def peephole_weights(self, peep):
        """The kernel contract's rule for ``peep``: a cell with peepholes uses the
        weights given (None: no peephole terms, as zero weights); every other cell
        ignores them. Every backend applies it at its entry points."""
        return peep if self.n_peepholes else None

    @property
    def code(self) -> int:
        """The row code the compiled kernels dispatch on."""
        return self.row.code

    @property
    def act_code(self) -> int:
        return ACTIVATIONS[self.activation].code

    @property
    def ract_code(self) -> int:
        """Gate activation code (sigmoid's for SimpleRNN, which has no gates)."""
        return ACTIVATIONS[self.recurrent_activation or "sigmoid"].code

    @property
    def codes(self) -> tuple:
        """``(code, act_code, ract_code)``: the encoding every compiled backend takes."""
        return (self.code, self.act_code, self.ract_code)

    @property
    def is_default(self) -> bool:
        """Default activations (what PyTorch's modules compute)."""
        row = self.row
        return (self.activation == row.activation
                and self.recurrent_activation == row.recurrent_activation)
