"""Writing files: one atomic-publish helper, and output checks made before the work starts.

    check_output("out.wav", AUDIO_OUT)     # OutputError (a ValueError) naming the path, or the Path
    atomic_write("x.json", lambda f: f.write(b"..."))

Every file wavelm writes goes through `atomic_write`, every folder (checkpoints, token caches)
through `publish_dir`: a temp file in the destination folder,
fsync, then os.replace, so the final name only ever holds a complete file, and a failure while
writing (full disk, read-only file system, permission) removes the temp file and raises
OutputError naming the path. Commands call `check_output` / `check_output_dir` before they
start, so an unwritable output fails in a second, not after an hour of work.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class OutputError(ValueError):
    """An output that cannot be written: the message names the path and the reason."""


def _audio_out() -> tuple[str, ...]:
    try:
        import soundfile as sf

        return tuple(sorted({f".{k.lower()}" for k in sf.available_formats()} & {
            ".wav", ".flac", ".ogg", ".mp3", ".aiff", ".au", ".caf", ".w64", ".rf64"}))
    except (ImportError, OSError):
        return (".wav", ".flac", ".ogg")


AUDIO_OUT = _audio_out()   # extensions soundfile writes here


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _existing_parent(p: Path) -> Path:
    q = p.absolute().parent
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _probe(folder: Path, path) -> None:
    """Create and remove a temp file in `folder`: catches read-only file systems, immutable
    folders and permissions, which os.access misses for root."""
    if not folder.is_dir():
        raise OutputError(f"{path}: {folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".wavelm-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {folder}: {_reason(e)}") from None


def check_output(path, extensions: tuple[str, ...] | None = None) -> Path:
    """Check that a file can be written at `path` (its folder exists or can be made, is
    writable, and the extension is one of `extensions`). Returns the Path."""
    p = Path(path)
    if extensions is not None and p.suffix.lower() not in extensions:
        raise OutputError(f"{path}: unsupported output extension {p.suffix or '(none)'}; "
                          f"use one of {' '.join(extensions)}")
    if p.is_dir():
        raise OutputError(f"{path}: is a folder, not a file name")
    _probe(_existing_parent(p), path)
    return p


def check_output_dir(path) -> Path:
    """Check that a folder can be created (or exists) at `path` and written into."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    _probe(p if p.is_dir() else _existing_parent(p), path)
    return p


def atomic_write(path, write_fn, mode="wb"):
    """Call write_fn(file) on a temp file next to `path`, then rename it into place. OSError
    (and soundfile's errors) while writing become OutputError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: {_reason(e)}") from None
    except RuntimeError as e:           # soundfile.LibsndfileError (e.g. "System error" on ENOSPC)
        if type(e).__name__ != "LibsndfileError":
            raise
        raise OutputError(f"{path}: {e}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def atomic_write_text(path, text: str):
    return atomic_write(path, lambda f: f.write(text), mode="w")


def _fsync_dir(path: Path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by the complete folder `tmp` (same file system): final -> .final.old,
    tmp -> final. If the second rename fails the old folder goes back; if the process dies
    between the two, `recover_dir(final)` puts it back. `final` never holds a partial folder."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """After a crash: restore `.final.old` if a publish stopped between its renames (it is then
    complete), else drop it."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
            log.warning("%s: recovered from an interrupted swap", final)
