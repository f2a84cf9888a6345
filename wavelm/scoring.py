"""Score audio: negative log-likelihood per sample, in bits, under a WaveLM.

    res = wavelm.score(model, "piano.wav")          # or a float waveform at the model's rate
    res.bits_per_sample, res.total_bits, res.nll_bits   # nll_bits: float32 (N,)

Convention (docs/design.md): tokens = mulaw_encode(audio); the first input is token 128 (mu-law
zero) and input t is sample t-1; the NLL of sample t is CE(logits_t, token_t) / ln 2 bits.

Long inputs are scored in chunks of `chunk_seconds` with the streaming state carried from chunk
to chunk, so the result equals one forward pass over the whole file while memory stays bounded
(files are decoded block by block with `iter_audio`). The per-sample curve costs 4 bytes a
sample (230 MB for an hour); `keep_per_sample=False` keeps only the totals.

`score_split` gives the SaShiMi metric of a YouTubeMix split (or a token cache split): every
chunk scored on its own from a zero state, bits pooled over all positions of all chunks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from wavelm.audio import LN2, ZERO, AudioError, audio_info, iter_audio, mulaw_encode
from wavelm.data.cache import TokenCache
from wavelm.data.youtubemix import CHUNK, YouTubeMix
from wavelm.decode.fast import use_lpc_kernel
from wavelm.model.lm import inference

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SECONDS = 2.0     # 32k samples at 16 kHz; ~40 MB of activations for "small"


@dataclass
class ScoreResult:
    path: str | None                 # the scored file, None for an array
    bits_per_sample: float           # total_bits / num_samples
    nll_bits: np.ndarray | None      # float32 (num_samples,) NLL of each sample, in bits
    num_samples: int
    duration_seconds: float
    total_bits: float
    sample_rate: int = 16000
    num_chunks: int | None = None    # score_split: independent chunks scored in this file

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-sample array)."""
        d = {"path": self.path, "bits_per_sample": self.bits_per_sample,
             "num_samples": self.num_samples, "duration_seconds": self.duration_seconds,
             "total_bits": self.total_bits}
        if self.num_chunks is not None:
            d["num_chunks"] = self.num_chunks
        return d


@dataclass
class SplitScore:
    """Bits per sample of one split, pooled over every position of every chunk."""
    data: str
    split: str
    codec: str                       # "mulaw" or "mulaw-s4"
    files: list[ScoreResult] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(f.num_samples for f in self.files)

    @property
    def total_bits(self) -> float:
        return float(sum(f.total_bits for f in self.files))

    @property
    def num_chunks(self) -> int:
        return sum(f.num_chunks or 0 for f in self.files)

    @property
    def bits_per_sample(self) -> float:
        return self.total_bits / self.num_samples if self.num_samples else float("nan")


# ----------------------------------------------------------------------------- the core

class _Stream:
    """Feeds the tokens of one stream through the model, piece by piece, from a zero state, and
    accumulates their NLL. Pieces may have any length; the state and the last token carry over,
    so the inputs are [128, y0, y1, ...] whatever the cut."""

    def __init__(self, model, keep_per_sample: bool):
        p = next(model.parameters())
        self.model, self.device = model, p.device
        if p.device.type == "cpu":
            use_lpc_kernel(model)            # the LPC path (if any) through numba: same numbers, faster
        self.state = model.init_state(1)
        self.total_bits = 0.0        # float64 accumulator: exact enough for billions of samples
        self.n = 0
        self.parts: list[np.ndarray] | None = [] if keep_per_sample else None
        self.prev = torch.full((1,), ZERO, dtype=torch.int64)

    def feed(self, y):
        """Score the next piece of tokens y (T,) (any integer array or tensor)."""
        y = y.to(torch.int64) if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y, dtype=np.int64))
        x = torch.cat([self.prev, y[:-1]])                                       # teacher forcing
        self.prev = y[-1:]
        logits = self.model(x.to(self.device)[None], state=self.state)[0]       # (T, 256)
        nats = F.cross_entropy(logits, y.to(self.device), reduction="none")     # (T,)
        self.total_bits += float(nats.sum(dtype=torch.float64)) / LN2
        self.n += len(y)
        if self.parts is not None:
            self.parts.append((nats / LN2).float().cpu().numpy())

    def result(self, path, sample_rate, num_chunks=None) -> ScoreResult:
        nll = None
        if self.parts is not None:
            nll = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        return ScoreResult(path=path, bits_per_sample=self.total_bits / self.n if self.n else float("nan"),
                           nll_bits=nll, num_samples=self.n, duration_seconds=self.n / sample_rate,
                           total_bits=self.total_bits, sample_rate=sample_rate, num_chunks=num_chunks)


def _rechunk(blocks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of 1-D blocks into pieces of exactly n samples (the last may be shorter)."""
    buf, have = [], 0
    for b in blocks:
        while len(b):
            take = min(n - have, len(b))
            buf.append(b[:take])
            have += take
            b = b[take:]
            if have == n:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, have = [], 0
    if have:
        yield np.concatenate(buf)


def _chunk_len(chunk_seconds: float, sample_rate: int) -> int:
    if not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds!r}")
    return max(1, round(chunk_seconds * sample_rate))


def _bar(progress, total_seconds, desc):
    from tqdm.auto import tqdm

    return tqdm(total=round(total_seconds, 1) if total_seconds else None, unit="s", desc=desc,
                disable=not progress, leave=False, bar_format=None if total_seconds else "{desc}: {n:.1f}s")


# ----------------------------------------------------------------------------- audio

def _as_waveform(audio, sample_rate: int | None, model_rate: int) -> np.ndarray:
    a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform (N,), got shape {a.shape}")
    if a.dtype.kind != "f":  # int16 PCM would be clipped to +-1 silently: make the caller scale it
        raise ValueError(f"audio must be a float waveform in [-1, 1], got dtype {a.dtype} "
                         "(scale integer PCM first, e.g. x / 32768)")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"audio holds NaN or inf samples (first at index {int(np.argmin(np.isfinite(a)))})")
    if sample_rate is not None and int(sample_rate) != model_rate:
        import soxr

        a = soxr.resample(a, int(sample_rate), model_rate, quality="HQ").astype(np.float32, copy=False)
    return a


def score(model, audio, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, sample_rate: int | None = None,
          progress: bool = False, keep_per_sample: bool = True, threads: int | None = 1) -> ScoreResult:
    """NLL of `audio` under `model`, in bits per sample (see the module docstring).

    audio: a float waveform (numpy or torch, (N,)) at `sample_rate` (None: the model's rate;
    resampled with soxr HQ if it differs), or a path to an audio file (decoded at the model's
    rate in bounded memory; `sample_rate` must then be None). `chunk_seconds` bounds memory and
    does not change the result. `threads`: torch threads while scoring, restored afterwards
    (default 1: on small CPUs the OpenMP hand-off costs more than it gains, see docs/design.md;
    None leaves torch's setting).
    Raises ValueError (AudioError for files) naming the input when it holds no samples, NaN
    or inf, or cannot be read.
    """
    sr = int(model.config.sample_rate)
    n = _chunk_len(chunk_seconds, sr)
    if isinstance(audio, (str, Path)):
        if sample_rate is not None:
            raise ValueError("sample_rate applies to arrays; a file is decoded at the model's rate")
        path = str(audio)
        file_sr, _, frames = audio_info(audio)
        total = frames / file_sr
        blocks = iter_audio(audio, sr, block_seconds=max(chunk_seconds, 10.0))
    else:
        path = None
        a = _as_waveform(audio, sample_rate, sr)
        total = len(a) / sr
        blocks = (a,)
    with inference(model, threads):
        stream = _Stream(model, keep_per_sample)
        with _bar(progress, total, Path(path).name if path else "scoring") as bar:
            for piece in _rechunk(blocks, n):
                stream.feed(mulaw_encode(torch.from_numpy(piece)))
                bar.update(round(len(piece) / sr, 3))
    if stream.n == 0:
        raise (AudioError(f"{path}: no audio (0 samples)") if path else ValueError("audio is empty (0 samples)"))
    res = stream.result(path, sr)
    log.debug("%s: %.4f bits/sample over %d samples", path or "audio", res.bits_per_sample, res.num_samples)
    return res


# ----------------------------------------------------------------------------- splits

def _split_streams(data, split, quantization, sample_rate, chunk):
    """(codec, [(file name, iterator over the file's independent token chunks)]) of a split.
    A chunk is a 1-D token array y; its inputs are [128, y[:-1]] (YouTubeMix's x)."""
    data = Path(data)
    if (data / "meta.json").is_file():
        cache = TokenCache(data)
        want = {"s4": "mulaw-s4", "mulaw": "mulaw"}.get(quantization)
        if want is not None and want != cache.codec:
            raise ValueError(f"{data}: the cache holds {cache.codec} tokens, not --quantization {quantization}")
        if cache.sample_rate != sample_rate:
            raise ValueError(f"{data}: the cache is at {cache.sample_rate} Hz, the model at {sample_rate} Hz")
        # the cache decides its segments (TokenCache.segments, the one chunking rule): a YouTubeMix
        # cache's chunks, each encoded on its own, scored on their own; a folder cache's whole files
        step = cache.segment_length()
        if chunk and chunk != step:
            raise ValueError(f"{data}: chunk {chunk} does not apply: the cache holds "
                             + (f"chunks of {step}" if step else "whole files (a folder cache)"))
        # memmap views: nothing is read until a segment is scored
        return cache.codec, [(f["path"], iter(cache.file_segments(f["index"]))) for f in cache.files(split)]

    ds = YouTubeMix(data, split=split, quantization=quantization or "s4", sample_rate=sample_rate,
                    chunk=chunk or CHUNK)

    def ds_chunks(f):
        lo = sum(ds.chunks_per_file[:f])
        return (ds[i][1] for i in range(lo, lo + ds.chunks_per_file[f]))

    return ds.codec, [(p.name, ds_chunks(f)) for f, p in enumerate(ds.files)]


def score_split(model, data, split: str = "test", quantization: str | None = None,
                chunk_seconds: float = DEFAULT_CHUNK_SECONDS, progress: bool = False,
                keep_per_sample: bool = False, threads: int | None = 1,
                chunk: int | None = None) -> SplitScore:
    """Bits per sample of a split, SaShiMi style: every chunk scored independently from a zero
    state (x[0] = 128), pooled over all positions of all chunks.

    data: a YouTubeMix folder (wavelm.data.youtubemix.YouTubeMix with `quantization`, default
    "s4") or a token cache directory (meta.json; a YouTubeMix cache is scored chunk by chunk, a
    folder cache file by file). Each file's result pools its chunks (`num_chunks` set); files
    without a whole chunk are left out.
    `chunk`: YouTubeMix chunk length in samples (default 131072, the paper's).
    """
    sr = int(model.config.sample_rate)
    n = _chunk_len(chunk_seconds, sr)
    codec, files = _split_streams(data, split, quantization, sr, chunk)
    out = SplitScore(data=str(data), split=split, codec=codec)
    with inference(model, threads):
        for name, chunks in files:
            parts, total, count, k = [], 0.0, 0, 0
            with _bar(progress, None, name) as bar:
                for y in chunks:
                    s = _Stream(model, keep_per_sample)     # each chunk from a zero state
                    for t in range(0, len(y), n):
                        s.feed(y[t:t + n])
                        bar.update(round(len(y[t:t + n]) / sr, 3))
                    total, count, k = total + s.total_bits, count + s.n, k + 1
                    if keep_per_sample:
                        parts.extend(s.parts)
            if k == 0:                                   # shorter than one chunk: dropped, as in s4
                log.info("%s: no whole chunk, not scored", name)
                continue
            nll = np.concatenate(parts) if keep_per_sample else None
            out.files.append(ScoreResult(path=name, bits_per_sample=total / count if count else float("nan"),
                                         nll_bits=nll, num_samples=count, duration_seconds=count / sr,
                                         total_bits=total, sample_rate=sr, num_chunks=k))
    return out

