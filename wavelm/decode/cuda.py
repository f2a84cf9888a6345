"""CUDA decode: the reference step (the model's forward with state + sampling.Sampler.step)
captured in a CUDA graph and replayed, so a sample costs no kernel launches from Python and
no host sync.

The streaming state is fixed-shape and written in place (wavelm/model/state.py), so the graph
reads and writes the state's own tensors: nothing is copied back. What one step does depends
on its phase in the pooling groups (the inner stages run only when a group completes), and
the phase is host control flow (the state's `clock`), so the graph holds one whole period =
hop of the innermost stage (16 steps for pool [4, 4]); the clock is back where it started at
the end of a period, which is what makes the replay valid. Generation is aligned to a period
boundary first (eager reference steps after a prompt) and produced in whole periods (the
surplus is kept for the next call).

`capture=False` runs the very same code eagerly: that is how the CPU tests check it.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .reference import TorchDecoder

log = logging.getLogger(__name__)


class GraphDecoder:
    name = "cuda-graph"

    def __init__(self, model, state, tok, sampler, noise, position: int = 0, capture: bool = True):
        self.model, self.state, self.sampler, self.noise = model, state, sampler, noise
        self.period = int(model.config.hop[-1])
        self.phase = int(position) % self.period
        self.ref = TorchDecoder(model, state, tok, sampler, noise)
        self.capture = capture and tok.is_cuda
        self.ready = False
        self.graph = None
        self.pending = np.zeros((tok.shape[0], 0), np.int64)
        self.last_logits = None

    @property
    def tok(self):
        return self.static_tok if self.ready else self.ref.tok

    @torch.inference_mode()
    def run(self, n: int) -> np.ndarray:
        got = min(n, self.pending.shape[1])
        head, rest = self.pending[:, :got], self.pending[:, got:]
        parts = []
        while got < n:
            if self.phase:                     # align to a period boundary, eagerly (only before
                                               # the first period: periods keep the alignment)
                k = min(n - got, self.period - self.phase)
                parts.append(self.ref.steps(k))
                self.last_logits = self.ref.last_logits
                got += k
                self.phase = (self.phase + k) % self.period
            else:
                parts.append(self._period())
                got += self.period
        new = torch.cat(parts, 1).cpu().numpy() if parts else head[:, :0]   # the one host sync
        out = np.concatenate([head, new], axis=1)
        self.pending = np.concatenate([rest, out[:, n:]], axis=1)
        return out[:, :n]

    # -- one period -------------------------------------------------------------------------
    def _body(self, state, sampler):
        tok = self.static_tok
        for i in range(self.period):
            logits = self.model(tok[:, None], state=state)[:, 0]
            tok = sampler.step(logits, self.static_u[i])
            self.static_out[:, i] = tok
        self.static_tok.copy_(tok)
        self.static_logits.copy_(logits)

    def _setup(self):
        B, dev = self.ref.tok.shape[0], self.ref.tok.device
        self.static_tok = self.ref.tok.clone()
        self.static_u = torch.zeros((self.period, B), dtype=torch.float64, device=dev)
        self.static_out = torch.zeros((B, self.period), dtype=torch.int64, device=dev)
        logits_dtype = self.model.head.weight.dtype
        self.static_logits = torch.zeros((B, self.model.head.out_features), dtype=logits_dtype, device=dev)
        self.ready = True
        if self.capture:
            clock = self.state.clock.clone()     # a failed capture may have moved the host clock
            try:
                self.graph = self._capture()
            except RuntimeError as e:  # capture is best effort: the same steps run eagerly
                self.state.clock.copy_(clock)
                log.warning("CUDA graph capture failed (%s); decoding eagerly", str(e).splitlines()[0][:200])

    def _capture(self):
        tok0 = self.static_tok.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):             # warm-up (cuBLAS handles etc.) on a copy
            self._body(self.state.clone(), self.sampler.clone())
        torch.cuda.current_stream().wait_stream(side)
        self.static_tok.copy_(tok0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):             # records the device ops without running them;
            self._body(self.state, self.sampler)  # the host clock went round one period
        log.debug("captured a CUDA graph of %d decode steps", self.period)
        return graph

    def _period(self) -> torch.Tensor:
        if not self.ready:
            self._setup()
        self.static_u.copy_(self.noise.take(self.period))
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body(self.state, self.sampler)
        self.last_logits = self.static_logits.clone()
        return self.static_out.clone()

    def state_nbytes(self) -> int:
        return self.state.nbytes()
