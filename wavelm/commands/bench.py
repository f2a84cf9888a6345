"""`wavelm bench generate|train|score|quality`: speed on this machine, and listening proxies."""
from __future__ import annotations

TARGETS = {
    "generate": "samples/s of cached generation vs naive recompute, state memory",
    "train": "training tokens/s of the presets",
    "score": "samples/s scored",
    "quality": "listening proxies of generated vs real audio, and bits/sample per split, piano, region",
}


def add_arguments(p):
    from wavelm.commands._common import add_subcommands

    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    add_subcommands(sub, "wavelm.commands.bench_", TARGETS, "_bench")


def run(args) -> int:
    return args._bench(args)
