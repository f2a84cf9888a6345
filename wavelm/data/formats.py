"""The formats room: every data format wavelm can prepare, in one table.

    FORMATS["folder"].prepare("data/piano", "data/piano_cache", quantization="mulaw")
    get_format("youtubemix").quantizations          # ("s4", "mulaw"): the first is the default
    cache = open_data("data/piano", "runs/piano", DataConfig(format="folder"))

A format turns a source folder into a token cache (wavelm/data/cache.py); after that every format
is the same: training, validation and split scoring read only the cache (`TokenCache.segments`
decides how a cache's files cut into independent streams). `FORMATS` is what reads the format
name: `DataConfig` (data.format, data.quantization), `wavelm prepare` and `wavelm train` (their
--format and --quantization choices, and prepare's dispatch), `open_data` (a run's audio folder
into RUN/cache) and a resumed run's data check (`Format.scan`).

Adding a format is one entry here: a `Format` whose `prepare` writes the cache (with
`write_cache`, or the helpers prepare_folder and prepare_youtubemix use: `writing_cache`,
`fresh_cache`, `encode_files`). Its imports stay inside its functions: this module is read
whenever the CLI builds its parser, and must not pull in torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from wavelm.data.cache import TokenCache


@dataclass(frozen=True)
class Format:
    """One data format.

    name           what data.format / --format say
    help           one line for `--format`'s help
    prepare        prepare(source, out, *, quantization, sample_rate=16000, workers=2, progress=True,
                   force=False, **options) -> TokenCache: writes (or reuses) the cache at `out`
                   (source and out: str or Path)
    quantizations  the data.quantization / --quantization values it takes; the first is its default
    options        the `wavelm prepare` flags of its own ("split", "seed", "chunk"), each with a
                   check (value -> None, ValueError when bad: run before any work) or None
    scan           scan(source) -> {relpath: (size, mtime)} of the files prepare would read: a
                   resumed run compares them with its frozen split before the cache is rebuilt
                   (None: compared with the rebuilt cache's file list instead)
    """
    name: str
    help: str
    prepare: Callable[..., TokenCache]
    quantizations: tuple[str, ...] = ("mulaw",)
    options: Mapping[str, Callable | None] = field(default_factory=dict)
    scan: Callable[[Path], dict] | None = None


# ----------------------------------------------------------------------------- the formats
# imported when called: the table is read at parser build time, before torch is imported

def _prepare_folder(source, out, quantization: str = "mulaw", **kw) -> TokenCache:
    from wavelm.data import folder    # looked up when called, so tests may replace prepare_folder

    return folder.prepare_folder(source, out, **kw)


def _check_split(value) -> None:
    from wavelm.data.folder import parse_split

    parse_split(value)


def _scan_folder(source) -> dict:
    from wavelm.data.folder import scan_stats

    return scan_stats(source)


def _prepare_youtubemix(source, out, **kw) -> TokenCache:
    from wavelm.data import youtubemix

    return youtubemix.prepare_youtubemix(source, out, **kw)


FORMATS: dict[str, Format] = {
    "folder": Format("folder", "any audio folder (default): files split by train/ val/ test/ folders or "
                     "--split", _prepare_folder, ("mulaw",), {"split": _check_split, "seed": None},
                     scan=_scan_folder),
    "youtubemix": Format("youtubemix", "YouTubeMix with the s4 (SaShiMi) split and chunking",
                         _prepare_youtubemix, ("s4", "mulaw"), {"chunk": None}),
}


# ----------------------------------------------------------------------------- lookups

def either(names) -> str:
    """"a", "a or b", "a, b or c"."""
    names = list(names)
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def get_format(name: str, what: str = "format") -> Format:
    """The Format called `name`; ValueError listing the known ones otherwise."""
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValueError(f"{what} must be {either(FORMATS)}, got {name!r}")
    return fmt


def all_quantizations() -> tuple[str, ...]:
    """Every quantization some format takes, in table order."""
    return tuple(dict.fromkeys(q for f in FORMATS.values() for q in f.quantizations))


def quantization_of(fmt: Format, quantization: str | None, what: str = "quantization",
                    fmt_what: str = "format") -> str:
    """`quantization` checked against `fmt` ("" or None: the format's default); ValueError naming
    the formats that take it when `fmt` does not. `what`, `fmt_what`: the names in messages."""
    if not quantization:
        return fmt.quantizations[0]
    if quantization not in fmt.quantizations:
        takers = [f.name for f in FORMATS.values() if quantization in f.quantizations]
        if not takers:
            raise ValueError(f"{what} must be {either(all_quantizations())}, got {quantization!r}")
        raise ValueError(f"{what} {quantization} needs {fmt_what} {either(takers)}")
    return quantization


def quantization_help() -> str:
    """--quantization's help: what each format takes, its default first."""
    return "; ".join(f"{f.name}: {' (default) or '.join(f.quantizations)}" if len(f.quantizations) > 1
                     else f"{f.name}: {f.quantizations[0]}" for f in FORMATS.values())


# ----------------------------------------------------------------------------- a run's data

def open_data(data, out: Path, data_cfg, progress: bool = True) -> TokenCache:
    """A TokenCache from `data`: a TokenCache, a cache dir (has meta.json), or a source folder
    prepared by its format (`data_cfg.format`, `.quantization`, `.sample_rate`: a DataConfig)
    into `out`/cache (reused while its files are unchanged)."""
    if isinstance(data, TokenCache):
        return data
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        return TokenCache(path)
    fmt = get_format(data_cfg.format, "data.format")
    quantization = quantization_of(fmt, data_cfg.quantization, "data.quantization", "data.format")
    return fmt.prepare(path, Path(out) / "cache", quantization=quantization,
                       sample_rate=data_cfg.sample_rate, progress=progress)
