"""Streaming state: what each time-mixing module remembers between chunks.

A zero state means "nothing seen yet": conv buffers hold zeros (exactly where training pads
with zeros), KV slots hold position -1 (empty). Modules advance their state in place
(attributes are replaced or written), so one `State` object follows a stream from chunk to chunk.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class ConvState:
    buf: torch.Tensor                # (B, C, L) the last L = (K-1)*dilation inputs


@dataclass
class AttnState:
    k: torch.Tensor                  # (B, H, W, D) ring buffer of rotated keys
    v: torch.Tensor                  # (B, H, W, D)
    pos: torch.Tensor                # (W,) int64 absolute position held in each slot, -1 = empty
    offset: torch.Tensor             # () int64 absolute position of the next input
    qkv_conv: ConvState | None = None  # CAT: depthwise conv state on Q, K, V


@dataclass
class PoolState:
    buf: torch.Tensor                # (B, r, C) inputs of the current, incomplete group (r < p)
    held: torch.Tensor               # (B, p, C) up-pooled outputs for the current group
    inner: "StackState"


@dataclass
class StackState:
    blocks: list = field(default_factory=list)   # one dict {name: state} per block
    pool: PoolState | None = None


@dataclass
class State:
    """Streaming state of a whole WaveLM; `clone()` gives an independent copy."""
    stack: StackState
    batch_size: int

    def clone(self) -> "State":
        """An independent copy (tensors detached and copied)."""
        return _map(self, lambda t: t.detach().clone())

    def detach_(self) -> "State":
        """Cut the autograd history held in the state (for truncated BPTT-style training)."""
        new = _map(self.stack, lambda t: t.detach())
        self.stack = new
        return self

    def nbytes(self) -> int:
        """Bytes held in tensors: constant in the number of samples generated."""
        seen, total = set(), 0

        def walk(o):
            nonlocal total
            if isinstance(o, torch.Tensor):
                if id(o) not in seen:
                    seen.add(id(o))
                    total += o.numel() * o.element_size()
            elif isinstance(o, (list, tuple)):
                for x in o:
                    walk(x)
            elif isinstance(o, dict):
                for x in o.values():
                    walk(x)
            elif hasattr(o, "__dataclass_fields__"):
                for name in o.__dataclass_fields__:
                    walk(getattr(o, name))

        walk(self.stack)
        return total


def _map(o, fn):
    """Rebuild a state tree with fn applied to every tensor."""
    if isinstance(o, torch.Tensor):
        return fn(o)
    if isinstance(o, list):
        return [_map(x, fn) for x in o]
    if isinstance(o, dict):
        return {k: _map(v, fn) for k, v in o.items()}
    if dataclasses.is_dataclass(o):
        return dataclasses.replace(o, **{f.name: _map(getattr(o, f.name), fn) for f in dataclasses.fields(o)})
    return o
