"""Building blocks. Every module that mixes time has one `forward(x, state=None)`;
`state=None` is a stream that starts from a zero state.

# B batch, T time (steps of this stage), C channels, H heads, D head dim, W window, K kernel
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .state import AttnState, ConvState, zero_state


class CausalConv(nn.Module):
    """Causal 1-D conv over (B, T, C). The state is a ring of the last (K-1)*dilation inputs,
    the same values training pads with (zeros at the start of a stream); the torch forward
    leaves it in time order (head 0), the fast decoder writes one slot per step."""

    def __init__(self, c_in, c_out, kernel, dilation=1, groups=1, bias=True):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, groups=groups, bias=bias)
        self.context = (kernel - 1) * dilation

    def init_state(self, alloc):
        return ConvState(alloc.floats(alloc.B, self.context, self.conv.in_channels), alloc.clock(1))

    def forward(self, x, state: ConvState | None = None):
        L = self.context
        if state is None:
            x = F.pad(x.transpose(1, 2), (L, 0))                # (B, C, L + T)
        elif L:
            h = int(state.head)                                 # the fast decoder leaves h != 0
            past = state.ring if h == 0 else torch.roll(state.ring, -h, 1)
            xs = torch.cat([past, x], dim=1)                    # (B, L + T, C), oldest first
            state.ring.copy_(xs[:, xs.shape[1] - L:].detach())
            if h:
                state.head.zero_()
            x = xs.transpose(1, 2)
        else:
            x = x.transpose(1, 2)
        return self.conv(x).transpose(1, 2)                     # (B, T, C_out)

    def lower(self, b, state, src, dst):
        """The fast decode step of this module (wavelm/decode/lower.py)."""
        b.conv1d(self.conv, src, dst, state)

    def lookback(self):
        return self.context


def rope(x, pos, base):
    """Rotary embedding at absolute positions. x (B, H, T, D), pos (T,) int64. Angles in
    float64, cos/sin and the rotation in x's dtype, or in float32 for bf16/fp16 x (autocast):
    a bf16 angle of position 4,000 would be off by up to 8 radians."""
    d = x.shape[-1]
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    ang = (pos.to(torch.float64)[:, None] * inv[None]).to(dt)        # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2].to(dt), x[..., 1::2].to(dt)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


def _sdpa(q, k, v, **kw):
    """F.scaled_dot_product_attention; on CPU always in float32 (under bf16 autocast its
    backward is ~5x slower than float32's there, while the matmuls around it gain 3-4x)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _windows(x, r, n):
    """x (B, H, (n + r - 1) S, D) -> (B n, H, r S, D): block j holds x's blocks j .. j + r - 1.
    The same as unfold(2, r S, S) then a copy to this layout, but its backward is r strided adds
    where unfold's is a scatter (3x faster in bf16 on CPU, ~8% of a `small` Conformer step)."""
    B, H, L, D = x.shape
    xs = x.reshape(B, H, n + r - 1, L // (n + r - 1), D).transpose(1, 2)     # (B, n + r - 1, H, S, D)
    return torch.cat([xs[:, i:i + n] for i in range(r)], dim=3).reshape(B * n, H, L // (n + r - 1) * r, D)


class Attention(nn.Module):
    """Causal multi-head attention over a sliding window of W steps, rotary positions.

    Keys live in a ring buffer of static shape (B, H, W, D) with the absolute position of each
    slot; the mask comes from positions only: key p is visible to query q of stream b iff
    start[b] <= p <= q and q - p < W (positions are a clock shared by the batch; rotary
    embeddings depend only on q - p, so a stream reset at any time equals a fresh one).
    Long chunks are processed in blocks of S = min(T, W/4) queries, each against W + S keys,
    so training never builds a T x T mask.
    With `cat_kernel` > 0 (CAT), Q, K and V pass through a causal depthwise conv first.
    """

    def __init__(self, dim, n_heads, window, rope_base=10000.0, cat_kernel=0, dropout=0.0):
        super().__init__()
        self.h, self.d, self.w, self.base = n_heads, dim // n_heads, window, rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.qkv_conv = CausalConv(3 * dim, 3 * dim, cat_kernel, groups=3 * dim) if cat_kernel else None
        self.dropout = dropout

    def init_state(self, alloc):
        B, H, W, D = alloc.B, self.h, self.w, self.d
        return AttnState(k=alloc.floats(B, H, W, D), v=alloc.floats(B, H, W, D), pos=alloc.ints(W, fill=-1),
                         offset=alloc.ints(1), start=alloc.ints(B),
                         qkv_conv=self.qkv_conv.init_state(alloc) if self.qkv_conv else None)

    def forward(self, x, state: AttnState | None = None):
        B, T, C = x.shape
        fresh = state is None
        qkv = self.qkv(x)
        if fresh:
            state = zero_state(self, B, x.device, qkv.dtype)      # the compute dtype (autocast)
        if self.qkv_conv is not None:
            qkv = self.qkv_conv(qkv, None if fresh else state.qkv_conv)
        q, k, v = qkv.view(B, T, 3, self.h, self.d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        pos = state.offset + torch.arange(T, device=x.device)               # (T,) the shared clock
        q, k = rope(q, pos, self.base), rope(k, pos, self.base)
        if fresh and T <= self.w:
            # a fresh stream no longer than the window: the position rule is plain causal
            # masking, and the fused kernel skips the masked half (training's common case)
            y = _sdpa(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            y = self._attend(q, k, v, pos, state)                           # (B, H, T, D)
            if not fresh:
                self._remember(k, v, pos, state)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.out(y), self.dropout, self.training)

    def _attend(self, q, k, v, pos, state):
        B, H, T, D = q.shape
        W = self.w
        # queries per block: each block reads W + S keys, so S = W/4 wastes 25% on masked keys
        S = min(T, max(1, W // 4))
        n = -(-T // S)                                    # blocks
        pad = n * S - T
        # padded positions continue the count: they are in the future of every real query
        pos_all = state.offset + torch.arange(n * S, device=q.device)
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        rk, rv, rp = state.k.to(q.dtype), state.v.to(q.dtype), state.pos   # (autocast: bf16 q)
        if n > 1:
            # blocks after the first see only a suffix of the ring: put it in time order
            # (slot of position p is p % W, so this gathers positions offset-W .. offset-1)
            order = (state.offset + torch.arange(W, device=q.device)) % W
            rk, rv, rp = rk.index_select(2, order), rv.index_select(2, order), rp.index_select(0, order)
        k_ext = torch.cat([rk, k], dim=2)                 # (B, H, W + nS, D): ring, then chunk
        v_ext = torch.cat([rv, v], dim=2)
        p_ext = torch.cat([rp, pos_all])                  # (W + nS,)
        # block j's queries [jS, jS + S) see ext keys [jS, jS + W + S); blocks are folded into
        # the batch because SDPA takes its fused CPU kernel only for 4-D inputs (~5x faster)
        if W % S == 0:
            kb, vb = _windows(k_ext, W // S + 1, n), _windows(v_ext, W // S + 1, n)
        else:
            kb = k_ext.unfold(2, W + S, S).permute(0, 2, 1, 4, 3).reshape(B * n, H, W + S, D)
            vb = v_ext.unfold(2, W + S, S).permute(0, 2, 1, 4, 3).reshape(B * n, H, W + S, D)
        pk = p_ext.unfold(0, W + S, S)[:, None, :]        # (n, 1, W + S)
        pq = pos_all.view(n, S, 1)                        # (n, S, 1)
        mask = (pk >= 0) & (pk <= pq) & (pq - pk < W)     # (n, S, W + S)
        mask = mask & (pk >= state.start.view(B, 1, 1, 1))  # (B, n, S, W + S): a reset stream's past
        mask = mask.reshape(B * n, 1, S, W + S)
        qb = q.reshape(B, H, n, S, D).transpose(1, 2).reshape(B * n, H, S, D)
        y = _sdpa(qb, kb, vb, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return y.reshape(B, n, H, S, D).transpose(1, 2).reshape(B, H, n * S, D)[:, :, :T]

    def _remember(self, k, v, pos, state):
        m = min(k.shape[2], self.w)                       # only the last W keys can matter
        slots = pos[-m:] % self.w
        state.k.index_copy_(2, slots, k[:, :, -m:].detach().to(state.k.dtype))
        state.v.index_copy_(2, slots, v[:, :, -m:].detach().to(state.v.dtype))
        state.pos.index_copy_(0, slots, pos[-m:])
        state.offset.add_(k.shape[2])

    def lower(self, b, state, src, dst):
        C = self.h * self.d
        qkv = b.tmp(3 * C)
        b.linear(self.qkv, src, qkv)
        if self.qkv_conv is not None:
            conv = b.tmp(3 * C)
            self.qkv_conv.lower(b, state.qkv_conv, qkv, conv)
            qkv = conv
        y = b.tmp(C)
        b.attend(qkv, y, self.h, self.d, self.w, self.base, state)
        b.linear(self.out, y, dst)

    def lookback(self):
        return self.w - 1 + (self.qkv_conv.lookback() if self.qkv_conv else 0)


class FeedForward(nn.Module):
    def __init__(self, dim, mult, dropout=0.0):
        super().__init__()
        hidden = int(dim * mult)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x):
        # SiLU, not GELU: same quality here and far cheaper per call on CPU (see docs/design.md)
        return F.dropout(self.down(F.silu(self.up(self.norm(x)))), self.dropout, self.training)

    def lower(self, b, src, dst):
        C, hidden = self.up.in_features, self.up.out_features
        h, u = b.tmp(C), b.tmp(hidden)
        b.norm(self.norm, src, h, C)
        b.linear(self.up, h, u)
        b.silu(u, hidden)
        b.linear(self.down, u, dst)


class ConformerConv(nn.Module):
    """Gulati et al. conv module, causal: LN -> pointwise (2C) -> GLU -> causal depthwise
    -> LayerNorm (BatchNorm would pool statistics over time) -> SiLU -> pointwise."""

    def __init__(self, dim, kernel, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 2 * dim)
        self.dw = CausalConv(dim, dim, kernel, groups=dim)
        self.dw_norm = nn.LayerNorm(dim)
        self.pw2 = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x, state=None):
        x = F.glu(self.pw1(self.norm(x)), dim=-1)
        x = F.silu(self.dw_norm(self.dw(x, state)))
        return F.dropout(self.pw2(x), self.dropout, self.training)

    def lower(self, b, state, src, dst):
        C = self.pw2.in_features
        h, a, g, y = b.tmp(C), b.tmp(C), b.tmp(C), b.tmp(C)
        b.norm(self.norm, src, h, C)
        b.linear(self.pw1, h, a, rows=slice(0, C))             # GLU: a * sigmoid(g)
        b.linear(self.pw1, h, g, rows=slice(C, 2 * C))
        b.gate(a, g, C, "sigmoid")
        self.dw.lower(b, state, a, y)
        b.norm(self.dw_norm, y, y, C)
        b.silu(y, C)
        b.linear(self.pw2, y, dst)


class ConvStack(nn.Module):
    """Conformer-LLM (Verma 2023) conv module: stacked causal convs with ReLU and a skip
    connection. "small": kernels (3, 7) with (2E, E) filters; "large": (2, 3, 5) with (2E, 2E, E)."""

    def __init__(self, dim, size="small"):
        super().__init__()
        kernels, widths = ((3, 7), (2, 1)) if size == "small" else ((2, 3, 5), (2, 2, 1))
        self.norm = nn.LayerNorm(dim)
        chans = [dim] + [w * dim for w in widths]
        self.convs = nn.ModuleList(CausalConv(a, b, k) for a, b, k in zip(chans, chans[1:], kernels))

    def forward(self, x, states=None):
        h = self.norm(x)
        for i, conv in enumerate(self.convs):
            h = conv(h, None if states is None else states[i])
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return h

    def lower(self, b, states, src, dst):
        C = self.convs[0].conv.in_channels
        h = b.tmp(C)
        b.norm(self.norm, src, h, C)
        for i, conv in enumerate(self.convs):
            last = i == len(self.convs) - 1
            out = dst if last else b.tmp(conv.conv.out_channels)
            conv.lower(b, states[i], h, out)
            if not last:
                b.relu(out, conv.conv.out_channels)
            h = out


class GatedConv(nn.Module):
    """Attention-free time mixing (conv arch): LN -> linear to 2C -> dilated causal depthwise
    conv on one half, SiLU gate from the other -> linear."""

    def __init__(self, dim, kernel, dilation, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.inp = nn.Linear(dim, 2 * dim)
        self.dw = CausalConv(dim, dim, kernel, dilation=dilation, groups=dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x, state=None):
        a, g = self.inp(self.norm(x)).chunk(2, dim=-1)
        y = self.dw(a, state) * F.silu(g)
        return F.dropout(self.out(y), self.dropout, self.training)

    def lower(self, b, state, src, dst):
        C = self.out.in_features
        h, a, g, y = b.tmp(C), b.tmp(C), b.tmp(C), b.tmp(C)
        b.norm(self.norm, src, h, C)
        b.linear(self.inp, h, a, rows=slice(0, C))
        b.linear(self.inp, h, g, rows=slice(C, 2 * C))
        self.dw.lower(b, state, a, y)
        b.gate(y, g, C, "silu")
        b.linear(self.out, y, dst)
