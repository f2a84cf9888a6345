"""`wavelm score FILE...`: negative log-likelihood of audio files in bits per sample.

    wavelm score piano.wav speech.flac                    # table: bits/sample, total bits, ...
    wavelm score *.wav --json > scores.json               # for scripts
    wavelm score piano.wav --per-sample nll.npy --plot nll.png
    wavelm score --split test data/youtubemix             # SaShiMi's metric for a split

Outputs with several files: `--per-sample OUT.npy` and `--plot OUT.png` write one file per
input, OUT_<stem>.npy / OUT_<stem>.png (a repeated stem gets _2, _3, ...); `--per-sample
OUT.csv` writes one CSV for all inputs with the columns file,sample,time_s,nll_bits.
A file that cannot be scored gets one line on stderr; the others are still scored and the exit
code is 2.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from wavelm.commands._common import check_device
from wavelm.data.cache import SPLITS
from wavelm.errors import UserError


def add_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="audio files to score (with --split: one YouTubeMix folder or token cache)")
    p.add_argument("--checkpoint", metavar="DIR", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-sample", metavar="OUT", default=None,
                   help="save the per-sample NLL in bits: OUT.npy (one per file) or OUT.csv (one for all)")
    p.add_argument("--plot", metavar="OUT.png", default=None,
                   help="save a figure: waveform, smoothed NLL and spectrogram (one per file)")
    p.add_argument("--chunk-seconds", type=float, default=2.0, metavar="C",
                   help="audio scored per forward pass; bounds memory, does not change the result (default 2)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="score a split of the YouTubeMix folder or token cache given as FILE, every "
                        "chunk on its own from a zero state (the SaShiMi metric)")
    p.add_argument("--quantization", choices=("s4", "mulaw"), default=None,
                   help="with --split on a YouTubeMix folder: s4 (default, the paper's) or mulaw")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="with --split on a YouTubeMix folder: chunk length in samples (default 131072)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: 1 on CPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.chunk_seconds <= 0:
        raise UserError(f"--chunk-seconds must be > 0, got {args.chunk_seconds}")
    if args.per_sample and Path(args.per_sample).suffix.lower() not in (".npy", ".csv"):
        raise UserError(f"--per-sample: the file name must end in .npy or .csv, got {args.per_sample!r}")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UserError(f"--plot: the file name must end in .png, got {args.plot!r}")
    if args.split and len(args.files) != 1:
        raise UserError(f"--split takes one DATA folder (YouTubeMix or token cache), got {len(args.files)} paths")
    if args.split and args.plot:
        raise UserError("--plot needs audio files; it is not available with --split")
    if (args.quantization or args.chunk) and not args.split:
        raise UserError("--quantization and --chunk apply to --split only")
    if args.chunk is not None and args.chunk < 1:
        raise UserError(f"--chunk must be >= 1, got {args.chunk}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    from wavelm.files import check_output

    for out in (args.per_sample, args.plot):   # checked before the work, not after it
        if out:
            check_output(out)
    check_device(args.device)

    from wavelm.checkpoint import load_model

    model = load_model(args.checkpoint, map_location=args.device)
    on_cpu = next(model.parameters()).device.type == "cpu"
    threads = args.threads or (1 if on_cpu else None)
    progress = not args.no_progress and sys.stderr.isatty()
    checkpoint = str(getattr(model, "checkpoint_path", args.checkpoint))
    keep = bool(args.per_sample or args.plot)

    if args.split:
        return _run_split(args, model, checkpoint, keep, threads, progress)

    from wavelm.scoring import score

    results, failed = [], []
    for f in args.files:
        try:
            results.append(score(model, f, chunk_seconds=args.chunk_seconds, progress=progress,
                                 keep_per_sample=keep, threads=threads))
        except (ValueError, OSError) as e:  # AudioError is a ValueError and names the file
            msg = str(e) if str(e).startswith(str(f)) else f"{f}: {e}"
            failed.append({"path": str(f), "error": msg})
            print(f"wavelm score: error: {msg}", file=sys.stderr)
    _report(args, results, failed, checkpoint)       # results first: a failing plot loses nothing
    _save_outputs(args, results, model.config.sample_rate)
    return 2 if failed else 0


def _run_split(args, model, checkpoint, keep, threads, progress) -> int:
    from wavelm.scoring import score_split

    s = score_split(model, args.files[0], split=args.split, quantization=args.quantization,
                    chunk_seconds=args.chunk_seconds, progress=progress, keep_per_sample=keep,
                    threads=threads, chunk=args.chunk)
    if not s.files:
        size = f" of {args.chunk} samples" if args.chunk else ""
        raise UserError(f"{args.files[0]}: no file of the {args.split} split holds a whole chunk{size}")
    extra = {"split": s.split, "data": s.data, "codec": s.codec, "num_chunks": s.num_chunks}
    _report(args, s.files, [], checkpoint, extra)
    _save_outputs(args, s.files, model.config.sample_rate)
    return 0


# ----------------------------------------------------------------------------- output

def pooled(results) -> float | None:
    """Bits per sample over all samples of all results (None when there are none)."""
    n = sum(r.num_samples for r in results)
    return sum(r.total_bits for r in results) / n if n else None


def _report(args, results, failed, checkpoint, extra=None):
    mean = pooled(results)
    if args.json:
        out = {"files": [r.to_dict() for r in results], "mean_bits_per_sample": mean,
               "num_samples": sum(r.num_samples for r in results),
               "total_bits": sum(r.total_bits for r in results),
               "checkpoint": checkpoint, "failed": failed, **(extra or {})}
        print(json.dumps(out, indent=2))
        return
    if extra:
        print(f"{extra['data']}: {extra['split']} split, {extra['codec']} tokens, "
              f"{extra['num_chunks']} chunks scored independently")
    if results:
        print(table(results))
    if failed:
        print(f"{len(failed)} file(s) failed (see the errors above)")


def table(results) -> str:
    """Aligned columns: file, bits/sample, total bits, samples, duration; then the pooled row."""
    rows = [(r.path or "<audio>", f"{r.bits_per_sample:.4f}", f"{r.total_bits:,.0f}",
             f"{r.num_samples:,}", f"{r.duration_seconds:.2f} s") for r in results]
    if len(results) > 1:
        n = sum(r.num_samples for r in results)
        rows.append((f"all {len(results)} files (pooled)", f"{pooled(results):.4f}",
                     f"{sum(r.total_bits for r in results):,.0f}", f"{n:,}",
                     f"{sum(r.duration_seconds for r in results):.2f} s"))
    head = ("file", "bits/sample", "total bits", "samples", "duration")
    w = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    fmt = lambda r: "  ".join([r[0].ljust(w[0])] + [c.rjust(w[i + 1]) for i, c in enumerate(r[1:])])  # noqa: E731
    lines = [fmt(head), "  ".join("-" * x for x in w)] + [fmt(r) for r in rows]
    if len(results) > 1:
        lines.insert(-1, lines[1])
    return "\n".join(lines)


def output_paths(out, results) -> list[Path]:
    """OUT itself for one result; OUT_<stem><ext> for several (repeated stems get _2, _3, ...)."""
    out = Path(out)
    if len(results) == 1:
        return [out]
    paths, seen = [], {}
    for r in results:
        stem = Path(r.path or "audio").stem
        seen[stem] = seen.get(stem, 0) + 1
        tag = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
        paths.append(out.with_name(f"{out.stem}_{tag}{out.suffix}"))
    return paths


def _save_outputs(args, results, sample_rate):
    from wavelm.files import atomic_write

    if not results:
        return
    if args.per_sample and Path(args.per_sample).suffix.lower() == ".csv":
        atomic_write(args.per_sample, lambda fh: write_csv(fh, results, sample_rate), mode="w")
        print(f"wrote {args.per_sample}", file=sys.stderr)
    elif args.per_sample:
        for r, p in zip(results, output_paths(args.per_sample, results)):
            atomic_write(p, lambda fh, r=r: np.save(fh, r.nll_bits))
            print(f"wrote {p}", file=sys.stderr)
    if args.plot:
        from wavelm.audio import load_audio
        from wavelm.plot import plot_score

        for r, p in zip(results, output_paths(args.plot, results)):
            # the plot needs the waveform: decoded again, whole (the scoring itself never is)
            audio = load_audio(r.path, sample_rate)
            n = min(len(audio), r.num_samples)  # the one-shot resampler may differ by a sample
            plot_score(audio[:n], r.nll_bits[:n], p, sample_rate=sample_rate,
                       title=f"{Path(r.path).name}: {r.bits_per_sample:.3f} bits/sample, "
                             f"{r.duration_seconds:.2f} s")
            print(f"wrote {p}", file=sys.stderr)


def write_csv(fh, results, sample_rate, block: int = 1 << 16):
    """One CSV for all results: file,sample,time_s,nll_bits (written block by block)."""
    fh.write("file,sample,time_s,nll_bits\n")
    for r in results:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow([r.path or "<audio>"])
        fmt = buf.getvalue().replace("%", "%%") + ",%d,%.6f,%.5f"
        for s in range(0, r.num_samples, block):
            v = r.nll_bits[s:s + block]
            i = np.arange(s, s + len(v))
            np.savetxt(fh, np.column_stack([i, i / sample_rate, v]), fmt=fmt)
