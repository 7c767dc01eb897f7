"""NumPy reference backend: the readable specification of the kernel contract.

Every compiled backend must reproduce these four functions (``forward``,
``backward``, ``step``, ``generate``) to tight tolerances; ``docs/architecture.md`` states the
contract. Layout is time-major: ``xp[t]`` holds the projected inputs of all
sequences at step ``t``.

Cell equations (PyTorch gate order; ``a = xp_t + h W_hh^T + b_hh``; ``act`` is
the cell's ``activation`` (default tanh), ``sig`` its ``recurrent_activation``
(default sigmoid); the kinds are the rows of :mod:`cyrnn.cells`)::

    rnn            h' = act(a)
    lstm           i, f, g, o = sig(a_i), sig(a_f), act(a_g), sig(a_o)
                   c' = f c + i g ;  h' = o act(c')
    lstm_peephole  i = sig(a_i + p_i c), f = sig(a_f + p_f c), g = act(a_g)
                   c' = f c + i g ;  o = sig(a_o + p_o c') ;  h' = o act(c')
    gru            r, z = sig(x_r + gh_r), sig(x_z + gh_z)    (gh = h W_hh^T + b_hh)
                   n = act(x_n + r gh_n)                  (reset_after=True: PyTorch)
    gru_cho        n = act(x_n + (r h) W_hn^T + b_hn)     (reset_after=False: Cho et al.)
                   h' = (1 - z) n + z h

Masking: at a step where ``mask[t, i]`` is False, sequence ``i`` keeps its state
and outputs zero. Truncation: the gradient arriving at step ``t`` (from the
output there, or from the final state when ``t`` is the last step) flows back
through at most ``truncate + 1`` valid cells: ``t`` and the ``truncate`` valid
steps before it. Masked steps pass gradients through and do not count.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as _sigmoid

NAME = "numpy"

def _hard_sigmoid(a):
    return np.clip(a / 6 + 0.5, 0, 1)  # Keras 3's definition


_ACTIVATIONS = {
    # name: (f(a), f'(a) expressed through y = f(a)); the rows of cyrnn.cells.ACTIVATIONS
    "tanh": (np.tanh, lambda y: 1.0 - y * y),
    "relu": (lambda a: np.maximum(a, 0), lambda y: (y > 0).astype(y.dtype)),
    "sigmoid": (_sigmoid, lambda y: y * (1.0 - y)),
    "linear": (lambda a: a, np.ones_like),
    "hard_sigmoid": (_hard_sigmoid, lambda y: ((y > 0) & (y < 1)).astype(y.dtype) / 6),
}


# ----------------------------------------------------------------------------
# One cell step: the only place where the cell math lives in this backend.
# ----------------------------------------------------------------------------

def cell_forward(cell, xp_t, h, c, w_hh, b_hh, peep=None):
    """One step for a batch. Returns ``(h_new, c_new, gates, aux)``.

    ``gates`` are the post-activation gate values (rnn: ``h_new``; lstm: i,f,g,o;
    gru: r,z,n); ``aux`` is what GRU's backward needs besides them (``gh_n`` when
    ``reset_after`` else ``r * h``); ``c_new`` and ``aux`` are None where unused.
    ``peep`` (3, H): the peephole LSTM's weights p_i, p_f, p_o.
    """
    H = h.shape[1]
    act, _ = _ACTIVATIONS[cell.activation]
    if cell.kind == "rnn":
        h_new = act(xp_t + h @ w_hh.T + b_hh)
        return h_new, None, h_new, None
    ract, _ = _ACTIVATIONS[cell.recurrent_activation]
    if cell.kind == "lstm":
        a = xp_t + h @ w_hh.T + b_hh
        a_i, a_f, a_o = a[:, :H], a[:, H:2 * H], a[:, 3 * H:]
        if peep is not None:
            a_i, a_f = a_i + peep[0] * c, a_f + peep[1] * c
        i, f, g = ract(a_i), ract(a_f), act(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        if peep is not None:
            a_o = a_o + peep[2] * c_new
        o = ract(a_o)
        h_new = o * act(c_new)
        return h_new, c_new, np.concatenate([i, f, g, o], axis=1), None
    # gru
    if cell.reset_after:
        gh = h @ w_hh.T + b_hh
        rz = ract(xp_t[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        aux = gh[:, 2 * H:]
        n = act(xp_t[:, 2 * H:] + r * aux)
    else:
        rz = ract(xp_t[:, :2 * H] + h @ w_hh[:2 * H].T + b_hh[:2 * H])
        r, z = rz[:, :H], rz[:, H:]
        aux = r * h
        n = act(xp_t[:, 2 * H:] + aux @ w_hh[2 * H:].T + b_hh[2 * H:])
    h_new = (1.0 - z) * n + z * h
    return h_new, None, np.concatenate([r, z, n], axis=1), aux


def cell_backward(cell, dh, dc, h, c, c_new, gates, aux, w_hh, peep=None):
    """Backward of one step given the gradient on its outputs.

    Returns ``(dxp, dgh, dh_prev, dc_prev)``: gradients on the projected input,
    on the recurrent pre-activation ``gh`` (whose outer product with the
    recurrent input gives ``dW_hh``), on the previous hidden and cell state.
    The peephole weights' gradients follow from ``dgh`` and the cell states
    (see :func:`backward`).
    """
    H = h.shape[1]
    act, dact = _ACTIVATIONS[cell.activation]
    if cell.kind == "rnn":
        da = dh * dact(gates)
        return da, da, da @ w_hh, None
    _, dract = _ACTIVATIONS[cell.recurrent_activation]
    if cell.kind == "lstm":
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        tc = act(c_new)
        do = dh * tc * dract(o)
        dc = dc + dh * o * dact(tc)
        if peep is not None:
            dc = dc + do * peep[2]
        di, df = dc * g * dract(i), dc * c * dract(f)
        da = np.concatenate([di, df, dc * i * dact(g), do], axis=1)
        dc_prev = dc * f
        if peep is not None:
            dc_prev = dc_prev + di * peep[0] + df * peep[1]
        return da, da, da @ w_hh, dc_prev
    # gru
    r, z, n = (gates[:, k * H:(k + 1) * H] for k in range(3))
    dn_pre = dh * (1.0 - z) * dact(n)
    dz_pre = dh * (h - n) * dract(z)
    dh_prev = dh * z
    if cell.reset_after:
        dr_pre = dn_pre * aux * dract(r)
        dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dh_prev = dh_prev + dgh @ w_hh
    else:
        drh = dn_pre @ w_hh[2 * H:]
        dr_pre = drh * h * dract(r)
        dgh = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        dh_prev = dh_prev + drh * r + dgh[:, :2 * H] @ w_hh[:2 * H]
    dxp = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    return dxp, dgh, dh_prev, None


# ----------------------------------------------------------------------------
# The kernel contract.
# ----------------------------------------------------------------------------

def step(cell, xp_t, w_hh, b_hh, h, c=None, peep=None):
    """Single step used by generation. Returns ``(h_new, c_new)``."""
    peep = cell.peephole_weights(peep)
    h_new, c_new, _, _ = cell_forward(cell, xp_t, h, c, w_hh, b_hh, peep)
    return h_new, c_new


def forward(cell, xp, w_hh, b_hh, h0, c0=None, mask=None, keep_cache=False, peep=None):
    """Run the cell over ``T`` steps.

    Parameters
    ----------
    cell : Cell
    xp : (T, N, G*H) projected inputs ``x_t W_ih^T + b_ih``
    w_hh : (G*H, H);  b_hh : (G*H,)
    h0, c0 : (N, H) initial states (``c0`` only for LSTM)
    mask : (T, N) bool or None (all steps valid)
    keep_cache : bool
        Return what ``backward`` needs; inference passes False and keeps nothing.
    peep : (3, H) or None
        Peephole weights (p_i, p_f, p_o) of a peephole LSTM; None otherwise.

    Returns
    -------
    h_seq : (T, N, H) outputs, zero at masked steps
    h_T, c_T : (N, H) final states (``c_T`` None unless LSTM)
    cache : dict or None
        ``h`` (T+1, N, H) states with ``h[0] = h0``; ``c`` likewise (LSTM);
        ``gates`` (T, N, G*H) post-activation; ``aux`` (T, N, H) (GRU).
    """
    T, N, _ = xp.shape
    H = w_hh.shape[1]
    peep = cell.peephole_weights(peep)
    h, c = h0, c0
    h_seq = np.zeros((T, N, H), dtype=xp.dtype)
    if keep_cache:
        cache = {"h": np.empty((T + 1, N, H), xp.dtype),
                 "gates": np.zeros((T, N, cell.n_gates * H), xp.dtype)}
        cache["h"][0] = h0
        if cell.has_cell_state:
            cache["c"] = np.empty((T + 1, N, H), xp.dtype)
            cache["c"][0] = c0
        if cell.kind == "gru":
            cache["aux"] = np.zeros((T, N, H), xp.dtype)
    for t in range(T):
        h_new, c_new, gates, aux = cell_forward(cell, xp[t], h, c, w_hh, b_hh, peep)
        if mask is not None:
            m = mask[t][:, None]
            h_new = np.where(m, h_new, h)
            c_new = np.where(m, c_new, c) if c_new is not None else None
            h_seq[t] = np.where(m, h_new, 0)
        else:
            h_seq[t] = h_new
        h, c = h_new, c_new
        if keep_cache:
            cache["h"][t + 1] = h
            cache["gates"][t] = gates
            if cell.has_cell_state:
                cache["c"][t + 1] = c
            if aux is not None:
                cache["aux"][t] = aux
    return h_seq, h, c, (cache if keep_cache else None)


def _sweep(cell, cache, w_hh, mask, t0, dh, dc, dh_seq, budget, dxp, dgh, peep=None):
    """Backpropagate from step ``t0`` down to step 0 (or until ``budget`` runs out).

    Adds into ``dxp``/``dgh``; adds ``dh_seq[t]`` at every valid step when given
    (full BPTT); ``budget`` (N,) counts the valid cells each sequence may still
    pass through (None: unlimited). Returns the gradient on ``h0`` (and ``c0``).
    """
    for t in range(t0, -1, -1):
        valid = np.ones(dh.shape[0], bool) if mask is None else mask[t]
        if budget is not None:
            valid = valid & (budget > 0)
        m = valid[:, None]
        if dh_seq is not None:
            dh = dh + np.where(m, dh_seq[t], 0)
        h = cache["h"][t]
        c = cache["c"][t] if cell.has_cell_state else None
        c_new = cache["c"][t + 1] if cell.has_cell_state else None
        aux = cache["aux"][t] if cell.kind == "gru" else None
        dxp_t, dgh_t, dh_prev, dc_prev = cell_backward(
            cell, dh, dc, h, c, c_new, cache["gates"][t], aux, w_hh, peep)
        dxp[t] += np.where(m, dxp_t, 0)
        dgh[t] += np.where(m, dgh_t, 0)
        dh = np.where(m, dh_prev, dh)
        if dc is not None:
            dc = np.where(m, dc_prev, dc)
        if budget is not None:
            budget = budget - valid
            spent = (budget == 0)[:, None]
            dh = np.where(spent, 0, dh)
            dc = np.where(spent, 0, dc) if dc is not None else None
            if not budget.any():
                return np.zeros_like(dh), (None if dc is None else np.zeros_like(dc))
    return dh, dc


def backward(cell, cache, w_hh, mask=None, dh_seq=None, dh_T=None, dc_T=None, truncate=None,
             peep=None):
    """Gradients of a scalar loss through ``forward``.

    Parameters
    ----------
    cache : dict from ``forward(..., keep_cache=True)``
    mask : (T, N) bool or None, as in forward
    dh_seq : (T, N, H) or None, gradient on ``h_seq``
    dh_T, dc_T : (N, H) or None, gradient on the final states
    truncate : int >= 0 or None
        None: full BPTT. k: each gradient source passes through at most k + 1
        valid cells (its own step and k earlier ones).
    peep : (3, H) or None, the peephole weights given to ``forward``

    Returns
    -------
    dxp : (T, N, G*H);  dh0, dc0 : (N, H) (``dc0`` None unless LSTM)
    dw_hh : (G*H, H);  db_hh : (G*H,)
    dpeep : (3, H), or None without peepholes
    """
    T, N, GH = cache["gates"].shape
    peep = cell.peephole_weights(peep)
    H = GH // cell.n_gates
    dtype = cache["gates"].dtype
    zeros = np.zeros((N, H), dtype)
    dh_T = zeros if dh_T is None else dh_T
    if cell.has_cell_state:
        dc_T = zeros if dc_T is None else dc_T
    else:
        dc_T = None
    dxp = np.zeros((T, N, GH), dtype)
    dgh = np.zeros((T, N, GH), dtype)
    if truncate is None or truncate >= T:
        dh0, dc0 = _sweep(cell, cache, w_hh, mask, T - 1, dh_T, dc_T, dh_seq, None, dxp,
                          dgh, peep)
    else:
        dh0 = zeros.copy()
        dc0 = zeros.copy() if dc_T is not None else None
        # Sources: the output gradient at each step, plus the final-state gradient at T-1.
        sources = []
        for t in range(T):
            dh = np.zeros_like(zeros) if dh_seq is None else dh_seq[t].copy()
            if mask is not None:
                dh[~mask[t]] = 0
            dc = None if dc_T is None else zeros
            if t == T - 1:
                dh = dh + dh_T
                dc = dc_T
            if dh.any() or (dc is not None and dc.any()):
                sources.append((t, dh, dc))
        for t, dh, dc in sources:
            budget = np.full(N, truncate + 1, dtype=np.int64)
            a, b = _sweep(cell, cache, w_hh, mask, t, dh, dc, None, budget, dxp, dgh, peep)
            dh0 += a
            if dc0 is not None:
                dc0 += b
    # dW_hh: one contraction over all steps of dgh with the recurrent inputs.
    h_in = cache["h"][:-1]
    if cell.kind == "gru" and not cell.reset_after:
        dw_hh = np.concatenate([
            np.einsum("tng,tnh->gh", dgh[:, :, :2 * H], h_in),
            np.einsum("tng,tnh->gh", dgh[:, :, 2 * H:], cache["aux"])], axis=0)
    else:
        dw_hh = np.einsum("tng,tnh->gh", dgh, h_in)
    db_hh = dgh.sum(axis=(0, 1))
    dpeep = None
    if peep is not None:
        # p_i, p_f see c_{t-1}, p_o sees c_t: contractions of the gate gradients.
        c = cache["c"]
        dpeep = np.stack([np.einsum("tnh,tnh->h", dgh[:, :, :H], c[:-1]),
                          np.einsum("tnh,tnh->h", dgh[:, :, H:2 * H], c[:-1]),
                          np.einsum("tnh,tnh->h", dgh[:, :, 3 * H:], c[1:])]).astype(dtype)
    return dxp, dh0, dc0, dw_hh.astype(dtype, copy=False), db_hh, dpeep


# ----------------------------------------------------------------------------
# Generation (one-to-many): the reference of the compiled sampling loops.
# ----------------------------------------------------------------------------

def sample_token(logits, banned, temperature, top_k, u):
    """Choose one token from a row of logits by inverse CDF on the uniform ``u``.

    The rule every backend follows exactly:

    1. ``z = float64(logits) / temperature``;
    2. candidates: the tokens that are not ``banned``;
    3. ``top_k > 0`` (and fewer than the candidates): keep the ``top_k`` candidates
       with the largest ``z``, ties broken towards lower ids;
    4. ``p_v = exp(z_v - max z)`` for kept tokens, 0 otherwise;
    5. running sum of ``p`` in token order; the token is the first whose running
       sum exceeds ``u * sum(p)`` (round-off fallback: the last kept token with
       ``p > 0``).

    Returns -1 when every token is banned (callers prevent that).
    """
    z = np.asarray(logits, np.float64) / temperature
    kept = ~np.asarray(banned, bool)
    n = int(kept.sum())
    if n == 0:
        return -1
    if 0 < top_k < n:
        ids = np.flatnonzero(kept)
        order = ids[np.lexsort((ids, -z[ids]))]  # by z descending, then id ascending
        kept = np.zeros_like(kept)
        kept[order[:top_k]] = True
    m = z[kept].max()
    p = np.zeros_like(z)
    p[kept] = np.exp(z[kept] - m)
    cum = np.cumsum(p)
    v = int(np.searchsorted(cum, u * cum[-1], side="right"))
    if v >= len(p):
        v = int(np.flatnonzero(p > 0)[-1])
    return v


def generate(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
             start, forced, banned, uniforms, temperature, top_k, end_token, peep=None):
    """Sample token sequences, feeding each output back as the next input.

    A unidirectional stack of ``L`` layers of one cell, topped by a linear
    output layer (logits over ``V`` tokens). Each step: the current token of
    every active row goes through the stack (layer 0 reads its projected input
    from ``xp_table``, layer ``l > 0`` projects the new state of layer ``l - 1``),
    the top state gives logits, and the next token is forced or sampled
    (:func:`sample_token`). A row stops after emitting ``end_token``.

    Parameters
    ----------
    cell : Cell
    xp_table : (V, G*H)
        Layer 0's projected input for every token: ``E W_ih^T + b_ih`` for an
        embedding table ``E`` (``W_ih^T + b_ih`` for one-hot inputs).
    w_ih_rest : (L-1, G*H, H);  b_ih_rest : (L-1, G*H)
        Input weights and biases of layers 1 .. L-1 (empty when ``L == 1``).
    w_hh : (L, G*H, H);  b_hh : (L, G*H)
    w_out : (V, H);  b_out : (V,)
        The output layer: ``logits = h_top W_out^T + b_out``.
    h : (L, n, H) initial states;  c : (L, n, H) for LSTM, else None
        Not modified.
    start : (n,) ints
        The first input token of each row (e.g. the begin marker, or the last
        character of a prefix already run through the model).
    forced : (n, T) ints
        ``forced[i, t] >= 0`` emits that token at step ``t`` without sampling;
        -1 is a free choice. ``T`` is the maximum number of steps.
    banned : (V,) bools
        Tokens never sampled (forced tokens are emitted regardless). At least
        one token must be allowed.
    uniforms : (n, T) floats in [0, 1)
        Pre-drawn by the caller (the kernels hold no random state): sampling is
        reproducible and identical across backends.
    temperature : float > 0;  top_k : int (0 = off);  end_token : int
    peep : (L, 3, H) or None
        Peephole weights per layer (peephole LSTM only).

    Returns
    -------
    tokens : (n, T) int64
        ``tokens[i, :lengths[i]]`` are the emitted tokens (end marker excluded);
        the rest holds ``end_token``.
    lengths : (n,) int64
        The step at which row ``i`` emitted ``end_token``, or ``T`` if it never did.
    """
    n, T = forced.shape
    peep = cell.peephole_weights(peep)
    L = w_hh.shape[0]
    h = [h[layer].copy() for layer in range(L)]
    c = [None] * L if c is None else [c[layer].copy() for layer in range(L)]
    tokens = np.full((n, T), end_token, np.int64)
    lengths = np.full(n, T, np.int64)
    active = np.ones(n, bool)
    tok = np.asarray(start, np.int64).copy()
    for t in range(T):
        if not active.any():
            break
        inp = xp_table[tok]
        for layer in range(L):
            if layer > 0:
                inp = h[layer - 1] @ w_ih_rest[layer - 1].T + b_ih_rest[layer - 1]
            h_new, c_new, _, _ = cell_forward(cell, inp, h[layer], c[layer], w_hh[layer],
                                              b_hh[layer], None if peep is None else peep[layer])
            keep = active[:, None]  # finished rows keep their state
            h[layer] = np.where(keep, h_new, h[layer])
            if c_new is not None:
                c[layer] = np.where(keep, c_new, c[layer])
        logits = h[-1] @ w_out.T + b_out
        for i in np.flatnonzero(active):
            v = int(forced[i, t])
            if v < 0:
                v = sample_token(logits[i], banned, temperature, top_k, uniforms[i, t])
            if v == end_token or v < 0:
                lengths[i] = t
                active[i] = False
            else:
                tokens[i, t] = v
                tok[i] = v
    return tokens, lengths
