"""Shared harness for comparing a compiled backend's kernels with the NumPy reference.

``tests/test_cython_kernels.py`` and ``tests/test_numba_kernels.py`` build on it:
the same problems, the same comparisons (forward outputs, final states, the whole
cache, inference without cache, every backward output, ``step``).
"""

import numpy as np

from cyrnn.backends import numpy_backend as ref
from cyrnn.cells import CELL_TABLE, Cell

# Every row of the cell table with its default activations (keys: the row names,
# with the historical aliases for the two GRU rows), SimpleRNN with each of its
# activations, and the gated cells with non-default ones.
_ALIAS = {"gru": "gru-reset-after", "gru_cho": "gru-cho", "rnn": "rnn-tanh"}
CELLS = {_ALIAS.get(row.name, row.name): Cell(row.name) for row in CELL_TABLE}
CELLS.update({f"rnn-{a}": Cell("rnn", a) for a in Cell("rnn").row.activations})
CELLS.update({
    "lstm-relu-hard": Cell("lstm", "relu", recurrent_activation="hard_sigmoid"),
    "lstm_peephole-sigmoid": Cell("lstm", "sigmoid", peephole=True),
    "gru-linear-hard": Cell("gru", "linear", recurrent_activation="hard_sigmoid"),
    "gru-cho-relu": Cell("gru", "relu", reset_after=False),
})
DTYPES = [np.float64, np.float32]
T = 7
H = 4


def make_problem(cell, dtype, N, masked, seed=0, T=T, H=H):
    """Random kernel inputs and upstream gradients; masks cover pre-/post-padding,
    a step masked in every row and (N > 2) a fully masked sequence."""
    rng = np.random.default_rng(seed)
    GH = cell.n_gates * H
    p = {
        "xp": rng.standard_normal((T, N, GH)),
        "w_hh": rng.standard_normal((GH, H)) * 0.6 * min(1.0, 2 / np.sqrt(H)),
        "b_hh": rng.standard_normal(GH) * 0.3,
        "h0": rng.standard_normal((N, H)),
        "c0": rng.standard_normal((N, H)) if cell.has_cell_state else None,
        "dh_seq": rng.standard_normal((T, N, H)),
        "dh_T": rng.standard_normal((N, H)),
        "dc_T": rng.standard_normal((N, H)) if cell.has_cell_state else None,
        "peep": rng.standard_normal((cell.n_peepholes, H)) * 0.5 if cell.n_peepholes else None,
    }
    p = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
    mask = None
    if masked:
        mask = rng.random((T, N)) > 0.3
        mask[:2, 0] = False           # pre-padding: row 0 masked at the start
        mask[-2:, N - 1] = False      # post-padding: last row masked at the end
        mask[3, :] = False            # a step masked in every row
        if N > 2:
            mask[:, 2] = False        # a fully masked sequence
    p["mask"] = mask
    return p


def run_forward(backend, cell, p, keep_cache=True):
    return backend.forward(cell, p["xp"], p["w_hh"], p["b_hh"], p["h0"], p["c0"],
                           p["mask"], keep_cache, peep=p.get("peep"))


class KernelHarness:
    """Comparisons of ``backend`` with the reference.

    float64: rtol 1e-10, atol 1e-12. float32: rtol 1e-5 and atol ``f32_atol`` times the
    array's scale (max(1, max|expected|)): sums such as dW_hh cancel.
    """

    def __init__(self, backend, f32_atol):
        self.backend = backend
        self.f32_atol = f32_atol

    def tol(self, dtype, scale=1.0):
        if dtype == np.float64:
            return {"rtol": 1e-10, "atol": 1e-12}
        return {"rtol": 1e-5, "atol": self.f32_atol * max(1.0, scale)}

    def assert_close(self, actual, expected, dtype, what=""):
        if expected is None:
            assert actual is None, what
            return
        assert actual is not None, what
        assert actual.shape == expected.shape, what
        assert actual.dtype == dtype, what
        scale = float(np.abs(expected).max()) if expected.size else 1.0
        np.testing.assert_allclose(actual, expected, err_msg=what, **self.tol(dtype, scale))

    def compare_forward(self, cell, dtype, p):
        expected = run_forward(ref, cell, p)
        actual = run_forward(self.backend, cell, p)
        for name, a, e in zip(("h_seq", "h_T", "c_T"), actual[:3], expected[:3]):
            self.assert_close(a, e, dtype, name)
        assert set(actual[3]) == set(expected[3])
        for key in expected[3]:
            self.assert_close(actual[3][key], expected[3][key], dtype, f"cache[{key!r}]")
        # Inference keeps no cache and gives the same outputs.
        inference = run_forward(self.backend, cell, p, keep_cache=False)
        assert inference[3] is None
        for name, a, e in zip(("h_seq", "h_T", "c_T"), inference[:3], expected[:3]):
            self.assert_close(a, e, dtype, "inference " + name)
        return actual[3], expected[3]

    def compare_backward(self, cell, dtype, p, cache, cache_ref, truncate, **grads):
        kw = {"dh_seq": p["dh_seq"], "dh_T": p["dh_T"], "dc_T": p["dc_T"],
              "peep": p.get("peep")}
        kw.update(grads)
        expected = ref.backward(cell, cache_ref, p["w_hh"], p["mask"], truncate=truncate, **kw)
        actual = self.backend.backward(cell, cache, p["w_hh"], p["mask"], truncate=truncate,
                                       **kw)
        assert len(actual) == len(expected) == 6
        for name, a, e in zip(("dxp", "dh0", "dc0", "dw_hh", "db_hh", "dpeep"), actual,
                              expected):
            self.assert_close(a, e, dtype, f"{name} (truncate={truncate})")

    def compare_step(self, cell, dtype, p):
        args = (cell, p["xp"][0], p["w_hh"], p["b_hh"], p["h0"], p["c0"])
        expected = ref.step(*args, peep=p.get("peep"))
        actual = self.backend.step(*args, peep=p.get("peep"))
        for name, a, e in zip(("h", "c"), actual, expected):
            self.assert_close(a, e, dtype, "step " + name)

    def check_mask_dtypes_and_empty_batch(self):
        """A non-bool mask (nonzero = valid) and an empty batch work."""
        cell = CELLS["gru-reset-after"]
        p = make_problem(cell, np.float64, 5, True, seed=2)
        expected = run_forward(ref, cell, p)
        q = dict(p, mask=p["mask"].astype(np.int32) * 3)
        for a, e in zip(run_forward(self.backend, cell, q)[:2], expected[:2]):
            self.assert_close(a, e, np.float64)
        empty = dict(p, xp=p["xp"][:, :0], h0=p["h0"][:0], mask=None)
        h_seq, h_T, c_T, _ = run_forward(self.backend, cell, empty)
        assert h_seq.shape == (T, 0, H) and h_T.shape == (0, H) and c_T is None
        return p
