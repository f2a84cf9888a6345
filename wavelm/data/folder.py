"""Any folder of audio -> a uint8 mu-law token cache on disk, and `TokenCache` to read one.

    cache = prepare_folder("data/piano", "data/piano_cache")   # decodes, resamples, encodes
    cache.split_tokens("train")                                 # list of uint8 memmaps, one a file

A cache is a directory:

    tokens.bin    every file's uint8 tokens, concatenated in natural order of the relative paths
    offsets.npy   int64 (n_files + 1,): file i is tokens[offsets[i]:offsets[i + 1]]
    meta.json     {"version": 1, "sample_rate", "codec" ("mulaw" | "mulaw-s4"), "source" (abs root),
                   "files": [{"path" (relative), "split", "num_samples", "size", "mtime"}],
                   "skipped": [{"path", "reason", "size", "mtime"}], "splits": {split: n_files},
                   "hours": {split: h, "total": h}, "settings": {what produced it}}

It is built in a temp directory next to `out` and renamed into place, so the final name only
ever holds a complete cache. `prepare_*` hold `.NAME.lock` beside it while they write (one
writer at a time) and remove the scratch folders of runs that were killed. Re-running with the same files (paths, sizes, mtimes) and settings
returns the existing cache at once (`cache.reused` is True).

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

import contextlib
import functools
import json
import logging
import math
import os
import re
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from wavelm.audio import AUDIO_EXTENSIONS, AudioError, iter_audio, mulaw_encode
from wavelm.files import hold_lock, pid_alive, publish_dir, recover_dir

log = logging.getLogger(__name__)

VERSION = 1
# "unseen": audio held out entirely (e.g. a piano sound never trained on), scored on its own
SPLITS = ("train", "val", "test", "unseen")
CODECS = ("mulaw", "mulaw-s4")
_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "unseen": "unseen"}
_CACHE_FILES = ("tokens.bin", "offsets.npy", "meta.json")


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
        missing = [n for n in _CACHE_FILES if not (self.path / n).is_file()]
        if missing:
            raise ValueError(f"{self.path}: not a token cache (missing {', '.join(missing)}); "
                             "create one with `wavelm prepare`")
        self.meta = _read_meta(self.path / "meta.json")
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
        _check_split(split, allow_none=True)
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

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    def __repr__(self) -> str:
        s = ", ".join(f"{k} {self.meta['splits'].get(k, 0)}" for k in SPLITS)
        return (f"TokenCache({str(self.path)!r}: {len(self)} files ({s}), "
                f"{self.meta['hours'].get('total', 0):.2f} h, {self.codec} @ {self.sample_rate} Hz)")


def _read_meta(p: Path) -> dict:
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


def _check_split(split, allow_none=False):
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
                _check_split(split)
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
        _swap_into_place(tmp, out)
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


def _swap_into_place(tmp: Path, out: Path):
    """Rename the finished cache `tmp` to `out`, replacing an old cache there (files.publish_dir)."""
    publish_dir(tmp, out)


# ----------------------------------------------------------------------------- scanning

def scan_audio(root, recursive: bool = True) -> list[tuple[str, Path, int, float]]:
    """Audio files under `root` as (relative posix path, absolute path, size, mtime),
    natural-sorted by relative path. Raises ValueError when `root` is not a folder."""
    from natsort import natsorted, ns

    root = _check_root(root)
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


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a folder of audio")
    return root.resolve()


def _no_audio_error(root: Path) -> ValueError:
    if not any(root.iterdir()):
        return ValueError(f"{root}: folder is empty")
    exts = " ".join(AUDIO_EXTENSIONS)
    return ValueError(f"{root}: no audio files found (looked for {exts}, in subfolders too)")


# ----------------------------------------------------------------------------- encoding

def encode_stream(src, dst, sample_rate: int = 16000, block_seconds: float = 30.0) -> int:
    """Decode `src` block by block (bounded memory), mu-law encode, write raw uint8 to `dst`.
    Returns the number of samples; raises AudioError when the file holds none."""
    n = 0
    with open(dst, "wb") as fh:
        for block in iter_audio(src, sample_rate=sample_rate, block_seconds=block_seconds):
            q = mulaw_encode(block).astype(np.uint8)
            fh.write(memoryview(q))
            n += len(q)
    if n == 0:
        raise AudioError(f"{src}: no audio (0 samples)")
    return n


def _worker_init(parent: int | None = None):
    import signal

    import torch  # one thread a worker: the processes are the parallelism (see docs/design.md)

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle: it stops the pool
    if parent is not None:
        exit_with(parent)


def exit_with(parent: int) -> None:
    """In a worker: exit as soon as process `parent` (the one that started the pool) is gone,
    killed (SIGKILL) included. A pool's workers otherwise wait for work forever, and keep the
    forkserver (and its memory) alive with them."""
    import select
    import threading
    import time

    try:
        fd = os.pidfd_open(parent)      # readable when the process ends (Linux 5.3)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch():
        if fd is not None:
            select.select([fd], [], [])
        else:
            while pid_alive(parent):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="wavelm-exit-with-parent", daemon=True).start()


def _stop_pool(ex: ProcessPoolExecutor) -> None:
    """Stop a pool now (an error or a signal in the parent): queued jobs are dropped and the
    workers terminated, rather than waiting for every file to be decoded."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.terminate()
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.join(timeout=5)


def _reason(e: Exception, src) -> str:
    msg = str(e).strip() or type(e).__name__
    prefix = f"{src}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def encode_files(jobs: list[tuple[str, Path]], encode: Callable, scratch: Path, workers: int = 2,
                 progress: bool = True, desc: str = "encoding") -> tuple[dict, dict]:
    """Run `encode(src, dst) -> num_samples` on every (relpath, src) job, in `workers`
    processes. Job k writes scratch/k.u8. Returns ({relpath: (part_path, n)}, {relpath: reason})
    for the files that worked and those that did not (AudioError, OSError, RuntimeError)."""
    from tqdm.auto import tqdm

    done, failed = {}, {}

    def record(rel, src, part, fn):
        try:
            done[rel] = (part, int(fn()))
        except BrokenProcessPool:
            raise
        except (ValueError, OSError, RuntimeError) as e:  # AudioError is a ValueError
            failed[rel] = _reason(e, src)

    empty = set()
    for rel, src in jobs:
        try:
            if os.path.getsize(src) == 0:
                failed[rel] = "empty file (0 bytes)"
                empty.add(rel)
        except OSError as e:  # vanished since the scan
            failed[rel] = _reason(e, src)
            empty.add(rel)
    jobs_all, jobs = jobs, [j for j in jobs if j[0] not in empty]

    parts = [scratch / f"{k}.u8" for k in range(len(jobs))]
    bar = tqdm(total=len(jobs_all), initial=len(empty), unit="file", desc=desc, disable=not progress)
    try:
        if workers > 1 and not _main_importable():
            log.info("__main__ is not a file (stdin?): worker processes cannot start, decoding in-process")
            workers = 1
        if workers <= 1 or len(jobs) <= 1:
            for (rel, src), part in zip(jobs, parts):
                record(rel, src, part, functools.partial(encode, src, part))
                bar.update()
        else:
            import multiprocessing as mp

            # forkserver (spawn where there is none): workers start from a clean process, with no
            # OpenMP or CUDA state inherited from the caller; the server imports torch once
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["wavelm.data.folder"])
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_worker_init,
                                     initargs=(os.getpid(),), mp_context=ctx) as ex:
                try:
                    futs = {ex.submit(encode, src, part): (rel, src, part)
                            for (rel, src), part in zip(jobs, parts)}
                    for fut in as_completed(futs):
                        rel, src, part = futs[fut]
                        record(rel, src, part, fut.result)
                        bar.update()
                except BaseException:   # Ctrl-C, SIGTERM (wavelm.interrupt), a broken pool
                    _stop_pool(ex)
                    raise
    finally:
        bar.close()
    return done, failed


def _main_importable() -> bool:
    # spawn/forkserver children re-run the parent's __main__ file; `python - < script` has none
    import sys

    f = getattr(sys.modules.get("__main__"), "__file__", None)
    return f is None or os.path.isfile(f)


def _read_part(part: Path, n: int) -> np.ndarray:
    return np.memmap(part, dtype=np.uint8, mode="r", shape=(n,))


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


def _warn_skipped(root, skipped: list[dict], total: int):
    if skipped:
        listing = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:20])
        more = f"; ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning("%s: skipped %d of %d audio files: %s%s", root, len(skipped), total, listing, more)


# ----------------------------------------------------------------------------- folders

def _parse_split(split) -> tuple[float, float, float]:
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
    fr = _parse_split(split)
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


def prepare_folder(root, out, sample_rate: int = 16000, split=(0.9, 0.05, 0.05), seed: int = 0,
                   workers: int = 2, progress: bool = True, block_seconds: float = 30.0,
                   force: bool = False) -> TokenCache:
    """Decode every audio file under `root` into a token cache at `out` (see module docstring).

    Raises ValueError naming `root` when it holds no audio, or no file could be decoded.
    `block_seconds` bounds decoding memory per file; `force` rebuilds an up-to-date cache.
    """
    root = _check_root(root)
    out = Path(out).expanduser().resolve()
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    fr = _parse_split(split)
    found = scan_audio(root)
    if not found:
        raise _no_audio_error(root)

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
            _warn_skipped(root, skipped, len(found))
            entries = ((rel, splits[rel], _read_part(*done[rel]), *info[rel]) for rel in good)
            cache = write_cache(out, entries, sample_rate, "mulaw", root, skipped, settings)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s: wrote %d files (%s), %.2f h", out, len(cache),
             ", ".join(f"{k} {v}" for k, v in cache.meta["splits"].items()),
             cache.meta["hours"]["total"])
    return cache
