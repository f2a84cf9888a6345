"""The `wavelm` command line: `wavelm prepare|train|generate|score|demo|bench`.

Each subcommand lives in wavelm/commands/<name>.py with `add_arguments(parser)` and
`run(args) -> int`, imported only when it runs (wavelm/commands/_common.py). Library code raises
exceptions; this module turns user errors (wavelm.errors.UserError, ValueError, ...) into one
line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys

# re-exported: the names commands and tests imported from here before
from wavelm.commands._common import (GENERATION_FLAGS, Subcommands, add_sampling_arguments,  # noqa: F401
                                     add_subcommands, check_device, check_generation_flags, flag_names, flag_of,
                                     sampling_options)
from wavelm.errors import UserError

# name -> one-line description (shown by `wavelm --help`)
COMMANDS = {
    "prepare": "decode an audio folder (or YouTubeMix) into a mu-law token cache",
    "train": "train a model on an audio folder or token cache",
    "generate": "generate audio sample by sample (default: the bundled model)",
    "score": "negative log-likelihood of audio files in bits per sample",
    "demo": "browser demo (Gradio): generate, listen, score",
    "bench": "benchmarks: generation, training or scoring speed on this machine",
}


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; `lazy`: a command's module is imported only when it is chosen (what
    `main` does, so that `wavelm --help` imports no command, and no torch)."""
    p = argparse.ArgumentParser(prog="wavelm", description="Autoregressive raw-audio waveform LMs.")
    p.register("action", "parsers", functools.partial(Subcommands, lazy=lazy))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_subcommands(sub, "wavelm.commands.", COMMANDS, "_run")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(lazy=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):   # file names that are not UTF-8 print
        sys.stdout.reconfigure(errors="backslashreplace")   # escaped, as on stderr, never crash
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from wavelm.interrupt import exit_code, raise_on_sigterm

    raise_on_sigterm()      # SIGTERM unwinds like Ctrl-C: temp files go, workers stop, train saves last/
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        print(f"wavelm {args.command}: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return exit_code(e)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        # library code raises ValueError (and subclasses such as AudioError, OutputError) for bad input
        print(f"wavelm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # a disk that fills up or turns read-only mid-way: the path and the reason
        where = e.filename if e.filename is not None else "output"
        print(f"wavelm {args.command}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
