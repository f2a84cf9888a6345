"""WaveLM: a causal language model over 8-bit mu-law samples.

    model = WaveLM(ModelConfig.from_name("small"))
    logits = model(tokens)                        # (B, T) int64 -> (B, T, 256)
    state = model.init_state(batch_size=B)
    logits = model(tokens[:, t:t + k], state=state)   # any chunk length; state advanced in place

Structure: embedding -> Stage 0 -> norm -> linear head. A stage is a stack of blocks of the
chosen arch; with pooling, the stage's blocks are split around a residual path
x + Up(Stage_inner(Down(x))) that runs at 1/p of the rate (SaShiMi-style multi-rate U-Net).
With the LPC path (`lpc_order` > 0, wavelm/model/lpc.py), Stage 0 also gets the adaptive
predictor's prediction (its code embedded, its companded value and log residual scale
projected), and the predictor's log-distribution over the codes is added to the logits with a
learnt per-step weight softplus(gate(x)); the head starts at zero and the weight at 1, so an
untrained model scores exactly what the LPC scores.

# B batch, T time (steps of this stage), C channels, p pooling factor, g complete groups
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import make_blocks
from .config import ModelConfig
from .lpc import LPC, features, log_prior
from . import weights
from .state import Alloc, PoolState, StackState, State


class Pool(nn.Module):
    """Causal down-pool -> inner stage -> up-pool, shifted by one group.

    Down: each complete group of p steps is concatenated and projected to the inner width.
    Up: each inner output is projected to p steps that serve the *next* group, so the output at
    step t only sees inputs of groups that ended before t's group began (zeros for group 0).
    Streaming: the state buffers the r < p inputs of the incomplete group and the p outputs
    held for the current group, in place; the inner stage runs once per completed group.
    """

    def __init__(self, p, dim, inner_dim, inner: "Stage"):
        super().__init__()
        self.p = p
        self.down = nn.Linear(p * dim, inner_dim)
        self.inner = inner
        self.up = nn.Linear(inner_dim, p * dim)

    def init_state(self, alloc):
        B, p, C = alloc.B, self.p, self.up.out_features // self.p
        return PoolState(buf=alloc.floats(B, p, C), held=alloc.floats(B, p, C), r=alloc.clock(1),
                         inner=self.inner.init_state(alloc))

    def forward(self, x, state: PoolState | None = None):
        B, T, C = x.shape
        p = self.p
        if state is None:                                              # a fresh stream
            g = T // p
            u = self.up(self.inner(self.down(x[:, :g * p].reshape(B, g, p * C)))).reshape(B, g * p, C)
            return torch.cat([x.new_zeros(B, p, C), u], dim=1)[:, :T]
        r = int(state.r)
        xs = torch.cat([state.buf[:, :r], x], dim=1)                   # (B, r + T, C)
        g = xs.shape[1] // p
        if g:
            z = self.down(xs[:, :g * p].reshape(B, g, p * C))          # (B, g, C_inner)
            u = self.up(self.inner(z, state.inner)).reshape(B, g * p, C)
            seq = torch.cat([state.held, u], dim=1)                    # (B, p + g p, C)
            out = seq[:, r:r + T]
            state.held.copy_(seq[:, g * p:g * p + p].detach())
        else:
            out = state.held[:, r:r + T].clone()                       # not a view of the state
        rest = xs.shape[1] - g * p
        state.buf[:, :rest] = xs[:, g * p:].detach()
        state.r.fill_(rest)
        return out                                                     # (B, T, C)

    def lower(self, b, state, x, C):
        """The fast decode step (wavelm/decode/lower.py): one input per step; the down-pool,
        the inner stage and the up-pool run only when the step completes a group."""
        p, inner_dim = self.p, self.down.out_features
        out, group, z, held = b.tmp(C), b.tmp(p * C), b.tmp(inner_dim), b.tmp(p * C)
        label = b.pool(x, out, C, p, state, group)
        b.linear(self.down, group, z)                      # (B, p C) -> (B, C_inner)
        self.inner.lower(b, state.inner, z, inner_dim)
        b.linear(self.up, z, held)                         # (B, C_inner) -> (B, p C)
        b.store(state.held, held, p * C)
        b.land(label)                                      # an incomplete group skips to here
        b.axpy(x, out, C)

    def lookback(self):
        # a group's inputs reach outputs at most two groups later, plus the inner stage's reach
        return self.p * (self.inner.lookback() + 2)


class Stage(nn.Module):
    """Blocks of stage `i`; with an inner stage, half the blocks run before the pooled
    residual path and half after. Ends with a LayerNorm."""

    def __init__(self, cfg: ModelConfig, i: int = 0):
        super().__init__()
        dim, n = cfg.stage_dims[i], cfg.stage_layers[i]
        blocks = make_blocks(cfg, dim, n, cfg.stage_windows[i], cfg.stage_archs[i])
        inner = i < len(cfg.pool)
        split = n // 2 if inner else n
        self.pre = nn.ModuleList(blocks[:split])
        self.post = nn.ModuleList(blocks[split:])
        self.pool = Pool(cfg.pool[i], dim, cfg.stage_dims[i + 1], Stage(cfg, i + 1)) if inner else None
        self.norm = nn.LayerNorm(dim)

    def init_state(self, alloc) -> StackState:
        return StackState(blocks=[b.init_state(alloc) for b in (*self.pre, *self.post)],
                          pool=self.pool.init_state(alloc) if self.pool is not None else None)

    def forward(self, x, state: StackState | None = None):
        blocks = (*self.pre, *self.post)
        for j, block in enumerate(blocks):
            if j == len(self.pre) and self.pool is not None:
                x = x + self.pool(x, None if state is None else state.pool)
            x = block(x, None if state is None else state.blocks[j])
        if not self.post and self.pool is not None:
            x = x + self.pool(x, None if state is None else state.pool)
        return self.norm(x)

    def lower(self, b, state, x, C):
        blocks = (*self.pre, *self.post)
        for j, block in enumerate(blocks):
            if j == len(self.pre) and self.pool is not None:
                b.lower(self.pool, state.pool, x, C)
            b.lower(block, state.blocks[j], x, C)
        if not self.post and self.pool is not None:
            b.lower(self.pool, state.pool, x, C)
        b.norm(self.norm, x, x, C)

    def lookback(self):
        return sum(b.lookback() for b in (*self.pre, *self.post)) + (self.pool.lookback() if self.pool else 0)


class WaveLM(nn.Module):
    """from_pretrained(path=None) / save_pretrained(path): wavelm.checkpoint's load_model / save_model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.stage_dims[0])
        self.body = Stage(cfg, 0)
        self.head = nn.Linear(cfg.stage_dims[0], cfg.vocab_size)
        self.lpc = LPC(cfg.lpc_order, cfg.lpc_window, cfg.lpc_hop) if cfg.lpc_order else None
        if self.lpc is not None:
            C = cfg.stage_dims[0]
            self.lpc_embed = nn.Embedding(cfg.vocab_size, C)   # the prediction's mu-law code
            self.lpc_in = nn.Linear(2, C)                      # [companded prediction, log scale]
            self.lpc_gate = nn.Linear(C, 1)                    # weight of the log-prior: softplus(.)
        self.apply(self._init)
        if self.lpc is not None:                               # at init: the LPC's distribution
            for p in (self.head.weight, self.head.bias, self.lpc_gate.weight):
                nn.init.zeros_(p)
            nn.init.constant_(self.lpc_gate.bias, math.log(math.e - 1))      # softplus = 1

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.5)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """A zero state ("nothing seen yet") for `batch_size` streams."""
        p = self.head.weight
        alloc = Alloc(batch_size, device or p.device, dtype or p.dtype)
        stack = self.body.init_state(alloc)
        return alloc.finish(stack, self.lpc.init_state(alloc) if self.lpc is not None else None)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """tokens (B, T) int64 in [0, 256) -> logits (B, T, 256) predicting the next sample."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
        if state is not None and state.batch_size != tokens.shape[0]:
            raise ValueError(f"state is for batch {state.batch_size}, tokens have batch {tokens.shape[0]}")
        h, prior = self.embed(tokens), None
        if self.lpc is not None:
            dtype, lpc_state = self.head.weight.dtype, None if state is None else state.lpc
            if self.lpc.kernel is not None and tokens.device.type == "cpu":
                code, feats, prior = self.lpc.kernel(self.lpc, tokens, lpc_state, dtype)
            else:
                with torch.autocast(tokens.device.type, enabled=False):     # float64 inside, then dtype
                    pred, scale = self.lpc(tokens, lpc_state, dtype=dtype)
                    code, feats = features(pred, scale, dtype)
                    prior = log_prior(pred, scale, dtype)                      # (B, T, 256)
            h = h + self.lpc_embed(code) + self.lpc_in(feats)
        return self.forward_embedded(h, state, prior)

    def forward_embedded(self, h: torch.Tensor, state: State | None = None, prior=None) -> torch.Tensor:
        """The model after the embedding: (B, T, C) -> logits (B, T, 256); `prior` (B, T, 256):
        the LPC's log-distribution, added with its learnt weight."""
        x = self.body(h, None if state is None else state.stack)
        logits = self.head(x)
        if prior is not None:
            logits = logits + F.softplus(self.lpc_gate(x)) * prior
        return logits

    def lower(self, b, state: State) -> int:
        """Emit the fast decode step into builder `b` (wavelm/decode/lower.py); returns the
        scratch offset of the (B, V) logits."""
        C, V = self.config.stage_dims[0], self.head.out_features
        x = b.tmp(C)
        b.embed(self.embed, x)
        if self.lpc is not None:
            code, feats, prior = b.lpc(self.lpc, state.lpc)
            t = b.tmp(C)
            b.embed(self.lpc_embed, t, codes=code)
            b.axpy(x, t, C)
            b.linear(self.lpc_in, feats, t)
            b.axpy(x, t, C)
        b.lower(self.body, state.stack, x, C)
        logits = b.tmp(V)
        b.linear(self.head, x, logits)
        if self.lpc is not None:
            g = b.tmp(1)
            b.linear(self.lpc_gate, x, g)
            b.add_prior(logits, prior, g, V)
        return logits

    def receptive_field(self) -> int:
        """An upper bound on how many past steps an output can depend on, plus one."""
        return self.body.lookback() + (self.lpc.lookback() if self.lpc is not None else 0) + 1

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- checkpoints (files and checks: wavelm/model/weights.py, below this class) -------------
    @classmethod
    def from_pretrained(cls, path=None, map_location="cpu", config=None) -> "WaveLM":
        """Load a checkpoint directory; `path=None` loads the bundled default model; `config`
        (a ModelConfig), if given, must match the checkpoint's."""
        return weights.load(cls, path, map_location=map_location, config=config)

    def save_pretrained(self, path, extra: dict | None = None):
        return weights.save_model(self, path, extra=extra)


def load_model(path=None, map_location="cpu", config=None) -> WaveLM:
    """WaveLM.from_pretrained as a function (wavelm.checkpoint.load_model is the same)."""
    return WaveLM.from_pretrained(path, map_location=map_location, config=config)


@contextlib.contextmanager
def inference(model: nn.Module, threads: int | None = None):
    """inference_mode, eval mode (dropout off) and a torch thread count, restored afterwards."""
    was_training, old_threads = model.training, torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
