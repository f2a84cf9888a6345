"""SIMD-friendly numba building blocks shared by the decode kernels: exp and log by range
reduction (numba's math.exp/log are scalar libm calls), and copies without numpy's
broadcasting machinery. JIT: the options every kernel is compiled with."""
from __future__ import annotations

import numpy as np
from numba import njit

# fast-math without `ninf`/`nnan`: masked logits and empty attention slots use -inf
FM = {"reassoc", "contract", "nsz", "arcp"}
# error_model="numpy": no zero-division checks (they bloat the code and block SIMD)
JIT = dict(fastmath=FM, cache=True, nogil=True, error_model="numpy")

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
