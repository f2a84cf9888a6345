"""Audio I/O (soundfile + soxr) and the mu-law codec.

Tokens are 8-bit mu-law codes (mu = 255, 256 classes). `mulaw_encode`/`mulaw_decode` follow
torchaudio's formula exactly, computed in float32 (round to nearest); the `*_s4` variants follow
the state-spaces/s4 (SaShiMi) code base: min-max scaling and a floor-based quantiser.

Both accept numpy arrays or torch tensors and return the same kind they were given.
Non-finite input (NaN, +-inf) is rejected with ValueError; finite values outside [-1, 1] are
clipped to [-1, 1] with one logged warning per file (a clipped waveform is still a waveform;
NaN is a bug upstream).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from wavelm.files import AUDIO_OUT, atomic_path, atomic_write_path, check_output

log = logging.getLogger(__name__)

MU = 255
ZERO = 128       # mu-law code of silence: the input before a stream's first sample
LN2 = math.log(2.0)   # nats -> bits
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
    """An audio file could not be read or holds no usable audio."""


# ----------------------------------------------------------------------------- mu-law
# Computed in torch float32 whatever the input kind: numpy's and torch's log1p differ in the last
# ulp on a few inputs, and the codes must not depend on the array library.

def _torch_f32(x, who: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))  # copy: input may be read-only
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{who}: input holds NaN or inf values")
    return t


def _like(t: torch.Tensor, x):
    return t if isinstance(x, torch.Tensor) else t.numpy()


def _expand(y: torch.Tensor) -> torch.Tensor:
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU


def mulaw_encode(x):
    """float audio in [-1, 1] -> int64 codes 0..255 (torchaudio.functional.mu_law_encoding).
    Finite values outside [-1, 1] are clipped; NaN/inf raise ValueError."""
    t = _torch_f32(x, "mulaw_encode").clamp(-1.0, 1.0)
    mu = torch.tensor(float(MU))
    y = torch.sign(t) * torch.log1p(mu * t.abs()) / torch.log1p(mu)
    return _like(((y + 1) / 2 * mu + 0.5).to(torch.int64), x)


def mulaw_decode(q):
    """int codes 0..255 -> float32 audio in [-1, 1] (torchaudio.functional.mu_law_decoding)."""
    t = q if isinstance(q, torch.Tensor) else torch.from_numpy(np.array(q))
    return _like(_expand(t.to(torch.float32) / MU * 2 - 1), q)


def minmax_scale(t: torch.Tensor) -> torch.Tensor:
    """Scale to [-1, 1] by the min and max (s4's per-chunk normalisation, its 1e-6 epsilon)."""
    if not t.numel():
        return t
    lo, hi = t.min(), t.max()
    return -1 + 2 * (t - lo) / (hi - lo + 1e-6)


def mulaw_encode_s4(x, bits: int = 8):
    """s4's quantiser (src/dataloaders/audio.py mu_law_encode + quantize): min-max scale to
    [-1, 1] (no clipping: any gain works), compand log1p(mu |x + 1e-8|), then
    code = floor((y + 1) / 2 * (2**bits - 0.01) + 0.005)."""
    t = minmax_scale(_torch_f32(x, "mulaw_encode_s4"))
    mu = torch.tensor(float(2**bits - 1))
    y = torch.sign(t) * (torch.log1p(mu * torch.abs(t + 1e-8)) / torch.log1p(mu))
    q = (y + 1) / 2 * (2**bits - 0.01) + 0.005
    return _like(torch.floor(q).to(torch.int64), x)


def mulaw_decode_s4(q, bits: int = 8):
    """Inverse of `mulaw_encode_s4` (up to the lost min-max gain): code / 2**(bits-1) - 1, expand."""
    t = q if isinstance(q, torch.Tensor) else torch.from_numpy(np.array(q))
    return _like(_expand(t.to(torch.float32) / 2 ** (bits - 1) - 1), q)


# ----------------------------------------------------------------------------- file I/O

def _check_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    return p


def audio_info(path) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of an audio file, without decoding it."""
    import soundfile as sf

    p = _check_path(path)
    try:
        info = sf.info(os.fsencode(p))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
    return int(info.samplerate), int(info.channels), int(info.frames)


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


_F32_MAX = float(np.finfo(np.float32).max)


def _read_f32(f, frames: int, p: Path) -> np.ndarray:
    """Read `frames` of the open SoundFile `f` as float32 (frames, channels). A 64-bit float file
    is read as float64 first: a finite value beyond float32's range is refused as what it is,
    not as the inf it would become."""
    if f.subtype != "DOUBLE":
        return f.read(frames=frames, dtype="float32", always_2d=True)
    x = f.read(frames=frames, dtype="float64", always_2d=True)
    big = np.abs(np.where(np.isfinite(x), x, 0.0)).max(initial=0.0)
    if big > _F32_MAX:
        raise AudioError(f"{p}: audio holds samples far outside [-1, 1] (up to {big:.3g}); "
                         "scale it to [-1, 1]")
    return x.astype(np.float32)


_WARNED: set = set()


def _finish(x: np.ndarray, p: Path) -> np.ndarray:
    if not np.isfinite(x).all():
        raise AudioError(f"{p}: audio holds NaN or inf samples")
    peak = float(np.abs(x).max(initial=0.0))
    if peak > 1.01 and p not in _WARNED:             # a float file's overs: said once per file, not silent
        _WARNED.add(p)
        log.warning("%s: samples reach %.3g, beyond [-1, 1]: clipped", p, peak)
    return np.clip(x, -1.0, 1.0, out=x)


def load_audio(path, sample_rate: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Read any file libsndfile decodes, mix to mono, resample (soxr HQ) -> float32 (N,).

    Raises AudioError naming the file when it is missing, a directory, unreadable, or holds
    non-finite samples. `max_seconds` (in the file's own time) bounds how much is decoded.
    """
    import soundfile as sf
    import soxr

    p = _check_path(path)
    try:
        with sf.SoundFile(os.fsencode(p)) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else int(max_seconds * sr)
            x = _read_f32(f, frames, p)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if sr != sample_rate and len(x):
        x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return _finish(np.ascontiguousarray(x, dtype=np.float32), p)


def iter_audio(path, sample_rate: int = 16000, block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """Decode a long file in bounded memory: yields float32 mono blocks at `sample_rate` whose
    concatenation equals `load_audio(path, sample_rate)` up to resampler rounding."""
    import soundfile as sf
    import soxr

    p = _check_path(path)
    try:
        f = sf.SoundFile(os.fsencode(p))
    except Exception as e:
        raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
    with f:
        sr = f.samplerate
        rs = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") if sr != sample_rate else None
        block = max(1, int(block_seconds * sr))
        while True:
            try:
                x = _read_f32(f, block, p)
            except AudioError:
                raise
            except Exception as e:
                raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
            last = len(x) < block
            x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
            if rs is not None:
                x = rs.resample_chunk(np.ascontiguousarray(x), last=last)
            if len(x):
                yield _finish(np.ascontiguousarray(x, dtype=np.float32), p)
            if last:
                return


@contextlib.contextmanager
def audio_writers(paths, sample_rate: int = 16000, subtype: str = "PCM_16"):
    """`with audio_writers([a.wav, b.wav], sr) as write: write(i, chunk)` appends float mono audio
    to file i as it is made, so memory does not grow with the length; every file is written at a
    temp path and renamed into place when the block ends (removed if it fails)."""
    import soundfile as sf

    with contextlib.ExitStack() as stack:
        files = []
        for path in paths:
            p = check_output(path, AUDIO_OUT)
            fmt = p.suffix[1:].upper()
            tmp = stack.enter_context(atomic_path(p))
            files.append(stack.enter_context(sf.SoundFile(os.fsencode(tmp), "w", sample_rate, 1, format=fmt,
                                                          subtype=subtype if fmt == "WAV" else None)))

        def write(i: int, chunk) -> None:
            files[i].write(np.clip(np.asarray(chunk, dtype=np.float32), -1.0, 1.0))

        yield write


def save_audio(path, audio, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    """Write float audio in [-1, 1] (N,) or (C, N) as WAV (16-bit), or FLAC, OGG, MP3, ... by
    the extension (wavelm.files.AUDIO_OUT), atomically. OutputError names a bad path."""
    import soundfile as sf

    a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    a = np.clip(a.astype(np.float32), -1.0, 1.0)
    if a.ndim == 2:
        a = a.T  # (C, N) -> (N, C), soundfile's layout
    p = check_output(path, AUDIO_OUT)
    fmt = p.suffix[1:].upper()
    # soundfile is given the temp path itself: through a Python file object (virtual I/O) a
    # full disk ends in an AssertionError and tracebacks from its callbacks, not an error
    return atomic_write_path(p, lambda tmp: sf.write(os.fsencode(tmp), a, sample_rate, format=fmt,
                                                     subtype=subtype if fmt == "WAV" else None))
