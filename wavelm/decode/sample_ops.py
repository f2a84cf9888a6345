"""Numba side of the sampling rule (wavelm/decode/sampling.py, its docstring): the draw, the
periodicity-aware temperature and the likelihood kept for best-of-N, on the arrays of a
`Sampler` (hist, r, energy, head, nll, table, consts). s: a `Sampling.numeric()` tuple.

The tracker's float64 state agrees with the torch reference's to rounding (LLVM may fuse a
multiply-add where these are inlined into the fast-math decoder); the tokens are the same
(tests/test_sampling.py)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .simd import JIT, _copy, _vexp

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
def sample(x, s, temperature, u, ex, tmp):
    """Draw one token from logits x (V,) (overwritten) by inverse CDF with u in [0, 1) at the
    given temperature; s: the other options (rule 2-3 of sampling.py). tmp: scratch (V,)."""
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
    if 0 < s.top_k < V:
        _copy(tmp, x)
        _sort_desc(tmp)
        thr = tmp[s.top_k - 1]
        for i in range(V):
            if x[i] < thr:
                x[i] = 0
    if s.top_p < 1.0:
        tot = 0.0
        for i in range(V):
            tot += x[i]
        for i in range(V):
            tmp[i] = x[i] / x.dtype.type(tot)
        _sort_desc(tmp)
        cum, thr = 0.0, tmp[0]
        for j in range(V):
            if cum >= s.top_p:
                break
            thr = tmp[j]
            cum += tmp[j]
        for i in range(V):
            if x[i] / x.dtype.type(tot) < thr:
                x[i] = 0
    if s.min_p > 0:
        thr = x.dtype.type(s.min_p)
        for i in range(V):
            if x[i] < thr:
                x[i] = 0
    if s.floor > 0:
        tot = 0.0
        best = 0
        for i in range(V):
            tot += x[i]
            if x[i] > x[best]:
                best = i
        left = 0.0
        for i in range(V):
            f = max(float(x[i]) - s.floor * tot, 0.0)
            tmp[i] = x.dtype.type(f)
            left += f
        if left > 0:
            _copy(x, tmp)
        else:                                        # nothing above the floor: the most likely
            for i in range(V):
                x[i] = 1 if i == best else 0
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
def temperature_at(s, r, energy, decay, gate):
    """One stream's temperature from its periodicity state (Sampler.temperature)."""
    if s.tonal_temperature <= 0:
        return s.temperature
    w = 0.0
    if energy * (1 - decay) >= gate:
        peak = r[0]
        for j in range(1, r.shape[0]):
            peak = max(peak, r[j])
        c = max(peak, 0.0) / max(energy, 1e-300) if energy > 0 else 0.0
        w = min(max((c - s.tonal_threshold) / (1 - s.tonal_threshold), 0.0), 1.0)
    return 1.0 / (1.0 / s.temperature + (1.0 / s.tonal_temperature - 1.0 / s.temperature) * w)


@njit(**JIT)
def track(hist, r, energy, b, h, x, decay):
    """Stream b's periodicity state after output x (Sampler.track); h: the ring's slot."""
    L = hist.shape[1] // 2
    hb, rb = hist[b], r[b]
    hb[h] = x
    hb[h + L] = x
    for j in range(rb.shape[0]):
        rb[j] = decay * rb[j] + x * hb[h + 1 + j]
    energy[b] = decay * energy[b] + x * x


@njit(**JIT)
def log_sum_exp(x, tmp, ex):
    """log(sum(exp(x))) of logits x (V,), float64 accumulation; tmp: scratch (V,)."""
    mx = x[0]
    for i in range(x.shape[0]):
        mx = max(mx, x[i])
    for i in range(x.shape[0]):
        tmp[i] = x[i] - mx
    _vexp(tmp, ex)
    tot = 0.0
    for i in range(x.shape[0]):
        tot += tmp[i]
    return float(mx) + math.log(tot)


@njit(**JIT)
def draw(M, logits, V, B, t, s, sm, uniform, out, logits_out, x, tmp, ex):
    """Step t's tokens for every stream into out[:, t] from the logits (B, V) at M[logits];
    sm: the Sampler's arrays. `logits_out` (tests), if non-empty, receives the logits."""
    hist, r, energy, head, nll, table, consts = sm
    for b in range(B):
        lg = M[logits + b * V:logits + (b + 1) * V]
        _copy(x, lg)
        if logits_out.shape[0]:
            _copy(logits_out[t, b], x)
        temp = temperature_at(s, r[b], energy[b], consts[0], consts[1])
        lse = log_sum_exp(lg, tmp, ex) if s.best_of > 1 else 0.0
        out[b, t] = sample(x, s, temp, uniform[t, b], ex, tmp)
        if s.best_of > 1:
            nll[b] += lse - float(lg[out[b, t]])


@njit(**JIT)
def observe(sm, s, tok):
    """The periodicity state after the tokens tok (B,) were output."""
    if s.tonal_temperature <= 0:
        return
    hist, r, energy, head, nll, table, consts = sm
    h = head[0]
    for b in range(tok.shape[0]):
        track(hist, r, energy, b, h, table[tok[b]], consts[0])
    head[0] = (h + 1) % (hist.shape[1] // 2)


def no_sampler(batch_size: int) -> tuple:
    """Sampler arrays for teacher forcing (nothing tracked)."""
    z = np.zeros((batch_size, 2))
    return z, z[:, :1].copy(), np.zeros(batch_size), np.zeros(1, np.int64), np.zeros(batch_size), \
        np.zeros(256), np.zeros(2)
