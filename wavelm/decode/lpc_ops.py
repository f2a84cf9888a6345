"""Numba kernels of the LPC path (wavelm/model/lpc.py): one step per stream inside the decoder
(the LPC op) and over whole chunks for training and scoring (`lpc_run`), and the PRIOR op that
adds the gated log-prior to the logits. Float64 inside, as the torch module."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .simd import JIT, _vexp, _vlog

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
