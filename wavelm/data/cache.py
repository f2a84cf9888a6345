"""The uint8 token cache on disk: `TokenCache` reads one, `write_cache` writes one.

    cache = TokenCache("data/piano_cache")
    cache.split_tokens("train")          # list of uint8 memmaps, one a file
    cache.segments("train")              # the independent token runs (see `segments`)

A cache is a directory:

    tokens.bin    every file's uint8 tokens, concatenated in natural order of the relative paths
    offsets.npy   int64 (n_files + 1,): file i is tokens[offsets[i]:offsets[i + 1]]
    meta.json     {"version": 1, "sample_rate", "codec" ("mulaw" | "mulaw-s4"), "source" (abs root),
                   "files": [{"path" (relative), "split", "num_samples", "size", "mtime"}],
                   "skipped": [{"path", "reason", "size", "mtime"}], "splits": {split: n_files},
                   "hours": {split: h, "total": h}, "settings": {what produced it}}

It is built in a temp directory next to `out` and renamed into place, so the final name only
ever holds a complete cache. Writers (the formats' prepare functions, wavelm/data/formats.py)
hold `.NAME.lock` beside it while they write (`writing_cache`: one writer at a time) and remove
the scratch folders of runs that were killed.

This module imports neither torch nor any audio library: reading a cache is cheap.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from wavelm.files import hold_lock, pid_alive, publish_dir

log = logging.getLogger(__name__)

VERSION = 1
# "unseen": audio held out entirely (e.g. a piano sound never trained on), scored on its own
SPLITS = ("train", "val", "test", "unseen")
CODECS = ("mulaw", "mulaw-s4")
CACHE_FILES = ("tokens.bin", "offsets.npy", "meta.json")


# ----------------------------------------------------------------------------- reading

class TokenCache:
    """Read a token cache directory (see the module docstring for the format).

    `tokens(i)` is a read-only uint8 memmap slice, so opening a cache costs no memory however
    large it is. Pickles cheaply (the memmap is reopened in the receiving process).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.reused = False  # set by prepare_* when an up-to-date cache was returned as is
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a token cache (no such directory)")
        missing = [n for n in CACHE_FILES if not (self.path / n).is_file()]
        if missing:
            raise ValueError(f"{self.path}: not a token cache (missing {', '.join(missing)}); "
                             "create one with `wavelm prepare`")
        self.meta = read_meta(self.path / "meta.json")
        try:
            offsets = np.load(self.path / "offsets.npy", allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{self.path / 'offsets.npy'}: unreadable ({e})") from None
        n = len(self.meta["files"])
        if offsets.dtype != np.int64 or offsets.shape != (n + 1,) or offsets[0] != 0 \
                or np.any(np.diff(offsets) < 0):
            raise ValueError(f"{self.path / 'offsets.npy'}: corrupt (expected {n + 1} increasing "
                             f"int64 offsets from 0, got shape {offsets.shape} {offsets.dtype})")
        size = (self.path / "tokens.bin").stat().st_size
        if size != int(offsets[-1]):
            raise ValueError(f"{self.path / 'tokens.bin'}: {size} bytes, but offsets.npy says "
                             f"{int(offsets[-1])}: the cache is incomplete or corrupt; prepare it again")
        for i, f in enumerate(self.meta["files"]):
            if int(offsets[i + 1] - offsets[i]) != f["num_samples"]:
                raise ValueError(f"{self.path}: meta.json and offsets.npy disagree on {f['path']!r}")
        self.offsets = offsets
        self._mm = None

    # -- metadata
    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def codec(self) -> str:
        return self.meta["codec"]

    @property
    def source(self) -> str:
        return self.meta["source"]

    def __len__(self) -> int:
        return len(self.meta["files"])

    def files(self, split: str | None = None) -> list[dict]:
        """The file entries of `split` (None: all), each a copy with its cache "index" added."""
        check_split(split, allow_none=True)
        return [dict(f, index=i) for i, f in enumerate(self.meta["files"])
                if split is None or f["split"] == split]

    def num_samples(self, split: str | None = None) -> int:
        return sum(f["num_samples"] for f in self.files(split))

    # -- tokens
    def _tokens_array(self) -> np.ndarray:
        if self._mm is None:
            if int(self.offsets[-1]) == 0:  # np.memmap cannot map an empty file
                self._mm = np.zeros(0, dtype=np.uint8)
            else:
                self._mm = np.memmap(self.path / "tokens.bin", dtype=np.uint8, mode="r")
        return self._mm

    def tokens(self, i: int) -> np.ndarray:
        """uint8 tokens of file `i` (an index into all files, as in `files()[k]["index"]`)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"file index {i} out of range for a cache of {n} files")
        i %= n
        return self._tokens_array()[self.offsets[i]:self.offsets[i + 1]]

    def split_tokens(self, split: str) -> list[np.ndarray]:
        return [self.tokens(f["index"]) for f in self.files(split)]

    # -- segments: the one chunking rule (training crops and split scoring both read it)
    def segment_length(self) -> int | None:
        """Tokens per independent segment: the chunk length of a YouTubeMix cache (each chunk was
        encoded on its own, min-max scaled in s4 quantization, so no stream may cross a chunk
        boundary); None where every file is one stream (a folder cache)."""
        settings = self.meta.get("settings") or {}
        chunk = settings.get("chunk") if settings.get("format") == "youtubemix" else None
        return int(chunk) if chunk else None

    def file_segments(self, i: int, whole_only: bool = False) -> list[np.ndarray]:
        """The independent token runs of file `i`, in order, as memmap views (nothing is read):
        the whole file (none if it is empty), or its consecutive `segment_length()` chunks.

        whole_only: drop a last chunk shorter than `segment_length()` (training does: a crop
        must lie in one whole chunk); split scoring keeps it. The two agree on every cache
        `prepare_youtubemix` writes, which holds whole chunks only (encode_file_chunks writes
        n * chunk tokens a file); they differ only on a cache written by hand with youtubemix
        settings (write_cache(..., settings={"format": "youtubemix", "chunk": k}))."""
        t = self.tokens(i)
        k = self.segment_length()
        if k is None:
            return [t] if len(t) else []
        stop = len(t) - k + 1 if whole_only else len(t)
        return [t[j:j + k] for j in range(0, stop, k)]

    def segments(self, split: str, whole_only: bool = False) -> list[np.ndarray]:
        """The independent token runs of a split: whole files for a folder cache, fixed-size
        chunks for a YouTubeMix cache (see `file_segments`). Each starts its own stream (its
        first input is token 128); nothing ever crosses from one segment into the next."""
        return [s for f in self.files(split) for s in self.file_segments(f["index"], whole_only)]

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    def __repr__(self) -> str:
        s = ", ".join(f"{k} {self.meta['splits'].get(k, 0)}" for k in SPLITS)
        return (f"TokenCache({str(self.path)!r}: {len(self)} files ({s}), "
                f"{self.meta['hours'].get('total', 0):.2f} h, {self.codec} @ {self.sample_rate} Hz)")


def read_meta(p: Path) -> dict:
    """meta.json of a cache, checked (ValueError naming `p` when it is corrupt or of another version)."""
    try:
        meta = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: corrupt cache metadata ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: corrupt cache metadata (not a JSON object)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{p}: cache version {meta.get('version')!r} is not supported "
                         f"(this wavelm reads version {VERSION}); prepare the cache again")
    need = ("sample_rate", "codec", "source", "files", "skipped", "splits", "hours")
    missing = [k for k in need if k not in meta]
    if missing:
        raise ValueError(f"{p}: corrupt cache metadata (missing {', '.join(missing)})")
    if meta["codec"] not in CODECS:
        raise ValueError(f"{p}: unknown codec {meta['codec']!r} (expected one of {', '.join(CODECS)})")
    try:
        for f in meta["files"]:
            if f["split"] not in SPLITS or int(f["num_samples"]) < 0 or not isinstance(f["path"], str):
                raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{p}: corrupt cache metadata (bad file entry)") from None
    return meta


def check_split(split, allow_none=False):
    if split is None and allow_none:
        return
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------- writing

def write_cache(out, entries: Iterable, sample_rate: int, codec: str, source,
                skipped: Iterable[dict] = (), settings: dict | None = None) -> TokenCache:
    """Write a token cache atomically and return it opened.

    entries: iterable of (relpath, split, tokens, size, mtime), tokens a 1-D uint8 array (an
    integer array with values 0..255 is converted). Consumed one at a time, so a generator of
    memmaps keeps memory bounded. skipped: dicts with at least "path" and "reason".
    An existing cache at `out` is replaced; any other existing non-empty directory is refused.
    """
    out = Path(out)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_next_to(out, "tmp")
    try:
        files, offsets = [], [0]
        with open(tmp / "tokens.bin", "wb") as fh:
            for rel, split, tokens, size, mtime in entries:
                check_split(split)
                a = _as_tokens(tokens, rel)
                fh.write(memoryview(np.ascontiguousarray(a)))
                offsets.append(offsets[-1] + len(a))
                files.append({"path": str(rel), "split": split, "num_samples": int(len(a)),
                              "size": int(size), "mtime": float(mtime)})
            fh.flush()
            os.fsync(fh.fileno())
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        used = [s for s in SPLITS if s != "unseen" or any(f["split"] == s for f in files)]
        splits = {s: sum(f["split"] == s for f in files) for s in used}
        hours = {s: sum(f["num_samples"] for f in files if f["split"] == s) / sample_rate / 3600
                 for s in used}
        hours["total"] = sum(hours.values())
        meta = {"version": VERSION, "sample_rate": int(sample_rate), "codec": codec,
                "source": str(Path(source).resolve()), "files": files,
                "skipped": [dict(s) for s in skipped], "splits": splits, "hours": hours,
                "settings": settings or {}}
        with open(tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already on success
    return TokenCache(out)


def _as_tokens(tokens, rel) -> np.ndarray:
    a = np.asarray(tokens)
    if a.ndim != 1:
        raise ValueError(f"{rel}: tokens must be 1-D, got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 255)):
            raise ValueError(f"{rel}: tokens must be uint8 codes 0..255, got {a.dtype}")
        a = a.astype(np.uint8)
    return a


def _check_out(out: Path):
    if out.is_file():
        raise ValueError(f"{out}: is a file; --out must be a directory for the cache")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise ValueError(f"{out}: exists and is not a wavelm token cache; refusing to replace it")


def temp_dir_next_to(out: Path, tag: str) -> Path:
    """A new hidden directory beside `out` (same filesystem, so renames are atomic), created
    with the usual umask permissions (tempfile.mkdtemp would make it 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        p = out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


@contextlib.contextmanager
def writing_cache(out: Path):
    """Be the one writer of the cache `out`: hold its lock (`.NAME.lock` beside it, since the
    cache folder itself is replaced whole) and remove the scratch folders that killed runs left
    beside it. BusyError (a ValueError) names the PID of a live writer."""
    with hold_lock(out.parent / f".{out.name}.lock", out):
        remove_stale_temps(out)
        yield


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the hidden scratch folders `.NAME.parts-PID-HEX` and `.NAME.tmp-PID-HEX` beside
    `out` whose process is gone (a prepare that was killed); a live process's stay."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:parts|tmp)-(\d+)-[0-9a-f]+")
    stale = []
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and p.is_dir() and not p.is_symlink() and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
                stale.append(p)
    if stale:
        log.info("%s: removed %d scratch folder(s) left by killed runs", out, len(stale))
    return stale


def swap_into_place(tmp: Path, out: Path):
    """Rename the finished cache `tmp` to `out`, replacing an old cache there (files.publish_dir)."""
    publish_dir(tmp, out)
