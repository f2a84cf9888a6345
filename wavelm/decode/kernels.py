"""Numba kernels of the fast decode step: a tiny interpreter over a flat program.

The model is lowered (see lower.py) into rows of int64 `prog[pc] = (op, a1, a2, ...)` over
four flat arrays: P (weights, read-only), M (scratch, model dtype), F (the float streaming
state) and I (its int64 state: ring heads, slot positions, offsets, starts, pool counters).
F and I are views of a torch `State`'s tensors (wavelm/model/state.py, same layout). Every op
handles the whole batch; regions in M are (B, n) row-major. One `decode` call runs many
samples, sampling included, without returning to Python.

# B batch, C channels, H heads, D head dim, W window, K kernel, L ring length, V vocab
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# fast-math without `ninf`/`nnan`: masked logits and empty attention slots use -inf
FM = {"reassoc", "contract", "nsz", "arcp"}
# error_model="numpy": no zero-division checks (they bloat the code and block SIMD)
JIT = dict(fastmath=FM, cache=True, nogil=True, error_model="numpy")

# opcodes (operand layout in the comment; offsets index P, M or I as named)
EMBED = 0     # dst, w, C, V                   dst[b] = w[tok[b]]
LN = 1        # src, dst, C, g, b, eps_idx     LayerNorm (may be in place); b < 0: RMSNorm
LINEAR = 2    # src, dst, n_in, n_out, w, b    dst = W src + b   (b < 0: no bias)
SILU = 3      # x, n                           in place
RELU = 4      # x, n                           in place
GATE = 5      # a, g, n, kind                  a *= sigmoid(g) (kind 0) or silu(g) (kind 1)
AXPY = 6      # dst, src, n, alpha_idx         dst += alpha * src
DWCONV = 7    # src, dst, C, K, dil, w, b, ring, head     causal depthwise conv, ring state (F)
CONV = 8      # src, dst, Cin, Cout, K, w, b, ring, head  causal full conv (dilation 1)
ATTN = 9      # qkv, dst, H, D, W, k, v, pos, off, start, inv, scores   one query per stream
POOL = 10     # src, dst, C, p, buf, held, r, jump, grp    dst = held[r]; buf[r] = src; r += 1;
              #                      jump unless the group is complete, else copy buf to grp
STORE = 11    # dst, src, n                    F[dst:dst + B n] = M[src:src + B n]
LPC = 12      # out, ring, head, coef, scale, mass, r, N, P, H, c   the LPC path (model/lpc.py): at out,
              #                      code (B, 1), feat (B, 2), log-prior (B, V), z scratch (B, V)
EMBEDM = 13   # dst, w, C, V, codes            dst[b] = w[int(M[codes + b])]
PRIOR = 14    # logits, prior, g, V            logits[b] += softplus(g[b]) * prior[b]
NCOLS = 14


@njit(**JIT)
def _embed(P, M, tok, dst, w, C, V):
    # array views (not flat index arithmetic) let LLVM vectorise: numba checks negative
    # indices on computed scalars, which blocks SIMD
    E = P[w:w + V * C].reshape(V, C)
    for b in range(tok.shape[0]):
        _copy(M[dst + b * C:dst + (b + 1) * C], E[tok[b]])


@njit(**JIT)
def _layernorm(P, M, C64, B, src, dst, C, g, bb, eps_idx):
    X = M[src:src + B * C].reshape(B, C)
    Y = M[dst:dst + B * C].reshape(B, C)
    gw, bw = P[g:g + C], P[max(bb, 0):max(bb, 0) + C]
    eps = C64[eps_idx]
    zero, n = M.dtype.type(0), M.dtype.type(C)
    if bb < 0:                                        # RMSNorm: no centring, no bias
        for b in range(B):
            x, y = X[b], Y[b]
            ms = zero
            for c in range(C):
                ms += x[c] * x[c]
            r = M.dtype.type(1.0 / math.sqrt(ms / n + eps))
            for c in range(C):
                y[c] = x[c] * r * gw[c]
        return
    for b in range(B):
        x, y = X[b], Y[b]
        mean = zero
        for c in range(C):
            mean += x[c]
        mean = mean / n
        var = zero
        for c in range(C):
            t = x[c] - mean
            var += t * t
        r = M.dtype.type(1.0 / math.sqrt(var / n + eps))
        for c in range(C):
            y[c] = (x[c] - mean) * r * gw[c] + bw[c]


@njit(**JIT)
def _matvec_rows(W, x, y, bias, has_bias):
    """y = W x (+ bias), four rows at a time so each load of x feeds four FMAs."""
    n_out, n_in = W.shape
    zero = x.dtype.type(0)          # typed zero: `x[0] * 0` would be float64 in numba
    o = 0
    while o + 4 <= n_out:
        a0 = zero
        a1, a2, a3 = a0, a0, a0
        w0, w1, w2, w3 = W[o], W[o + 1], W[o + 2], W[o + 3]
        for i in range(n_in):
            xi = x[i]
            a0 += w0[i] * xi
            a1 += w1[i] * xi
            a2 += w2[i] * xi
            a3 += w3[i] * xi
        y[o], y[o + 1], y[o + 2], y[o + 3] = a0, a1, a2, a3
        o += 4
    for r in range(o, n_out):
        acc = zero
        wr = W[r]
        for i in range(n_in):
            acc += wr[i] * x[i]
        y[r] = acc
    if has_bias:
        for r in range(n_out):
            y[r] += bias[r]


@njit(**JIT)
def _matmat44(W, X, Y, B4):
    """Y[:B4] = X[:B4] W^T for B4 a multiple of 4: tiles of 4 weight rows x 4 streams (16
    accumulators), so each load feeds four FMAs and a weight tile is read once per 4 streams."""
    n_out, n_in = W.shape
    zero = X.dtype.type(0)
    o4 = n_out - n_out % 4
    for o in range(0, o4, 4):
        w0, w1, w2, w3 = W[o], W[o + 1], W[o + 2], W[o + 3]
        for b in range(0, B4, 4):
            x0, x1, x2, x3 = X[b], X[b + 1], X[b + 2], X[b + 3]
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
            for i in range(n_in):
                p, q, r, t = w0[i], w1[i], w2[i], w3[i]
                u = x0[i]
                a00 += p * u
                a01 += q * u
                a02 += r * u
                a03 += t * u
                u = x1[i]
                a10 += p * u
                a11 += q * u
                a12 += r * u
                a13 += t * u
                u = x2[i]
                a20 += p * u
                a21 += q * u
                a22 += r * u
                a23 += t * u
                u = x3[i]
                a30 += p * u
                a31 += q * u
                a32 += r * u
                a33 += t * u
            Y[b, o], Y[b, o + 1], Y[b, o + 2], Y[b, o + 3] = a00, a01, a02, a03
            Y[b + 1, o], Y[b + 1, o + 1], Y[b + 1, o + 2], Y[b + 1, o + 3] = a10, a11, a12, a13
            Y[b + 2, o], Y[b + 2, o + 1], Y[b + 2, o + 2], Y[b + 2, o + 3] = a20, a21, a22, a23
            Y[b + 3, o], Y[b + 3, o + 1], Y[b + 3, o + 2], Y[b + 3, o + 3] = a30, a31, a32, a33
    for o in range(o4, n_out):
        wr = W[o]
        for b in range(B4):
            acc = zero
            xb = X[b]
            for i in range(n_in):
                acc += wr[i] * xb[i]
            Y[b, o] = acc


@njit(**JIT)
def _linear(P, M, B, src, dst, n_in, n_out, w, bias):
    W = P[w:w + n_in * n_out].reshape(n_out, n_in)
    X = M[src:src + B * n_in].reshape(B, n_in)
    Y = M[dst:dst + B * n_out].reshape(B, n_out)
    B4 = B - B % 4
    if B4:
        _matmat44(W, X, Y, B4)
    bv = P[max(bias, 0):max(bias, 0) + n_out]
    for b in range(B4, B):
        _matvec_rows(W, X[b], Y[b], bv, False)
    if bias >= 0:
        for b in range(B):
            y = Y[b]
            for o in range(n_out):
                y[o] += bv[o]


@njit(**JIT)
def _vexp(x, ex):
    """x = exp(x) in place, SIMD-friendly (numba's math.exp is a scalar libm call): range
    reduction x = k ln2 + r, a degree-13 Taylor polynomial (exact to the last bit of float64
    for |r| <= ln2 / 2), and 2^k built from its exponent bits in the aliased int/float scratch.
    ex = (CF, EI, EF): CF = [lo, hi, log2(e), ln2_hi, ln2_lo, 1/13!, ..., 1/1!, 1] in the
    model dtype, then 0.5; EI (int32 or int64) and EF (float view of EI), each >= len(x)."""
    cf, ei, ef = ex
    lo, hi, log2e, ln2hi, ln2lo = cf[0], cf[1], cf[2], cf[3], cf[4]
    shift = 23 if ei.itemsize == 4 else 52
    bias = 127 if ei.itemsize == 4 else 1023
    half = cf[19]
    for i in range(x.shape[0]):
        v = min(max(x[i], lo), hi)
        k = np.floor(v * log2e + half)
        r = v - k * ln2hi - k * ln2lo
        p = cf[5]
        for j in range(6, 19):
            p = p * r + cf[j]
        x[i] = p
        ei[i] = (int(k) + bias) << shift
    for i in range(x.shape[0]):
        x[i] *= ef[i]


def exp_workspace(dtype, n):
    """The `ex` tuple of _vexp for arrays of up to n elements."""
    import math as m

    dtype = np.dtype(dtype)
    lim = 87.0 if dtype == np.float32 else 708.0
    ln2hi = 0.693359375                               # 9 significant bits: k * ln2hi is exact
    cf = [-lim, lim, 1 / m.log(2), ln2hi, m.log(2) - ln2hi] + [1 / m.factorial(j) for j in range(13, -1, -1)] + [0.5]
    ei = np.zeros(max(n, 1), np.int32 if dtype == np.float32 else np.int64)
    return np.array(cf, dtype), ei, ei.view(dtype)


@njit(**JIT)
def _silu(M, x, n, ex):
    v = M[x:x + n]
    t = ex[2][n:2 * n]                                # scratch after _vexp's own
    for i in range(n):
        t[i] = -v[i]
    _vexp(t, ex)
    one = v.dtype.type(1)
    for i in range(n):
        v[i] = v[i] / (one + t[i])


@njit(**JIT)
def _relu(M, x, n):
    v = M[x:x + n]
    for i in range(n):
        if v[i] < 0:
            v[i] = 0


@njit(**JIT)
def _gate(M, a, g, n, kind, ex):
    av, gv = M[a:a + n], M[g:g + n]
    t = ex[2][n:2 * n]
    for i in range(n):
        t[i] = -gv[i]
    _vexp(t, ex)
    one = av.dtype.type(1)
    for i in range(n):
        s = one / (one + t[i])
        av[i] *= s if kind == 0 else gv[i] * s


@njit(**JIT)
def _axpy(M, C64, dst, src, n, alpha_idx):
    d, s = M[dst:dst + n], M[src:src + n]
    alpha = M.dtype.type(C64[alpha_idx])
    if alpha == 1.0:
        for i in range(n):
            d[i] += s[i]
    else:
        for i in range(n):
            d[i] += alpha * s[i]


@njit(**JIT)
def _dwconv(P, M, F, I, B, src, dst, C, K, dil, w, bias, ring, head):
    """y[t] = b + sum_k w[k] x[t - (K-1-k) dil]; the ring (B, L, C) holds the last L = (K-1) dil
    inputs, oldest at slot I[head]. Weights are stored (K, C)."""
    L = (K - 1) * dil
    h = I[head]
    Wk = P[w:w + K * C].reshape(K, C)
    X = M[src:src + B * C].reshape(B, C)
    Y = M[dst:dst + B * C].reshape(B, C)
    R = F[ring:ring + B * L * C].reshape(B * L, C)      # row b * L + slot
    for b in range(B):
        _copy(Y[b], P[bias:bias + C])
        for k in range(K):
            x = X[b] if k == K - 1 else R[b * L + (h + k * dil) % L]
            _fma(Y[b], Wk[k], x)
        if L > 0:
            _copy(R[b * L + h], X[b])
    if L > 0:
        I[head] = (h + 1) % L


@njit(**JIT)
def _copy(dst, src):
    """dst[:] = src without numpy's broadcasting machinery (its error paths cost JIT time)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit(**JIT)
def _fma(y, a, x):
    """y += a * x, elementwise."""
    for i in range(y.shape[0]):
        y[i] += a[i] * x[i]


@njit(**JIT)
def _conv(P, M, F, I, B, src, dst, Cin, Cout, K, w, bias, ring, head):
    """Full causal conv, dilation 1; weights stored (K, Cout, Cin), ring (B, L, Cin)."""
    L = K - 1
    h = I[head]
    X = M[src:src + B * Cin].reshape(B, Cin)
    Y = M[dst:dst + B * Cout].reshape(B, Cout)
    R = F[ring:ring + B * L * Cin].reshape(B * L, Cin)
    Wk = P[w:w + K * Cout * Cin].reshape(K * Cout, Cin)
    tmp = np.empty(Cout, M.dtype)
    for b in range(B):
        _copy(Y[b], P[bias:bias + Cout])
        for k in range(K):
            x = X[b] if k == K - 1 else R[b * L + (h + k) % L]
            _matvec_rows(Wk[k * Cout:(k + 1) * Cout], x, tmp, tmp, False)
            for o in range(Cout):
                Y[b, o] += tmp[o]
        if L > 0:
            _copy(R[b * L + h], X[b])
    if L > 0:
        I[head] = (h + 1) % L


@njit(**JIT)
def _attn(M, F, I, C64, B, src, dst, H, D, W, kof, vof, pos, off, start, inv, scores, ex):
    """One query per stream against the KV ring (B, H, W, D) in F, slot = position % W (the
    layout of layers.Attention). Slots [0, min(pos + 1, W)) hold keys; stream b sees those at
    positions >= I[start + b] (a reset stream does not see its past). Rotary angles as in
    layers.rope: angle in float64, cos/sin in the model dtype."""
    C = H * D
    q_pos = I[off]
    slot = q_pos % W
    I[pos + slot] = q_pos
    I[off] = q_pos + 1
    n = min(q_pos + 1, W)
    half = D // 2
    s = M[scores:scores + n]
    cs = M[scores + W:scores + W + half]
    sn = M[scores + W + half:scores + W + D]
    for i in range(half):
        cs[i] = q_pos * C64[inv + i]                  # cast to the model dtype first
        a = cs[i]
        cs[i] = math.cos(a)
        sn[i] = math.sin(a)
    scale = M.dtype.type(1.0 / math.sqrt(D))
    zero = M.dtype.type(0)
    QKV = M[src:src + B * 3 * C].reshape(B, 3, H, D)
    Kc = F[kof:kof + B * H * W * D].reshape(B, H, W, D)
    Vc = F[vof:vof + B * H * W * D].reshape(B, H, W, D)
    Y = M[dst:dst + B * C].reshape(B, H, D)
    slot_pos = I[pos:pos + n]
    for b in range(B):
        first = I[start + b]
        for h in range(H):
            q, k, v = QKV[b, 0, h], QKV[b, 1, h], QKV[b, 2, h]
            for x in (q, k):                          # rotate pairs (2i, 2i + 1)
                for i in range(half):
                    x1, x2 = x[2 * i], x[2 * i + 1]
                    x[2 * i] = x1 * cs[i] - x2 * sn[i]
                    x[2 * i + 1] = x1 * sn[i] + x2 * cs[i]
            Kb, Vb = Kc[b, h], Vc[b, h]               # (W, D)
            _copy(Kb[slot], k)
            _copy(Vb[slot], v)
            for i in range(D):
                q[i] *= scale
            mx = -np.inf
            for j in range(n):
                kr = Kb[j]
                acc = zero
                for i in range(D):
                    acc += q[i] * kr[i]
                s[j] = acc
                if slot_pos[j] >= first:
                    mx = max(mx, acc)
            for j in range(n):
                s[j] -= mx
            _vexp(s, ex)
            tot = zero
            for j in range(n):
                if slot_pos[j] < first:
                    s[j] = 0
                tot += s[j]
            y = Y[b, h]
            for i in range(D):
                y[i] = 0
            for j in range(n):
                if s[j] != 0:
                    _axpy1(y, Vb[j], s[j])
            inv_tot = 1 / tot
            for i in range(D):
                y[i] *= inv_tot


@njit(**JIT)
def _axpy1(y, x, a):
    """y += a * x."""
    for i in range(y.shape[0]):
        y[i] += a * x[i]


@njit(**JIT)
def _pool(M, F, I, B, src, dst, C, p, buf, held, r_idx, grp):
    """dst = held[r]; buf[r] = src; at the end of a group copy buf to the scratch `grp`."""
    r = I[r_idx]
    X = M[src:src + B * C].reshape(B, C)
    Y = M[dst:dst + B * C].reshape(B, C)
    Hd = F[held:held + B * p * C].reshape(B, p, C)
    Bf = F[buf:buf + B * p * C].reshape(B, p, C)
    for b in range(B):
        _copy(Y[b], Hd[b, r])
        _copy(Bf[b, r], X[b])
    r += 1
    if r == p:
        I[r_idx] = 0
        _copy(M[grp:grp + B * p * C], F[buf:buf + B * p * C])
        return True
    I[r_idx] = r
    return False


@njit(**JIT)
def _vlog(x, ex):
    """x = log(x) in place for x > 0 (normal numbers), SIMD-friendly: x = m 2^e with m in
    [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), as a series in s^2 (exact
    to the last bit of float64: s^2 <= 0.0295). ex: the workspace of _vexp."""
    cf, ei, ef = ex
    n = x.shape[0]
    shift = 23 if ei.itemsize == 4 else 52
    bias = 127 if ei.itemsize == 4 else 1023
    mant = (1 << shift) - 1
    one = x.dtype.type(1)
    ln2 = x.dtype.type(0.6931471805599453)
    sqrt2 = x.dtype.type(1.4142135623730951)
    for i in range(n):
        ef[i] = x[i]
    for i in range(n):
        bits = ei[i]
        x[i] = (bits >> shift) - bias                      # the exponent, kept in x meanwhile
        ei[i] = (bits & mant) | (bias << shift)            # the mantissa, in [1, 2)
    for i in range(n):
        m = ef[i]
        e = x[i]
        if m > sqrt2:
            m = m * x.dtype.type(0.5)
            e += one
        s = (m - one) / (m + one)
        s2 = s * s
        p = x.dtype.type(1 / 23)
        for j in range(21, 0, -2):
            p = p * s2 + x.dtype.type(1 / j)
        x[i] = e * ln2 + 2 * s * p


@njit(**JIT)
def _levinson(r, a, tmp, P):
    """Predictor a (P,) from autocorrelations r (P + 1,): model.lpc.levinson, op for op."""
    err = r[0] * (1 + 1e-9) + 1e-30
    for i in range(P):
        a[i] = 0.0
    for i in range(P):
        acc = 0.0
        for m in range(i):
            acc += a[m] * r[i - m]
        k = (r[i + 1] - acc) / err
        for m in range(i):
            tmp[m] = a[m]
        for m in range(i):
            a[m] = tmp[m] - k * tmp[i - 1 - m]
        a[i] = k
        err = err * (1 - k * k)


@njit(**JIT)
def _lpc_refit(Rb, Ab, x, ac, a, tmp, newest, vals_w, P, H, N, mult, min_scale):
    """A block starts (one stream): the residual scale of the previous block's predictions, then
    Levinson on the windowed ring (new coefficients into Ab). Returns the scale."""
    tot = 0.0
    for j in range(H):                             # inputs newest - H + 1 .. newest, in time order
        t = (newest - H + 1 + j) % N
        e = 0.0
        for p in range(P):
            e += Rb[(t - 1 - p) % N] * Ab[p]
        tot += abs(Rb[t] - e)
    Sb = max(mult * (tot / H), min_scale)
    for i in range(N):                             # the window, oldest first
        x[i] = Rb[(newest + 1 + i) % N] * vals_w[i]
    for k in range(P + 1):
        acc = 0.0
        for i in range(N - k):
            acc += x[i] * x[i + k]
        ac[k] = acc
    _levinson(ac, a, tmp, P)
    for p in range(P):
        Ab[p] = a[p]
    return Sb


@njit(**JIT)
def _lpc_step(R, A, S, W, b, tok, h, r, C64, c, N, P, H, codes, feat, pr, z, ex):
    """One step of model.lpc.LPC for stream b (its ring slot h, r steps into the block), then
    its features and log-prior (model.lpc.features, log_prior): codes[0], feat (2,), pr (V,);
    z: scratch (V,). Float64 inside; coefficients, scales and code masses are rounded to the
    state's dtype where they are stored, as the torch forward does. C64[c:] holds the code
    values (V), bounds (V - 1), widths (V), the window (N), then FLOOR, MULT, MIN_SCALE,
    log1p(255), LOG_SCALE_NORM and ZMAX."""
    V = 256
    vals, bounds, widths = C64[c:c + V], C64[c + V:c + 2 * V - 1], C64[c + 2 * V - 1:c + 3 * V - 1]
    k0 = c + 3 * V - 1 + N
    floor, mult, min_scale, l1p, norm, zmax = C64[k0], C64[k0 + 1], C64[k0 + 2], C64[k0 + 3], C64[k0 + 4], C64[k0 + 5]
    dt = pr.dtype.type
    Rb, Ab = R[b], A[b]
    Rb[h] = vals[tok]                              # the oldest slot takes the newest input
    if r == 0:                                     # a block starts
        S[b] = _lpc_refit(Rb, Ab, np.empty(N), np.empty(P + 1), np.empty(P), np.empty(P), h,
                          C64[c + 3 * V - 1:c + 3 * V - 1 + N], P, H, N, mult, min_scale)
        sb = float(S[b])
        for j in range(V):                         # code_mass: -expm1(-width / scale)
            W[b, j] = -math.expm1(-(widths[j] / sb))
    pred = 0.0
    for p in range(min(P, h + 1)):                 # newest first: slots h, h - 1, ... then wrap
        pred += Rb[h - p] * Ab[p]
    for p in range(h + 1, P):
        pred += Rb[N + h - p] * Ab[p]
    sc = float(S[b])
    isc = 1.0 / sc
    lo, hi = 0, V - 1                              # code: the number of bounds <= pred
    while lo < hi:
        mid = (lo + hi) // 2
        if bounds[mid] <= pred:
            lo = mid + 1
        else:
            hi = mid
    codes[0] = lo
    pc = min(max(pred, -1.0), 1.0)
    y = math.log1p(255.0 * abs(pc)) / l1p
    feat[0] = -y if pc < 0 else y
    feat[1] = math.log(sc) / norm
    # the log-prior (log_prior): each code's mass is sigmoid(z_hi) sigmoid(-z_lo) mass[code]
    w = W[b]
    one, lo_fl, hi_fl = dt(1), dt(floor / V), dt(1 - floor)
    for j in range(V - 1):
        z[j] = dt(min(max((bounds[j] - pred) * isc, -zmax), zmax))   # float64, as log_prior
        pr[j] = -abs(z[j])
    _vexp(pr[:V - 1], ex)
    for j in range(V - 1):                         # two independent loops, so both vectorise
        e = pr[j]
        inv = one / (one + e)
        pr[j] = (e if z[j] <= 0 else one) * inv   # sigmoid(z): mass below bound j
        z[j] = (e if z[j] >= 0 else one) * inv    # sigmoid(-z): mass above it
    pr[V - 1] = one                                # code V-1: below +inf; code 0: above -inf
    pr[0] = hi_fl * (pr[0] * one * w[0]) + lo_fl
    for j in range(1, V):
        pr[j] = hi_fl * (pr[j] * z[j - 1] * w[j]) + lo_fl
    _vlog(pr, ex)


@njit(**JIT)
def _lpc(M, F, I, C64, B, tok, out, ring, head, coef, scale, mass, r_idx, N, P, H, c, ex):
    """The LPC op: _lpc_step for every stream into M[out:]: codes (B, 1), features (B, 2),
    log-prior (B, V), then z scratch (B, V); the state leaves are in F and I."""
    V = 256
    h, r = I[head], I[r_idx]
    R = F[ring:ring + B * N].reshape(B, N)
    A = F[coef:coef + B * P].reshape(B, P)
    S = F[scale:scale + B]
    W = F[mass:mass + B * V].reshape(B, V)
    feat, prior, zs = out + B, out + 3 * B, out + 3 * B + B * V
    for b in range(B):
        _lpc_step(R, A, S, W, b, tok[b], h, r, C64, c, N, P, H, M[out + b:out + b + 1],
                  M[feat + 2 * b:feat + 2 * b + 2], M[prior + b * V:prior + (b + 1) * V],
                  M[zs + b * V:zs + (b + 1) * V], ex)
    I[head] = (h + 1) % N
    I[r_idx] = (r + 1) % H


@njit(**JIT)
def lpc_run(tokens, R, A, S, W, hr, C64, c, N, P, H, codes, feats, prior, ex):
    """The LPC path over a chunk of tokens (B, T) outside the decoder (training, scoring): the
    same _lpc_step, into codes (B, T), feats (B, T, 2), prior (B, T, V); hr = [head, r]."""
    B, T = tokens.shape
    z = np.empty(prior.shape[2], prior.dtype)
    h, r = hr[0], hr[1]
    for t in range(T):
        for b in range(B):
            _lpc_step(R, A, S, W, b, tokens[b, t], h, r, C64, c, N, P, H, codes[b, t:t + 1], feats[b, t],
                      prior[b, t], z, ex)
        h = (h + 1) % N
        r = (r + 1) % H
    hr[0], hr[1] = h, r


@njit(**JIT)
def _prior(M, B, logits, prior, g, V):
    for b in range(B):
        v = float(M[g + b])
        w = M.dtype.type(v if v > 20.0 else math.log1p(math.exp(v)))   # F.softplus, threshold 20
        lg, pr = M[logits + b * V:logits + (b + 1) * V], M[prior + b * V:prior + (b + 1) * V]
        for j in range(V):
            lg[j] += w * pr[j]


@njit(**JIT)
def _sort_desc(x):
    """Shell sort, descending, in place (small code: np.sort costs seconds of JIT time)."""
    n = x.shape[0]
    for gap in (132, 57, 23, 10, 4, 1):                  # Ciura's gaps
        for i in range(gap, n):
            v = x[i]
            j = i
            while j >= gap and x[j - gap] < v:
                x[j] = x[j - gap]
                j -= gap
            x[j] = v


@njit(**JIT)
def sample(x, temperature, top_k, top_p, u, ex, tmp):
    """Draw one token from logits x (V,) (overwritten) by inverse CDF with u in [0, 1).
    Rule shared with sampling.sample_torch: e = exp(x/T - max); top-k zeroes e below the k-th
    largest (ties kept); top-p keeps the most likely tokens until their mass reaches top_p (the
    one crossing it included); token = first index whose float64 cumsum exceeds u * sum.
    tmp: scratch (V,)."""
    V = x.shape[0]
    t = x.dtype.type(temperature)
    for i in range(V):
        x[i] = x[i] / t
    mx = x[0]
    for i in range(V):
        mx = max(mx, x[i])
    for i in range(V):
        x[i] -= mx
    _vexp(x, ex)
    if 0 < top_k < V:
        _copy(tmp, x)
        _sort_desc(tmp)
        thr = tmp[top_k - 1]
        for i in range(V):
            if x[i] < thr:
                x[i] = 0
    if top_p < 1.0:
        tot = 0.0
        for i in range(V):
            tot += x[i]
        for i in range(V):
            tmp[i] = x[i] / x.dtype.type(tot)
        _sort_desc(tmp)
        cum, thr = 0.0, tmp[0]
        for j in range(V):
            if cum >= top_p:
                break
            thr = tmp[j]
            cum += tmp[j]
        for i in range(V):
            if x[i] / x.dtype.type(tot) < thr:
                x[i] = 0
    tot = 0.0
    for i in range(V):
        tot += x[i]
    target = u * tot
    cum = 0.0
    for i in range(V):
        cum += x[i]
        if cum > target:
            return i
    for i in range(V - 1, -1, -1):                   # rounding: the last token with mass
        if x[i] > 0:
            return i
    return V - 1


@njit(**JIT)
def decode(prog, P, M, F, I, C64, ex, tok, uniform, temperature, top_k, top_p, logits, V, out,
           forced, logits_out):
    """Run out.shape[1] steps: feed tok, sample the next token with uniform (n, B) in [0, 1),
    write it to out (B, n) and tok. The last step's logits (B, V) stay in M at `logits`.
    Tests: with `forced` (B, n) non-empty, its tokens are fed instead of the samples, and
    `logits_out` (n, B, V), if non-empty, receives every step's logits."""
    B = tok.shape[0]
    x = np.empty(V, M.dtype)
    tmp = np.empty(V, M.dtype)
    n_ops = prog.shape[0]
    for t in range(out.shape[1]):
        # one step of the program (inlined here: a separate function would be re-optimised by
        # LLVM at every level of calls, doubling the JIT time)
        pc = 0
        while pc < n_ops:
            a = prog[pc]
            op = a[0]
            if op == LINEAR:
                _linear(P, M, B, a[1], a[2], a[3], a[4], a[5], a[6])
            elif op == LN:
                _layernorm(P, M, C64, B, a[1], a[2], a[3], a[4], a[5], a[6])
            elif op == AXPY:
                _axpy(M, C64, a[1], a[2], B * a[3], a[4])
            elif op == SILU:
                _silu(M, a[1], B * a[2], ex)
            elif op == RELU:
                _relu(M, a[1], B * a[2])
            elif op == GATE:
                _gate(M, a[1], a[2], B * a[3], a[4], ex)
            elif op == DWCONV:
                _dwconv(P, M, F, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
            elif op == CONV:
                _conv(P, M, F, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
            elif op == ATTN:
                _attn(M, F, I, C64, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11],
                      a[12], ex)
            elif op == POOL:
                if not _pool(M, F, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[9]):
                    pc = a[8]
                    continue
            elif op == STORE:
                _copy(F[a[1]:a[1] + B * a[3]], M[a[2]:a[2] + B * a[3]])
            elif op == EMBED:
                _embed(P, M, tok, a[1], a[2], a[3], a[4])
            elif op == LPC:
                _lpc(M, F, I, C64, B, tok, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], ex)
            elif op == EMBEDM:
                E = P[a[2]:a[2] + a[3] * a[4]].reshape(a[4], a[3])
                for b in range(B):
                    _copy(M[a[1] + b * a[3]:a[1] + (b + 1) * a[3]], E[int(M[a[5] + b])])
            elif op == PRIOR:
                _prior(M, B, a[1], a[2], a[3], a[4])
            pc += 1
        for b in range(B):
            _copy(x, M[logits + b * V:logits + (b + 1) * V])
            if logits_out.shape[0]:
                _copy(logits_out[t, b], x)
            out[b, t] = sample(x, temperature, top_k, top_p, uniform[t, b], ex, tmp)
        for b in range(B):
            tok[b] = forced[b, t] if forced.shape[1] else out[b, t]
