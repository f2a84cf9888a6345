"""Generate audio sample by sample.

    audio = wavelm.generate(model, seconds=5, batch_size=2, temperature=0.9, seed=0)  # (2, 80000)
    for chunk in wavelm.stream(model, seconds=30, chunk_samples=4000):                # (1, <=4000)
        play(chunk)

From silence the first input is token 128 (mu-law zero). With a `prompt` (a float waveform at
the model's rate, or a path to any audio file, resampled), the prompt runs through the model's
own forward in chunks with a streaming state (the prefill), then generation continues one
sample at a time from that state; the returned audio is the continuation only.

Sampling (wavelm/decode/sampling.py): one `Sampling` object (or its fields as keyword
arguments: temperature, top_k, top_p, min_p, floor, tonal_temperature, best_of, ...) reaches the
decoder unchanged; the audio depends on the seed only, not on chunk sizes or the decoder.
Without one, the model's own (`model_sampling`: what its checkpoint ships with, else the
defaults), the keyword options applied on top.
Decoders (wavelm/decode/): on CPU the numba program lowered from the model, on CUDA the
reference step in a CUDA graph, anywhere the reference (`backend="torch"`).
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
from wavelm.decode import Noise, Sampler, Sampling, make_decoder
from wavelm.model.lm import inference
from wavelm.model.state import broadcast_into

log = logging.getLogger(__name__)

MAX_SECONDS = 600.0        # per call; memory of the state does not grow, the output does
PREFILL_CHUNK = 16384      # prompt samples per forward call
MAX_BATCH = 256            # streams per call
MAX_SEED = 2**63 - 1       # seeds are 0 .. 2**63 - 1 everywhere (API, CLI, demo)
MAX_PROMPT_SECONDS = 600.0  # prompts: fed in chunks (memory O(chunk)) but held as tokens


def check_args(seconds=None, batch_size=1, seed=0, sampling: Sampling | None = None,
               max_seconds: float = MAX_SECONDS, max_batch_size: int = MAX_BATCH, **options) -> tuple[dict, Sampling]:
    """The one validation of generation arguments, shared by the API, the CLI and the demo:
    ValueError whose message starts with the argument's name, or ({seconds, batch_size, seed}
    as plain numbers, the Sampling with `options` applied). `seconds=None` skips the length."""
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
        try:
            sec = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"seconds must be a number, got {seconds!r}") from None
        if not math.isfinite(sec):
            raise ValueError(f"seconds must be a finite number, got {seconds!r}")
        if not 0 < sec <= max_seconds:
            raise ValueError(f"seconds must be > 0 and <= {max_seconds:g}, got {seconds!r}")
        out["seconds"] = sec
    s = Sampling.make(sampling, **options)
    if out["batch_size"] * s.best_of > max_batch_size:
        raise ValueError(f"best_of x batch_size must be <= {max_batch_size} (streams decoded together), "
                         f"got {s.best_of} x {out['batch_size']}")
    return out, s


def model_sampling(model) -> Sampling:
    """The sampling a model generates with when none is given: the one its checkpoint ships
    with (config.json "sampling", measured on that model; the bundled model's card), else the
    Sampling defaults. Options given to generate / stream / start apply on top of it."""
    return getattr(model, "sampling", None) or Sampling()


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
    if x.shape[1] > MAX_PROMPT_SECONDS * sample_rate:
        raise ValueError(f"{where}: a prompt of {x.shape[1] / sample_rate:.0f} s is longer than "
                         f"{MAX_PROMPT_SECONDS:g} s; use its end (--prompt-seconds)")
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


# ----------------------------------------------------------------------------- memory

def memory_needed(model, streams: int, prompt_rows: int, prompt_samples: int, samples: int,
                  held_per_sample: int) -> int:
    """An upper estimate of the bytes a generation call adds: a streaming state per stream
    (plus one for a shared prompt), the prompt's tokens and one prefill chunk's activations
    (~12 float32 per channel per layer, as measured), and `held_per_sample` bytes per sample
    per stream kept until the end (generate: 13 = token + int64 + float32; streaming: 0)."""
    cfg = model.config
    state = model.init_state(1).nbytes()
    chunk = min(PREFILL_CHUNK, prompt_samples)
    width = sum(d * n / h for d, n, h in zip(cfg.stage_dims, cfg.stage_layers, cfg.hop))
    prefill = int(prompt_rows * chunk * (width * 48 + 256 * 8)) if prompt_samples else 0
    return ((streams + (prompt_rows if prompt_rows < streams else 0)) * state
            + prompt_rows * prompt_samples * 24 + prefill + streams * samples * held_per_sample)


def check_memory(model, streams: int, prompt, samples: int, held_per_sample: int) -> None:
    """ValueError with the numbers when the estimate (memory_needed) exceeds the memory
    available (wavelm.hardware.available_memory), before any work."""
    from wavelm.hardware import available_memory, gib

    avail = available_memory()
    rows, n = (0, 0) if prompt is None else tuple(prompt.shape)
    need = memory_needed(model, streams, rows, n, samples, held_per_sample)
    if avail is not None and need > avail:
        held = f", {held_per_sample} bytes per sample and stream held to the end" if held_per_sample else ""
        raise ValueError(f"batch_size x best_of = {streams} streams of {samples / model.config.sample_rate:g} s "
                         f"need about {gib(need)} ({gib(model.init_state(1).nbytes())} of state per stream{held}); "
                         f"{gib(avail)} is available: use fewer streams or seconds")


# ----------------------------------------------------------------------------- public API

def num_samples(seconds, sample_rate: int) -> int:
    """Samples to generate for `seconds`; ValueError unless 0 < seconds <= MAX_SECONDS."""
    s = check_args(seconds)[0]["seconds"]
    n = round(s * sample_rate)
    if n < 1:
        raise ValueError(f"seconds={seconds!r} is less than one sample at {sample_rate} Hz")
    return n


def start(model, batch_size: int = 1, seed: int = 0, prompt=None, sampling: Sampling | None = None,
          backend: str = "auto", threads: int | None = None, samples: int = 0, held_per_sample: int = 0,
          **options):
    """Validate, prefill the prompt and build the decoder: `dec.run(n)` -> tokens (B x best_of, n),
    the candidates of output stream b in rows b * best_of ... (b + 1) * best_of - 1.
    `options`: Sampling fields (temperature=0.9, top_p=0.95, ...) applied to `sampling`."""
    a, s = check_args(None, batch_size, seed, model_sampling(model) if sampling is None else sampling, **options)
    batch_size, seed = a["batch_size"], a["seed"]
    n = batch_size * s.best_of
    sr = int(model.config.sample_rate)
    tokens = prompt_tokens(prompt, batch_size, sr)
    if tokens is not None and tokens.shape[0] > 1:
        tokens = tokens.repeat_interleave(s.best_of, 0)
    check_memory(model, n, tokens, samples, held_per_sample)      # `samples`: how many will be asked for
    with inference(model, threads):
        state, tok, fed = prefill(model, tokens, n)
        sampler = Sampler(s, 1 if tokens is not None and tokens.shape[0] == 1 else n, sr, tok.device)
        if tokens is not None:
            sampler.prime(tokens)
        if sampler.B != n:
            sampler = sampler.expand(n)
        dec = make_decoder(model, state, tok, sampler, Noise(seed, n, tok.device), backend, position=fed)
    dec.threads = threads
    log.debug("decoder %s, prompt of %d samples", dec.name, fed)
    return dec


def stream(model, seconds: float = 5.0, chunk_samples: int | None = None, batch_size: int = 1, seed: int = 0,
           prompt=None, sampling: Sampling | None = None, progress: bool = False, backend: str = "auto",
           threads: int | None = None, **options) -> Iterator[np.ndarray]:
    """Yield float32 audio chunks (B, n) as they are generated: `chunk_samples` each (default a
    quarter second), the last one shorter; their concatenation equals `generate(...)` with the
    same arguments. Arguments are checked here, before the first chunk (ValueError).
    `sampling` / `options`: wavelm.decode.Sampling and its fields (temperature, top_p, ...);
    best_of > 1 needs `generate` (a candidate is chosen at the end).
    `backend`: "auto" (fastest available), "fast" (numba, CPU), "torch" (the reference step),
    "cuda-graph". `threads`: torch threads while generating (None: leave as is)."""
    sr = int(model.config.sample_rate)
    total, chunk = num_samples(seconds, sr), _chunk(chunk_samples, sr)
    _, s = check_args(None, batch_size, seed, model_sampling(model) if sampling is None else sampling, **options)
    if s.best_of > 1:
        raise ValueError("best_of > 1 chooses a candidate at the end: use generate(), not stream()")
    dec = start(model, batch_size, seed, prompt, s, backend, threads, samples=total)
    return (mulaw_decode(t).astype(np.float32, copy=False) for t in _chunks(model, dec, total, chunk, sr, progress))


def _chunk(chunk_samples, sr: int) -> int:
    """Samples per yielded chunk: a quarter second by default."""
    chunk = sr // 4 if chunk_samples is None else chunk_samples
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ValueError(f"chunk_samples must be an integer >= 1, got {chunk_samples!r}")
    return int(chunk)


def _chunks(model, dec, total, chunk, sr, progress) -> Iterator[np.ndarray]:
    """Token chunks (B, n) from a decoder, with a progress bar."""
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
            yield tokens


def generate(model, seconds: float = 5.0, batch_size: int = 1, seed: int = 0, prompt=None,
             sampling: Sampling | None = None, progress: bool = False, backend: str = "auto",
             threads: int | None = None, chunk_samples: int | None = None, **options) -> np.ndarray:
    """Generate `seconds` of audio for `batch_size` independent streams: float32 (B, N) at the
    model's rate, N = round(seconds * rate), 0 < seconds <= MAX_SECONDS (600). Deterministic
    for a seed (on a given device). With best_of > 1, each stream is the candidate at quantile
    best_rank of its best_of candidates ranked by the model's bits/sample on them (`choose`).
    See `stream` for the other arguments."""
    sr = int(model.config.sample_rate)
    total, chunk = num_samples(seconds, sr), _chunk(chunk_samples, sr)
    dec = start(model, batch_size, seed, prompt, sampling, backend, threads, samples=total, held_per_sample=13,
                **options)
    tokens = np.concatenate([t.astype(np.uint8) for t in _chunks(model, dec, total, chunk, sr, progress)], 1)
    keep = choose(dec.sampler, total)
    return mulaw_decode(tokens[keep].astype(np.int64)).astype(np.float32, copy=False)


def choose(sampler, steps: int) -> np.ndarray:
    """Rows kept, one per output stream: of each stream's best_of candidates, the one at
    quantile best_rank of the ranking by bits/sample (0: the fewest)."""
    s = sampler.s
    n = s.best_of
    if n == 1:
        return np.arange(sampler.B)
    bits = sampler.nll.cpu().numpy().reshape(-1, n) / steps / math.log(2)
    rank = round(s.best_rank * (n - 1))
    pick = np.argsort(bits, axis=1, kind="stable")[:, rank]
    log.info("best of %d: kept bits/sample %s (candidates %s)", n, np.round(bits[np.arange(len(bits)), pick], 3),
             np.round(np.sort(bits, 1), 3).tolist())
    return np.arange(len(bits)) * n + pick
