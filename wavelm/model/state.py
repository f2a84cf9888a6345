"""Streaming state: what each time-mixing module remembers between chunks, in one fixed-shape
layout that is written in place and shared by the torch forward, the numba decoder (its arrays
are views of these tensors, see wavelm/decode/fast.py) and CUDA graphs (docs/design.md).

Every leaf is a view into one of three flat tensors of a `State`:

    floats  model device and dtype   conv rings, KV rings, pool group buffers (batch first)
    ints    model device, int64      KV slot positions, next position, per-stream start
    clock   CPU, int64               conv ring heads and pool counters: the same for every
                                     stream, and they decide control flow, so the host reads
                                     them without a device sync (on CPU: the tail of `ints`)

A zero state means "nothing seen yet": rings hold zeros (exactly where training pads with
zeros) and KV slots hold position -1 (empty). Leaves never change shape or storage, so a
torch forward can continue what the fast decoder started, and back. What is written into the
state is detached: gradients stop at chunk boundaries (truncated BPTT), as with any cache.

# B batch, C channels, H heads, D head dim, W window, L ring length, p pooling factor
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch


@dataclass
class ConvState:
    ring: torch.Tensor               # (B, L, C) the last L = (K-1)*dilation inputs, oldest at `head`
    head: torch.Tensor               # (1,) clock: slot of the oldest input


@dataclass
class AttnState:
    k: torch.Tensor                  # (B, H, W, D) ring of rotated keys, slot = position % W
    v: torch.Tensor                  # (B, H, W, D)
    pos: torch.Tensor                # (W,) int64 position held in each slot, -1 = empty
    offset: torch.Tensor             # (1,) int64 position of the next input (the shared clock)
    start: torch.Tensor              # (B,) int64 first position each stream may see (reset)
    qkv_conv: ConvState | None = None  # CAT: depthwise conv state on Q, K, V


@dataclass
class PoolState:
    buf: torch.Tensor                # (B, p, C) inputs of the current group, the first r valid
    held: torch.Tensor               # (B, p, C) up-pooled outputs for the current group
    r: torch.Tensor                  # (1,) clock: inputs of the current group seen so far
    inner: "StackState"


@dataclass
class LPCState:
    ring: torch.Tensor               # (B, N) the last N input values (mu-law decoded), oldest at `head`
    head: torch.Tensor               # (1,) clock: slot of the oldest value
    coef: torch.Tensor               # (B, P) predictor of the current block
    scale: torch.Tensor              # (B, 1) logistic scale of the current block
    mass: torch.Tensor               # (B, 256) lpc.code_mass(scale): the decoder's per-block cache
    r: torch.Tensor                  # (1,) clock: steps into the current block (0: the next one starts it)


@dataclass
class StackState:
    blocks: list = field(default_factory=list)   # one dict {name: state} per block
    pool: PoolState | None = None


class Alloc:
    """Hands out the leaves of a state tree (`module.init_state(alloc)`), then `finish` places
    them, in the order asked, as views into the flat tensors of a `State`."""

    def __init__(self, batch_size: int, device, dtype):
        self.B, self.device, self.dtype = batch_size, torch.device(device), dtype
        self.size = {"floats": 0, "ints": 0, "clock": 0}
        self.where: dict[int, tuple] = {}

    def _leaf(self, kind, shape, fill):
        t = torch.empty(shape, device="meta")
        self.where[id(t)] = (kind, self.size[kind], tuple(shape), fill)
        self.size[kind] += math.prod(shape)
        return t

    def floats(self, *shape):
        return self._leaf("floats", shape, 0)

    def ints(self, *shape, fill: int = 0):
        return self._leaf("ints", shape, fill)

    def clock(self, *shape):
        return self._leaf("clock", shape, 0)

    def finish(self, stack, lpc: "LPCState | None" = None) -> "State":
        n_int = self.size["ints"]
        floats = torch.zeros(self.size["floats"], device=self.device, dtype=self.dtype)
        on_cpu = self.device.type == "cpu"
        ints = torch.zeros(n_int + (self.size["clock"] if on_cpu else 0), device=self.device, dtype=torch.int64)
        clock = ints[n_int:] if on_cpu else torch.zeros(self.size["clock"], dtype=torch.int64)
        flat = {"floats": floats, "ints": ints, "clock": clock}

        def place(t):
            kind, off, shape, fill = self.where[id(t)]
            view = flat[kind][off:off + math.prod(shape)].view(shape)
            if fill:
                view.fill_(fill)
            return view

        return State(_map(stack, place), self.B, floats, ints, clock, _map(lpc, place))


@dataclass
class State:
    """Streaming state of a whole WaveLM. `clone()` gives an independent copy, `reset(streams)`
    makes some streams start again while the others go on."""
    stack: StackState
    batch_size: int
    floats: torch.Tensor
    ints: torch.Tensor
    clock: torch.Tensor
    lpc: LPCState | None = None      # the LPC path's state (config.lpc_order > 0)

    def clone(self) -> "State":
        """An independent copy with the same layout."""
        floats, ints = self.floats.detach().clone(), self.ints.detach().clone()
        shared = self._clock_in_ints()
        clock = ints[self.clock.storage_offset() - self.ints.storage_offset():] if shared else self.clock.clone()
        pairs = ((self.floats, floats), (self.ints, ints), (self.clock, clock))

        def move(t):
            if t.numel() == 0:
                return torch.empty(t.shape, dtype=t.dtype, device=t.device)
            for old, new in pairs:
                if t.untyped_storage().data_ptr() == old.untyped_storage().data_ptr():
                    off = t.storage_offset() - old.storage_offset()
                    return new[off:off + t.numel()].view(t.shape)
            raise AssertionError("state leaf outside the state's tensors")

        return State(_map(self.stack, move), self.batch_size, floats, ints, clock, _map(self.lpc, move))

    def nbytes(self) -> int:
        """Bytes held: constant in the number of samples generated (the shapes never change)."""
        return sum(t.numel() * t.element_size() for t in (self.floats, self.ints)) + (
            0 if self._clock_in_ints() else self.clock.numel() * 8)

    def _clock_in_ints(self) -> bool:
        return self.clock.untyped_storage().data_ptr() == self.ints.untyped_storage().data_ptr()

    def reset(self, streams) -> None:
        """Make `streams` (indices or a boolean mask over the batch) start again from nothing seen,
        as if fresh, while the other streams go on. Pooled models: only at a group boundary of
        every pool (every `config.hop[-1]` samples), where a fresh stream's groups line up."""
        idx = torch.as_tensor(streams)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.flatten().long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.batch_size):
            raise ValueError(f"streams must be in 0..{self.batch_size - 1}, got {idx.tolist()}")
        nodes = list(_nodes((self.stack, self.lpc)))
        into = [int(n.r) for n in nodes if isinstance(n, PoolState) and int(n.r)]
        if into:
            raise ValueError(f"a stream can be reset only at a pool group boundary; this state is {into[0]} "
                             "samples into a group (reset every config.hop[-1] samples)")
        if self.lpc is not None and int(self.lpc.r):
            raise ValueError(f"a stream can be reset only at an LPC block boundary; this state is {int(self.lpc.r)} "
                             "samples into a block (reset every config.lpc_hop samples)")
        idx = idx.to(self.floats.device)
        for n in nodes:
            if isinstance(n, ConvState):
                n.ring[idx] = 0
            elif isinstance(n, AttnState):
                n.k[idx] = 0
                n.v[idx] = 0
                n.start[idx] = n.offset
            elif isinstance(n, PoolState):
                n.held[idx] = 0
            elif isinstance(n, LPCState):
                n.ring[idx] = 0
                n.coef[idx] = 0
                n.scale[idx] = 0
                n.mass[idx] = 0


def broadcast_into(src: "State", dst: "State") -> None:
    """Copy a one-stream state into every stream of `dst` (a fresh state of the same model with
    B streams): a prompt shared by all streams is prefilled once, not B times."""
    if src.batch_size != 1:
        raise ValueError(f"broadcast_into takes a one-stream state, got batch {src.batch_size}")
    for s, d in zip(_leaves((src.stack, src.lpc)), _leaves((dst.stack, dst.lpc))):
        d.copy_(s if s.shape == d.shape else s.expand_as(d))     # batch-first leaves: (1, ...) -> (B, ...)


def _leaves(o):
    """Every tensor of a state tree, in its fixed order."""
    if isinstance(o, torch.Tensor):
        yield o
    elif dataclasses.is_dataclass(o):
        for f in dataclasses.fields(o):
            yield from _leaves(getattr(o, f.name))
    elif isinstance(o, (list, tuple)):
        for x in o:
            yield from _leaves(x)
    elif isinstance(o, dict):
        for x in o.values():
            yield from _leaves(x)


def zero_state(module, batch_size: int, device, dtype):
    """A zero state tree for one module (a fresh stream through a module that needs one)."""
    alloc = Alloc(batch_size, device, dtype)
    return alloc.finish(module.init_state(alloc)).stack


def _nodes(o):
    """Every dataclass node of a state tree."""
    if dataclasses.is_dataclass(o):
        yield o
        for f in dataclasses.fields(o):
            yield from _nodes(getattr(o, f.name))
    elif isinstance(o, (list, tuple)):
        for x in o:
            yield from _nodes(x)
    elif isinstance(o, dict):
        for x in o.values():
            yield from _nodes(x)


def _map(o, fn):
    """Rebuild a state tree with fn applied to every tensor."""
    if isinstance(o, torch.Tensor):
        return fn(o)
    if isinstance(o, (list, tuple)):
        return type(o)(_map(x, fn) for x in o)
    if isinstance(o, dict):
        return {k: _map(v, fn) for k, v in o.items()}
    if dataclasses.is_dataclass(o):
        return dataclasses.replace(o, **{f.name: _map(getattr(o, f.name), fn) for f in dataclasses.fields(o)})
    return o
