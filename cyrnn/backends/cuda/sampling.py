"""``generate`` on the device: the sampling loop of ``numpy_backend.generate`` with the
states, logits, tokens and the rows' progress kept on the device.

Per step: the current tokens' rows of ``xp_table`` (``ops.gather``), each layer's
step through the time-loop kernels (``_run_forward`` over one step; finished rows
are masked, so they keep their state, as the reference's ``np.where``), the input
projection of layers above the first and the logits as tiled GEMMs, then
``sample_step``: one thread per row takes the forced token or samples one by the
reference's rule (``numpy_backend.sample_token``) and records it. All ``T`` steps
run (a finished row changes nothing), so nothing comes back until the tokens and
lengths at the end. The arguments are checked by the Numba backend's
``generate_args`` (shared code); what it does not take goes to the reference.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import ops
from .config import THREADS
from .gemm import matmul as _matmul
from ..numba import checked_generate


@cuda.jit(device=True)
def _sample(row, banned, temperature, top_k, n_allowed, u, kept):
    """``numpy_backend.sample_token`` on one row of logits (float64 arithmetic, as the
    reference: ``z = float64(logits) / temperature``); ``kept`` (V,) scratch."""
    V = row.shape[0]
    if n_allowed == 0:
        return -1
    if 0 < top_k < n_allowed:  # the top_k largest z, ties towards lower ids
        for v in range(V):
            kept[v] = 0
        for _ in range(top_k):
            best = -1
            bz = 0.0
            for v in range(V):
                if banned[v] == 0 and kept[v] == 0:
                    z = float(row[v]) / temperature
                    if best < 0 or z > bz:
                        best = v
                        bz = z
            kept[best] = 1
    else:
        for v in range(V):
            kept[v] = 0 if banned[v] else 1
    m = -math.inf
    for v in range(V):
        if kept[v]:
            m = max(m, float(row[v]) / temperature)
    total = 0.0
    for v in range(V):
        if kept[v]:
            total += math.exp(float(row[v]) / temperature - m)
    thr = u * total
    cum = 0.0
    last = -1
    for v in range(V):
        if kept[v]:
            p = math.exp(float(row[v]) / temperature - m)
            cum += p
            if p > 0:
                last = v
            if cum > thr:
                return v
    return last


@cuda.jit
def sample_step(t, logits, forced, banned, uniforms, temperature, top_k, end_token,
                n_allowed, kept, active, tok, tokens, lengths):
    """Step ``t`` of every active row: the forced token, or one sampled from its
    logits; ``end_token`` (or no token) ends the row at ``t``. ``active`` (1, n)
    uint8 is the time loops' mask of the next step."""
    i = cuda.grid(1)
    if i < logits.shape[0] and active[0, i] != 0:
        v = forced[i, t]
        if v < 0:
            v = _sample(logits[i], banned, temperature, top_k, n_allowed, uniforms[i, t],
                        kept[i])
        if v == end_token or v < 0:
            lengths[i] = t
            active[0, i] = 0
        else:
            tokens[i, t] = v
            tok[i, 0] = v


def _generate_loop(cell, xp_table, w_ih_rest, b_ih_rest, w_hh, b_hh, w_out, b_out, h, c,
                   start, forced, banned, uniforms, peep, temperature, top_k, end_token):
    """The sampling loop on the device; see ``numpy_backend.generate`` (same results
    for the same ``uniforms``, up to round-off landing exactly on a sampling
    boundary). Inputs the Numba backend's ``generate_args`` does not take go to the
    reference."""
    from . import _run_forward, _state_slots

    dt = xp_table.dtype
    n, T = forced.shape
    L, GH, H = w_hh.shape
    V = w_out.shape[0]
    has_c = c is not None
    d_table = cuda.to_device(xp_table.reshape(-1))
    d_w_hh, d_b_hh = cuda.to_device(w_hh), cuda.to_device(b_hh)
    d_w_ih, d_b_ih = cuda.to_device(w_ih_rest), cuda.to_device(b_ih_rest)
    d_w_out, d_b_out = cuda.to_device(w_out), cuda.to_device(b_out)
    d_peep = (cuda.to_device(peep) if cell.n_peepholes else ops.zeros((L, 3, 1), dt))
    states = []
    for layer in range(L):  # slot 0: the state before a step, slot 1: after it
        d_hs, d_cs = _state_slots(dt, 2, n, H, has_c)
        d_hs[0].copy_to_device(h[layer])
        if has_c:
            d_cs[0].copy_to_device(c[layer])
        states.append((d_hs, d_cs))
    d_tok = cuda.to_device(start.reshape(n, 1))
    d_active = cuda.to_device(np.ones((1, n), np.uint8))
    d_tokens = cuda.to_device(np.full((n, T), end_token, np.int64))
    d_lengths = cuda.to_device(np.full(n, T, np.int64))
    d_forced, d_banned = cuda.to_device(forced), cuda.to_device(banned.view(np.uint8))
    d_uniforms = cuda.to_device(uniforms)
    d_kept = cuda.device_array((n, V), np.uint8)
    d_xp = cuda.device_array((1, n, GH), dt)
    d_hseq = cuda.device_array((1, n, H), dt)
    d_gates = cuda.device_array((1, n, GH), dt)
    d_aux = cuda.device_array((1, n, H), dt)
    d_logits = cuda.device_array((n, V), dt)
    n_allowed = int(V - banned.sum())
    for t in range(T):
        ops.launch("gather", dt, n * GH, d_table, 0, d_tok, d_xp.reshape(n, GH))
        for layer in range(L):
            d_hs, d_cs = states[layer]
            if layer > 0:
                _matmul(n, GH, H, states[layer - 1][0], (0, H, 1), d_w_ih,
                        ((layer - 1) * GH * H, 1, H), d_xp, (0, GH), bias=d_b_ih,
                        bias0=(layer - 1) * GH)
            _run_forward(cell.codes, d_xp, d_w_hh[layer], d_b_hh[layer], d_peep[layer],
                         d_active, 1, d_hs, d_cs, d_hseq, d_gates, d_aux, 0)
            d_hs[0].copy_to_device(d_hs[1])
            if has_c:
                d_cs[0].copy_to_device(d_cs[1])
        _matmul(n, V, H, states[-1][0], (0, H, 1), d_w_out, (0, 1, H), d_logits, (0, V),
                bias=d_b_out)
        sample_step[math.ceil(n / THREADS), THREADS](
            t, d_logits, d_forced, d_banned, d_uniforms, float(temperature), int(top_k),
            int(end_token), n_allowed, d_kept, d_active, d_tok, d_tokens, d_lengths)
    return d_tokens.copy_to_host(), d_lengths.copy_to_host()


generate = checked_generate(_generate_loop)
