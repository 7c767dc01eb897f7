"""Generation: the whole sampling loop (one-to-many) in one compiled call.

Each step feeds every active row's token through the stack with the forward time
loop (``_fwd_rows`` with T = 1, finished rows masked so their state stays), projects
the top state to logits (``_mm_nt``) and chooses the next token per row, forced or
drawn by ``_sample_token``: the reference's rule (``numpy_backend.sample_token``),
compiled without fast-math so its sums and comparisons are the reference's, in the
same order.
"""

from __future__ import annotations

import numpy as np

from ..._numba_util import njit

from .cells import HAS_C
from .config import _EXACT, _JIT
from .gemm import _add_rows, _mm_nt
from .loops import _fwd_rows, _fwd_scratch_nb


@njit(**_EXACT)
def _kth_largest(a, n, k):
    """The k-th largest (1-based) of ``a[:n]`` (quickselect; reorders ``a``).

    The value is unique whatever the pivots, so the result is deterministic.
    """
    lo = 0
    hi = n - 1
    target = k - 1
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i = lo
        j = hi
        while i <= j:  # descending order: larger values to the left
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]


@njit(**_EXACT)
def _sample_token(logits, banned, temperature, top_k, u, z, work):
    """Draw one token by inverse CDF: the rule of ``numpy_backend.sample_token``.

    ``z_v = logits_v / temperature`` (float64); candidates are the tokens not
    banned; ``top_k > 0`` keeps the ``top_k`` largest ``z`` among them (ties:
    lower ids first); ``p_v = exp(z_v - max)`` over the kept tokens, summed in
    token order; the token is the first whose running sum exceeds ``u * sum``
    (round-off fallback: the last kept token with ``p > 0``). -1 if every token
    is banned (callers prevent it). ``z`` and ``work`` are (V,) float64 scratch.
    """
    V = logits.shape[0]
    n = np.int64(0)  # not a literal 0 (Numba would compile _kth_largest for it too)
    m = 0.0
    for v in range(V):
        if not banned[v]:
            zv = np.float64(logits[v]) / temperature
            z[v] = zv
            work[n] = zv
            if n == 0 or zv > m:
                m = zv
            n += 1
    if n == 0:
        return -1
    use_k = top_k > 0 and top_k < n
    thr = 0.0
    ties = 0
    if use_k:
        thr = _kth_largest(work, n, top_k)
        ties = top_k
        for v in range(V):  # how many ties at the threshold may stay
            if not banned[v] and z[v] > thr:
                ties -= 1
    s = 0.0
    for v in range(V):
        if banned[v]:
            z[v] = -1.0
            continue
        if use_k and not (z[v] > thr):
            if z[v] == thr and ties > 0:
                ties -= 1
            else:
                z[v] = -1.0
                continue
        p = np.exp(z[v] - m)
        z[v] = p
        s += p
    target = u * s
    cum = 0.0
    last = -1
    for v in range(V):
        p = z[v]
        if p < 0:
            continue
        cum += p
        if p > 0:
            last = v
        if cum > target:
            return v
    return last


@njit(**_JIT)
def _generate_kernel(code, act, ract, blas, blas_out, xp_table, w_ih_rest, b_ih_rest, w_hh,
                     b_hh, peep, w_out, b_out, h, c, start, forced, banned, uniforms,
                     temperature, top_k, end_token, tokens, lengths):
    """The generation loop (see ``numpy_backend.generate``): feed each row's token
    through every layer (``_fwd_rows`` with T = 1, finished rows masked so their
    state stays), project the top state to logits (``_mm_nt``), choose the next
    token per row (forced, or ``_sample_token``), repeat.

    ``h``/``c`` (L, N, H) are copied, not modified; ``peep`` (L, 3, H) holds each
    layer's peephole weights ((L, 3, 0) without peepholes); ``tokens`` (N, T) and
    ``lengths`` (N,) are written. Token ids were checked by the caller.
    """
    L, GH, H = w_hh.shape
    N = h.shape[1]
    V = w_out.shape[0]
    T = forced.shape[1]
    dt = xp_table.dtype
    has_c = HAS_C[code]
    NC = N if has_c else 0
    HC = H if has_c else 0
    hs = np.empty((L, N, H), dt)
    cs = np.empty((L, NC, HC), dt)
    for layer in range(L):
        for i in range(N):
            for j in range(H):
                hs[layer, i, j] = h[layer, i, j]
            for j in range(HC):
                cs[layer, i, j] = c[layer, i, j]
    tok = np.empty(N, np.int64)
    active = np.ones((1, N), np.bool_)  # the time loop's mask (T = 1)
    for i in range(N):
        tok[i] = start[i]
        lengths[i] = T
        for t in range(T):
            tokens[i, t] = end_token
    xp = np.empty((1, N, GH), dt)
    xp0 = xp[0]
    hseq = np.empty((1, N, H), dt)
    hT = np.empty((N, H), dt)
    cT = np.empty((NC, HC), dt)
    none3 = np.empty((0, 0, 0), dt)
    # runtime values, not literals: the callees are the ones the fused runner compiled
    zero, one = np.int64(0), np.int64(1)
    scratch = np.empty(N * _fwd_scratch_nb(code, H, GH, zero), dt)
    logits = np.empty((N, V), dt)
    z = np.empty(V, np.float64)
    work = np.empty(V, np.float64)
    n_active = N
    for t in range(T):
        if n_active == 0:
            break
        for layer in range(L):
            if layer == 0:
                for i in range(N):
                    src = xp_table[tok[i]]
                    dst = xp0[i]
                    for j in range(GH):
                        dst[j] = src[j]
            else:
                # xp = h_{l-1} W_ih^T + b_ih (layer l reads the new state of l - 1)
                _mm_nt(hs[layer - 1], w_ih_rest[layer - 1], xp0, zero, N, blas)
                _add_rows(xp0, b_ih_rest[layer - 1])
            hl = hs[layer]
            cl = cs[layer]
            _fwd_rows(code, act, ract, blas, zero, one, xp, w_hh[layer], b_hh[layer], peep[layer],
                      hl, cl, active, hseq, hT, cT, none3, none3, none3, none3, scratch, zero, N)
            for i in range(N):
                for j in range(H):
                    hl[i, j] = hT[i, j]
                for j in range(HC):
                    cl[i, j] = cT[i, j]
        # logits = h_top W_out^T + b_out (the bias only where a token is drawn)
        _mm_nt(hs[L - 1], w_out, logits, zero, N, blas_out)
        for i in range(N):
            if not active[0, i]:
                continue
            v = forced[i, t]
            if v < 0:
                li = logits[i]
                for j in range(V):
                    li[j] += b_out[j]
                v = _sample_token(li, banned, temperature, top_k, uniforms[i, t], z, work)
            if v == end_token or v < 0:
                lengths[i] = t
                active[0, i] = False
                n_active -= 1
            else:
                tokens[i, t] = v
                tok[i] = v
