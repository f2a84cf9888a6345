"""Lower a WaveLM into the flat program that kernels.decode interprets.

Each module lowers itself beside its `forward` (`lower(builder, state, ...)` in
wavelm/model/layers.py, blocks.py and lm.py), mirroring its forward op for op; this module only
emits the kernel ops and allocates: P holds the weights (conv weights re-ordered for the
kernels), M the scratch, allocated as a stack and released after each block so the hot working
set stays small. The streaming state is not copied: ops address the torch `State`'s own flat
tensors (F = state.floats, I = state.ints, see wavelm/model/state.py) by the offsets of its
leaves, so the decoder's arrays are views of the state and a torch forward can continue what
the decoder wrote (and back).

# B batch, C channels, H heads, D head dim, W window, K kernel, L ring length, V vocab
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from wavelm.model.state import State

from . import kernels as K


class Unsupported(Exception):
    """The model holds a module (or a setting) the fast step does not implement."""


@dataclass
class Program:
    prog: np.ndarray          # (n_ops, NCOLS) int64
    P: np.ndarray             # weights
    M: np.ndarray             # scratch
    C64: np.ndarray           # float64 constants (eps, residual scales, rotary frequencies)
    ex: tuple                 # exp workspace (kernels.exp_workspace)
    logits: int               # offset of the (B, V) logits region in M
    batch_size: int
    vocab: int
    n_floats: int             # the state layout it was lowered against
    n_ints: int

    def arrays(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """(F, I): numpy views of a state of the model this program was lowered from."""
        if state.batch_size != self.batch_size:
            raise Unsupported(f"state is for batch {state.batch_size}, program for {self.batch_size}")
        if state.floats.device.type != "cpu" or state.floats.dtype != torch.from_numpy(self.M[:0]).dtype:
            raise Unsupported(f"state is {state.floats.dtype} on {state.floats.device}, "
                              f"the program {self.M.dtype} on cpu")
        if (state.floats.numel(), state.ints.numel()) != (self.n_floats, self.n_ints):
            raise Unsupported("state layout differs from the model's")
        return state.floats.detach().numpy(), state.ints.numpy()

    def teacher_forced(self, state: State, tokens: np.ndarray) -> np.ndarray:
        """Feed tokens (B, T) one step at a time from `state` (advanced in place); returns every
        step's logits (T, B, V)."""
        F, I = self.arrays(state)
        tokens = np.ascontiguousarray(tokens, np.int64)
        B, T = tokens.shape
        out = np.empty((B, T), np.int64)
        logits = np.empty((T, B, self.vocab), self.M.dtype)
        K.decode(self.prog, self.P, self.M, F, I, self.C64, self.ex, tokens[:, 0].copy(), np.zeros((T, B)),
                 1.0, 0, 1.0, self.logits, self.vocab, out, np.ascontiguousarray(np.roll(tokens, -1, axis=1)),
                 logits)
        return logits

    def logits_view(self) -> np.ndarray:
        return self.M[self.logits:self.logits + self.batch_size * self.vocab].reshape(self.batch_size, -1)


class Builder:
    """What a module's `lower` calls: scratch allocation and one method per kernel op. Offsets
    into M are (B, n) regions unless said otherwise; state arguments are the module's own
    state leaves."""

    def __init__(self, dtype, state: State):
        self.dtype, self.B, self.state = dtype, state.batch_size, state
        self.params: list[np.ndarray] = []
        self.np = 0
        self.ops: list[list[int]] = []
        self.scratch = self.scratch_max = 0
        self.consts: list[float] = []
        self.exp_max = 0                   # largest exp scratch needed

    # -- allocation --------------------------------------------------------------------
    def param(self, t) -> int:
        a = np.ascontiguousarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t,
                                 dtype=self.dtype).ravel()
        off = self.np
        self.params.append(a)
        self.np += a.size
        return off

    def tmp(self, n: int) -> int:
        """A (B, n) scratch region, live until the enclosing `scope` ends."""
        off = self.scratch
        self.scratch += self.B * n
        self.scratch_max = max(self.scratch_max, self.scratch)
        return off

    @contextlib.contextmanager
    def scope(self):
        mark = self.scratch
        yield
        self.scratch = mark

    def const(self, values) -> int:
        off = len(self.consts)
        self.consts.extend(float(v) for v in np.atleast_1d(values))
        return off

    def at(self, leaf: torch.Tensor) -> int:
        """Offset of a state leaf in F (floats) or I (ints and clock)."""
        for base in (self.state.floats, self.state.ints):
            if leaf.numel() == 0:
                return 0
            if leaf.untyped_storage().data_ptr() == base.untyped_storage().data_ptr():
                return leaf.storage_offset() - base.storage_offset()
        raise Unsupported("a state leaf outside the state's flat tensors")

    def emit(self, op: int, *args) -> int:
        self.ops.append([op, *map(int, args)])
        return len(self.ops) - 1

    def lower(self, module, *args):
        """module.lower(self, *args) with its scratch released afterwards."""
        fn = getattr(module, "lower", None)
        if fn is None:
            raise Unsupported(f"{type(module).__name__} has no lower()")
        with self.scope():
            return fn(self, *args)

    # -- torch modules ---------------------------------------------------------------------
    def norm(self, m: nn.Module, src, dst, C):
        """nn.LayerNorm (affine, with bias) or nn.RMSNorm (affine); may be in place."""
        if isinstance(m, nn.LayerNorm) and m.weight is not None and m.bias is not None:
            self.emit(K.LN, src, dst, C, self.param(m.weight), self.param(m.bias), self.const(m.eps))
        elif isinstance(m, nn.RMSNorm) and m.weight is not None:
            eps = m.eps if m.eps is not None else torch.finfo(m.weight.dtype).eps
            self.emit(K.LN, src, dst, C, self.param(m.weight), -1, self.const(eps))
        else:
            raise Unsupported(f"norm {type(m).__name__} (affine LayerNorm or RMSNorm only)")

    def linear(self, lin: nn.Linear, src, dst, rows=None):
        if not isinstance(lin, nn.Linear):
            raise Unsupported(f"{type(lin).__name__} where a Linear was expected")
        w, b = lin.weight, lin.bias
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        self.emit(K.LINEAR, src, dst, w.shape[1], w.shape[0], self.param(w), -1 if b is None else self.param(b))

    def embed(self, emb: nn.Embedding, dst, codes=None):
        """dst = the rows of the input tokens, or of the codes held (as floats) in M[codes] (B, 1)."""
        if codes is None:
            self.emit(K.EMBED, dst, self.param(emb.weight), emb.embedding_dim, emb.num_embeddings)
        else:
            self.emit(K.EMBEDM, dst, self.param(emb.weight), emb.embedding_dim, emb.num_embeddings, codes)

    # -- elementwise -------------------------------------------------------------------------
    def silu(self, x, n):
        self.emit(K.SILU, x, n)
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def relu(self, x, n):
        self.emit(K.RELU, x, n)

    def gate(self, a, g, n, kind: str):
        """a *= sigmoid(g) ("sigmoid", a GLU) or a *= silu(g) ("silu")."""
        self.emit(K.GATE, a, g, n, {"sigmoid": 0, "silu": 1}[kind])
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def axpy(self, dst, src, n, alpha=1.0):
        self.emit(K.AXPY, dst, src, n, self.const(alpha))

    # -- time mixing (state leaves from the module's own state) ------------------------------
    def dwconv(self, src, dst, C, k, dil, w_kc, bias, state):
        """Causal depthwise conv; w_kc (K, C); state: ConvState with ring (B, (K-1) dil, C)."""
        self.emit(K.DWCONV, src, dst, C, k, dil, self.param(w_kc), self.param(bias),
                  self.at(state.ring), self.at(state.head))

    def conv(self, src, dst, cin, cout, k, w_koi, bias, state):
        """Causal full conv, dilation 1; w_koi (K, Cout, Cin); ring (B, K-1, Cin)."""
        self.emit(K.CONV, src, dst, cin, cout, k, self.param(w_koi), self.param(bias),
                  self.at(state.ring), self.at(state.head))

    def attend(self, qkv, dst, H, D, W, rope_base, state):
        """One query per stream: qkv (B, 3 H D) -> dst (B, H D); state: AttnState."""
        inv = rope_base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)   # as layers.rope
        scores = self.tmp(-(-(W + D) // self.B))          # W scores, then D/2 cos and D/2 sin
        self.exp_max = max(self.exp_max, W)
        self.emit(K.ATTN, qkv, dst, H, D, W, self.at(state.k), self.at(state.v), self.at(state.pos),
                  self.at(state.offset), self.at(state.start), self.const(inv.numpy()), scores)

    def pool(self, src, dst, C, p, state, group) -> int:
        """dst = held[r], buf[r] = src; a completed group is copied to `group` (B, p C) and the
        ops up to `land(...)` run, else they are skipped. Returns the label for `land`."""
        return self.emit(K.POOL, src, dst, C, p, self.at(state.buf), self.at(state.held), self.at(state.r),
                         -1, group)

    def land(self, label: int):
        self.ops[label][8] = len(self.ops)

    def lpc(self, lpc, state):
        """The LPC path's step (model/lpc.py) on the input tokens; state: LPCState. Returns the
        offsets of its codes (B, 1), features (B, 2) and log-prior (B, V) in M."""
        from wavelm.model import lpc as L

        c = self.const(L.constants(lpc.window))
        self.exp_max = max(self.exp_max, L.V)
        out = self.tmp(3 + 2 * L.V)                  # codes, features, log-prior, z scratch
        self.emit(K.LPC, out, self.at(state.ring), self.at(state.head), self.at(state.coef), self.at(state.scale),
                  self.at(state.mass), self.at(state.r), lpc.window, lpc.order, lpc.hop, c)
        return out, out + self.B, out + 3 * self.B

    def add_prior(self, logits, prior, g, V):
        """logits += softplus(g) * prior, per stream; g (B, 1)."""
        self.emit(K.PRIOR, logits, prior, g, V)

    def store(self, leaf: torch.Tensor, src, n):
        """State leaf (B, n) = M[src] (B, n)."""
        self.emit(K.STORE, self.at(leaf), src, n)


def compile_model(model, batch_size: int) -> Program:
    """Lower `model` (a WaveLM, float32 or float64) for `batch_size` streams. Raises
    Unsupported (or whatever a module's lower raises) where the fast step cannot run it."""
    dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(model.head.weight.dtype)
    if dtype is None:
        raise Unsupported(f"dtype {model.head.weight.dtype}")
    if model.training and model.config.dropout > 0:
        raise Unsupported("dropout in training mode")
    template = model.init_state(batch_size, device="cpu")
    b = Builder(dtype, template)
    with torch.no_grad():
        logits = model.lower(b, template)
    b.exp_max = max(b.exp_max, model.head.out_features)   # sampling exponentiates the logits
    prog = np.zeros((len(b.ops), K.NCOLS), dtype=np.int64)
    for i, row in enumerate(b.ops):
        prog[i, :len(row)] = row
    P = np.concatenate(b.params) if b.params else np.zeros(0, dtype)
    return Program(prog, P, np.zeros(max(b.scratch_max, 1), dtype), np.array(b.consts, np.float64),
                   K.exp_workspace(dtype, b.exp_max), logits, batch_size, model.head.out_features,
                   template.floats.numel(), template.ints.numel())
