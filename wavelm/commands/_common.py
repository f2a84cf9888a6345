"""What the commands share: loading subcommands (`add_subcommands`, used by wavelm/cli.py and
`wavelm bench`), the device check, and the sampling flags of `generate` and `bench`.

Building the parser imports a command's module only when that command is chosen (or its
`--help` asked for), so `wavelm --help` imports no command and no torch; the sampling helpers
import wavelm.decode.sampling (torch) only when called."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from importlib import import_module
from importlib.util import find_spec

from wavelm.errors import UserError


class Subcommands(argparse._SubParsersAction):
    """Subparsers whose arguments come from their module when their command is chosen
    (`lazy`), or at once."""

    def __init__(self, *args, lazy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy
        self.pending = {}   # command name -> the call that fills its subparser

    def load(self, name: str) -> None:
        fill = self.pending.pop(name, None)
        if fill is not None:
            fill()

    def __call__(self, parser, namespace, values, option_string=None):
        self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


def add_subcommands(sub, prefix: str, table: dict, key: str):
    """One subparser per module `prefix + name` (with `add_arguments`/`run`) that exists; its
    `run` is stored in args.<key>. With a lazy `sub` (Subcommands), a module is imported when
    its command is chosen; its own subcommands are as lazy."""
    lazy = isinstance(sub, Subcommands) and sub.lazy
    for name, desc in table.items():
        if find_spec(prefix + name) is None:   # a command this install leaves out
            continue
        sp = sub.add_parser(name, help=desc, description=desc)
        sp.register("action", "parsers", functools.partial(Subcommands, lazy=lazy))
        fill = functools.partial(_fill, sp, prefix + name, key)
        if lazy:
            sub.pending[name] = fill
        else:
            fill()


def _fill(sp, module: str, key: str) -> None:
    mod = import_module(module)
    mod.add_arguments(sp)
    sp.set_defaults(**{key: mod.run})


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


# the flag of each generation argument whose flag is not its name (wavelm.generation.check_args
# names the argument; a Sampling field `top_k` is the flag --top-k)
GENERATION_FLAGS = {"batch_size": "--num-samples"}


def flag_of(name: str, batch_flag: str = GENERATION_FLAGS["batch_size"]) -> str:
    return batch_flag if name == "batch_size" else "--" + name.replace("_", "-")


def add_sampling_arguments(parser, title: str) -> None:
    """One flag per wavelm.decode.Sampling field (--temperature, --top-k, ..., --best-of), its
    help from the field, its default None (= the model's own sampling, else the field's default)."""
    from wavelm.decode.sampling import Sampling

    p = parser.add_argument_group(title, "each flag's default is the model's own where its checkpoint sets one "
                                         "(config.json \"sampling\", as the bundled model's card says), else as shown")
    for f in dataclasses.fields(Sampling):
        default = ",".join(f"{v:g}" for v in f.default) if isinstance(f.default, tuple) else f.default
        shown = "off" if default is None else f"{default:.4g}" if isinstance(default, float) else default
        p.add_argument(flag_of(f.name), type=f.metadata["type"], default=None, metavar=f.metadata["metavar"],
                       help=f"{f.metadata['help']} (default {shown})")


def sampling_options(args) -> dict:
    """The Sampling fields given on the command line."""
    from wavelm.decode.sampling import Sampling

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Sampling)
            if getattr(args, f.name, None) is not None}


def model_sampling(model, args):
    """The model's own sampling (wavelm.generation.model_sampling) with the flags given on top,
    errors naming the flags (the flags were checked alone before the model loaded)."""
    from wavelm.decode.sampling import Sampling
    from wavelm.generation import model_sampling as own

    try:
        return Sampling.make(own(model), **sampling_options(args))
    except ValueError as e:
        raise UserError(flag_names(str(e))) from None


def flag_names(message: str, batch_flag: str = GENERATION_FLAGS["batch_size"]) -> str:
    """A generation error with each argument name (batch_size, top_p, ...) as its flag."""
    from wavelm.decode.sampling import Sampling

    names = [f.name for f in dataclasses.fields(Sampling)] + ["batch_size", "seconds", "seed"]
    return re.sub(r"(?<![\w-])(" + "|".join(names) + r")(?![\w-])", lambda m: flag_of(m.group(0), batch_flag), message)


def check_generation_flags(seconds=None, batch_size=1, seed=0, sampling=None,
                           batch_flag=GENERATION_FLAGS["batch_size"], **options):
    """wavelm.generation.check_args, its ValueError turned into a UserError naming the flags
    (`batch_flag`: the command's flag of the batch size): ({seconds, batch_size, seed}, Sampling)."""
    from wavelm.generation import check_args

    try:
        return check_args(seconds, batch_size, seed, sampling, **options)
    except ValueError as e:
        raise UserError(flag_names(str(e), batch_flag)) from None
