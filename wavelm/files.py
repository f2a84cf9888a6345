"""Writing files: one atomic-publish helper, and output checks made before the work starts.

    check_output("out.wav", AUDIO_OUT)     # OutputError (a ValueError) naming the path, or the Path
    atomic_write("x.json", lambda f: f.write(b"..."))

Every file wavelm writes goes through `atomic_write` (or `atomic_write_path`, for writers
that want a path, such as soundfile), every folder (checkpoints, token caches) through
`publish_dir`: a temp file in the destination folder (a short name, whatever the length of the
final one), fsync, then os.replace, so the final name only ever holds a complete file, and a
failure while writing (full disk, read-only file system, permission) removes the temp file and
raises OutputError naming the path. A symlink given as the output is written through (its
target is replaced, the link stays); devices and FIFOs are refused. Commands call
`check_output` / `check_output_dir` before they start, so an unwritable output fails in a
second, not after an hour of work.

A run folder or a token cache has one writer at a time: `hold_lock` takes an exclusive
`fcntl.flock` on a lock file holding the writer's PID (the kernel drops it when the process
dies, so a killed run leaves no stale lock), and refuses a second writer with BusyError.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class OutputError(ValueError):
    """An output that cannot be written: the message names the path and the reason."""


class BusyError(OutputError):
    """Another live process writes this run folder or token cache (it holds the lock)."""


NAME_MAX = 255         # bytes in one file name on Linux file systems (ext4, xfs, btrfs, tmpfs)


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


def check_not_special(path) -> None:
    """OutputError when `path` is a device, FIFO or socket (/dev/null, /dev/full, a named pipe):
    outputs are written to a temp file and renamed, which would replace such a file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise OutputError(f"{path}: is {kind}, not a regular file; wavelm writes complete files "
                          "(temp file, then rename): give a file name such as out.wav")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def check_output(path, extensions: tuple[str, ...] | None = None) -> Path:
    """Check that a file can be written at `path` (its folder exists or can be made, is
    writable, the name fits the file system, it is not a device or FIFO, and the extension is
    one of `extensions`). Returns the Path."""
    p = Path(path)
    if extensions is not None and p.suffix.lower() not in extensions:
        raise OutputError(f"{path}: unsupported output extension {p.suffix or '(none)'}; "
                          f"use one of {' '.join(extensions)}")
    if os.path.isdir(p):
        raise OutputError(f"{path}: is a folder, not a file name")
    check_not_special(p)
    folder = _existing_parent(p)
    limit = _name_max(folder)
    if len(os.fsencode(p.name)) > limit:
        raise OutputError(f"{path}: file name of {len(os.fsencode(p.name))} bytes; "
                          f"this file system allows {limit}")
    _probe(folder, path)
    return p


def check_output_dir(path) -> Path:
    """Check that a folder can be created (or exists) at `path` and written into."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    _probe(p if p.is_dir() else _existing_parent(p), path)
    return p


def temp_path(path: Path) -> Path:
    """The hidden temp name beside `path`: `.NAME.tmpPID`, or `.HASH.tmpPID` when that would
    not fit in a file name (a 250-byte NAME is a valid output, its temp name must be too)."""
    name = f".{path.name}.tmp{os.getpid()}"
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]
        name = f".{digest}.tmp{os.getpid()}"
    return path.with_name(name)


def _write_target(path: Path) -> Path:
    """Where writing `path` lands: a symlink's target (the link stays a link); devices and
    FIFOs are refused."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    check_not_special(path)
    return path


def _sndfile_reason(e: Exception, folder: Path) -> str:
    """libsndfile says "System error." for any failed write; name a full disk when it is one."""
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    return f"write failed ({(getattr(e, 'error_string', None) or str(e)).rstrip('.')})"


@contextlib.contextmanager
def atomic_path(path):
    """`with atomic_path(out) as tmp:` write the whole file at `tmp` (a temp path next to `out`);
    on leaving, it is fsynced and renamed into place. OSError (and soundfile's errors) while
    writing become OutputError naming `out`; on any error the temp file is removed. Writers
    given a path report a full disk as an error, where soundfile's virtual I/O through a Python
    file object cannot (its callbacks do not raise)."""
    path = _write_target(Path(path))
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: {_reason(e)}") from None
    except RuntimeError as e:           # soundfile.LibsndfileError (e.g. "System error" on ENOSPC)
        if type(e).__name__ != "LibsndfileError":
            raise
        raise OutputError(f"{path}: {_sndfile_reason(e, path.parent)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_path(path, write_fn):
    """Call write_fn(tmp_path) to write the whole file at a temp path next to `path`, then
    rename it into place (`atomic_path`). Returns the path written (a symlink's target)."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return _write_target(Path(path))


def atomic_write(path, write_fn, mode="wb"):
    """Call write_fn(file) on a temp file next to `path`, then rename it into place (see
    `atomic_write_path`)."""
    def to_file(tmp):
        with open(tmp, mode) as f:
            write_fn(f)

    return atomic_write_path(path, to_file)


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


# ----------------------------------------------------------------------------- one writer

def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (ours included; another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


@contextlib.contextmanager
def hold_lock(lock: Path, what):
    """Hold an exclusive lock on the file `lock` (created, the PID written into it) for the
    with-block, then remove it. BusyError naming `what` and the holder's PID when another
    process holds it. The kernel releases an flock when its process dies, so a killed writer
    never blocks the next one; a file system without flock (some network mounts) gets a warning."""
    import fcntl

    lock = Path(lock)
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{what}: cannot create the lock file {lock.name}: {_reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise BusyError(f"{what}: in use by another wavelm process (PID {pid or 'unknown'}, "
                            f"lock {lock}); wait for it to end or stop it") from None
        except OSError as e:
            log.warning("%s: cannot lock %s (%s); going on without a lock", what, lock, _reason(e))
            break
        try:   # the holder removes the file on release: lock the file the name still holds
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)         # while still locked: a waiting opener sees a stale name and retries
        os.close(fd)
