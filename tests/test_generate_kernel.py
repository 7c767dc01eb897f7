"""The ``generate`` kernel: the reference's sampling rule, and every backend against it.

Compiled ``generate`` must equal the NumPy reference token for token for the same
uniforms (float64), for every cell, stacked layers, top-k, forced and banned tokens.
"""

import numpy as np
import pytest

from cyrnn.backends import Cell, get_backend
from cyrnn.backends import numpy_backend as ref

from conftest import BACKENDS  # noqa: E402  (the CPU backends)
from kernel_harness import CELLS  # noqa: E402

COMPILED = [name for name in BACKENDS if name != "numpy"]


def make_problem(cell, L=2, n=6, H=5, V=13, T=25, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    GH = cell.n_gates * H
    gain = 0.6 * min(1.0, np.sqrt(5 / H))  # wider layers: same gain (no chaotic drift)
    w = dict(xp_table=rng.standard_normal((V, GH)),
             w_ih_rest=rng.standard_normal((L - 1, GH, H)) * gain,
             b_ih_rest=rng.standard_normal((L - 1, GH)) * 0.2,
             w_hh=rng.standard_normal((L, GH, H)) * gain,
             b_hh=rng.standard_normal((L, GH)) * 0.2,
             w_out=rng.standard_normal((V, H)) * 1.5,
             b_out=rng.standard_normal(V) * 0.5 - 1.5 * (np.arange(V) == 2),  # rarer ends
             h=rng.standard_normal((L, n, H)) * 0.5,
             c=rng.standard_normal((L, n, H)) * 0.5 if cell.has_cell_state else None)
    w = {k: (None if v is None else v.astype(dtype)) for k, v in w.items()}
    forced = np.full((n, T), -1, np.int64)
    forced[:, 4] = 7          # a forced token everywhere at step 4
    forced[1, 10] = 2         # row 1 is forced to end at step 10
    banned = np.zeros(V, bool)
    banned[[0, 1, 9]] = True
    s = dict(start=rng.integers(3, V, n), forced=forced, banned=banned,
             uniforms=rng.random((n, T)))
    # peephole LSTM: (L, 3, H) weights per layer (drawn last: other problems unchanged)
    w["peep"] = ((rng.standard_normal((L, cell.n_peepholes, H)) * 0.5).astype(dtype)
                 if cell.n_peepholes else None)
    return w, s


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))
@pytest.mark.parametrize("L", [1, 2])
def test_compiled_equals_reference(backend, cell, L):
    be = get_backend(backend)
    for top_k, temperature in [(0, 1.0), (1, 1.0), (3, 0.7), (50, 2.5)]:
        w, s = make_problem(cell, L=L, seed=L)
        before = {k: None if v is None else v.copy() for k, v in w.items()}
        expected = ref.generate(cell, **w, **s, temperature=temperature, top_k=top_k,
                                end_token=2)
        got = be.generate(cell, **w, **s, temperature=temperature, top_k=top_k, end_token=2)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[0].dtype == np.int64 and got[1].dtype == np.int64
        for k, v in w.items():  # inputs untouched
            if v is not None:
                np.testing.assert_array_equal(v, before[k])
    # the problem exercises what it should: forced tokens, stops, several tokens
    lengths = expected[1]
    assert (expected[0][:, 4][lengths > 4] == 7).all()
    assert lengths[1] <= 10 and (lengths < 25).any()
    assert len(np.unique(expected[0])) > 3


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell", [CELLS["lstm"], CELLS["gru-cho"], CELLS["rnn-tanh"]],
                         ids=["lstm", "gru-cho", "rnn-tanh"])
def test_compiled_equals_reference_wide(backend, cell):
    """Shapes whose products go through BLAS (many rows, wide layers, a larger
    vocabulary), three layers: still token for token."""
    be = get_backend(backend)
    w, s = make_problem(cell, L=3, n=24, H=48, V=40, T=30, seed=4)
    for top_k, temperature in [(0, 1.0), (4, 0.8)]:
        expected = ref.generate(cell, **w, **s, temperature=temperature, top_k=top_k,
                                end_token=2)
        got = be.generate(cell, **w, **s, temperature=temperature, top_k=top_k, end_token=2)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    assert len(np.unique(expected[0])) > 3


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("name", ["lstm_peephole", "lstm_peephole-sigmoid"])
@pytest.mark.parametrize("L", [1, 2])
def test_compiled_equals_reference_peephole(backend, name, L):
    """Per-layer peephole weights (L, 3, H): token for token, and they matter."""
    cell = CELLS[name]
    be = get_backend(backend)
    w, s = make_problem(cell, L=L, seed=L + 7)
    w["peep"] = np.random.default_rng(L).standard_normal((L, 3, w["w_hh"].shape[2])) * 0.8
    for top_k, temperature in [(0, 1.0), (3, 0.7)]:
        expected = ref.generate(cell, **w, **s, temperature=temperature, top_k=top_k,
                                end_token=2)
        got = be.generate(cell, **w, **s, temperature=temperature, top_k=top_k, end_token=2)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        without = ref.generate(cell, **dict(w, peep=None), **s, temperature=temperature,
                               top_k=top_k, end_token=2)
        assert not np.array_equal(without[0], expected[0])


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_peepholes(backend):
    """Each layer's peephole weights are used: zeroing them changes the tokens, and
    zero weights equal none (the reference skips the terms); every run equals the
    reference."""
    cell = CELLS["lstm_peephole"]
    w, s = make_problem(cell, L=2, seed=5)
    be = get_backend(backend)
    tokens = []
    for peep in (w["peep"], np.zeros_like(w["peep"]), None):
        kw = dict(w, peep=peep)
        expected = ref.generate(cell, **kw, **s, temperature=1.0, top_k=0, end_token=2)
        got = be.generate(cell, **kw, **s, temperature=1.0, top_k=0, end_token=2)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        tokens.append(got[0])
    assert not np.array_equal(tokens[0], tokens[1])
    np.testing.assert_array_equal(tokens[1], tokens[2])


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_does_not_fall_back(backend, monkeypatch):
    """A compiled backend runs the loop itself (the reference only for degenerate
    shapes)."""
    cell = Cell("gru")
    w, s = make_problem(cell)
    expected = ref.generate(cell, **w, **s, temperature=1.0, top_k=0, end_token=2)

    def no_reference(*args, **kwargs):
        raise AssertionError("fell back to the reference")

    monkeypatch.setattr(ref, "generate", no_reference)
    got = get_backend(backend).generate(cell, **w, **s, temperature=1.0, top_k=0,
                                        end_token=2)
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_float32_runs(backend):
    cell = Cell("lstm")
    w, s = make_problem(cell, dtype=np.float32)
    tokens, lengths = get_backend(backend).generate(cell, **w, **s, temperature=1.0, top_k=0,
                                                    end_token=2)
    ref_tokens, ref_lengths = ref.generate(cell, **w, **s, temperature=1.0, top_k=0,
                                           end_token=2)
    assert tokens.shape == ref_tokens.shape
    # float32 round-off may move a draw across a boundary, but not often
    assert (tokens == ref_tokens).mean() > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_shapes(backend):
    cell = Cell("gru")
    w, s = make_problem(cell, n=3)
    s0 = dict(s, forced=s["forced"][:, :0], uniforms=s["uniforms"][:, :0])
    tokens, lengths = get_backend(backend).generate(cell, **w, **s0, temperature=1.0,
                                                    top_k=0, end_token=2)
    assert tokens.shape == (3, 0) and lengths.tolist() == [0, 0, 0]


# ---------------------------------------------------------------- the sampling rule
def test_sample_token_rule():
    logits = np.array([0.5, 2.0, 2.0, -1.0, 1.0])
    none = np.zeros(5, bool)
    # top_k = 1 is greedy, ties to the lower id
    assert ref.sample_token(logits, none, 1.0, 1, 0.999) == 1
    # banned tokens are never drawn; top_k counts allowed tokens only
    banned = np.array([False, True, False, False, False])
    assert ref.sample_token(logits, banned, 1.0, 1, 0.5) == 2
    for u in np.linspace(0, 0.999, 50):
        assert ref.sample_token(logits, banned, 1.0, 0, u) != 1
        assert ref.sample_token(logits, none, 1.0, 2, u) in (1, 2)
    # u = 0 draws the first kept token, u -> 1 the last one
    assert ref.sample_token(logits, none, 1.0, 0, 0.0) == 0
    assert ref.sample_token(logits, none, 1.0, 0, 1 - 1e-12) == 4
    # everything banned: -1
    assert ref.sample_token(logits, np.ones(5, bool), 1.0, 0, 0.5) == -1


def test_sample_token_matches_softmax():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 0.0, -1.0, 2.0])
    for temperature in (0.5, 1.0, 3.0):
        p = np.exp(logits / temperature)
        p /= p.sum()
        u = (np.arange(4000) + 0.5) / 4000  # a stratified grid: exact frequencies
        draws = np.array([ref.sample_token(logits, np.zeros(4, bool), temperature, 0, x)
                          for x in rng.permutation(u)])
        freq = np.bincount(draws, minlength=4) / len(draws)
        np.testing.assert_allclose(freq, p, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_matches_a_step_loop(backend):
    """generate == feeding each token through Cell steps by hand (reference cell math)."""
    cell = Cell("lstm")
    w, s = make_problem(cell, L=2, n=3, T=12)
    s["forced"][:] = -1
    tokens, lengths = get_backend(backend).generate(cell, **w, **s, temperature=0.9,
                                                    top_k=0, end_token=2)
    h, c = w["h"].copy(), w["c"].copy()
    for i in range(3):
        tok, hi, ci = s["start"][i], h[:, i:i + 1].copy(), c[:, i:i + 1].copy()
        for t in range(lengths[i] + (lengths[i] < 12)):
            x = w["xp_table"][[tok]]
            for layer in range(2):
                if layer:
                    x = hi[0] @ w["w_ih_rest"][0].T + w["b_ih_rest"][0]
                hi[layer], ci[layer] = ref.step(cell, x, w["w_hh"][layer], w["b_hh"][layer],
                                                hi[layer], ci[layer])
            logits = hi[1, 0] @ w["w_out"].T + w["b_out"]
            tok = ref.sample_token(logits, s["banned"], 0.9, 0, s["uniforms"][i, t])
            assert tok == (tokens[i, t] if t < lengths[i] else 2)
