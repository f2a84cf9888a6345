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


_NO_FORCE = np.zeros((0, 0), np.int64)
_NO_LOGITS = {np.dtype(d): np.zeros((0, 0, 0), d) for d in (np.float32, np.float64)}


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

    def run(self, state: State, tok: np.ndarray, noise: np.ndarray, sampler) -> np.ndarray:
        """Decode noise.shape[0] steps from `state` (advanced in place) with the pending input
        tokens tok (B,) (advanced too), uniforms noise (n, B) and a sampling.Sampler (its state
        advanced): tokens (B, n)."""
        F, I = self.arrays(state)
        out = np.empty((self.batch_size, noise.shape[0]), np.int64)
        K.decode(self.prog, self.P, self.M, F, I, self.C64, self.ex, tok, noise, sampler.s.numeric(),
                 sampler.arrays(), self.logits, self.vocab, out, _NO_FORCE, _NO_LOGITS[self.M.dtype])
        return out

    def teacher_forced(self, state: State, tokens: np.ndarray) -> np.ndarray:
        """Feed tokens (B, T) one step at a time from `state` (advanced in place); returns every
        step's logits (T, B, V)."""
        from .sample_ops import no_sampler
        from .sampling import Sampling

        F, I = self.arrays(state)
        tokens = np.ascontiguousarray(tokens, np.int64)
        B, T = tokens.shape
        out = np.empty((B, T), np.int64)
        logits = np.empty((T, B, self.vocab), self.M.dtype)
        K.decode(self.prog, self.P, self.M, F, I, self.C64, self.ex, tokens[:, 0].copy(), np.zeros((T, B)),
                 Sampling().numeric(), no_sampler(B), self.logits, self.vocab, out,
                 np.ascontiguousarray(np.roll(tokens, -1, axis=1)), logits)
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

    def emit(self, op: int, **operands) -> int:
        """Append a row: op and its operands by name (kernels.OPERANDS). Returns its index."""
        names = K.OPERANDS[op].split()
        if set(operands) != set(names):
            raise TypeError(f"op {op} takes {names}, got {sorted(operands)}")
        self.ops.append([op, *(int(operands[n]) for n in names)])
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
            self.emit(K.LN, src=src, dst=dst, C=C, g=self.param(m.weight), b=self.param(m.bias), eps=self.const(m.eps))
        elif isinstance(m, nn.RMSNorm) and m.weight is not None:
            eps = m.eps if m.eps is not None else torch.finfo(m.weight.dtype).eps
            self.emit(K.LN, src=src, dst=dst, C=C, g=self.param(m.weight), b=-1, eps=self.const(eps))
        else:
            raise Unsupported(f"norm {type(m).__name__} (affine LayerNorm or RMSNorm only)")

    def linear(self, lin: nn.Linear, src, dst, rows=None):
        if not isinstance(lin, nn.Linear):
            raise Unsupported(f"{type(lin).__name__} where a Linear was expected")
        w, b = lin.weight, lin.bias
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        self.emit(K.LINEAR, src=src, dst=dst, n_in=w.shape[1], n_out=w.shape[0], w=self.param(w),
                  b=-1 if b is None else self.param(b))

    def embed(self, emb: nn.Embedding, dst, codes=None):
        """dst = the rows of the input tokens, or of the codes held (as floats) in M[codes] (B, 1)."""
        if codes is None:
            self.emit(K.EMBED, dst=dst, w=self.param(emb.weight), C=emb.embedding_dim, V=emb.num_embeddings)
        else:
            self.emit(K.EMBEDM, dst=dst, w=self.param(emb.weight), C=emb.embedding_dim, V=emb.num_embeddings, codes=codes)

    # -- elementwise -------------------------------------------------------------------------
    def silu(self, x, n):
        self.emit(K.SILU, x=x, n=n)
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def relu(self, x, n):
        self.emit(K.RELU, x=x, n=n)

    def gate(self, a, g, n, kind: str):
        """a *= sigmoid(g) ("sigmoid", a GLU) or a *= silu(g) ("silu")."""
        self.emit(K.GATE, a=a, g=g, n=n, kind={"sigmoid": 0, "silu": 1}[kind])
        self.exp_max = max(self.exp_max, 2 * self.B * n)

    def axpy(self, dst, src, n, alpha=1.0):
        self.emit(K.AXPY, dst=dst, src=src, n=n, alpha=self.const(alpha))

    # -- time mixing (state leaves from the module's own state) ------------------------------
    def conv1d(self, conv: nn.Conv1d, src, dst, state):
        """A causal nn.Conv1d (left-padded by the caller's forward), one step: depthwise (any
        dilation) or full (dilation 1); state: the module's ConvState, ring (B, L, C_in).
        The kernels' weight layouts are chosen here: (K, C) depthwise, (K, C_out, C_in) full."""
        if not isinstance(conv, nn.Conv1d):
            raise Unsupported(f"{type(conv).__name__} where a Conv1d was expected")
        k, d, cin, cout = conv.kernel_size[0], conv.dilation[0], conv.in_channels, conv.out_channels
        bias = self.param(conv.bias if conv.bias is not None else torch.zeros(cout))
        ring = dict(ring=self.at(state.ring), head=self.at(state.head))
        if conv.groups == cin == cout:
            self.emit(K.DWCONV, src=src, dst=dst, C=cin, K=k, dil=d, w=self.param(conv.weight[:, 0, :].T), b=bias,
                      **ring)
        elif conv.groups == 1 and d == 1:
            self.emit(K.CONV, src=src, dst=dst, Cin=cin, Cout=cout, K=k, w=self.param(conv.weight.permute(2, 0, 1)),
                      b=bias, **ring)
        else:
            raise Unsupported("fast step: grouped or dilated full conv")

    def attend(self, qkv, dst, H, D, W, rope_base, state):
        """One query per stream: qkv (B, 3 H D) -> dst (B, H D); state: AttnState."""
        inv = rope_base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)   # as layers.rope
        scores = self.tmp(-(-(W + D) // self.B))          # W scores, then D/2 cos and D/2 sin
        self.exp_max = max(self.exp_max, W)
        self.emit(K.ATTN, qkv=qkv, dst=dst, H=H, D=D, W=W, k=self.at(state.k), v=self.at(state.v),
                  pos=self.at(state.pos), off=self.at(state.offset), start=self.at(state.start),
                  inv=self.const(inv.numpy()), scores=scores)

    def pool(self, src, dst, C, p, state, group) -> int:
        """dst = held[r], buf[r] = src; a completed group is copied to `group` (B, p C) and the
        ops up to `land(...)` run, else they are skipped. Returns the label for `land`."""
        return self.emit(K.POOL, src=src, dst=dst, C=C, p=p, buf=self.at(state.buf), held=self.at(state.held),
                         r=self.at(state.r), jump=-1, grp=group)

    def land(self, label: int):
        self.ops[label][K.column(K.POOL, "jump")] = len(self.ops)

    def lpc(self, lpc, state):
        """The LPC path's step (model/lpc.py) on the input tokens; state: LPCState. Returns the
        offsets of its codes (B, 1), features (B, 2) and log-prior (B, V) in M."""
        from wavelm.model import lpc as L

        c = self.const(L.constants(lpc.window))
        self.exp_max = max(self.exp_max, L.V)
        out = self.tmp(3 + 2 * L.V)                  # codes, features, log-prior, z scratch
        self.emit(K.LPC, out=out, ring=self.at(state.ring), head=self.at(state.head), coef=self.at(state.coef),
                  scale=self.at(state.scale), mass=self.at(state.mass), r=self.at(state.r), N=lpc.window,
                  P=lpc.order, H=lpc.hop, c=c)
        return out, out + self.B, out + 3 * self.B

    def add_prior(self, logits, prior, g, V):
        """logits += softplus(g) * prior, per stream; g (B, 1)."""
        self.emit(K.PRIOR, logits=logits, prior=prior, g=g, V=V)

    def store(self, leaf: torch.Tensor, src, n):
        """State leaf (B, n) = M[src] (B, n)."""
        self.emit(K.STORE, dst=self.at(leaf), src=src, n=n)


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
