# Generation (one-to-many): the sampling rule and the whole sampling loop, which
# runs the forward time loop one step at a time. Included by _cython_kernels.pyx.


cdef double _kth_largest(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th largest (1-based) of ``a[0:n]`` (quickselect; reorders ``a``).

    The value is unique whatever the pivots, so the result is deterministic.
    """
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, target = k - 1
    cdef double pivot, tmp
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


cdef Py_ssize_t _sample_token(const floating* logits, const uint8_t* banned,
                              Py_ssize_t V, double temperature, Py_ssize_t top_k,
                              double u, double* z, double* work) noexcept nogil:
    """Draw one token by inverse CDF; the rule of ``numpy_backend.sample_token``.

    ``z_v = logits_v / temperature`` (float64); candidates are the tokens not
    banned; ``top_k > 0`` keeps the ``top_k`` largest ``z`` among them (ties:
    lower ids first); ``p_v = exp(z_v - max)`` over the kept tokens, summed in
    token order; the token is the first whose running sum exceeds ``u * sum``
    (round-off fallback: the last kept token with ``p > 0``). -1 if every token
    is banned (callers prevent it). ``z`` and ``work`` are (V,) scratch.
    """
    cdef Py_ssize_t v, n = 0, last = -1, ties = 0
    cdef bint use_k
    cdef double thr = 0, m = 0, s = 0, cum = 0, target, p
    for v in range(V):
        if not banned[v]:
            z[v] = <double>logits[v] / temperature
            work[n] = z[v]
            if n == 0 or z[v] > m:
                m = z[v]
            n += 1
    if n == 0:
        return -1
    use_k = top_k > 0 and top_k < n
    if use_k:
        thr = _kth_largest(work, n, top_k)
        ties = top_k
        for v in range(V):  # how many ties at the threshold may stay
            if not banned[v] and z[v] > thr:
                ties -= 1
    for v in range(V):
        if banned[v]:
            z[v] = -1
            continue
        if use_k and not (z[v] > thr):
            if z[v] == thr and ties > 0:
                ties -= 1
            else:
                z[v] = -1
                continue
        p = _exp(z[v] - m)
        z[v] = p
        s += p
    target = u * s
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


cdef void _generate_loop(int code, int act, int ract, Py_ssize_t L,
                         Py_ssize_t N, Py_ssize_t H, Py_ssize_t V, Py_ssize_t T,
                         const floating* xp_table, const floating* w_ih_rest,
                         const floating* b_ih_rest, const floating* w_hh,
                         const floating* b_hh, const floating* peep, const floating* w_out,
                         const floating* b_out, floating* hbuf, floating* cbuf,
                         const int64_t* start, const int64_t* forced,
                         const uint8_t* banned, const double* uniforms,
                         double temperature, Py_ssize_t top_k, int64_t end_token,
                         int64_t* tokens, int64_t* lengths, int64_t* tok,
                         uint8_t* active, floating* xp, floating* gh,
                         floating* gates, floating* aux, floating* hseq,
                         floating* logits, double* z, double* work) noexcept nogil:
    """Feed ``tok`` through every layer (``_forward_loop`` with T = 1: the cell
    math of the forward pass), project the top state to logits, choose the next
    token per row, repeat. Finished rows are masked (their state is kept).
    ``hbuf``/``cbuf`` (L, 2, N, H): slot 0 holds the state, slot 1 receives the
    new one and is copied back (``cbuf`` NULL without a cell state). ``peep``
    (L, 3, H) or NULL. Everything else is caller-allocated scratch (``aux`` NULL
    for cells without one)."""
    cdef Py_ssize_t GH = n_gates_of(code) * H, NH = N * H, t, l, i, j
    cdef Py_ssize_t n_active = N
    cdef bint own = _own_small_gemv(N, GH * H * <Py_ssize_t>sizeof(floating),
                                    sizeof(floating), -1)
    cdef bint own_out = _own_small_gemv(N, V * H * <Py_ssize_t>sizeof(floating),
                                        sizeof(floating), -1)
    cdef int64_t v
    cdef floating* hl
    cdef floating* cl = NULL
    cdef const floating* bias
    for i in range(N):
        tok[i] = start[i]
        active[i] = 1
        lengths[i] = T
    for i in range(N * T):
        tokens[i] = end_token
    for t in range(T):
        if n_active == 0:
            break
        for l in range(L):
            hl = hbuf + l * 2 * NH
            if cbuf != NULL:
                cl = cbuf + l * 2 * NH
            if l == 0:
                for i in range(N):
                    memcpy(xp + i * GH, xp_table + tok[i] * GH, GH * sizeof(floating))
            else:
                # xp = h_{l-1} W_ih^T + b_ih (layer l reads the state of l - 1)
                _gemm_hh(own, hbuf + (l - 1) * 2 * NH, w_ih_rest + (l - 1) * GH * H,
                         0, GH, N, H, GH, xp)
                bias = b_ih_rest + (l - 1) * GH
                for i in range(N):
                    for j in range(GH):
                        xp[i * GH + j] += bias[j]
            _forward_loop(code, act, ract, 1, N, H, xp, w_hh + l * GH * H, b_hh + l * GH,
                          peep + l * 3 * H if peep != NULL else NULL, active, hl, cl, 2,
                          gates, aux, False, hseq, gh, -1)
            memcpy(hl, hl + NH, NH * sizeof(floating))
            if cbuf != NULL:
                memcpy(cl, cl + NH, NH * sizeof(floating))
        # logits = h_top W_out^T + b_out
        _gemm_hh(own_out, hbuf + (L - 1) * 2 * NH, w_out, 0, V, N, H, V, logits)
        for i in range(N):
            if not active[i]:
                continue
            v = forced[i * T + t]
            if v < 0:
                for j in range(V):
                    logits[i * V + j] += b_out[j]
                v = _sample_token(logits + i * V, banned, V, temperature, top_k,
                                  uniforms[i * T + t], z, work)
            if v == end_token or v < 0:
                lengths[i] = t
                active[i] = 0
                n_active -= 1
            else:
                tokens[i * T + t] = v
                tok[i] = v
