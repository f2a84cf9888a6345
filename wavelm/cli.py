"""The `wavelm` command line: `wavelm prepare|train|generate|score|demo|bench`.

Each subcommand lives in wavelm/commands/<name>.py with `add_parser(subparsers)` and
`run(args) -> int`. Library code raises exceptions; this module turns user errors into one
line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from importlib import import_module

# name -> one-line description (shown by `wavelm --help`)
COMMANDS = {
    "prepare": "decode an audio folder (or YouTubeMix) into a mu-law token cache",
    "train": "train a model on an audio folder or token cache",
    "generate": "generate audio sample by sample (default: the bundled model)",
    "score": "negative log-likelihood of audio files in bits per sample",
    "demo": "browser demo (Gradio): generate, listen, score",
    "bench": "benchmarks: generation, training or scoring speed on this machine",
}


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def check_device(device: str) -> None:
    """UserError for a device this machine does not have (before any weights are read)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available on this machine")


# the API argument each generation flag feeds (wavelm.generation.check_args names the argument)
GENERATION_FLAGS = {"seconds": "--seconds", "batch_size": "--num-samples", "temperature": "--temperature",
                    "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed"}


def check_generation_flags(seconds=None, batch_size=1, temperature=1.0, top_p=1.0, top_k=None, seed=0) -> dict:
    """wavelm.generation.check_args, its ValueError turned into a UserError naming the flag."""
    from wavelm.generation import check_args

    try:
        return check_args(seconds, batch_size, temperature, top_p, top_k, seed)
    except ValueError as e:
        name, _, rest = str(e).partition(" ")
        raise UserError(f"{GENERATION_FLAGS.get(name, name)} {rest}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wavelm", description="Autoregressive raw-audio waveform LMs.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_subcommands(sub, "wavelm.commands.", COMMANDS, "_run")
    return p


def add_subcommands(sub, prefix: str, table: dict, key: str):
    """One subparser per module `prefix + name` (with `add_arguments`/`run`) that exists;
    its `run` is stored in args.<key>."""
    for name, desc in table.items():
        try:
            mod = import_module(prefix + name)
        except ModuleNotFoundError as e:
            if e.name != prefix + name:
                raise
            continue
        sp = sub.add_parser(name, help=desc, description=desc)
        mod.add_arguments(sp)
        sp.set_defaults(**{key: mod.run})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
