"""`wavelm bench generate|train|score|quality`: speed on this machine, and listening proxies."""
from __future__ import annotations

TARGETS = {
    "generate": "samples/s of cached generation vs naive recompute, state memory",
    "train": "training tokens/s of the presets",
    "score": "samples/s scored",
    "quality": "listening proxies of generated vs real audio, and bits/sample per split, piano, region",
}


def add_arguments(p):
    from wavelm.cli import add_subcommands

    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    add_subcommands(sub, "wavelm.commands.bench_", TARGETS, "_bench")


def run(args) -> int:
    return args._bench(args)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform knows)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """One line naming this machine: CPU model, cores, torch threads (and the GPU, if any)."""
    import os

    import torch

    s = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if torch.cuda.is_available():
        s += f", GPU {torch.cuda.get_device_name(0)}"
    return s
