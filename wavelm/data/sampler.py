"""Training crops from a token cache: random crops that make resume exact, fixed validation crops.

# B batch, T crop length
"""
from __future__ import annotations

import numpy as np
import torch

from wavelm.audio import ZERO

IGNORE = -100      # target padding of short validation crops


def split_segments(cache, split: str) -> list[np.ndarray]:
    """Contiguous token runs of a split that crops may come from: `TokenCache.segments`, the one
    chunking rule (files, or YouTubeMix chunks: never crossed, since each chunk is scaled on its
    own and starts its own stream), whole chunks only (a crop lies in one whole chunk)."""
    return cache.segments(split, whole_only=True)


class CropSampler:
    """Uniform random crops of `seq_len` over all train segments at least that long.

    Crop (segment, start s): y = seg[s:s+T], x = [seg[s-1] or 128 at s = 0] + seg[s:s+T-1].
    The crops of (step, micro-batch) on `rank` depend on nothing else, which makes resume exact.

    input_noise > 0: each crop's *inputs* get Gaussian noise of its own std, drawn uniformly from
    [0, input_noise] mu-law steps, rounded and clipped to the vocabulary; the targets stay
    clean. The model learns to predict the clean next sample from a history with errors in it,
    as its own sampled history has when it generates (FFTNet's and LPCNet's noise injection;
    docs/design.md, "Training on noisy inputs").
    """

    def __init__(self, segments, seq_len: int, seed: int, rank: int = 0, input_noise: float = 0.0,
                 vocab_size: int = 256):
        self.T, self.seed, self.rank = seq_len, seed, rank
        self.input_noise, self.vocab = float(input_noise), vocab_size
        self.segs = [s for s in segments if len(s) >= seq_len]
        if not self.segs:
            longest = max((len(s) for s in segments), default=0)
            raise ValueError(f"no train file (or YouTubeMix chunk) has seq_len={seq_len} samples "
                             f"(longest: {longest}); lower --seq-len")
        self.skipped = len(segments) - len(self.segs)
        self.cum = np.cumsum([len(s) - seq_len + 1 for s in self.segs])  # crop starts per segment

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        u = rng.integers(0, self.cum[-1], batch_size)
        idx = np.searchsorted(self.cum, u, side="right")
        rows = np.empty((batch_size, self.T + 1), dtype=np.int64)   # (B, T + 1): x[0], then y
        for b, (i, v) in enumerate(zip(idx, u)):
            s = int(v - (self.cum[i - 1] if i else 0))
            seg = self.segs[i]
            rows[b, 0] = seg[s - 1] if s else ZERO
            rows[b, 1:] = seg[s:s + self.T]
        t = torch.from_numpy(rows)
        x, y = t[:, :-1], t[:, 1:]
        if self.input_noise > 0:   # a new array for x; the targets stay the clean view
            sigma = rng.uniform(0.0, self.input_noise, (batch_size, 1))
            noise = np.rint(rng.standard_normal((batch_size, self.T)) * sigma).astype(np.int64)
            x = torch.from_numpy(np.clip(rows[:, :-1] + noise, 0, self.vocab - 1))
        return x, y


def val_crops(segments, seq_len: int, n: int) -> list[tuple[np.ndarray, int, int]]:
    """A fixed, seed-independent validation set: every segment cut into consecutive pieces of
    `seq_len` (the last may be shorter), then `n` of them evenly spread, as (segment, start, len)."""
    pieces = [(seg, s, min(seq_len, len(seg) - s)) for seg in segments for s in range(0, len(seg), seq_len)]
    if len(pieces) > n:
        pieces = [pieces[i] for i in np.unique(np.linspace(0, len(pieces) - 1, n).round().astype(int))]
    return pieces


def val_batch(pieces, seq_len):
    x = np.full((len(pieces), seq_len), ZERO, dtype=np.int64)
    y = np.full((len(pieces), seq_len), IGNORE, dtype=np.int64)
    for b, (seg, s, n) in enumerate(pieces):
        x[b, 0] = seg[s - 1] if s else ZERO
        x[b, 1:n] = seg[s:s + n - 1]
        y[b, :n] = seg[s:s + n]
    return torch.from_numpy(x), torch.from_numpy(y)
