"""Decoders: sample-by-sample generation from a streaming state, behind one interface
(`run(n)` -> tokens (B, n), `tok`, `last_logits`, `state_nbytes()`), all pinned equal by
tests/test_generate.py:

    fast.FastDecoder        CPU: the numba program lowered from the model (lower.py, kernels.py)
    cuda.GraphDecoder       CUDA: the reference step captured in a CUDA graph
    reference.TorchDecoder  anywhere: the model's forward with state, one sample per call

`make_decoder` picks the fastest that runs the model; a model the fast step cannot lower
falls back to the reference with one logged line. The public API is wavelm.generation.
"""
from __future__ import annotations

import logging

from .reference import TorchDecoder
from .sampling import Noise, Sampler, Sampling  # noqa: F401 - the package's API

log = logging.getLogger(__name__)

BACKENDS = ("auto", "fast", "torch", "cuda-graph")


def make_decoder(model, state, tok, sampler: Sampler, noise: Noise, backend: str = "auto", position: int = 0):
    """The fastest decoder that supports `model` on its device (see the module docstring).
    `position`: samples already fed (the prefill), for the CUDA graph's alignment."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = next(model.parameters()).device
    if backend == "torch":
        return TorchDecoder(model, state, tok, sampler, noise)
    if backend == "cuda-graph" or (backend == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise ValueError("backend 'cuda-graph' needs a model on a CUDA device")
        from .cuda import GraphDecoder  # torch.cuda only where a GPU is used

        return GraphDecoder(model, state, tok, sampler, noise, position=position)
    from . import fast

    why = fast.available() if device.type == "cpu" else f"the model is on {device}"
    if why is None:
        try:
            return fast.FastDecoder(model, state, tok, sampler, noise)
        except Exception as e:  # noqa: BLE001 - any lowering failure: the reference step runs it
            why = f"{type(e).__name__}: {e}"
    if backend == "fast":
        raise ValueError(f"the fast decoder cannot run this model: {why}")
    log.warning("fast decode step unavailable (%s): using the torch reference step (10-100x slower)", why)
    return TorchDecoder(model, state, tok, sampler, noise)
