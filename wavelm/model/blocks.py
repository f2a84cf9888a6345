"""One block per arch. A block maps (B, T, C) -> (B, T, C); its state is a dict of the states
of its time-mixing parts (attention, convolutions); everything else is per-sample.

# B batch, T time (steps of this stage), C channels
"""
from __future__ import annotations

import torch.nn as nn

from .layers import Attention, CausalConv, ConformerConv, ConvStack, FeedForward, GatedConv


def _get(state, key):
    return None if state is None else state[key]


class TransformerBlock(nn.Module):
    """Pre-norm decoder layer; `cat_kernel` > 0 makes it a CAT block (convs on Q, K, V);
    `llm_conv` appends the Conformer-LLM conv module (Verma 2023) after it."""

    def __init__(self, dim, heads, window, cfg, cat_kernel=0, llm_conv=None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, window, cfg.rope_base, cat_kernel, cfg.dropout)
        self.ffn = FeedForward(dim, cfg.ffn_mult, cfg.dropout)
        self.conv = ConvStack(dim, llm_conv) if llm_conv else None

    def init_state(self, alloc):
        s = {"attn": self.attn.init_state(alloc)}
        if self.conv is not None:
            s["conv"] = [c.init_state(alloc) for c in self.conv.convs]
        return s

    def forward(self, x, state=None):
        x = x + self.attn(self.norm(x), _get(state, "attn"))
        x = x + self.ffn(x)
        if self.conv is not None:
            x = x + self.conv(x, _get(state, "conv"))
        return x

    def lower(self, b, state, x, C):
        """The fast decode step, op for op as forward (wavelm/decode/lower.py); x in place."""
        h, a = b.tmp(C), b.tmp(C)
        b.norm(self.norm, x, h, C)
        self.attn.lower(b, state["attn"], h, a)
        b.axpy(x, a, C)
        self.ffn.lower(b, x, a)
        b.axpy(x, a, C)
        if self.conv is not None:
            self.conv.lower(b, state["conv"], x, a)
            b.axpy(x, a, C)

    def lookback(self):
        conv = sum(c.lookback() for c in self.conv.convs) if self.conv is not None else 0
        return self.attn.lookback() + conv


class ConformerBlock(nn.Module):
    """Gulati et al. 2020, made causal: FFN/2 -> attention -> conv module -> FFN/2 -> norm."""

    def __init__(self, dim, heads, window, cfg):
        super().__init__()
        self.ffn1 = FeedForward(dim, cfg.ffn_mult, cfg.dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, window, cfg.rope_base, 0, cfg.dropout)
        self.conv = ConformerConv(dim, cfg.conv_kernel, cfg.dropout)
        self.ffn2 = FeedForward(dim, cfg.ffn_mult, cfg.dropout)
        self.norm = nn.LayerNorm(dim)

    def init_state(self, alloc):
        return {"attn": self.attn.init_state(alloc), "conv": self.conv.dw.init_state(alloc)}

    def forward(self, x, state=None):
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(self.norm_attn(x), _get(state, "attn"))
        x = x + self.conv(x, _get(state, "conv"))
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)

    def lower(self, b, state, x, C):
        h, a = b.tmp(C), b.tmp(C)
        self.ffn1.lower(b, x, a)
        b.axpy(x, a, C, 0.5)
        b.norm(self.norm_attn, x, h, C)
        self.attn.lower(b, state["attn"], h, a)
        b.axpy(x, a, C)
        self.conv.lower(b, state["conv"], x, a)
        b.axpy(x, a, C)
        self.ffn2.lower(b, x, a)
        b.axpy(x, a, C, 0.5)
        b.norm(self.norm, x, x, C)

    def lookback(self):
        return self.attn.lookback() + self.conv.dw.lookback()


class ConvBlock(nn.Module):
    """Attention-free block (conv arch): gated dilated causal depthwise conv, then FFN."""

    def __init__(self, dim, dilation, cfg):
        super().__init__()
        self.mix = GatedConv(dim, cfg.conv_kernel, dilation, cfg.dropout)
        self.ffn = FeedForward(dim, cfg.ffn_mult, cfg.dropout)

    def init_state(self, alloc):
        return {"conv": self.mix.dw.init_state(alloc)}

    def forward(self, x, state=None):
        x = x + self.mix(x, _get(state, "conv"))
        return x + self.ffn(x)

    def lower(self, b, state, x, C):
        a = b.tmp(C)
        self.mix.lower(b, state["conv"], x, a)
        b.axpy(x, a, C)
        self.ffn.lower(b, x, a)
        b.axpy(x, a, C)

    def lookback(self):
        return self.mix.dw.lookback()


def make_blocks(cfg, dim, n_layers, window, arch=None) -> list[nn.Module]:
    """The blocks of one stage; `arch` (default cfg.arch) is the stage's block kind."""
    arch = arch or cfg.arch
    heads = dim // cfg.head_dim
    if arch == "transformer":
        return [TransformerBlock(dim, heads, window, cfg) for _ in range(n_layers)]
    if arch == "cat":
        return [TransformerBlock(dim, heads, window, cfg, cat_kernel=cfg.cat_kernel) for _ in range(n_layers)]
    if arch == "conformer_llm":
        # conv modules sit *between* decoder layers: after every layer but the last
        return [TransformerBlock(dim, heads, window, cfg, llm_conv=cfg.llm_conv if i < n_layers - 1 else None)
                for i in range(n_layers)]
    if arch == "conformer":
        return [ConformerBlock(dim, heads, window, cfg) for _ in range(n_layers)]
    if arch == "conv":
        # dilations 1, 2, 4, ... restart every 10 layers (WaveNet-style cycles) unless
        # cfg.conv_dilations gives the cycle
        return [ConvBlock(dim, cfg.dilation(i), cfg) for i in range(n_layers)]
    raise ValueError(f"unknown arch {arch!r}")


__all__ = ["TransformerBlock", "ConformerBlock", "ConvBlock", "make_blocks", "CausalConv"]
