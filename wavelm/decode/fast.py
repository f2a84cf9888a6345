"""Fast CPU decode step: the whole model lowered into one numba-compiled program.

Eager PyTorch pays ~20 us per op, so a per-sample step of ~150 ops cannot pass ~300 samples/s
on CPU. Here `lower.compile_model` exports the weights once (fused per-op layouts) and
`kernels.decode` runs many samples, sampling included, in one native call; pooled inner stages
run once every p samples. The streaming state is the torch `State` itself (numpy views of its
flat tensors), so nothing is translated and either side can continue the other's stream.

    dec = FastDecoder(model, state, tok, sampler, noise)    # after a prefill through model.forward
    tokens = dec.run(4000)                                  # (B, 4000) int64

Every op is checked against the model's own forward (tests/test_generate.py). numba is
imported lazily: without it, `available()` says why and generation uses the torch reference.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def available() -> str | None:
    """None if the fast step can run here, else the reason it cannot."""
    cache_dir()
    try:
        import numba  # noqa: F401
    except ImportError as e:
        return f"numba is not installed ({e})"
    return None


def cache_dir(package: Path = Path(__file__).parent) -> str | None:
    """Where numba caches the compiled step. Beside the package when it is writable (numba's own
    choice); else (a read-only install) NUMBA_CACHE_DIR is set, before numba is imported, to
    ~/.cache/wavelm/numba or a temp folder, with one logged line, so the step is compiled once
    and never silently replaced by the slow reference. None: numba's default."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    pyc = package / "__pycache__"
    if os.access(pyc if pyc.exists() else package, os.W_OK):
        return None
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wavelm" / "numba"
    try:
        home.mkdir(parents=True, exist_ok=True)
        usable = os.access(home, os.W_OK)
    except OSError:
        usable = False
    where = str(home) if usable else tempfile.mkdtemp(prefix="wavelm-numba-")
    os.environ["NUMBA_CACHE_DIR"] = where
    if "numba" in sys.modules:                     # imported already: its config read the environment
        sys.modules["numba"].config.CACHE_DIR = where
    log.info("%s is read-only: the compiled decode step is cached in %s%s", package, where,
             "" if usable else " (for this run only: compiled again next time, ~1 min)")
    return where


def _cached(kernels) -> bool:
    """Whether numba's on-disk cache of the decode step seems to exist (beside the module)."""
    where = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(kernels.__file__).parent / "__pycache__")
    return any(where.rglob("kernels.decode-*.nbi"))


class FastDecoder:
    """Sample-by-sample decoding with the numba program; same interface as the reference
    decode.reference.TorchDecoder: `run(n)` -> (B, n) int64 tokens, `last_logits` (B, V)."""

    name = "numba"

    def __init__(self, model, state, tok: torch.Tensor, sampler, noise):
        from . import kernels  # numba: only where the fast step is used
        from .lower import compile_model

        if not kernels.decode.signatures and not _cached(kernels):
            log.info("compiling the numba decode step (first run only, ~20-60 s; cached afterwards)")
        self.kernels = kernels
        self.program = compile_model(model, state.batch_size)
        self.state = state
        self.program.arrays(state)                           # checks the state fits the program
        self.tok = tok.detach().cpu().numpy().astype(np.int64).copy()
        self.sampler, self.noise = sampler, noise

    def run(self, n: int) -> np.ndarray:
        u = np.ascontiguousarray(self.noise.take(n).cpu().numpy(), dtype=np.float64)
        return self.program.run(self.state, self.tok, u, self.sampler)

    @property
    def last_logits(self) -> torch.Tensor:
        """Logits (B, V) of the last step (before temperature and masks)."""
        return torch.from_numpy(self.program.logits_view().copy())

    def state_nbytes(self) -> int:
        return self.state.nbytes()


@torch.compiler.disable          # numpy and numba inside: a graph break, not a trace (train --compile)
def lpc_kernel(lpc, tokens: torch.Tensor, state, dtype):
    """The LPC path of WaveLM.forward on CPU through the numba step (lpc_ops.lpc_run), the same
    numbers as the torch module (tests/test_lpc.py): (codes (B, T) int64, features (B, T, 2),
    log-prior (B, T, 256)) in `dtype`; `state` (an LPCState) is advanced in place."""
    from wavelm.model import lpc as L

    from . import lpc_ops, simd

    npdt = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    B, T = tokens.shape
    N, P, H = lpc.window, lpc.order, lpc.hop
    if state is None:
        R, A, S = np.zeros((B, N), npdt), np.zeros((B, P), npdt), np.zeros(B, npdt)
        W, hr = np.zeros((B, L.V), npdt), np.zeros(2, np.int64)
    else:
        if state.ring.dtype != dtype:
            raise ValueError(f"LPC state is {state.ring.dtype}, the model {dtype}")
        R, A, S, W = (t.detach().numpy() for t in (state.ring, state.coef, state.scale.view(B), state.mass))
        hr = np.array([int(state.head), int(state.r)], np.int64)
    codes, feats, prior = np.empty((B, T), npdt), np.empty((B, T, 2), npdt), np.empty((B, T, L.V), npdt)
    lpc_ops.lpc_run(np.ascontiguousarray(tokens.numpy(), np.int64), R, A, S, W, hr, _lpc_constants(N), 0, N, P, H,
                    codes, feats, prior, simd.exp_workspace(npdt, L.V))
    if state is not None:
        state.head.fill_(int(hr[0]))
        state.r.fill_(int(hr[1]))
    return torch.from_numpy(codes).long(), torch.from_numpy(feats), torch.from_numpy(prior)


_CONSTS: dict[int, np.ndarray] = {}


def _lpc_constants(window: int) -> np.ndarray:
    if window not in _CONSTS:
        from wavelm.model import lpc as L

        _CONSTS[window] = L.constants(window)
    return _CONSTS[window]


def use_lpc_kernel(model) -> bool:
    """Compute a CPU model's LPC path with the numba step in its forward (training, scoring):
    much faster than the torch ops (tests pin the two equal). True if the model has the path
    and numba is here."""
    lpc = getattr(model, "lpc", None)
    if lpc is None or available() is not None:
        return False
    lpc.kernel = lpc_kernel
    return True

