"""Generate audio sample by sample.

    audio = wavelm.generate(model, seconds=5, batch_size=2, temperature=0.9, seed=0)  # (2, 80000)
    for chunk in wavelm.stream(model, seconds=30, chunk_samples=4000):                # (1, <=4000)
        play(chunk)

From silence the first input is token 128 (mu-law zero). With a `prompt` (a float waveform at
the model's rate, or a path to any audio file, resampled), the prompt runs through the model's
own forward in chunks with a streaming state (the prefill), then generation continues one
sample at a time from that state; the returned audio is the continuation only.

Sampling (wavelm/decode/sampling.py): logits / temperature, optional top-k and top-p, then
the inverse CDF at a seeded uniform, so the audio depends on the seed only, not on chunk sizes
or the decoder. Decoders (wavelm/decode/): on CPU the numba program lowered from the model, on
CUDA the reference step in a CUDA graph, anywhere the reference (`backend="torch"`).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from wavelm.audio import ZERO, load_audio, mulaw_decode, mulaw_encode
from wavelm.decode import Noise, Sampling, make_decoder
from wavelm.model.lm import inference
from wavelm.model.state import broadcast_into

log = logging.getLogger(__name__)

MAX_SECONDS = 600.0        # per call; memory of the state does not grow, the output does
PREFILL_CHUNK = 16384      # prompt samples per forward call
MAX_BATCH = 256            # streams per call
MAX_SEED = 2**63 - 1       # seeds are 0 .. 2**63 - 1 everywhere (API, CLI, demo)


def check_args(seconds=None, batch_size=1, temperature=1.0, top_p=1.0, top_k=None, seed=0,
               max_seconds: float = MAX_SECONDS, max_batch_size: int = MAX_BATCH) -> dict:
    """The one validation of generation arguments, shared by the API, the CLI and the demo:
    ValueError naming the value, or the arguments as plain Python numbers. `seconds=None`
    skips the length (a decoder started without one)."""
    def number(name, v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        return f

    def integer(name, v, lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if not lo <= int(v) <= hi:
            raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {v}")
        return int(v)

    out = {"batch_size": integer("batch_size", batch_size, 1, max_batch_size),
           "seed": integer("seed", seed, 0, MAX_SEED)}
    if seconds is not None:
        sec = number("seconds", seconds)
        if not 0 < sec <= max_seconds:
            raise ValueError(f"seconds must be > 0 and <= {max_seconds:g}, got {seconds!r}")
        out["seconds"] = sec
    k = None if top_k is None else integer("top_k", top_k, 1, 1 << 30)
    sampling = Sampling(number("temperature", temperature), k, number("top_p", top_p))
    out.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    return out


# ----------------------------------------------------------------------------- prompt

def prompt_tokens(prompt, batch_size: int, sample_rate: int) -> torch.Tensor | None:
    """A prompt (path, or float waveform (N,) or (B, N) at `sample_rate`) -> tokens (B, N), or
    (1, N) when every stream shares it (prefill then runs it once, whatever the batch)."""
    if prompt is None:
        return None
    if isinstance(prompt, (str, Path)):
        x = load_audio(prompt, sample_rate)                    # AudioError (a ValueError) if unreadable
        where = str(prompt)
    else:
        x = prompt.detach().cpu().numpy() if isinstance(prompt, torch.Tensor) else np.asarray(prompt)
        where = "prompt"
        if x.dtype.kind not in "fiu":
            raise ValueError(f"prompt must be a float waveform, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] not in (1, batch_size):
        raise ValueError(f"prompt must be (N,) or ({batch_size}, N), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{where}: holds no samples")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: holds NaN or inf samples")
    return torch.from_numpy(mulaw_encode(np.ascontiguousarray(x, dtype=np.float32)))


@torch.inference_mode()
def prefill(model, tokens: torch.Tensor | None, batch_size: int, chunk: int = PREFILL_CHUNK):
    """A streaming state that has seen [128, tokens[:, :-1]], and the pending input tokens[:, -1]
    (the next sample is predicted from it). No prompt: a zero state and token 128."""
    device = next(model.parameters()).device
    state = model.init_state(batch_size)
    if tokens is None:
        return state, torch.full((batch_size,), ZERO, dtype=torch.int64, device=device), 0
    tokens = tokens.to(device)
    shared = tokens.shape[0] == 1 and batch_size > 1     # one prompt for every stream: feed it once
    inputs = torch.cat([torch.full((tokens.shape[0], 1), ZERO, dtype=torch.int64, device=device),
                        tokens[:, :-1]], dim=1)
    fed = state if not shared else model.init_state(1)
    for t in range(0, inputs.shape[1], chunk):
        model(inputs[:, t:t + chunk], state=fed)
    if shared:
        broadcast_into(fed, state)
    return state, tokens[:, -1].expand(batch_size).clone(), inputs.shape[1]


# ----------------------------------------------------------------------------- public API

def num_samples(seconds, sample_rate: int) -> int:
    """Samples to generate for `seconds`; ValueError unless 0 < seconds <= MAX_SECONDS."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a number, got {seconds!r}") from None
    if not (math.isfinite(s) and 0 < s <= MAX_SECONDS):
        raise ValueError(f"seconds must be > 0 and <= {MAX_SECONDS:g}, got {seconds!r}")
    n = round(s * sample_rate)
    if n < 1:
        raise ValueError(f"seconds={seconds!r} is less than one sample at {sample_rate} Hz")
    return n


def start(model, batch_size: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
          seed: int = 0, prompt=None, backend: str = "auto", threads: int | None = None):
    """Validate, prefill the prompt and build the decoder: `dec.run(n)` -> tokens (B, n)."""
    a = check_args(None, batch_size, temperature, top_p, top_k, seed)
    batch_size, seed = a["batch_size"], a["seed"]
    sampling = Sampling(a["temperature"], a["top_k"], a["top_p"])
    sr = int(model.config.sample_rate)
    tokens = prompt_tokens(prompt, int(batch_size), sr)
    with inference(model, threads):
        state, tok, fed = prefill(model, tokens, int(batch_size))
        noise = Noise(int(seed), int(batch_size), tok.device)
        dec = make_decoder(model, state, tok, sampling, noise, backend, position=fed)
    dec.threads = threads
    log.debug("decoder %s, prompt of %d samples", dec.name, fed)
    return dec


def stream(model, seconds: float = 5.0, chunk_samples: int | None = None, batch_size: int = 1,
           temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None, seed: int = 0,
           prompt=None, progress: bool = False, backend: str = "auto",
           threads: int | None = None) -> Iterator[np.ndarray]:
    """Yield float32 audio chunks (B, n) as they are generated: `chunk_samples` each (default a
    quarter second), the last one shorter; their concatenation equals `generate(...)` with the
    same arguments. Arguments are checked here, before the first chunk (ValueError).
    `backend`: "auto" (fastest available), "fast" (numba, CPU), "torch" (the reference step),
    "cuda-graph". `threads`: torch threads while generating (None: leave as is)."""
    sr = int(model.config.sample_rate)
    total = num_samples(seconds, sr)
    chunk = sr // 4 if chunk_samples is None else chunk_samples
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ValueError(f"chunk_samples must be an integer >= 1, got {chunk_samples!r}")
    dec = start(model, batch_size, temperature, top_p, top_k, seed, prompt, backend, threads)
    return _chunks(model, dec, total, int(chunk), sr, progress)


def _chunks(model, dec, total, chunk, sr, progress) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    t0, done = time.perf_counter(), 0
    with tqdm(total=total, unit="sample", unit_scale=True, disable=not progress, leave=False,
              desc=f"generating x{dec.tok.shape[0]} ({dec.name})") as bar:
        while done < total:
            n = min(chunk, total - done)
            with inference(model, dec.threads):
                tokens = dec.run(n)
            done += n
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(n)
            bar.set_postfix_str(f"{rate / sr:.2f}x real time", refresh=False)
            yield mulaw_decode(tokens).astype(np.float32, copy=False)


def generate(model, seconds: float = 5.0, batch_size: int = 1, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int | None = None, seed: int = 0, prompt=None, progress: bool = False,
             backend: str = "auto", threads: int | None = None, chunk_samples: int | None = None) -> np.ndarray:
    """Generate `seconds` of audio for `batch_size` independent streams: float32 (B, N) at the
    model's rate, N = round(seconds * rate), 0 < seconds <= MAX_SECONDS (600). Deterministic
    for a seed (on a given device). See `stream` for the other arguments."""
    chunks = list(stream(model, seconds, chunk_samples, batch_size, temperature, top_p, top_k,
                         seed, prompt, progress, backend, threads))
    return np.concatenate(chunks, axis=1)

