"""The "folder" format: any folder of audio -> a uint8 mu-law token cache (wavelm/data/cache.py).

    cache = prepare_folder("data/piano", "data/piano_cache")   # decodes, resamples, encodes
    cache.split_tokens("train")                                 # list of uint8 memmaps, one a file

Also the pieces every format's prepare shares: scanning a source folder (`check_root`,
`no_audio_error`), freshness (`fresh_cache`: re-running with the same files (paths, sizes,
mtimes) and settings returns the existing cache at once, `cache.reused` True) and the one
warning listing skipped files (`warn_skipped`). Reading and writing caches lives in cache.py,
the worker pool in encode.py; the names they held here before are re-exported below.

Splits. If `root` has any top-level folder named train/, val/ (or validation/, valid/), test/ or
unseen/ (held-out audio such as a piano never trained on, scored on its own),
files take the split of the folder they are in (files elsewhere are skipped, and listed).
Otherwise a seeded shuffle assigns files by the `split` fractions: n_val = floor(n * val),
n_test = floor(n * test), the rest train, and at least one train file; so a folder of fewer than
~20 files may get an empty val or test split. Files that cannot be decoded, or hold no samples,
are skipped (one warning, listed in meta["skipped"]) before the shuffle.

Hidden files and folders (names starting with ".") are ignored.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from wavelm.audio import AUDIO_EXTENSIONS
# re-exported: the names code and tests import from wavelm.data.folder
from wavelm.data.cache import (CODECS, SPLITS, VERSION, TokenCache, remove_stale_temps,  # noqa: F401
                               temp_dir_next_to, write_cache, writing_cache)
from wavelm.data.encode import encode_files, encode_stream, exit_with, read_part  # noqa: F401
from wavelm.files import recover_dir

log = logging.getLogger(__name__)

_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "unseen": "unseen"}


# ----------------------------------------------------------------------------- scanning

def scan_audio(root, recursive: bool = True) -> list[tuple[str, Path, int, float]]:
    """Audio files under `root` as (relative posix path, absolute path, size, mtime),
    natural-sorted by relative path. Raises ValueError when `root` is not a folder."""
    from natsort import natsorted, ns

    root = check_root(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:  # dangling link
                continue
            if p.is_file():
                found.append((p.relative_to(root).as_posix(), p, st.st_size, st.st_mtime))
    return natsorted(found, key=lambda t: t[0], alg=ns.PATH)


def scan_stats(path) -> dict:
    """{relpath: (size, mtime)} of the audio files under an audio folder, as prepare_folder sees
    them (the folder format's `scan`: a resumed run checks them before a rebuild)."""
    return {rel: (int(size), float(mtime)) for rel, _, size, mtime in scan_audio(path)}


def check_root(root) -> Path:
    """`root` resolved; FileNotFoundError / NotADirectoryError unless it is a folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a folder of audio")
    return root.resolve()


def no_audio_error(root: Path) -> ValueError:
    """The error for a folder with no audio file: empty, or what was looked for."""
    if not any(root.iterdir()):
        return ValueError(f"{root}: folder is empty")
    exts = " ".join(AUDIO_EXTENSIONS)
    return ValueError(f"{root}: no audio files found (looked for {exts}, in subfolders too)")


# ----------------------------------------------------------------------------- freshness

def fresh_cache(out, source: Path, sample_rate: int, codec: str, settings: dict,
                stats: list[tuple[str, int, float]]) -> TokenCache | None:
    """The cache at `out` if it was built from exactly these (relpath, size, mtime) files with
    these settings, else None."""
    recover_dir(Path(out))          # a publish interrupted between its two renames
    out = Path(out)
    if not (out / "meta.json").is_file():
        return None
    try:
        cache = TokenCache(out)
    except ValueError as e:
        log.info("%s: rebuilding (%s)", out, e)
        return None
    m = cache.meta
    same = (m["source"] == str(source) and m["sample_rate"] == sample_rate and m["codec"] == codec
            and m.get("settings") == json.loads(json.dumps(settings)))
    if not same:
        log.info("%s: settings or source changed, rebuilding", out)
        return None
    seen = sorted((e["path"], int(e.get("size", -1)), float(e.get("mtime", -1)))
                  for e in m["files"] + m["skipped"])
    if seen != sorted((r, int(s), float(t)) for r, s, t in stats):
        log.info("%s: files changed since the cache was built, rebuilding", out)
        return None
    cache.reused = True
    log.info("%s: up to date (%d files, same sizes and mtimes), reusing it", out, len(cache))
    return cache


def warn_skipped(root, skipped: list[dict], total: int):
    """One warning listing (the first 20 of) the skipped files and why."""
    if skipped:
        listing = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:20])
        more = f"; ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning("%s: skipped %d of %d audio files: %s%s", root, len(skipped), total, listing, more)


# ----------------------------------------------------------------------------- splits

def parse_split(split) -> tuple[float, float, float]:
    """Three fractions (train, val, test) from a sequence or a string such as "0.9,0.05,0.05"."""
    parts = split.split(",") if isinstance(split, str) else split
    try:
        fr = tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        raise ValueError(f"split must be three fractions (train, val, test), got {split!r}") from None
    if len(fr) != 3 or any(not math.isfinite(x) or x < 0 for x in fr) or fr[0] <= 0 \
            or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions summing to 1 with "
                         f"train > 0, got {split!r}")
    return fr



def assign_splits(n: int, split=(0.9, 0.05, 0.05), seed: int = 0) -> list[str]:
    """Seeded shuffle of n files into splits: n_val = floor(n*val), n_test = floor(n*test),
    the rest train (at least one). Same (n, split, seed) -> same assignment."""
    fr = parse_split(split)
    n_val, n_test = math.floor(n * fr[1] + 1e-9), math.floor(n * fr[2] + 1e-9)
    while n and n - n_val - n_test < 1:  # at least one train file: take from test, then val
        if n_test:
            n_test -= 1
        else:
            n_val -= 1
    perm = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for rank, i in enumerate(perm):
        out[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return out


def _subfolder_split(rel: str) -> str | None:
    top = rel.split("/", 1)[0].lower() if "/" in rel else None
    return _SPLIT_DIRS.get(top) if top else None


# ----------------------------------------------------------------------------- prepare

def prepare_folder(root, out, sample_rate: int = 16000, split=(0.9, 0.05, 0.05), seed: int = 0,
                   workers: int = 2, progress: bool = True, block_seconds: float = 30.0,
                   force: bool = False) -> TokenCache:
    """Decode every audio file under `root` into a token cache at `out` (see module docstring).

    Raises ValueError naming `root` when it holds no audio, or no file could be decoded.
    `block_seconds` bounds decoding memory per file; `force` rebuilds an up-to-date cache.
    """
    root = check_root(root)
    out = Path(out).expanduser().resolve()
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    fr = parse_split(split)
    found = scan_audio(root)
    if not found:
        raise no_audio_error(root)

    by_folder = any(p.is_dir() and p.name.lower() in _SPLIT_DIRS for p in root.iterdir())
    settings = ({"format": "folder", "split": "folders"} if by_folder
                else {"format": "folder", "split": list(fr), "seed": int(seed)})
    stats = [(rel, size, mtime) for rel, _, size, mtime in found]
    with writing_cache(out):
        if not force:
            cached = fresh_cache(out, root, sample_rate, "mulaw", settings, stats)
            if cached is not None:
                return cached

        skipped, splits = [], {}
        info = {rel: (size, mtime) for rel, _, size, mtime in found}
        jobs = []
        for rel, path, size, mtime in found:
            s = _subfolder_split(rel) if by_folder else None
            if by_folder and s is None:
                skipped.append({"path": rel, "reason": "not under a train/, val/, test/ or unseen/ folder",
                                "size": size, "mtime": mtime})
                continue
            splits[rel] = s
            jobs.append((rel, path))

        scratch = temp_dir_next_to(out, "parts")
        try:
            enc = functools.partial(encode_stream, sample_rate=sample_rate, block_seconds=block_seconds)
            done, failed = encode_files(jobs, enc, scratch, workers=workers, progress=progress,
                                        desc=f"prepare {root.name}")
            for rel, _ in jobs:
                if rel in failed:
                    size, mtime = info[rel]
                    skipped.append({"path": rel, "reason": failed[rel], "size": size, "mtime": mtime})
            good = [rel for rel, _ in jobs if rel in done]
            if not good:
                first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
                raise ValueError(f"{root}: none of the {len(found)} audio files could be decoded{first}")
            if not by_folder:
                splits.update(zip(good, assign_splits(len(good), fr, seed)))
            elif not any(splits[r] == "train" for r in good):
                log.warning("%s: no usable file under train/: the cache has no training split", root)
            order = {rel: k for k, (rel, *_) in enumerate(found)}
            skipped.sort(key=lambda s: order[s["path"]])
            warn_skipped(root, skipped, len(found))
            entries = ((rel, splits[rel], read_part(*done[rel]), *info[rel]) for rel in good)
            cache = write_cache(out, entries, sample_rate, "mulaw", root, skipped, settings)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: wrote %d files (%s), %.2f h", out, len(cache),
             ", ".join(f"{k} {v}" for k, v in cache.meta["splits"].items()),
             cache.meta["hours"]["total"])
    return cache
