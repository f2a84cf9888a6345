"""Figures for scored audio: where is the model surprised?

    plot_score(audio, res.nll_bits, "surprise.png", sample_rate=16000, title="piano.wav")

Three panels sharing the time axis: the waveform, the NLL per sample in bits (smoothed), and a
spectrogram. Long inputs are reduced before drawing (min/max envelope, bucket means, a capped
number of STFT frames), so an hour of audio plots as fast as a minute.

matplotlib is imported lazily and used through its object API with the Agg canvas: no pyplot,
no global backend switch, safe in servers and notebooks alike.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wavelm.files import atomic_write

log = logging.getLogger(__name__)

MAX_POINTS = 4000      # drawn points per curve
RAW_SAMPLES = 100_000  # up to this many samples the waveform is drawn as is; beyond, an envelope
ENVELOPE_COLUMNS = 2000
MAX_FRAMES = 1200      # spectrogram columns
N_FFT = 512            # 32 ms at 16 kHz


def envelope(x: np.ndarray, columns: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample index, min, max) over `columns` equal buckets (x itself when it is short)."""
    n = len(x)
    if n <= columns:
        i = np.arange(n)
        return i, x, x
    b = -(-n // columns)                                  # bucket size
    m = n // b * b
    lo, hi = x[:m].reshape(-1, b).min(1), x[:m].reshape(-1, b).max(1)
    if m < n:
        lo, hi = np.append(lo, x[m:].min()), np.append(hi, x[m:].max())
    return np.arange(len(lo)) * b + b // 2, lo, hi


def smooth(v: np.ndarray, window: int, points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, int]:
    """Moving average of v over `window` samples, drawn at <= `points` positions.
    Returns (sample index, value, the window actually used): for long inputs the average is
    taken over buckets of n / points samples when that is longer than `window`."""
    n = len(v)
    window = max(1, min(int(window), n))
    if n / window > points:                               # bucket means: O(n), no n-long temp
        b = -(-n // points)
        m = n // b * b
        means = v[:m].reshape(-1, b).mean(1, dtype=np.float64)
        if m < n:
            means = np.append(means, v[m:].mean(dtype=np.float64))
        return np.arange(len(means)) * b + b // 2, means, b
    c = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    avg = (c[window:] - c[:-window]) / window            # average of v[i : i + window]
    step = max(1, len(avg) // points)
    idx = np.arange(0, len(avg), step)
    return idx + window // 2, avg[idx], window


def spectrogram(x: np.ndarray, sample_rate: int, n_fft: int = N_FFT, frames: int = MAX_FRAMES):
    """(frame centres in samples, hop, frequencies in Hz, power in dB (freq, frame)) of x: Hann
    window, centred frames (x zero-padded by n_fft/2 at both ends), at most `frames` frames
    (the hop grows with the length)."""
    hop = max(n_fft // 4, -(-len(x) // max(frames - 1, 1)))
    xp = np.pad(np.asarray(x, dtype=np.float32), (n_fft // 2, n_fft // 2))
    centres = np.arange(0, len(x) + 1, hop)              # frame k covers x[c - n/2 : c + n/2]
    seg = xp[centres[:, None] + np.arange(n_fft)] * np.hanning(n_fft).astype(np.float32)
    power = np.abs(np.fft.rfft(seg, axis=1)) ** 2         # (frames, n_fft/2 + 1)
    return centres, hop, np.fft.rfftfreq(n_fft, 1 / sample_rate), 10 * np.log10(power.T + 1e-10)


def plot_score(audio, nll_bits, out, sample_rate: int = 16000, title: str | None = None,
               smooth_ms: float = 10.0, dpi: int = 120) -> Path:
    """Write a PNG: waveform, smoothed NLL (bits) and spectrogram on one time axis.

    audio: float (N,) the scored waveform at `sample_rate`; nll_bits: (N,) per-sample NLL.
    The file is written atomically. Returns its path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    v = np.asarray(nll_bits, dtype=np.float32).reshape(-1)
    if len(x) != len(v) or len(x) == 0:
        raise ValueError(f"audio ({len(x)} samples) and nll_bits ({len(v)}) must have the same, "
                         "non-zero length")
    sr = float(sample_rate)
    dur = len(x) / sr

    fig = Figure(figsize=(12, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_w, ax_n, ax_s = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.2, 1.4]})

    if len(x) <= RAW_SAMPLES:
        ax_w.plot(np.arange(len(x)) / sr, x, lw=0.5, color="tab:blue")
    else:                                                 # min/max per ~pixel column
        i, lo, hi = envelope(x, ENVELOPE_COLUMNS)
        ax_w.fill_between(i / sr, lo, hi, lw=0.3, color="tab:blue")
    ax_w.set_ylabel("amplitude")
    ax_w.set_ylim(-1.05, 1.05)
    ax_w.grid(alpha=0.3)

    mean = float(v.mean(dtype=np.float64))
    i, avg, w = smooth(v, round(smooth_ms * sr / 1000))
    ax_n.plot(i / sr, avg, lw=0.9, color="tab:red", label=f"NLL, mean over {1000 * w / sr:.0f} ms")
    ax_n.axhline(mean, color="k", lw=0.8, ls="--", label=f"average {mean:.3f} bits/sample")
    ax_n.axhline(8.0, color="gray", lw=0.8, ls=":", label="8 bits (uniform guess)")
    ax_n.set_ylabel("bits / sample")
    ax_n.set_ylim(0, max(8.0, float(np.max(avg))) + 1.6)   # headroom for the legend row
    ax_n.legend(loc="upper center", ncol=3, fontsize=8, framealpha=0.9)
    ax_n.grid(alpha=0.3)

    c, hop, f, db = spectrogram(x, int(sr))
    vmax = float(db.max())
    ax_s.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 80, vmax=vmax,
                extent=((c[0] - hop / 2) / sr, (c[-1] + hop / 2) / sr, 0, f[-1] / 1000),
                interpolation="nearest")
    ax_s.set_ylabel("frequency (kHz)")
    ax_s.set_xlabel("time (s)")
    ax_s.set_xlim(0, dur)

    fig.suptitle(title or "NLL per sample", fontsize=11)
    out = Path(out)
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    log.debug("wrote %s", out)
    return out
