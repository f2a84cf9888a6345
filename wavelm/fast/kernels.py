"""Numba kernels of the fast decode step: a tiny interpreter over a flat program.

The model is compiled (see program.py) into rows of int64 `prog[pc] = (op, a1, a2, ...)`
over three flat arrays: P (weights, read-only), M (scratch + streaming state, model dtype)
and I (int64 state: ring heads, slot positions, offsets, pool counters). Every op handles the
whole batch; regions in M are (B, n) row-major. One `decode` call runs many samples, sampling
included, without returning to Python.

# B batch, C channels, H heads, D head dim, W window, K kernel, L ring length, V vocab
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# fast-math without `ninf`/`nnan`: masked logits and empty attention slots use -inf
FM = {"reassoc", "contract", "nsz", "arcp"}
JIT = dict(fastmath=FM, cache=True, nogil=True)

# opcodes (operand layout in the comment; offsets index P, M or I as named)
EMBED = 0     # dst, w, C                      dst[b] = w[tok[b]]
LN = 1        # src, dst, C, g, b, eps_idx     LayerNorm (may be in place)
LINEAR = 2    # src, dst, n_in, n_out, w, b    dst = W src + b   (b < 0: no bias)
SILU = 3      # x, n                           in place
RELU = 4      # x, n                           in place
GATE = 5      # a, g, n, kind                  a *= sigmoid(g) (kind 0) or silu(g) (kind 1)
AXPY = 6      # dst, src, n, alpha_idx         dst += alpha * src
DWCONV = 7    # src, dst, C, K, dil, w, b, ring, head     causal depthwise conv, ring state
CONV = 8      # src, dst, Cin, Cout, K, w, b, ring, head  causal full conv (dilation 1)
ATTN = 9      # qkv, dst, H, D, W, kv, pos, off, inv, scores   single-query ring attention
POOL = 10     # src, dst, C, p, buf, held, r, jump     dst = held[r]; buf[r] = src; r += 1;
              #                                        jump unless the group is complete
NCOLS = 12


@njit(**JIT)
def _embed(P, M, tok, dst, w, C):
    for b in range(tok.shape[0]):
        e, d = w + tok[b] * C, dst + b * C
        for c in range(C):
            M[d + c] = P[e + c]


@njit(**JIT)
def _layernorm(P, M, C64, B, src, dst, C, g, bb, eps_idx):
    eps = C64[eps_idx]
    for b in range(B):
        s, d = src + b * C, dst + b * C
        mean = M[s] * 0
        for c in range(C):
            mean += M[s + c]
        mean /= C
        var = M[s] * 0
        for c in range(C):
            t = M[s + c] - mean
            var += t * t
        var /= C
        r = 1.0 / math.sqrt(var + eps)
        for c in range(C):
            M[d + c] = (M[s + c] - mean) * r * P[g + c] + P[bb + c]


@njit(**JIT)
def _linear(P, M, B, src, dst, n_in, n_out, w, bias):
    # dot-product form: each weight row is read once and reused across the batch
    for o in range(n_out):
        wo = w + o * n_in
        for b in range(B):
            s = src + b * n_in
            acc = P[wo] * 0
            for i in range(n_in):
                acc += P[wo + i] * M[s + i]
            if bias >= 0:
                acc += P[bias + o]
            M[dst + b * n_out + o] = acc


@njit(**JIT)
def _silu(M, x, n):
    for i in range(x, x + n):
        v = M[i]
        M[i] = v / (1.0 + math.exp(-v))


@njit(**JIT)
def _relu(M, x, n):
    for i in range(x, x + n):
        if M[i] < 0:
            M[i] = 0


@njit(**JIT)
def _gate(M, a, g, n, kind):
    for i in range(n):
        v = M[g + i]
        s = 1.0 / (1.0 + math.exp(-v))
        M[a + i] *= s if kind == 0 else v * s


@njit(**JIT)
def _axpy(M, C64, dst, src, n, alpha_idx):
    alpha = C64[alpha_idx]
    if alpha == 1.0:
        for i in range(n):
            M[dst + i] += M[src + i]
    else:
        for i in range(n):
            M[dst + i] += alpha * M[src + i]


@njit(**JIT)
def _dwconv(P, M, I, B, src, dst, C, K, dil, w, bias, ring, head):
    """y[t] = b + sum_k w[k] x[t - (K-1-k) dil]; the ring (B, L, C) holds the last L = (K-1) dil
    inputs, oldest at slot I[head]. Weights are stored (K, C)."""
    L = (K - 1) * dil
    h = I[head]
    last = w + (K - 1) * C
    for b in range(B):
        s, d, rb = src + b * C, dst + b * C, ring + b * L * C
        for c in range(C):
            M[d + c] = P[bias + c] + P[last + c] * M[s + c]
        for k in range(K - 1):
            r = rb + ((h + k * dil) % L) * C
            wk = w + k * C
            for c in range(C):
                M[d + c] += P[wk + c] * M[r + c]
        r = rb + h * C
        for c in range(C):
            M[r + c] = M[s + c]
    if L > 0:
        I[head] = (h + 1) % L


@njit(**JIT)
def _conv(P, M, I, B, src, dst, Cin, Cout, K, w, bias, ring, head):
    """Full causal conv, dilation 1; weights stored (Cout, K, Cin), ring (B, L, Cin)."""
    L = K - 1
    h = I[head]
    for o in range(Cout):
        for b in range(B):
            s, rb = src + b * Cin, ring + b * L * Cin
            acc = P[bias + o]
            for k in range(K):
                wk = w + (o * K + k) * Cin
                x = s if k == K - 1 else rb + ((h + k) % L) * Cin
                for i in range(Cin):
                    acc += P[wk + i] * M[x + i]
            M[dst + b * Cout + o] = acc
    if L > 0:
        for b in range(B):
            s, r = src + b * Cin, ring + (b * L + h) * Cin
            for i in range(Cin):
                M[r + i] = M[s + i]
        I[head] = (h + 1) % L


@njit(**JIT)
def _attn(M, I, C64, B, src, dst, H, D, W, kv, pos, off, inv, scores):
    """One query per stream against the KV ring (B, H, W, D) (keys rotated, slot = position % W).
    Rotary angles as in layers.rope: angle in float64, cos/sin in the model dtype."""
    C = H * D
    q_pos = I[off]
    slot = q_pos % W
    I[pos + slot] = q_pos
    I[off] = q_pos + 1
    half = D // 2
    cs = scores + W                                   # cos (half), then sin (half)
    for i in range(half):
        M[cs + i] = q_pos * C64[inv + i]              # cast to the model dtype first
        a = M[cs + i]
        M[cs + i] = math.cos(a)
        M[cs + half + i] = math.sin(a)
    scale = 1.0 / math.sqrt(D)
    v_base = kv + B * H * W * D
    for b in range(B):
        for h in range(H):
            q = src + b * 3 * C + h * D
            k = q + C
            v = q + 2 * C
            for x in (q, k):                          # rotate pairs (2i, 2i + 1)
                for i in range(half):
                    x1, x2 = M[x + 2 * i], M[x + 2 * i + 1]
                    c, s = M[cs + i], M[cs + half + i]
                    M[x + 2 * i] = x1 * c - x2 * s
                    M[x + 2 * i + 1] = x1 * s + x2 * c
            kr = kv + (b * H + h) * W * D
            vr = v_base + (b * H + h) * W * D
            for i in range(D):
                M[kr + slot * D + i] = M[k + i]
                M[vr + slot * D + i] = M[v + i]
            mx = -np.inf
            for j in range(W):
                p = I[pos + j]
                if p < 0 or p > q_pos or q_pos - p >= W:
                    M[scores + j] = -np.inf
                    continue
                acc = M[q] * 0
                kj = kr + j * D
                for i in range(D):
                    acc += M[q + i] * M[kj + i]
                acc *= scale
                M[scores + j] = acc
                if acc > mx:
                    mx = acc
            tot = M[q] * 0
            for j in range(W):
                e = math.exp(M[scores + j] - mx)
                M[scores + j] = e
                tot += e
            y = dst + b * C + h * D
            for i in range(D):
                M[y + i] = 0
            for j in range(W):
                pj = M[scores + j] / tot
                if pj == 0:
                    continue
                vj = vr + j * D
                for i in range(D):
                    M[y + i] += pj * M[vj + i]


@njit(**JIT)
def _pool(M, I, B, src, dst, C, p, buf, held, r_idx):
    r = I[r_idx]
    for b in range(B):
        s, d = src + b * C, dst + b * C
        hb, bb = held + (b * p + r) * C, buf + (b * p + r) * C
        for c in range(C):
            M[d + c] = M[hb + c]
            M[bb + c] = M[s + c]
    r += 1
    if r == p:
        I[r_idx] = 0
        return True
    I[r_idx] = r
    return False


@njit(**JIT)
def step(prog, P, M, I, C64, tok):
    """Run the program once: tokens (B,) in, logits left in M at the program's logits region."""
    B = tok.shape[0]
    pc = 0
    n = prog.shape[0]
    while pc < n:
        a = prog[pc]
        op = a[0]
        if op == LINEAR:
            _linear(P, M, B, a[1], a[2], a[3], a[4], a[5], a[6])
        elif op == LN:
            _layernorm(P, M, C64, B, a[1], a[2], a[3], a[4], a[5], a[6])
        elif op == AXPY:
            _axpy(M, C64, a[1], a[2], B * a[3], a[4])
        elif op == SILU:
            _silu(M, a[1], B * a[2])
        elif op == RELU:
            _relu(M, a[1], B * a[2])
        elif op == GATE:
            _gate(M, a[1], a[2], B * a[3], a[4])
        elif op == DWCONV:
            _dwconv(P, M, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
        elif op == CONV:
            _conv(P, M, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
        elif op == ATTN:
            _attn(M, I, C64, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10])
        elif op == POOL:
            if not _pool(M, I, B, a[1], a[2], a[3], a[4], a[5], a[6], a[7]):
                pc = a[8]
                continue
        elif op == EMBED:
            _embed(P, M, tok, a[1], a[2], a[3])
        pc += 1


@njit(**JIT)
def _mask_top_k(x, k):
    """Set entries below the k-th largest to -inf (ties at the threshold are kept)."""
    thr = np.sort(x)[x.shape[0] - k]
    for i in range(x.shape[0]):
        if x[i] < thr:
            x[i] = -np.inf


@njit(**JIT)
def _mask_top_p(x, top_p):
    """Keep the smallest set of most likely tokens whose probability reaches top_p (the token
    that crosses it included); rule shared with generate._mask_torch."""
    mx = np.max(x)
    prob = np.exp(x - mx)
    prob /= prob.sum()
    order = np.argsort(-prob, kind="mergesort")
    cum = prob[0] * 0
    thr = prob[order[0]]
    for j in range(order.shape[0]):
        pj = prob[order[j]]
        if cum >= top_p:
            break
        thr = pj
        cum += pj
    for i in range(x.shape[0]):
        if prob[i] < thr:
            x[i] = -np.inf


@njit(**JIT)
def decode(prog, P, M, I, C64, tok, noise, temperature, top_k, top_p, logits, out):
    """Run out.shape[1] steps: feed tok, sample the next token by exponential race
    argmax(logits / T + g) with g = -log(Exp(1)) from `noise` (n, B, V), write it to out and tok."""
    B = tok.shape[0]
    V = noise.shape[2]
    x = np.empty(V, M.dtype)
    for t in range(out.shape[1]):
        step(prog, P, M, I, C64, tok)
        for b in range(B):
            lg = logits + b * V
            for i in range(V):
                x[i] = M[lg + i] / temperature
            if 0 < top_k < V:
                _mask_top_k(x, top_k)
            if top_p < 1.0:
                _mask_top_p(x, top_p)
            best, arg = -np.inf, 0
            for i in range(V):
                s = x[i] + noise[t, b, i]
                if s > best:
                    best, arg = s, i
            tok[b] = arg
            out[b, t] = arg
