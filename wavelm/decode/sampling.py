"""Sampling shared by every decoder: logits / temperature, optional top-k and top-p (nucleus)
masks, then the inverse CDF of the distribution at a uniform u ~ U[0, 1) from a seeded
torch.Generator, drawn in fixed blocks so the audio depends on the seed only, not on chunk
sizes or the decoder. No host sync per sample on CUDA. The numba decoder's kernels.sample
implements the same rule (tests/test_generate.py pins them equal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NOISE_BLOCK = 4096         # uniforms are drawn in blocks of this many steps (fixed: see top)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if k is not None and not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k), got {k!r}")
        if not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")


def sample_torch(logits: torch.Tensor, u: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Tokens (B,) from logits (B, V) and uniforms u (B,) in [0, 1); the same rule as
    kernels.sample (its docstring), in torch ops without host sync."""
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32) / s.temperature
    e = (x - x.amax(-1, keepdim=True)).exp()
    V = e.shape[-1]
    if s.top_k is not None and s.top_k < V:
        kth = e.topk(s.top_k, dim=-1).values[:, -1:]
        e = e.masked_fill(e < kth, 0)
    if s.top_p < 1:
        prob = e / e.to(torch.float64).sum(-1, keepdim=True).to(e.dtype)
        sp = prob.sort(-1, descending=True).values
        c = sp.to(torch.float64).cumsum(-1)
        before = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], -1)   # mass of the more likely
        thr = sp.masked_fill(before >= s.top_p, float("inf")).amin(-1, keepdim=True)
        e = e.masked_fill(prob < thr, 0)
    cdf = e.to(torch.float64).cumsum(-1)
    tok = torch.searchsorted(cdf, (u.to(torch.float64) * cdf[:, -1])[:, None], right=True)[:, 0]
    last = (torch.arange(V, device=e.device) * (e > 0)).argmax(-1)       # rounding guard
    return torch.where(tok < V, tok, last)


class Noise:
    """Uniforms u (steps, B) from a seeded torch.Generator, drawn NOISE_BLOCK steps at a time."""

    def __init__(self, seed: int, batch_size: int, device):
        self.gen = torch.Generator(device=device).manual_seed(int(seed))
        self.B, self.device = batch_size, device
        self.block, self.pos = None, NOISE_BLOCK

    def take(self, n: int) -> torch.Tensor:
        """The next n steps' uniforms (n, B)."""
        parts = [torch.empty((0, self.B), dtype=torch.float64, device=self.device)]
        while n > 0:
            if self.pos == NOISE_BLOCK:
                self.block = torch.rand((NOISE_BLOCK, self.B), generator=self.gen, dtype=torch.float64,
                                        device=self.device)
                self.pos = 0
            k = min(n, NOISE_BLOCK - self.pos)
            parts.append(self.block[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return parts[-1] if len(parts) <= 2 else torch.cat(parts[1:])
