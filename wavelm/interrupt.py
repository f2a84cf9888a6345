"""Stopping on SIGINT and SIGTERM, as on Ctrl-C: exceptions unwind, `finally` blocks run.

    raise_on_sigterm()          # the CLI: SIGTERM raises Interrupted(SIGTERM), exit code 143
    with deferred_stop() as stop:   # the training loop: the step ends, last/ is saved, then
        ... if stop.signum: ...     # Interrupted; a second signal raises at once

`Interrupted` is a KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM the same way;
its `exit_code` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM). Handlers can be
installed in the main thread only; elsewhere these helpers do nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by `signum` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the process: 130 for Ctrl-C, 143 for SIGTERM."""
    return getattr(e, "exit_code", 128 + signal.SIGINT)


def _raise(signum, frame):
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_on_sigterm() -> None:
    """SIGTERM raises Interrupted(SIGTERM) in the main thread (Python's default is to die at
    once, with no cleanup: temp folders, worker processes, the last checkpoint)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise)


class Stop:
    signum: int | None = None


@contextlib.contextmanager
def deferred_stop():
    """Within the block the first SIGINT or SIGTERM only records itself in `stop.signum`: the
    caller finishes what it does (a training step, a checkpoint) and stops. A second signal
    raises Interrupted at once. The previous handlers come back after the block."""
    stop = Stop()
    if not _main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None:
            raise Interrupted(signum)
        stop.signum = signum

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
