"""The reference decoder: the model's own forward with state, one sample per call."""
from __future__ import annotations

import numpy as np
import torch

from .sampling import Noise, Sampler


class TorchDecoder:
    """The reference: the model's own forward with state, one sample per call."""

    name = "torch"

    def __init__(self, model, state, tok: torch.Tensor, sampler: Sampler, noise: Noise):
        self.model, self.state, self.tok = model, state, tok
        self.sampler, self.noise = sampler, noise
        self.last_logits = None

    @torch.inference_mode()
    def steps(self, n: int) -> torch.Tensor:
        """n steps: tokens (B, n) on the model's device (no host sync)."""
        u = self.noise.take(n)
        out = torch.empty((self.tok.shape[0], n), dtype=torch.int64, device=self.tok.device)
        tok, logits = self.tok, self.last_logits
        for t in range(n):
            logits = self.model(tok[:, None], state=self.state)[:, 0]
            tok = self.sampler.step(logits, u[t])
            out[:, t] = tok
        self.tok, self.last_logits = tok, logits
        return out

    def run(self, n: int) -> np.ndarray:
        return self.steps(n).cpu().numpy()

    def state_nbytes(self) -> int:
        return self.state.nbytes()
