"""Parallel encoding of source files into scratch parts: the worker pool the formats' prepare
functions share (wavelm/data/formats.py).

    done, failed = encode_files([(rel, path), ...], encode_stream, scratch, workers=2)

Job k runs `encode(src, scratch/k.u8) -> num_samples` in a worker process (forkserver, one torch
thread each: the processes are the parallelism, see docs/design.md); `read_part` maps a finished
part. Workers ignore SIGINT (the parent stops the pool) and exit when the parent dies, SIGKILL
included (`exit_with`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import numpy as np

from wavelm.audio import AudioError, iter_audio, mulaw_encode
from wavelm.files import pid_alive

log = logging.getLogger(__name__)


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


def read_part(part: Path, n: int) -> np.ndarray:
    """The `n` uint8 tokens an encode job wrote to `part`, as a read-only memmap."""
    return np.memmap(part, dtype=np.uint8, mode="r", shape=(n,))


def error_reason(e: Exception, src) -> str:
    """The message of `e` without a leading "SRC: " (the caller names the file itself)."""
    msg = str(e).strip() or type(e).__name__
    prefix = f"{src}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


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
            failed[rel] = error_reason(e, src)

    empty = set()
    for rel, src in jobs:
        try:
            if os.path.getsize(src) == 0:
                failed[rel] = "empty file (0 bytes)"
                empty.add(rel)
        except OSError as e:  # vanished since the scan
            failed[rel] = error_reason(e, src)
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
                ctx.set_forkserver_preload(["wavelm.data.folder"])   # this module, the audio codec, torch
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
