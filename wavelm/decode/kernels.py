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

from .lpc_ops import _lpc, _prior
from .sample_ops import draw, observe
from .simd import JIT, _copy, _fma, _vexp, exp_workspace  # noqa: F401 - exp_workspace: lower.py

# opcodes; a row of the program is (op, *operands), its operands in the order OPERANDS names
# them (Builder.emit fills them by name; the interpreter below reads them by position).
# Offsets index P (weights), M (scratch), F (float state) or I (int state) as the op says.
EMBED = 0     # dst[b] = w[tok[b]]
LN = 1        # LayerNorm (may be in place); b < 0: RMSNorm
LINEAR = 2    # dst = W src + b   (b < 0: no bias)
SILU = 3      # in place
RELU = 4      # in place
GATE = 5      # a *= sigmoid(g) (kind 0) or silu(g) (kind 1)
AXPY = 6      # dst += alpha * src (alpha = C64[alpha])
DWCONV = 7    # causal depthwise conv, ring state (F), weights (K, C)
CONV = 8      # causal full conv (dilation 1), weights (K, Cout, Cin)
ATTN = 9      # one query per stream, KV ring in F
POOL = 10     # dst = held[r]; buf[r] = src; r += 1; jump to `jump` unless the group is complete,
              # else copy buf to grp and go on
STORE = 11    # F[dst:dst + B n] = M[src:src + B n]
LPC = 12      # the LPC path (model/lpc.py): at out, code (B, 1), feat (B, 2), log-prior (B, V), z (B, V)
EMBEDM = 13   # dst[b] = w[int(M[codes + b])]
PRIOR = 14    # logits[b] += softplus(g[b]) * prior[b]
OPERANDS = {
    EMBED: "dst w C V",
    LN: "src dst C g b eps",
    LINEAR: "src dst n_in n_out w b",
    SILU: "x n",
    RELU: "x n",
    GATE: "a g n kind",
    AXPY: "dst src n alpha",
    DWCONV: "src dst C K dil w b ring head",
    CONV: "src dst Cin Cout K w b ring head",
    ATTN: "qkv dst H D W k v pos off start inv scores",
    POOL: "src dst C p buf held r jump grp",
    STORE: "dst src n",
    LPC: "out ring head coef scale mass r N P H c",
    EMBEDM: "dst w C V codes",
    PRIOR: "logits prior g V",
}
NCOLS = 1 + max(len(v.split()) for v in OPERANDS.values())


def column(op: int, name: str) -> int:
    """The program column of operand `name` of `op`."""
    return 1 + OPERANDS[op].split().index(name)


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
def decode(prog, P, M, F, I, C64, ex, tok, uniform, s, sm, logits, V, out, forced, logits_out):
    """Run out.shape[1] steps: feed tok, draw the next token with uniform (n, B) in [0, 1),
    write it to out (B, n) and tok. s: the Sampling's numeric() form, sm: its Sampler's arrays
    (sample_ops.py). The last step's logits (B, V) stay in M at `logits`. Tests: with `forced`
    (B, n) non-empty, its tokens are fed instead of the samples, and `logits_out` (n, B, V),
    if non-empty, receives every step's logits."""
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
        draw(M, logits, V, B, t, s, sm, uniform, out, logits_out, x, tmp, ex)
        for b in range(B):
            tok[b] = forced[b, t] if forced.shape[1] else out[b, t]
        observe(sm, s, tok)
