"""`wavelm prepare DATA --out CACHE`: decode an audio folder (or YouTubeMix) into a token cache.

    wavelm prepare data/piano --out data/piano_cache                  # any folder, 90/5/5 split
    wavelm prepare data/youtubemix --out data/ytm_cache --format youtubemix   # s4 conventions
"""
from __future__ import annotations

import os
import sys

from wavelm.cli import UserError
from wavelm.data.folder import SPLITS


def add_arguments(p):
    p.add_argument("data", metavar="DATA", help="folder of audio files (searched recursively)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache directory to write")
    p.add_argument("--format", choices=("folder", "youtubemix"), default="folder",
                   help="folder: any audio folder (default); youtubemix: s4 split and chunking")
    p.add_argument("--sample-rate", type=int, default=16000, help="target sample rate (default 16000)")
    p.add_argument("--split", default="0.9,0.05,0.05", metavar="TRAIN,VAL,TEST",
                   help="folder format: fractions of files per split, unless DATA has "
                        "train/ val/ test/ subfolders (default 0.9,0.05,0.05)")
    p.add_argument("--seed", type=int, default=0, help="folder format: seed of the split shuffle")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="decoding processes (default: min(2, CPUs))")
    p.add_argument("--quantization", choices=("s4", "mulaw"), default=None,
                   help="youtubemix format: s4 (per-chunk min-max + floor mu-law, default) or mulaw")
    p.add_argument("--chunk", type=int, default=131072, help="youtubemix format: chunk length")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from wavelm.files import check_output_dir

    check_output_dir(args.out)                        # the cache goes there ...
    check_output_dir(Path(args.out).absolute().parent)  # ... built beside it, then renamed
    progress = not args.no_progress and sys.stderr.isatty()
    if args.format != "youtubemix":
        from wavelm.data.folder import _parse_split

        try:
            _parse_split(args.split)
        except ValueError as e:
            raise UserError(f"--split: {e}") from None
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.format == "youtubemix":
        from wavelm.data.youtubemix import prepare_youtubemix

        cache = prepare_youtubemix(args.data, args.out, quantization=args.quantization or "s4",
                                   sample_rate=args.sample_rate, chunk=args.chunk,
                                   workers=args.workers, progress=progress, force=args.force)
    else:
        if args.quantization == "s4":
            raise UserError("--quantization s4 needs --format youtubemix (it scales each chunk)")
        from wavelm.data.folder import prepare_folder

        cache = prepare_folder(args.data, args.out, sample_rate=args.sample_rate,
                               split=args.split, seed=args.seed,
                               workers=args.workers, progress=progress, force=args.force)
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
