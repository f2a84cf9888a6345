"""CUDA decode: the reference step (the model's forward with state + generate.sample_torch),
`period` steps at a time captured in one CUDA graph and replayed, so a sample costs no kernel
launches from Python and no host sync.

Static shapes: the streaming state's tensors are replaced (not written) by each step, and a
pooled model's group buffers change shape from step to step. Both repeat every `period` =
hop of the innermost stage steps (16 for pool [4, 4]): at a multiple of it every group buffer
is empty. So the graph runs a whole period, then copies the new state into the static tensors
it started from. Generation is aligned to a period boundary first (eager reference steps after
a prompt) and produced in whole periods (the surplus is kept for the next call).

`capture=False` runs the very same code eagerly: that is how the CPU tests check it.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def _slots(o, out=None) -> list:
    """(container, key) of every tensor in a state tree; containers are mutated in place by the
    model, so the slots stay valid from step to step."""
    out = [] if out is None else out
    if dataclasses.is_dataclass(o):
        items = [(f.name, getattr(o, f.name)) for f in dataclasses.fields(o)]
    elif isinstance(o, dict):
        items = list(o.items())
    elif isinstance(o, list):
        items = list(enumerate(o))
    else:
        return out
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out.append((o, k))
        else:
            _slots(v, out)
    return out


def _get(slot):
    o, k = slot
    return getattr(o, k) if dataclasses.is_dataclass(o) else o[k]


def _set(slot, value):
    o, k = slot
    if dataclasses.is_dataclass(o):
        setattr(o, k, value)
    else:
        o[k] = value


class GraphDecoder:
    name = "cuda-graph"

    def __init__(self, model, state, tok, sampling, noise, position: int = 0, capture: bool = True):
        from wavelm.generate import TorchDecoder

        self.model, self.state, self.sampling, self.noise = model, state, sampling, noise
        self.period = int(model.config.hop[-1])
        self.phase = int(position) % self.period
        self.ref = TorchDecoder(model, state, tok, sampling, noise)
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
            if self.phase:                     # align to a period boundary, eagerly
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
    def _body(self, state):
        tok = self.static_tok
        for i in range(self.period):
            logits = self.model(tok[:, None], state=state)[:, 0]
            tok = self._sample(logits, self.static_u[i], self.sampling)
            self.static_out[:, i] = tok
        self.static_tok.copy_(tok)
        self.static_logits.copy_(logits)

    def _writeback(self):
        for slot, s in zip(self.slots, self.static):
            new = _get(slot)
            if new is not s:
                s.copy_(new)
            _set(slot, s)

    def _setup(self):
        from wavelm.generate import sample_torch

        self._sample = sample_torch
        B, dev = self.ref.tok.shape[0], self.ref.tok.device
        self.slots = _slots(self.state.stack)
        self.static = [_get(s).clone() for s in self.slots]
        for slot, s in zip(self.slots, self.static):
            _set(slot, s)
        self.static_tok = self.ref.tok.clone()
        self.static_u = torch.zeros((self.period, B), dtype=torch.float64, device=dev)
        self.static_out = torch.zeros((B, self.period), dtype=torch.int64, device=dev)
        logits_dtype = self.model.head.weight.dtype
        self.static_logits = torch.zeros((B, self.model.head.out_features), dtype=logits_dtype, device=dev)
        self.ready = True
        if self.capture:
            try:
                self.graph = self._capture()
            except RuntimeError as e:  # capture is best effort: the same steps run eagerly
                log.warning("CUDA graph capture failed (%s); decoding eagerly", str(e).splitlines()[0][:200])
                for slot, s in zip(self.slots, self.static):
                    _set(slot, s)

    def _capture(self):
        tok0 = self.static_tok.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):             # warm-up (cuBLAS handles etc.) on a copy
            self._body(self.state.clone())
        torch.cuda.current_stream().wait_stream(side)
        self.static_tok.copy_(tok0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(self.state)
            self._writeback()
        for slot, s in zip(self.slots, self.static):   # capture left graph tensors in the state
            _set(slot, s)
        log.debug("captured a CUDA graph of %d decode steps", self.period)
        return graph

    def _period(self) -> torch.Tensor:
        if not self.ready:
            self._setup()
        self.static_u.copy_(self.noise.take(self.period))
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body(self.state)
            self._writeback()
        self.last_logits = self.static_logits
        return self.static_out.clone()

    def state_nbytes(self) -> int:
        return self.state.nbytes()
