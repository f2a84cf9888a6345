"""Compile a WaveLM into the flat program that kernels.decode interprets, and load a torch
streaming `State` into it (after a prompt prefill through the model's own forward).

Layout: P holds weights (conv weights re-ordered for the kernels), M holds scratch regions
followed by the streaming state, I holds int64 state. Scratch is allocated as a stack and
released after each block, so the hot working set stays small.

# B batch, C channels, H heads, D head dim, W window, K kernel, L ring length
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from wavelm.model.blocks import ConformerBlock, ConvBlock, TransformerBlock
from wavelm.model.layers import Attention, CausalConv
from wavelm.model.state import State

from . import kernels as K

_STATE = 1 << 40  # operands >= this are state offsets, placed after the scratch at finalize


class Unsupported(Exception):
    """The model holds a module the fast step does not know."""


def flatten_state(o) -> list[torch.Tensor]:
    """Tensors of a state tree in a fixed order (dataclass fields, lists, dicts)."""
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, (list, tuple)):
        return [t for x in o for t in flatten_state(x)]
    if isinstance(o, dict):
        return [t for x in o.values() for t in flatten_state(x)]
    if dataclasses.is_dataclass(o):
        return [t for f in dataclasses.fields(o) for t in flatten_state(getattr(o, f.name))]
    return []


@dataclass
class Program:
    prog: np.ndarray          # (n_ops, NCOLS) int64
    P: np.ndarray             # weights
    M: np.ndarray             # scratch + state
    I: np.ndarray             # int64 state
    C64: np.ndarray           # float64 constants (eps, residual scales, rotary frequencies)
    ex: tuple                 # exp workspace (kernels.exp_workspace)
    logits: int               # offset of the (B, V) logits region in M
    batch_size: int
    vocab: int
    loaders: list             # (state leaf index, fn(program, tensor)) to import a torch State
    state_slice: slice        # the part of M that is state

    def load_state(self, state: State):
        """Copy a torch streaming state (same model, same batch size) into M and I."""
        if state.batch_size != self.batch_size:
            raise ValueError(f"state is for batch {state.batch_size}, program for {self.batch_size}")
        leaves = flatten_state(state.stack)
        fdtype = torch.from_numpy(self.M[:0]).dtype
        for i, fn in self.loaders:
            t = leaves[i].detach().to("cpu")
            fn(self, t.to(fdtype) if t.is_floating_point() else t.to(torch.int64))

    def nbytes(self) -> int:
        return self.M[self.state_slice].nbytes + self.I.nbytes

    def teacher_forced(self, tokens: np.ndarray) -> np.ndarray:
        """Feed tokens (B, T) one step at a time; returns every step's logits (T, B, V)."""
        tokens = np.ascontiguousarray(tokens, np.int64)
        B, T = tokens.shape
        out = np.empty((B, T), np.int64)
        logits = np.empty((T, B, self.vocab), self.M.dtype)
        u = np.zeros((T, B))
        K.decode(self.prog, self.P, self.M, self.I, self.C64, self.ex, tokens[:, 0].copy(), u, 1.0, 0, 1.0,
                 self.logits, self.vocab, out, np.ascontiguousarray(np.roll(tokens, -1, axis=1)), logits)
        return logits

    def logits_view(self) -> np.ndarray:
        return self.M[self.logits:self.logits + self.batch_size * self.vocab].reshape(self.batch_size, -1)


class _Builder:
    def __init__(self, dtype, batch_size, template: State):
        self.dtype, self.B = dtype, batch_size
        self.params: list[np.ndarray] = []
        self.np = 0
        self.ops: list[list[int]] = []
        self.scratch = self.scratch_max = 0
        self.state = 0
        self.ints = 0
        self.consts: list[float] = []
        self.exp_max = 0                   # largest exp scratch needed
        self.loaders: list = []
        self.leaf = {id(t): i for i, t in enumerate(flatten_state(template.stack))}

    # -- allocation --------------------------------------------------------------------
    def param(self, t) -> int:
        a = np.ascontiguousarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t,
                                 dtype=self.dtype).ravel()
        off = self.np
        self.params.append(a)
        self.np += a.size
        return off

    def tmp(self, n: int) -> int:
        """A (B, n) scratch region."""
        off = self.scratch
        self.scratch += self.B * n
        self.scratch_max = max(self.scratch_max, self.scratch)
        return off

    def tmp_shared(self, n: int) -> int:
        """A scratch region of n elements shared by the batch."""
        return self.tmp(-(-n // self.B))

    def mem(self, n: int) -> int:
        """A state region of n elements (already including the batch)."""
        off = self.state
        self.state += n
        return _STATE + off

    def int_state(self, n: int) -> int:
        off = self.ints
        self.ints += n
        return off

    def const(self, values) -> int:
        off = len(self.consts)
        self.consts.extend(float(v) for v in np.atleast_1d(values))
        return off

    def emit(self, op: int, *args) -> int:
        self.ops.append([op, *map(int, args)])
        return len(self.ops) - 1

    def on_load(self, tensor, fn):
        """Register how to import the torch state leaf `tensor` (from the template state)."""
        self.loaders.append((self.leaf[id(tensor)], fn))

    # -- layers --------------------------------------------------------------------------
    def layernorm(self, norm: torch.nn.LayerNorm, src, dst, C):
        if norm.weight is None or norm.bias is None:
            raise Unsupported("LayerNorm without affine parameters")
        self.emit(K.LN, src, dst, C, self.param(norm.weight), self.param(norm.bias), self.const(norm.eps))

    def silu(self, x, n):
        self.emit(K.SILU, x, n)
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def gate(self, a, g, n, kind):
        self.emit(K.GATE, a, g, n, kind)
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def linear(self, lin: torch.nn.Linear, src, dst, rows=None):
        w, b = lin.weight, lin.bias
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        self.emit(K.LINEAR, src, dst, w.shape[1], w.shape[0], self.param(w),
                  -1 if b is None else self.param(b))

    def dwconv(self, cc: CausalConv, state, src, dst, C):
        conv = cc.conv
        if conv.groups != C or conv.in_channels != C or conv.out_channels != C:
            raise Unsupported("depthwise conv with a channel multiplier")
        k, d = conv.kernel_size[0], conv.dilation[0]
        L = (k - 1) * d
        ring, head = self.mem(self.B * L * C), self.int_state(1)
        bias = conv.bias if conv.bias is not None else torch.zeros(C)
        self.emit(K.DWCONV, src, dst, C, k, d, self.param(conv.weight[:, 0, :].T), self.param(bias), ring, head)
        self.on_load(state.buf, _load_ring(ring, head, self.B, L, C))

    def conv(self, cc: CausalConv, state, src, dst):
        conv = cc.conv
        if conv.groups != 1 or conv.dilation[0] != 1:
            raise Unsupported("grouped or dilated full conv")
        cin, cout, k = conv.in_channels, conv.out_channels, conv.kernel_size[0]
        ring, head = self.mem(self.B * (k - 1) * cin), self.int_state(1)
        bias = conv.bias if conv.bias is not None else torch.zeros(cout)
        self.emit(K.CONV, src, dst, cin, cout, k, self.param(conv.weight.permute(2, 0, 1)), self.param(bias),
                  ring, head)
        self.on_load(state.buf, _load_ring(ring, head, self.B, k - 1, cin))

    def attention(self, att: Attention, state, src, dst):
        C = att.h * att.d
        qkv = self.tmp(3 * C)
        self.linear(att.qkv, src, qkv)
        if att.qkv_conv is not None:
            conv_out = self.tmp(3 * C)
            self.dwconv(att.qkv_conv, state.qkv_conv, qkv, conv_out, 3 * C)
            qkv = conv_out
        H, D, W, B = att.h, att.d, att.w, self.B
        kv = self.mem(2 * B * H * W * D)                 # K then V, each (B, H, D, W)
        self.exp_max = max(self.exp_max, W)
        pos, off = self.int_state(W), self.int_state(1)
        inv = att.base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)   # as layers.rope
        scores = self.tmp_shared(W + D)           # W scores, then D/2 cos and D/2 sin
        y = self.tmp(C)
        self.emit(K.ATTN, qkv, y, H, D, W, kv, pos, off, self.const(inv.numpy()), scores)
        self.linear(att.out, y, dst)
        self.on_load(state.k, _load_kv(kv, B * H * W * D))
        self.on_load(state.v, _load_kv(kv + B * H * W * D, B * H * W * D))
        self.on_load(state.pos, _load_ints(pos, W))
        self.on_load(state.offset, _load_ints(off, 1))

    def ffn(self, f, x, C, alpha):
        h, u, d = self.tmp(C), self.tmp(f.up.out_features), self.tmp(C)
        self.layernorm(f.norm, x, h, C)
        self.linear(f.up, h, u)
        self.silu(u, f.up.out_features)
        self.linear(f.down, u, d)
        self.emit(K.AXPY, x, d, C, self.const(alpha))

    # -- blocks and stages -----------------------------------------------------------------
    def block(self, blk, state, x, C):
        mark = self.scratch
        one = self.const(1.0)
        if isinstance(blk, ConformerBlock):
            self.ffn(blk.ffn1, x, C, 0.5)
            h, a = self.tmp(C), self.tmp(C)
            self.layernorm(blk.norm_attn, x, h, C)
            self.attention(blk.attn, state["attn"], h, a)
            self.emit(K.AXPY, x, a, C, one)
            cv = blk.conv
            g, y, o = self.tmp(C), self.tmp(C), self.tmp(C)
            self.layernorm(cv.norm, x, h, C)
            self.linear(cv.pw1, h, a, rows=slice(0, C))
            self.linear(cv.pw1, h, g, rows=slice(C, 2 * C))
            self.gate(a, g, C, 0)
            self.dwconv(cv.dw, state["conv"], a, y, C)
            self.layernorm(cv.dw_norm, y, y, C)
            self.silu(y, C)
            self.linear(cv.pw2, y, o)
            self.emit(K.AXPY, x, o, C, one)
            self.ffn(blk.ffn2, x, C, 0.5)
            self.layernorm(blk.norm, x, x, C)
        elif isinstance(blk, TransformerBlock):
            h, a = self.tmp(C), self.tmp(C)
            self.layernorm(blk.norm, x, h, C)
            self.attention(blk.attn, state["attn"], h, a)
            self.emit(K.AXPY, x, a, C, one)
            self.ffn(blk.ffn, x, C, 1.0)
            if blk.conv is not None:
                self.layernorm(blk.conv.norm, x, h, C)
                src = h
                for i, cc in enumerate(blk.conv.convs):
                    out = self.tmp(cc.conv.out_channels)
                    self.conv(cc, state["conv"][i], src, out)
                    if i < len(blk.conv.convs) - 1:
                        self.emit(K.RELU, out, cc.conv.out_channels)
                    src = out
                self.emit(K.AXPY, x, src, C, one)
        elif isinstance(blk, ConvBlock):
            mix = blk.mix
            h, a, g, y, o = (self.tmp(C) for _ in range(5))
            self.layernorm(mix.norm, x, h, C)
            self.linear(mix.inp, h, a, rows=slice(0, C))
            self.linear(mix.inp, h, g, rows=slice(C, 2 * C))
            self.dwconv(mix.dw, state["conv"], a, y, C)
            self.gate(y, g, C, 1)
            self.linear(mix.out, y, o)
            self.emit(K.AXPY, x, o, C, one)
            self.ffn(blk.ffn, x, C, 1.0)
        else:
            raise Unsupported(f"block {type(blk).__name__}")
        self.scratch = mark

    def pool(self, pool, state, x, C):
        p, B = pool.p, self.B
        inner_dim = pool.down.out_features
        out = self.tmp(C)                                  # held[r], read before the inner run
        buf, held, r = self.mem(B * p * C), self.mem(B * p * C), self.int_state(1)
        at = self.emit(K.POOL, x, out, C, p, buf, held, r, -1)
        z = self.tmp(inner_dim)
        self.linear(pool.down, buf, z)                    # (B, p C) -> (B, C_inner)
        self.stage(pool.inner, state.inner, z, inner_dim)
        self.linear(pool.up, z, held)                     # (B, C_inner) -> (B, p C)
        self.ops[at][8] = len(self.ops)                   # incomplete group: skip to here
        self.emit(K.AXPY, x, out, C, self.const(1.0))
        self.on_load(state.buf, _load_pool_buf(buf, r, B, p, C))
        self.on_load(state.held, _load_copy(held, B * p * C))

    def stage(self, st, state, x, C):
        blocks = (*st.pre, *st.post)
        for j, blk in enumerate(blocks):
            if j == len(st.pre) and st.pool is not None:
                self.pool(st.pool, state.pool, x, C)
            self.block(blk, state.blocks[j], x, C)
        if not st.post and st.pool is not None:
            self.pool(st.pool, state.pool, x, C)
        self.layernorm(st.norm, x, x, C)


def compile_model(model, batch_size: int) -> Program:
    """Flatten `model` (a WaveLM, float32 or float64) for `batch_size` streams. Raises
    Unsupported for modules the fast step does not implement."""
    dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(model.head.weight.dtype)
    if dtype is None:
        raise Unsupported(f"dtype {model.head.weight.dtype}")
    if model.training and model.config.dropout > 0:
        raise Unsupported("dropout in training mode")
    template = model.init_state(batch_size, device="cpu")
    b = _Builder(dtype, batch_size, template)
    C0, V = model.config.stage_dims[0], model.head.out_features
    with torch.no_grad():
        x = b.tmp(C0)
        b.emit(K.EMBED, x, b.param(model.embed.weight), C0, model.embed.num_embeddings)
        b.stage(model.body, template.stack, x, C0)
        logits = b.tmp(V)
        b.linear(model.head, x, logits)
        b.exp_max = max(b.exp_max, V)                     # sampling exponentiates the logits
    # place the state after the scratch
    base = b.scratch_max
    prog = np.full((len(b.ops), K.NCOLS), 0, dtype=np.int64)
    for i, row in enumerate(b.ops):
        row = [v - _STATE + base if v >= _STATE else v for v in row]
        prog[i, :len(row)] = row
    loaders = [(i, _rebase(fn, base)) for i, fn in b.loaders]
    P = np.concatenate(b.params) if b.params else np.zeros(0, dtype)
    M = np.zeros(base + b.state, dtype)
    I = np.zeros(max(b.ints, 1), np.int64)
    prog_obj = Program(prog, P, M, I, np.array(b.consts, np.float64), K.exp_workspace(dtype, b.exp_max),
                       logits, batch_size, V,
                       loaders, slice(base, base + b.state))
    prog_obj.load_state(template)
    return prog_obj


# -- importing torch state leaves (state offsets are rebased once the scratch size is known) ---

def _rebase(fn, base):
    return lambda prog, t: fn(prog, t, base)


def _m(off, base):
    return off - _STATE + base if off >= _STATE else off


def _load_copy(off, n):
    def load(prog, t, base):
        o = _m(off, base)
        prog.M[o:o + n] = t.reshape(-1).numpy()
    return load


def _load_kv(off, n):
    def load(prog, t, base):                  # torch (B, H, W, D) -> (B, H, D, W)
        o = _m(off, base)
        prog.M[o:o + n] = t.transpose(2, 3).reshape(-1).numpy()
    return load


def _load_ints(off, n):
    def load(prog, t, base):
        prog.I[off:off + n] = t.reshape(-1).numpy()
    return load


def _load_ring(off, head, B, L, C):
    def load(prog, t, base):                  # torch (B, C, L), oldest first -> ring (B, L, C)
        o = _m(off, base)
        prog.M[o:o + B * L * C] = t.transpose(1, 2).reshape(-1).numpy()
        prog.I[head] = 0
    return load


def _load_pool_buf(off, r_idx, B, p, C):
    def load(prog, t, base):                  # torch (B, r, C), r < p
        o = _m(off, base)
        r = t.shape[1]
        buf = prog.M[o:o + B * p * C].reshape(B, p, C)
        buf[:] = 0
        buf[:, :r] = t.numpy()
        prog.I[r_idx] = r
    return load
