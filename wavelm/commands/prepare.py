"""`wavelm prepare DATA --out CACHE`: decode an audio folder (or YouTubeMix) into a token cache.

    wavelm prepare data/piano --out data/piano_cache                  # any folder, 90/5/5 split
    wavelm prepare data/youtubemix --out data/ytm_cache --format youtubemix   # s4 conventions
"""
from __future__ import annotations

import os
import sys

from wavelm.data.cache import SPLITS
from wavelm.data.formats import FORMATS, all_quantizations, get_format, quantization_help, quantization_of
from wavelm.errors import UserError


def add_arguments(p):
    p.add_argument("data", metavar="DATA", help="folder of audio files (searched recursively)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache directory to write")
    p.add_argument("--format", choices=tuple(FORMATS), default="folder",
                   help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()))
    p.add_argument("--sample-rate", type=int, default=16000, help="target sample rate (default 16000)")
    p.add_argument("--split", default="0.9,0.05,0.05", metavar="TRAIN,VAL,TEST",
                   help="folder format: fractions of files per split, unless DATA has "
                        "train/ val/ test/ subfolders (default 0.9,0.05,0.05)")
    p.add_argument("--seed", type=int, default=0, help="folder format: seed of the split shuffle")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="decoding processes (default: min(2, CPUs))")
    p.add_argument("--quantization", choices=all_quantizations(), default=None,
                   help=f"by format: {quantization_help()} (s4: per-chunk min-max + floor mu-law)")
    p.add_argument("--chunk", type=int, default=131072, help="youtubemix format: chunk length")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from wavelm.files import check_output_dir

    check_output_dir(args.out)                        # the cache goes there ...
    check_output_dir(Path(args.out).absolute().parent)  # ... built beside it, then renamed
    progress = not args.no_progress and sys.stderr.isatty()
    fmt = get_format(args.format, "--format")          # the formats room: wavelm/data/formats.py
    options = {name: getattr(args, name) for name in fmt.options}
    for name, check in fmt.options.items():
        if check is not None:
            try:
                check(options[name])
            except ValueError as e:
                raise UserError(f"--{name.replace('_', '-')}: {e}") from None
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        quantization = quantization_of(fmt, args.quantization, "--quantization", "--format")
    except ValueError as e:
        raise UserError(str(e)) from None
    cache = fmt.prepare(args.data, args.out, quantization=quantization, sample_rate=args.sample_rate,
                        workers=args.workers, progress=progress, force=args.force, **options)
    print(summary(cache))
    return 0


def summary(cache) -> str:
    m = cache.meta
    h = m["hours"]
    shown = [k for k in SPLITS if k != "unseen" or m["splits"].get(k)]
    lines = [f"{cache.path}: {'up to date, reused' if cache.reused else 'written'} "
             f"({m['codec']}, {m['sample_rate']} Hz, from {m['source']})",
             "  files: " + ", ".join(f"{k} {m['splits'].get(k, 0)}" for k in shown)
             + f"; skipped {len(m['skipped'])}",
             "  hours: " + ", ".join(f"{k} {h.get(k, 0):.3f}" for k in shown)
             + f"; total {h.get('total', 0):.3f}"]
    for s in m["skipped"][:10]:
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    if len(m["skipped"]) > 10:
        lines.append(f"  ... and {len(m['skipped']) - 10} more skipped (see {cache.path}/meta.json)")
    return "\n".join(lines)
