"""Audio I/O (soundfile + soxr) and the mu-law codec.

Tokens are 8-bit mu-law codes (mu = 255, 256 classes). `mulaw_encode`/`mulaw_decode` follow
torchaudio's formula exactly, computed in float32 (round to nearest); the `*_s4` variants follow
the state-spaces/s4 (SaShiMi) code base: min-max scaling and a floor-based quantiser.

Both accept numpy arrays or torch tensors and return the same kind they were given.
Non-finite input (NaN, +-inf) is rejected with ValueError; finite values outside [-1, 1] are
clipped to [-1, 1] (a clipped waveform is still a waveform; NaN is a bug upstream).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

MU = 255
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
    """An audio file could not be read or holds no usable audio."""


# ----------------------------------------------------------------------------- mu-law

def _as_f32(x):
    if isinstance(x, torch.Tensor):
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("mulaw_encode: input holds NaN or inf values")
        return x.clamp(-1.0, 1.0), torch
    a = np.asarray(x, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError("mulaw_encode: input holds NaN or inf values")
    return np.clip(a, -1.0, 1.0), np


def _compand(x, xp):
    mu = np.float32(MU)
    if xp is torch:
        return torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(torch.tensor(mu))
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def _expand(y, xp):
    mu = np.float32(MU)
    if xp is torch:
        return torch.sign(y) * torch.expm1(y.abs() * torch.log1p(torch.tensor(mu))) / mu
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def _via_torch(fn, x, *args):
    # numpy inputs go through torch so both kinds give bit-identical codes (numpy's and
    # torch's log1p differ in the last ulp on a few inputs)
    if isinstance(x, torch.Tensor):
        return fn(x, *args)
    return fn(torch.from_numpy(np.ascontiguousarray(x)), *args).numpy()


def mulaw_encode(x):
    """float audio in [-1, 1] -> int codes 0..255 (torchaudio.functional.mu_law_encoding)."""
    if not isinstance(x, torch.Tensor):
        return _via_torch(mulaw_encode, np.asarray(x, dtype=np.float32))
    x, xp = _as_f32(x)
    y = _compand(x, xp)
    q = (y + 1) / 2 * np.float32(MU) + np.float32(0.5)
    return q.to(torch.int64) if xp is torch else q.astype(np.int64)


def mulaw_decode(q):
    """int codes 0..255 -> float32 audio in [-1, 1] (torchaudio.functional.mu_law_decoding)."""
    if not isinstance(q, torch.Tensor):
        return _via_torch(mulaw_decode, np.asarray(q))
    return _expand(q.to(torch.float32) / MU * 2 - 1, torch)


def minmax_scale(x):
    """Scale to [-1, 1] by the min and max of x (s4's per-chunk normalisation)."""
    if isinstance(x, torch.Tensor):
        x = x.to(torch.float32)
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo + 1e-8) * 2 - 1 if x.numel() else x
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo + np.float32(1e-8)) * 2 - 1).astype(np.float32)


def mulaw_encode_s4(x, bits: int = 8):
    """s4's quantiser (src/dataloaders/audio.py: mu_law_encode + quantize): min-max scale to
    [-1, 1], compand, then code = floor((y + 1) / 2 * (2**bits - 0.01) + 0.005)."""
    if not isinstance(x, torch.Tensor):
        return _via_torch(mulaw_encode_s4, np.asarray(x, dtype=np.float32), bits)
    x, xp = _as_f32(x)
    x = minmax_scale(x)
    y = _compand(x, xp)
    q = (y + 1) / 2 * np.float32(2**bits - 0.01) + np.float32(0.005)
    return torch.floor(q).to(torch.int64) if xp is torch else np.floor(q).astype(np.int64)


def mulaw_decode_s4(q, bits: int = 8):
    """Inverse of `mulaw_encode_s4` (up to the lost min-max gain): code / 128 - 1, then expand."""
    if not isinstance(q, torch.Tensor):
        return _via_torch(mulaw_decode_s4, np.asarray(q), bits)
    return _expand(q.to(torch.float32) / 2 ** (bits - 1) - 1, torch)


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
        info = sf.info(str(p))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
    return int(info.samplerate), int(info.channels), int(info.frames)


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _finish(x: np.ndarray, p: Path) -> np.ndarray:
    if not np.isfinite(x).all():
        raise AudioError(f"{p}: audio holds NaN or inf samples")
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
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else int(max_seconds * sr)
            x = f.read(frames=frames, dtype="float32", always_2d=True)
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
        f = sf.SoundFile(str(p))
    except Exception as e:
        raise AudioError(f"{p}: cannot read audio ({_short(e)})") from None
    with f:
        sr = f.samplerate
        rs = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") if sr != sample_rate else None
        block = max(1, int(block_seconds * sr))
        while True:
            try:
                x = f.read(frames=block, dtype="float32", always_2d=True)
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


def save_audio(path, audio, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    """Write float audio in [-1, 1] (N,) or (C, N) as a WAV (or any format by extension),
    atomically: a temp file in the same folder, then rename."""
    import soundfile as sf

    a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    a = np.clip(a.astype(np.float32), -1.0, 1.0)
    if a.ndim == 2:
        a = a.T  # (C, N) -> (N, C), soundfile's layout
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(p.suffix.lower(), "WAV")
    try:
        sf.write(str(tmp), a, sample_rate, subtype=subtype if fmt == "WAV" else None, format=fmt)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
