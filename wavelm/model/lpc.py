"""Backward-adaptive linear prediction (LPC) of the next sample, and its distribution over the
256 mu-law codes: the classical predictor the model builds on (docs/design.md, "The LPC path").

Every `hop` steps, Levinson-Durbin on the autocorrelation of a Hann-windowed window of the last
`window` input values (mu-law decoded) gives `order` coefficients; every step predicts the next
value from the last `order` inputs. The residual scale of a block is `mult` x the mean absolute
residual of the previous block's predictions. The distribution of the next code is a logistic
in the linear domain centred on the prediction, integrated over each code's interval of the
encoder, mixed with a uniform floor: always a proper distribution over the 256 codes. Nothing
is learnt and nothing looks ahead; the coefficients come from the model's own input tokens.

    lpc = LPC(order=32, window=1024, hop=64)
    pred, scale = lpc(tokens)                 # (B, T) float64: prediction of sample t+1, scale
    logp = log_prior(pred, scale, dtype)      # (B, T, 256)

Arithmetic is float64 (Levinson on piano audio is ill-conditioned); coefficients and scales are
rounded to the state's dtype where they are made, so that a full forward, any chunking and the
numba decoder (wavelm/decode/kernels.py `_lpc`) compute the same numbers.

# B batch, T time (samples), N window, P order, H hop, n blocks starting in a chunk, V codes
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn

from .state import LPCState

MU = 255
V = MU + 1
FLOOR = 1e-4            # uniform mixture weight: no code ever has probability 0
MULT = 0.6              # logistic scale = MULT x mean |residual| of the previous block
MIN_SCALE = 1e-6        # scale floor (digital silence has zero residual)
WNC = 1e-9              # white-noise correction of r[0]: keeps Levinson stable on pure tones
TINY = 1e-30            # an all-zero window gives zero coefficients, not 0 / 0
LOG_SCALE_NORM = 8.0    # the log-scale feature is log(scale) / 8 (about -1.7 .. 0)
ZMAX = 50.0             # |z| is clipped here: tails below e^-50 change nothing next to the FLOOR,
                        # and smaller ones would be float32 denormals (slow on CPUs)


def _expand(y):
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.cache
def code_values() -> np.ndarray:
    """(256,) float64: the decoded value of each code (wavelm.audio.mulaw_decode, float32 exact)."""
    from wavelm.audio import mulaw_decode

    return _frozen(mulaw_decode(torch.arange(V)).double().numpy())


@functools.cache
def code_bounds() -> np.ndarray:
    """(255,) float64 ascending: the value where the encoder's rounding moves from code c-1 to c."""
    return _frozen(_expand((np.arange(1, V, dtype=np.float64) - 0.5) / MU * 2 - 1))


@functools.cache
def code_widths() -> np.ndarray:
    """(256,) float64: each code's interval (inf for the two end codes)."""
    b = code_bounds()
    return _frozen(np.concatenate([[np.inf], np.diff(b), [np.inf]]))


@functools.cache
def hann(n: int) -> np.ndarray:
    """A Hann window of n points without its zero end points (the newest sample keeps weight)."""
    return _frozen(np.sin(np.pi * np.arange(1, n + 1) / (n + 1)) ** 2)


def constants(window: int) -> np.ndarray:
    """What the numba step reads (wavelm/decode/kernels.py `_lpc_step`), float64: code values,
    bounds, widths, the window, then FLOOR, MULT, MIN_SCALE, log1p(255), LOG_SCALE_NORM, ZMAX."""
    return np.concatenate([code_values(), code_bounds(), code_widths(), hann(window),
                           [FLOOR, MULT, MIN_SCALE, math.log1p(MU), LOG_SCALE_NORM, ZMAX]])


def levinson(r: torch.Tensor, order: int) -> torch.Tensor:
    """Autocorrelations r (..., P + 1) -> predictor a (..., P), x[t] ~ sum_k a[k-1] x[t-k].
    The same operations in the same order as kernels._levinson."""
    err = r[..., 0] * (1 + WNC) + TINY
    a = r.new_zeros(*r.shape[:-1], order)
    for i in range(order):
        acc = r[..., i + 1] - (a[..., :i] * r[..., 1:i + 1].flip(-1)).sum(-1)
        k = acc / err
        prev = a[..., :i].clone()
        a[..., :i] = prev - k[..., None] * prev.flip(-1)
        a[..., i] = k
        err = err * (1 - k * k)
    return a


def autocorr(x: torch.Tensor, order: int) -> torch.Tensor:
    """x (..., N) -> r (..., P + 1), r[k] = sum_i x[i] x[i + k]."""
    N = x.shape[-1]
    return torch.stack([(x[..., :N - k] * x[..., k:]).sum(-1) for k in range(order + 1)], -1)


def code_mass(scale: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """-expm1(-width / scale) (..., 256) in `dtype`: the factor of each code's mass that depends on
    the scale only (1 for the two end codes). Constant in a block; the decoder keeps it in the state."""
    width = torch.tensor(code_widths(), device=scale.device)
    return (-torch.expm1(-width / scale[..., None])).to(dtype)


def log_prior(pred: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """log P(code) (..., 256) in `dtype` from pred and scale (float64): logistic(pred, scale)
    integrated over each code's interval, mixed with the FLOOR. The mass of code [lo, hi) is
    sigmoid(z_hi) sigmoid(-z_lo) (1 - exp(-(z_hi - z_lo))), a product of positive factors, each
    sigmoid taken from its accurate side: no mass is a difference of two numbers near 1, so
    float32 keeps the digits of codes with tiny mass too."""
    b = torch.tensor(code_bounds(), device=pred.device)
    # z in float64, then dtype: in float32, b - pred loses the digits a small scale needs
    z = ((b - pred[..., None]) / scale[..., None]).clamp(-ZMAX, ZMAX).to(dtype)   # (..., 255)
    e = torch.exp(-z.abs())
    inv = 1 / (1 + e)
    one = torch.ones_like(e[..., :1])
    below = torch.where(z <= 0, e, 1) * inv          # sigmoid(z): mass below the bound
    above = torch.where(z >= 0, e, 1) * inv          # sigmoid(-z): mass above it
    p = torch.cat([below, one], -1) * torch.cat([one, above], -1) * code_mass(scale, dtype)
    return torch.log((1 - FLOOR) * p + FLOOR / V)     # (the products of 1 are exact)


def log_prob(pred: torch.Tensor, scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log P(target) under log_prior, in float64, without the other 255 codes (baselines)."""
    b = torch.tensor(code_bounds(), dtype=torch.float64, device=pred.device)
    bb = torch.cat([b.new_tensor([-math.inf]), b, b.new_tensor([math.inf])])
    z_lo = ((bb[target] - pred) / scale).clamp(-ZMAX, ZMAX)
    z_hi = ((bb[target + 1] - pred) / scale).clamp(-ZMAX, ZMAX)
    width = torch.tensor(code_widths(), device=pred.device)[target]
    p = torch.sigmoid(z_hi) * torch.sigmoid(-z_lo) * -torch.expm1(-width / scale)
    return torch.log((1 - FLOOR) * p + FLOOR / V)


def features(pred: torch.Tensor, scale: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The path's inputs to the network: the prediction's mu-law code (B, T) int64, and (B, T, 2)
    [the prediction companded to [-1, 1], log(scale) / LOG_SCALE_NORM] in `dtype`."""
    b = torch.tensor(code_bounds(), device=pred.device)
    code = torch.searchsorted(b, pred.contiguous(), right=True)
    p = pred.clamp(-1, 1)
    y = torch.sign(p) * torch.log1p(MU * p.abs()) / math.log1p(MU)
    return code, torch.stack([y, scale.log() / LOG_SCALE_NORM], -1).to(dtype)


def adaptive_bits(q, order: int = 32, window: int = 1024, hop: int = 64, chunk: int = 1 << 16) -> np.ndarray:
    """Bits of each sample of one stream of codes q (T,) under the adaptive LPC alone: the
    classical baseline (no trained parameters), teacher-forced as a model is (input t is code
    t - 1, the first input mu-law zero), in chunks through the streaming state, float64."""
    from .state import Alloc

    lpc = LPC(order, window, hop)
    q = torch.as_tensor(np.asarray(q), dtype=torch.int64)
    inputs = torch.cat([q.new_tensor([MU // 2 + 1]), q[:-1]])[None]     # 128 = mu-law zero
    alloc = Alloc(1, "cpu", torch.float64)
    state = alloc.finish(None, lpc.init_state(alloc)).lpc
    out = []
    for i in range(0, len(q), chunk):
        pred, scale = lpc(inputs[:, i:i + chunk], state)
        out.append(-log_prob(pred[0], scale[0], q[i:i + chunk]) / math.log(2))
    return torch.cat(out).numpy() if out else np.zeros(0)


class LPC(nn.Module):
    """The adaptive predictor as a streaming module: forward(tokens, state) -> (pred, scale),
    each (B, T) float64; pred[:, t] predicts the value of the sample after input t."""

    def __init__(self, order: int, window: int, hop: int):
        super().__init__()
        if window < hop + order:
            raise ValueError(f"lpc_window ({window}) must be >= lpc_hop + lpc_order ({hop + order})")
        self.order, self.window, self.hop = order, window, hop
        # optional: tokens, state, dtype -> (codes, feats, log-prior) computed outside torch, the
        # same numbers (wavelm.decode.fast.lpc_kernel, set by use_lpc_kernel for CPU training
        # and scoring; tests/test_lpc.py pins it to this module's forward)
        self.kernel = None

    def init_state(self, alloc) -> LPCState:
        B = alloc.B
        return LPCState(ring=alloc.floats(B, self.window), head=alloc.clock(1), coef=alloc.floats(B, self.order),
                        scale=alloc.floats(B, 1), mass=alloc.floats(B, V), r=alloc.clock(1))

    def lookback(self) -> int:
        # a block's coefficients reach back a window from its start, the step up to hop - 1 later
        return self.window + self.hop - 1

    def forward(self, tokens: torch.Tensor, state: LPCState | None = None, dtype=torch.float64):
        """dtype: the state's dtype (coefficients and scales are rounded to it as they are made)."""
        B, T = tokens.shape
        N, P, H = self.window, self.order, self.hop
        dev, f64 = tokens.device, torch.float64
        v = torch.tensor(code_values(), device=dev)[tokens]                # (B, T)
        if state is None:
            past, coef0, scale0, r0 = v.new_zeros(B, N), v.new_zeros(B, P), v.new_zeros(B), 0
        else:
            h = int(state.head)                                               # the decoder leaves h != 0
            past = (state.ring if h == 0 else torch.roll(state.ring, -h, 1)).to(f64)
            coef0, scale0, r0 = state.coef.to(f64), state.scale[:, 0].to(f64), int(state.r)
        hist = torch.cat([past, v], 1)                                        # (B, N + T): input t at N + t
        first = (H - r0) % H
        starts = torch.arange(first, max(first, T), H, device=dev)           # (n,) steps that begin a block
        coefs, scales = [coef0[:, None]], [scale0[:, None]]
        if len(starts):
            # each block's window: the N values ending with its first input
            win = hist[:, starts[:, None] + 1 + torch.arange(N, device=dev)]  # (B, n, N)
            w = torch.tensor(hann(N), device=dev)
            new = levinson(autocorr(win * w, P), P).to(dtype).to(f64)         # (B, n, P)
            # residuals of the previous block's predictions: inputs k = s - H + 1 .. s of each start s
            prev = torch.cat([coef0[:, None], new[:, :-1]], 1)                # (B, n, P)
            k = N + starts[:, None] - H + 1 + torch.arange(H, device=dev)     # (n, H) hist index
            lag = hist[:, k[..., None] - torch.arange(1, P + 1, device=dev)]  # (B, n, H, P)
            e = hist[:, k] - (lag * prev[:, :, None]).sum(-1)                 # (B, n, H)
            scale = (MULT * e.abs().mean(-1)).clamp_min(MIN_SCALE).to(dtype).to(f64)  # (B, n)
            coefs.append(new)
            scales.append(scale)
        coefs, scales = torch.cat(coefs, 1), torch.cat(scales, 1)             # (B, n + 1, ...)
        t = torch.arange(T, device=dev)
        blk = ((t - starts[0]) // H + 1).clamp_min(0) if len(starts) else torch.zeros_like(t)
        lag = hist[:, N + t[:, None] + 1 - torch.arange(1, P + 1, device=dev)]  # (B, T, P) newest first
        pred = (lag * coefs[:, blk]).sum(-1)                                  # (B, T)
        if state is not None:
            state.ring.copy_(hist[:, -N:])
            state.head.zero_()
            state.coef.copy_(coefs[:, -1])
            state.scale.copy_(scales[:, -1:])
            state.mass.copy_(code_mass(scales[:, -1], state.mass.dtype))
            state.r.fill_((r0 + T) % H)
        return pred, scales[:, blk]
