"""YouTubeMix with the state-spaces/s4 (SaShiMi) conventions, so numbers compare with the paper.

    ds = YouTubeMix("data/youtubemix", split="train")     # quantization="s4" by default
    x, y = ds[0]            # int64 (131072,) each: y = codes of chunk 0, x = [128, y[:-1]]

Conventions (s4: src/dataloaders/audio.py `QuantizedAudioDataset` with
configs/dataset/youtubemix.yaml: train_percentage 0.88, sample_len 131072, drop_last true):
- files: the audio files directly in `root`, natural-sorted (natsort, as s4 does). s4 lists every
  entry of the folder; here only audio extensions count, so a stray README cannot shift the split.
  If `root` holds no audio but exactly one subfolder does (the Hugging Face zip unpacks to
  youtube_mix/), that subfolder is used.
- split by file, with s4's index arithmetic on n files: train = files[0 : int(0.88 n)],
  val = files[int(0.88 n) : int(0.94 n)], test = files[int(0.94 n) : n], where 0.94 is computed as
  0.88 + (1 - 0.88) / 2. For the 241 clips: 212 / 14 / 15 files.
- non-overlapping `chunk`-sample chunks per file from sample 0, the remainder dropped.
- quantization "s4": each chunk min-max scaled to [-1, 1], then s4's floor-based mu-law
  (`wavelm.audio.mulaw_encode_s4`); "mulaw": `wavelm.audio.mulaw_encode` on the raw samples, no
  gain normalisation (the codec the rest of wavelm uses).
- x is y shifted right by one with x[0] = 128 (mu-law zero; s4's `q_zero`).
Stereo files are mixed to mono and other sample rates resampled (soxr HQ, as `load_audio`); the
chunk grid is laid on the resampled signal (s4 instead reads sample_len * sr / target_sr source
frames per chunk; YouTubeMix is 16 kHz mono, so both agree on it).
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from wavelm.audio import AUDIO_EXTENSIONS, ZERO, AudioError, audio_info, load_audio, mulaw_encode, mulaw_encode_s4
from wavelm.data.cache import TokenCache, temp_dir_next_to, write_cache, writing_cache
from wavelm.data.encode import encode_files, error_reason, read_part
from wavelm.data.folder import check_root, fresh_cache, no_audio_error, warn_skipped

log = logging.getLogger(__name__)

CHUNK = 131072
TRAIN_FRACTION = 0.88          # s4's train_percentage; val and test share the rest equally
QUANTIZATIONS = ("s4", "mulaw")
CODEC = {"s4": "mulaw-s4", "mulaw": "mulaw"}


def split_bounds(n: int, train_fraction: float = TRAIN_FRACTION) -> dict[str, tuple[int, int]]:
    """File index ranges [lo, hi) of each split for n files, with s4's arithmetic."""
    val_end = train_fraction + (1 - train_fraction) / 2
    bounds = {"train": (0.0, train_fraction), "val": (train_fraction, val_end), "test": (val_end, 1)}
    return {k: (int(lo * n), int(hi * n)) for k, (lo, hi) in bounds.items()}


def _split_name(split: str) -> str:
    s = {"validation": "val", "valid": "val"}.get(split, split)
    if s not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose one of train, val, test")
    return s


def _check_quantization(q: str) -> str:
    if q not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {q!r}; choose one of {', '.join(QUANTIZATIONS)}")
    return q


def list_files(root) -> list[Path]:
    """All audio files of a YouTubeMix folder (every split), natural-sorted by name."""
    from natsort import natsorted

    root = check_root(root)

    def audio_in(d: Path) -> list[Path]:
        return [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                and p.name.lower().endswith(AUDIO_EXTENSIONS)]

    files = audio_in(root)
    if not files:
        subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and audio_in(d)]
        if len(subs) == 1:
            log.info("%s: no audio at the top level, using %s/", root, subs[0].name)
            root, files = subs[0], audio_in(subs[0])
        elif any(p.suffix.lower() == ".zip" for p in root.iterdir()):
            zips = ", ".join(p.name for p in root.iterdir() if p.suffix.lower() == ".zip")
            raise ValueError(f"{root}: no audio files, but found {zips}: unzip it first "
                             f"(e.g. `unzip {root / 'youtube_mix.zip'} -d {root}`)")
        else:
            raise no_audio_error(root)
    return natsorted(files, key=lambda p: p.name)


# ----------------------------------------------------------------------------- dataset

class YouTubeMix(torch.utils.data.Dataset):
    """Chunks of one split of YouTubeMix as (x, y) int64 token pairs (see module docstring)."""

    def __init__(self, root, split: str = "train", quantization: str = "s4",
                 sample_rate: int = 16000, chunk: int = CHUNK):
        self.split = _split_name(split)
        self.quantization = _check_quantization(quantization)
        if int(chunk) < 1 or sample_rate <= 0:
            raise ValueError(f"chunk and sample_rate must be positive, got {chunk}, {sample_rate}")
        self.sample_rate, self.chunk = int(sample_rate), int(chunk)
        all_files = list_files(root)
        self.root = all_files[0].parent
        lo, hi = split_bounds(len(all_files))[self.split]
        self.files: list[Path] = all_files[lo:hi]
        if not self.files:
            log.warning("%s: the %s split is empty (%d files in all)", self.root, self.split, len(all_files))
        self._native = []      # file at the target rate: chunks are read straight from disk
        self.num_samples = []  # per file, at sample_rate
        for p in self.files:
            sr, _, frames = audio_info(p)
            self._native.append(sr == self.sample_rate)
            self.num_samples.append(frames if sr == self.sample_rate else len(load_audio(p, self.sample_rate)))
        self.chunks_per_file = [n // self.chunk for n in self.num_samples]
        self._ends = np.cumsum(self.chunks_per_file, dtype=np.int64)
        self._last = (None, None)  # (file index, decoded audio): one resampled file kept

    @property
    def codec(self) -> str:
        return CODEC[self.quantization]

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(file index, chunk index within the file) of chunk i."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"chunk {i} out of range for {n} chunks ({self.split} split)")
        i %= n
        f = int(np.searchsorted(self._ends, i, side="right"))
        return f, i - (int(self._ends[f - 1]) if f else 0)

    def audio(self, i: int) -> np.ndarray:
        """float32 (chunk,) samples of chunk i, before quantization."""
        f, j = self.locate(i)
        p, start = self.files[f], j * self.chunk
        if self._native[f]:
            x = _read_frames(p, start, self.chunk)
        else:
            if self._last[0] != f:
                self._last = (f, load_audio(p, self.sample_rate))
            x = self._last[1][start:start + self.chunk]
        if len(x) != self.chunk:
            raise AudioError(f"{p}: chunk {j} has {len(x)} samples, expected {self.chunk} "
                             "(did the file change on disk?)")
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.from_numpy(encode(self.audio(i), self.quantization))
        x = torch.empty_like(y)
        x[0] = ZERO
        x[1:] = y[:-1]
        return x, y

    def __repr__(self) -> str:
        return (f"YouTubeMix({str(self.root)!r}, split={self.split!r}, quantization="
                f"{self.quantization!r}: {len(self.files)} files, {len(self)} chunks of {self.chunk})")


def encode(audio: np.ndarray, quantization: str = "s4") -> np.ndarray:
    """One chunk of float audio -> int64 codes with the chosen quantization."""
    if quantization == "s4":
        return mulaw_encode_s4(audio)  # min-max over this chunk, floor-based
    return mulaw_encode(audio)


def _read_frames(path: Path, start: int, frames: int) -> np.ndarray:
    """Frames [start, start + frames) as float32 mono, as `load_audio` computes them."""
    import soundfile as sf

    try:
        with sf.SoundFile(os.fsencode(path)) as f:
            f.seek(start)
            x = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({error_reason(e, path)})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio holds NaN or inf samples")
    return np.clip(np.ascontiguousarray(x, dtype=np.float32), -1.0, 1.0)


# ----------------------------------------------------------------------------- cache

def encode_file_chunks(src, dst, sample_rate: int = 16000, chunk: int = CHUNK,
                       quantization: str = "s4") -> int:
    """Encode every whole chunk of `src` (each on its own, as YouTubeMix does) into raw uint8
    at `dst`. Returns the number of samples written; AudioError if shorter than one chunk.
    Only whole chunks are written: a YouTubeMix cache never holds a partial one
    (TokenCache.file_segments relies on it)."""
    x = load_audio(src, sample_rate)
    n = len(x) // chunk
    if n == 0:
        raise AudioError(f"{src}: shorter than one chunk ({len(x)} < {chunk} samples)")
    with open(dst, "wb") as fh:
        for j in range(n):
            fh.write(memoryview(encode(x[j * chunk:(j + 1) * chunk], quantization).astype(np.uint8)))
    return n * chunk


def prepare_youtubemix(root, out, quantization: str = "s4", sample_rate: int = 16000,
                       chunk: int = CHUNK, workers: int = 2, progress: bool = True,
                       force: bool = False) -> TokenCache:
    """Write YouTubeMix as a token cache (wavelm.data.cache): each file's tokens
    are its whole chunks, each encoded as `YouTubeMix.__getitem__` does (so cache file i, chunk j
    equals the dataset's y for that chunk); splits follow the s4 rule on the full file list.
    Files shorter than one chunk, or unreadable, are listed in meta["skipped"]."""
    quantization = _check_quantization(quantization)
    if int(chunk) < 1 or sample_rate <= 0:
        raise ValueError(f"chunk and sample_rate must be positive, got {chunk}, {sample_rate}")
    files = list_files(root)
    src_root = files[0].parent
    out = Path(out).expanduser().resolve()
    codec = CODEC[quantization]
    settings = {"format": "youtubemix", "chunk": int(chunk), "quantization": quantization,
                "train_fraction": TRAIN_FRACTION}
    stat = {p.name: p.stat() for p in files}
    stats = [(name, st.st_size, st.st_mtime) for name, st in stat.items()]
    with writing_cache(out):
        if not force:
            cached = fresh_cache(out, src_root, sample_rate, codec, settings, stats)
            if cached is not None:
                return cached

        splits = {}
        for s, (lo, hi) in split_bounds(len(files)).items():
            splits.update((p.name, s) for p in files[lo:hi])
        scratch = temp_dir_next_to(out, "parts")
        try:
            enc = functools.partial(encode_file_chunks, sample_rate=sample_rate, chunk=int(chunk),
                                    quantization=quantization)
            done, failed = encode_files([(p.name, p) for p in files], enc, scratch, workers=workers,
                                        progress=progress, desc="prepare youtubemix")
            skipped = [{"path": p.name, "reason": failed[p.name], "size": stat[p.name].st_size,
                        "mtime": stat[p.name].st_mtime} for p in files if p.name in failed]
            if not done:
                raise ValueError(f"{src_root}: none of the {len(files)} audio files gave a whole chunk "
                                 f"of {chunk} samples" + (f" (first: {skipped[0]['path']}: "
                                                          f"{skipped[0]['reason']})" if skipped else ""))
            warn_skipped(src_root, skipped, len(files))
            entries = ((p.name, splits[p.name], read_part(*done[p.name]),
                        stat[p.name].st_size, stat[p.name].st_mtime) for p in files if p.name in done)
            cache = write_cache(out, entries, sample_rate, codec, src_root, skipped, settings)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: wrote YouTubeMix (%s), %.2f h", out,
             ", ".join(f"{k} {v}" for k, v in cache.meta["splits"].items()), cache.meta["hours"]["total"])
    return cache
