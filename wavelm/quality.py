"""Listening proxies: what a listener hears in generated audio, measured beside real audio.

    m = measures(audio, 16000)     # loudness range, onsets, harmonic share, chroma, flatness, ...
    report = evaluate(model, "data/piano", split="test")   # `wavelm bench quality`

A model can score well and still make noise, so a model is judged by its generations too:
clips generated from silence and continuations of real excerpts, each measured as the real
excerpts are. The measures (librosa, an optional dependency: `pip install 'wavelm[librosa]'`):

- rms_*: RMS of each whole second; `loudness_ratio` = loudest / quietest second (music with
  dynamics and rests: large; a static bed of noise: ~1);
- onsets_per_s: librosa onset detection (note attacks);
- harmonic_share: energy of the harmonic part of an HPSS split over harmonic + percussive
  (sustained pitched tones: ~1; white noise: ~0.5);
- chroma_top7: over 5 s windows, the share of chroma energy in the 7 strongest of 12 pitch
  classes (music in a key: ~0.8; noise: ~7/12);
- chroma_change: the median of 1 - cosine between the chroma of consecutive half-seconds (a
  tune whose harmony moves, these renders: 0.1-0.33; one held drone: ~0; a bed of noise: small),
  the measure that tells a steady drone, which scores high harmonic share and chroma, from music;
- flatness: median spectral flatness (tones: ~1e-4; white noise: ~0.5); centroid_hz: median
  spectral centroid;
- pitches: the 8 strongest peaks of a constant-Q spectrum summed over the clip (note names).
Silence gives finite values (ratio 1, shares of an even split) instead of dividing by zero.

Real audio is measured as the model's codec writes it (`codec_audio`: 8-bit mu-law and back),
because that is the best any model of these tokens can sound: the codec's own quantisation
noise raises median flatness 4-50x on these renders (docs/design.md, "Listening proxies"),
while harmonic share and chroma move by < 0.001. The raw renders' flatness is reported beside.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from wavelm.audio import AUDIO_EXTENSIONS, load_audio, mulaw_decode, mulaw_encode
from wavelm.data.folder import TokenCache
from wavelm.files import atomic_write
from wavelm.generation import generate
from wavelm.model.lpc import adaptive_bits
from wavelm.scoring import score

# the classical baseline every model is judged against: the adaptive LPC alone (no trained
# parameters), order 64 refitted every 64 samples on the last 2,048 (recipes/piano/README.md)
BASELINE_LPC = (64, 2048, 64)

log = logging.getLogger(__name__)

EPS = 1e-10


def _librosa():
    try:
        import librosa
    except ImportError:
        raise ImportError("listening measures need librosa: pip install 'wavelm[librosa]'") from None
    return librosa


# ----------------------------------------------------------------------------- measures

def rms_per_second(y: np.ndarray, sr: int) -> np.ndarray:
    n = max(1, len(y) // sr)
    y = np.asarray(y[: n * sr] if len(y) >= sr else y, np.float64)
    return np.sqrt(np.mean(y.reshape(n, -1) ** 2, axis=1))


def loudness_ratio(rms: np.ndarray, floor: float = 1e-4) -> float:
    """Loudest / quietest second; seconds quieter than `floor` (-80 dBFS) count as the floor."""
    r = np.maximum(rms, floor)
    return float(r.max() / r.min())


def harmonic_share(y: np.ndarray, sr: int) -> float:
    lb = _librosa()
    S = np.abs(lb.stft(np.asarray(y, np.float32), n_fft=1024, hop_length=256)) ** 2
    H, P = lb.decompose.hpss(S)
    h, p = float(H.sum()), float(P.sum())
    return (h + EPS) / (h + p + 2 * EPS)


def _chroma(y: np.ndarray, sr: int) -> np.ndarray:
    """Chroma energy (12, frames of 512 samples), shared by chroma_top7 and chroma_change."""
    lb = _librosa()
    S = np.abs(lb.stft(np.asarray(y, np.float32), n_fft=2048, hop_length=512)) ** 2
    return lb.feature.chroma_stft(S=S, sr=sr, norm=None, tuning=0.0)


def chroma_top7(y: np.ndarray, sr: int, window_s: float = 5.0, C: np.ndarray | None = None) -> float:
    C = _chroma(y, sr) if C is None else C
    per = max(1, int(window_s * sr / 512))
    shares = []
    for i in range(0, C.shape[1], per):
        e = C[:, i:i + per].sum(axis=1)
        shares.append((np.sort(e)[-7:].sum() + 7 * EPS) / (e.sum() + 12 * EPS))
    return float(np.mean(shares))


def chroma_change(y: np.ndarray, sr: int, window_s: float = 0.5, C: np.ndarray | None = None) -> float:
    C = _chroma(y, sr) if C is None else C
    per = max(1, int(window_s * sr / 512))
    n = C.shape[1] // per
    if n < 2:
        return 0.0
    W = C[:, :n * per].reshape(12, n, per).sum(axis=2)
    W = W / (np.linalg.norm(W, axis=0, keepdims=True) + EPS)
    return float(np.median(1.0 - (W[:, 1:] * W[:, :-1]).sum(axis=0)))


def strongest_pitches(y: np.ndarray, sr: int, n: int = 8) -> list[str]:
    lb = _librosa()
    fmin = lb.note_to_hz("A0")
    bins = int(min(88, 12 * math.log2(0.45 * sr / fmin)))
    Q = np.abs(lb.cqt(np.asarray(y, np.float32), sr=sr, fmin=fmin, n_bins=bins, hop_length=512))
    e = Q.sum(axis=1)
    if not e.max() > 0:
        return []
    # local maxima only, so that one loud note does not also fill the list with its neighbours
    padded = np.concatenate([[-1.0], e, [-1.0]])
    peaks = np.flatnonzero((e > padded[:-2]) & (e >= padded[2:]))
    top = peaks[np.argsort(e[peaks])[::-1][:n]]
    return [lb.midi_to_note(21 + int(i), unicode=False) for i in sorted(top)]


def measures(y: np.ndarray, sr: int) -> dict:
    """The listening measures of one mono clip (see the module docstring)."""
    lb = _librosa()
    y = np.nan_to_num(np.asarray(y, np.float32))
    rms = rms_per_second(y, sr)
    onsets = lb.onset.onset_detect(y=y, sr=sr, units="time") if np.abs(y).max() > 0 else []
    cent = lb.feature.spectral_centroid(y=y, sr=sr, n_fft=1024, hop_length=256)[0]
    C = _chroma(y, sr)
    return {"seconds": round(len(y) / sr, 3),
            "rms_min": float(rms.min()), "rms_median": float(np.median(rms)), "rms_max": float(rms.max()),
            "loudness_ratio": loudness_ratio(rms), "onsets_per_s": len(onsets) / max(len(y) / sr, EPS),
            "harmonic_share": harmonic_share(y, sr), "chroma_top7": chroma_top7(y, sr, C=C),
            "chroma_change": chroma_change(y, sr, C=C),
            "flatness": _flat(y, sr), "centroid_hz": float(np.median(cent)),
            "pitches": strongest_pitches(y, sr)}


def codec_audio(y: np.ndarray) -> np.ndarray:
    """y through the 8-bit mu-law codec and back: what a perfect model of the tokens would play."""
    return mulaw_decode(mulaw_encode(np.asarray(y, np.float32))).astype(np.float32)


def window_measures(y: np.ndarray, sr: int, window_s: float = 0.25) -> list[dict]:
    """Flatness, harmonic share and RMS of each `window_s` piece of y."""
    lb = _librosa()
    n = int(window_s * sr)
    out = []
    for i in range(0, len(y) - n + 1, n):
        w = np.asarray(y[i:i + n], np.float32)
        flat = lb.feature.spectral_flatness(y=w, n_fft=512, hop_length=128)[0]
        out.append({"t": round(i / sr, 3), "flatness": float(np.median(flat)),
                    "harmonic_share": harmonic_share(w, sr), "rms": float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))})
    return out


def region_bits(y: np.ndarray, nll: np.ndarray, sr: int) -> dict:
    """Bits per sample (sums and counts) where notes sound loud and sustained, in quiet tails
    and within 50 ms after onsets. Frames of 20 ms; loud: >= -20 dB of the file's loudest
    frame; quiet: < -40 dB; onsets are excluded from the other two."""
    lb = _librosa()
    f = sr // 50
    n = min(len(y), len(nll)) // f
    if n == 0:
        return {}
    y, nll = np.asarray(y[: n * f], np.float64), np.asarray(nll[: n * f], np.float64)
    rms = np.sqrt(np.mean(y.reshape(n, f) ** 2, axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-9) / max(rms.max(), 1e-4))   # a silent file is all quiet
    onset = np.zeros(n, bool)
    if rms.max() > 0:
        for t in lb.onset.onset_detect(y=y.astype(np.float32), sr=sr, units="samples"):
            onset[int(t) // f: int(t) // f + 3] = True
    bits = nll.reshape(n, f).sum(axis=1)
    out = {}
    for name, mask in (("loud_sustained", (db >= -20) & ~onset), ("quiet", (db < -40) & ~onset), ("onsets", onset)):
        out[name] = {"bits": float(bits[mask].sum()), "samples": int(mask.sum()) * f}
    return out


# ----------------------------------------------------------------------------- data

PIANO = re.compile(r"__([^/]+)\.[A-Za-z0-9]+$")


def piano_of(name: str) -> str:
    """The piano of a recipes/piano file name (<piece>__<piano>.wav), else 'all'."""
    m = PIANO.search(name)
    return m.group(1) if m else "all"


def spread(items: list, n: int | None) -> list:
    """`n` items spread evenly over the list (all of them for n=None)."""
    return items if not n else items[:: max(1, len(items) // n)][:n]


def split_audio(data, split: str, sample_rate: int) -> list[tuple[str, np.ndarray]]:
    """[(name, float32 audio)] of a split of a rendered folder (DATA/split/*) or token cache."""
    from natsort import natsorted

    data = Path(data)
    if (data / "meta.json").is_file():
        cache = TokenCache(data)
        if cache.sample_rate != sample_rate:
            raise ValueError(f"{data}: the cache is at {cache.sample_rate} Hz, the model at {sample_rate} Hz")
        return [(f["path"], mulaw_decode(np.asarray(cache.tokens(f["index"]), np.int64)).astype(np.float32))
                for f in cache.files(split)]
    folder = data / split
    if not folder.is_dir():
        raise ValueError(f"{data}: no {split}/ folder and no token cache (meta.json) there")
    files = natsorted((p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS),
                      key=lambda p: str(p))
    return [(str(p.relative_to(data)), load_audio(p, sample_rate=sample_rate)) for p in files]


def excerpts(files, k: int, seconds: float, sr: int) -> list[tuple[str, float, np.ndarray]]:
    """k excerpts of `seconds` from k files spread over the list (longest enough ones), each
    from the file's middle: [(name, start s, audio)]."""
    n = int(seconds * sr)
    ok = [(name, y) for name, y in files if len(y) >= n] or sorted(files, key=lambda f: -len(f[1]))[:k]
    pick = [ok[int(i * len(ok) / k)] for i in range(min(k, len(ok)))]
    out = []
    for name, y in pick:
        s = max(0, (len(y) - n) // 2)
        out.append((name, s / sr, y[s:s + n]))
    return out


def cut_mid_note(y: np.ndarray, sr: int, prompt_s: float, after_s: float = 1.0) -> int | None:
    """A sample index inside a sounding note: 80 ms after the loudest onset that leaves
    `prompt_s` before and `after_s` after it; None if the file is too short."""
    lb = _librosa()
    lo, hi = int(prompt_s * sr), len(y) - int(after_s * sr) - int(0.08 * sr)
    if hi <= lo:
        return None
    env = lb.onset.onset_strength(y=np.asarray(y, np.float32), sr=sr, hop_length=256)
    on = lb.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=256, units="samples")
    on = [int(t) for t in on if lo <= t < hi]
    if not on:
        return (lo + hi) // 2
    frames = [t // 256 for t in on]
    return on[int(np.argmax(env[frames]))] + int(0.08 * sr)


# ----------------------------------------------------------------------------- the report

def evaluate(model, data, split: str = "test", unseen: str | None = "unseen", clips: int = 3,
             seconds: float = 30.0, prompt_seconds: float = 1.5, sampling=None, max_files: int | None = None,
             progress: bool = False, scores: bool = True, seed: int = 0) -> dict:
    """Score the split (and the unseen one; not with `scores=False`), generate `clips` clips from silence and continue
    `clips` real excerpts cut mid-note (clip k with seed `seed` + k) with `sampling` (a wavelm.decode.Sampling; default the
    model's own, wavelm.generation.model_sampling); measure all of it beside real excerpts. A dict."""
    from wavelm.generation import model_sampling

    sampling = sampling or model_sampling(model)
    sr = int(model.config.sample_rate)
    report = {"split": split, "clips": clips, "seconds": seconds, "sampling": sampling.changed(),
              "max_files": max_files, "seed": seed}
    files = split_audio(data, split, sr)
    if not files:
        raise ValueError(f"{data}: the {split} split holds no audio")
    files = spread(files, max_files)

    def score_files(fs, tag):
        per_file, per_piano, regions, lpc_regions, lpc_total = [], {}, {}, {}, 0.0
        for name, y in _bar(fs, progress, f"scoring {tag}"):
            res = score(model, y, sample_rate=sr)
            lpc = adaptive_bits(mulaw_encode(y), *BASELINE_LPC)       # the classical baseline, same samples
            lpc_total += float(lpc.sum())
            per_file.append({"name": name, "bits_per_sample": res.bits_per_sample, "samples": res.num_samples,
                             "lpc_bits_per_sample": float(lpc.mean())})
            agg = per_piano.setdefault(piano_of(name), [0.0, 0])
            agg[0] += res.total_bits
            agg[1] += res.num_samples
            for nll, into in ((res.nll_bits, regions), (lpc, lpc_regions)):
                for k, v in region_bits(y, nll, sr).items():
                    r = into.setdefault(k, [0.0, 0])
                    r[0] += v["bits"]
                    r[1] += v["samples"]
        tot = sum(f["bits_per_sample"] * f["samples"] for f in per_file)
        cnt = sum(f["samples"] for f in per_file)
        bps = [f["bits_per_sample"] for f in per_file]
        return {"files": len(per_file), "samples": cnt, "bits_per_sample": tot / max(cnt, 1),
                "file_min": min(bps), "file_max": max(bps),
                "per_piano": {k: v[0] / max(v[1], 1) for k, v in sorted(per_piano.items())},
                "regions": {k: {"bits_per_sample": v[0] / max(v[1], 1), "share": v[1] / max(cnt, 1),
                                "lpc_bits_per_sample": lpc_regions[k][0] / max(lpc_regions[k][1], 1)}
                            for k, v in regions.items()},
                "lpc": {"order": BASELINE_LPC[0], "window": BASELINE_LPC[1], "hop": BASELINE_LPC[2],
                        "bits_per_sample": lpc_total / max(cnt, 1)},
                "per_file": per_file}

    report["score"] = {split: score_files(files, split)} if scores else {}
    if unseen and scores:
        try:
            un = split_audio(data, unseen, sr)
        except ValueError:
            un = []
        un = spread(un, max_files)
        if un:
            report["score"][unseen] = score_files(un, unseen)

    # generated clips from silence, and real excerpts of the same length
    gens = [generate(model, seconds=seconds, seed=seed + s, sampling=sampling)[0] for s in range(clips)]
    real = [(name, start, codec_audio(y), y) for name, start, y in excerpts(files, clips, seconds, sr)]
    report["generated"] = []
    for s, y in enumerate(_bar(gens, progress, "measuring clips")):
        m = measures(y, sr)
        m["seed"] = seed + s
        m["model_bits"] = score(model, y, sample_rate=sr).bits_per_sample
        report["generated"].append(m)
    report["real"] = []
    for name, start, y, raw in real:
        m = measures(y, sr)
        m.update(name=name, start_s=round(start, 3), model_bits=score(model, y, sample_rate=sr).bits_per_sample,
                 flatness_raw=_flat(raw, sr))
        report["real"].append(m)
    report["_audio"] = {"generated": gens, "real": [y for _, _, y, _ in real]}

    # continuations of real excerpts cut mid-note
    conts = []
    long_enough = [f for f in files if len(f[1]) > (prompt_seconds + 1.2) * sr]
    for k, (name, y) in enumerate(_bar(long_enough, progress, "continuations")):
        if len(conts) == clips:
            break
        c = cut_mid_note(y, sr, prompt_seconds)
        if c is None:
            continue
        prompt = y[c - int(prompt_seconds * sr): c]
        out = generate(model, seconds=1.0, seed=seed + k, prompt=prompt, sampling=sampling)[0]
        truth = codec_audio(y[c: c + sr])
        conts.append({"name": name, "cut_s": round(c / sr, 3), "generated": window_measures(out, sr),
                      "real": window_measures(truth, sr),
                      "generated_1s": {"flatness": _flat(out, sr), "harmonic_share": harmonic_share(out, sr)},
                      "real_1s": {"flatness": _flat(truth, sr), "harmonic_share": harmonic_share(truth, sr)}})
    report["continuations"] = conts
    report["summary"] = summarize(report)
    return report


def _flat(y, sr) -> float:
    return float(np.median(_librosa().feature.spectral_flatness(y=np.asarray(y, np.float32), n_fft=1024,
                                                                hop_length=256)[0]))


def _bar(items, progress, desc):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not progress, leave=False)


def summarize(report: dict) -> dict:
    """Medians over clips of the headline measures, generated vs real, and the continuation
    gaps (ratio of flatness, difference of harmonic share, first second after the prompt)."""
    keys = ("loudness_ratio", "onsets_per_s", "harmonic_share", "chroma_top7", "chroma_change", "flatness",
            "centroid_hz", "model_bits", "rms_median")
    out = {}
    for side in ("real", "generated"):
        out[side] = {k: float(np.median([m[k] for m in report[side]])) for k in keys if report[side]}
        out[side]["pitch_overlap"] = pitch_overlap([m["pitches"] for m in report[side]])
    if report["real"] and "flatness_raw" in report["real"][0]:
        out["real"]["flatness_raw"] = float(np.median([m["flatness_raw"] for m in report["real"]]))
    # seeds "differ" when their strongest pitches overlap less than half (Jaccard), as
    # different pieces do; one shared note is not a different piece
    ov = out["generated"]["pitch_overlap"]
    out["generated_pitches_differ"] = None if ov is None else ov < 0.5
    c = report.get("continuations") or []
    if c:
        out["continuation"] = {
            "flatness_ratio": float(np.median([x["generated_1s"]["flatness"] / max(x["real_1s"]["flatness"], EPS)
                                               for x in c])),
            "harmonic_gap": float(np.median([x["real_1s"]["harmonic_share"] - x["generated_1s"]["harmonic_share"]
                                             for x in c]))}
    return out


def pitch_overlap(sets: list[list[str]]) -> float | None:
    """Mean Jaccard overlap of the strongest-pitch sets over all pairs (1: the same notes)."""
    pairs = [(set(a), set(b)) for i, a in enumerate(sets) for b in sets[i + 1:] if a or b]
    return float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else None


def plot(report: dict, path, sr: int = 16000, title: str = "") -> None:
    """Mel spectrograms: real excerpts on top, generated clips below, one column per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lb = _librosa()
    real, gen = report["_audio"]["real"], report["_audio"]["generated"]
    cols = max(len(real), len(gen), 1)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6), squeeze=False, sharey=True)
    for row, (label, clips) in enumerate((("real", real), ("generated", gen))):
        for j in range(cols):
            ax = axes[row][j]
            if j >= len(clips):
                ax.axis("off")
                continue
            S = lb.feature.melspectrogram(y=np.asarray(clips[j], np.float32), sr=sr, n_fft=1024, hop_length=256,
                                          n_mels=96, fmax=sr / 2)
            db = lb.power_to_db(S, ref=1.0, top_db=None)
            ax.imshow(np.clip(db, -100, 0), origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=0,
                      extent=(0, len(clips[j]) / sr, 0, 96))
            m = report[label][j]
            ax.set_title(f"{label} {j}: ratio {m['loudness_ratio']:.1f}x, harm {m['harmonic_share']:.2f}, "
                         f"flat {m['flatness']:.1e}", fontsize=8)
            ax.set_xlabel("s", fontsize=8)
            if j == 0:
                ax.set_ylabel("mel band", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
