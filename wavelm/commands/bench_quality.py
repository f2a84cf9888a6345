"""`wavelm bench quality`: listening proxies of a model beside real audio (see wavelm/quality.py)."""
from __future__ import annotations

import json
import sys

from wavelm.commands._common import add_sampling_arguments, check_generation_flags, model_sampling, sampling_options
from wavelm.errors import UserError
from wavelm.generation import MAX_SEED


def add_arguments(p):
    p.add_argument("--checkpoint", metavar="DIR", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--data", metavar="DIR", default="data/piano",
                   help="a rendered folder (DIR/<split>/*.wav) or a token cache (default data/piano)")
    p.add_argument("--split", default="test", help="split scored and excerpted (default test)")
    p.add_argument("--unseen", default="unseen", help="held-out split scored too, if present (default unseen; '' for none)")
    p.add_argument("--clips", type=int, default=3, metavar="K", help="clips generated, excerpts and continuations (default 3)")
    p.add_argument("--seconds", type=float, default=30.0, metavar="S", help="length of clips and excerpts (default 30)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="clip k is generated with seed N + k (default 0); a screen and the measurement it "
                        "chose by use different seeds")
    p.add_argument("--prompt-seconds", type=float, default=1.5, metavar="P",
                   help="prompt before each continuation's mid-note cut (default 1.5)")
    p.add_argument("--max-files", type=int, default=None, metavar="N",
                   help="score N files spread over each split instead of all")
    p.add_argument("--no-score", action="store_true",
                   help="listening measures only: skip the bits/sample of the splits (sampling sweeps)")
    p.add_argument("--json", metavar="OUT.json", default=None, help="write the whole report here")
    p.add_argument("--plot", metavar="OUT.png", default=None, help="mel spectrograms: real above, generated below")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    add_sampling_arguments(p, "sampling of the clips and continuations")


def run(args) -> int:
    import math

    from wavelm.files import check_output

    # every flag before any work (scoring a split takes minutes), each error naming its flag
    check_generation_flags(args.seconds, 1, args.seed, **sampling_options(args))
    if args.seed + args.clips - 1 > MAX_SEED:
        raise UserError(f"--seed + --clips must stay <= {MAX_SEED}, got {args.seed} + {args.clips}")
    if not (math.isfinite(args.prompt_seconds) and 0 < args.prompt_seconds <= 600):
        raise UserError(f"--prompt-seconds must be > 0 and <= 600, got {args.prompt_seconds:g}")
    for flag, v in (("--clips", args.clips), ("--threads", args.threads)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if args.max_files is not None and args.max_files < 1:
        raise UserError(f"--max-files must be >= 1, got {args.max_files}")
    for path, exts in ((args.json, (".json",)), (args.plot, (".png",))):
        if path:
            check_output(path, exts)
    try:
        from wavelm import quality
        quality._librosa()
    except ImportError as e:
        raise UserError(str(e)) from None
    import torch

    from wavelm.checkpoint import load_model

    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.checkpoint)
    except ValueError as e:
        raise UserError(str(e)) from None
    sampling = model_sampling(model, args)                           # the model's own, the flags on top
    try:
        rep = quality.evaluate(model, args.data, split=args.split, unseen=args.unseen or None, clips=args.clips,
                               seconds=args.seconds, prompt_seconds=args.prompt_seconds,
                               sampling=sampling, max_files=args.max_files, scores=not args.no_score, seed=args.seed,
                               progress=sys.stderr.isatty())
    except ValueError as e:
        raise UserError(str(e)) from None
    rep["checkpoint"] = _shown(model.checkpoint_path)
    print(table(rep))
    if args.plot:
        quality.plot(rep, args.plot, model.config.sample_rate, title=f"{rep['checkpoint']}: real (top) vs generated")
        print(f"wrote {args.plot}")
    if args.json:
        from wavelm.files import atomic_write_text

        out = {k: v for k, v in rep.items() if not k.startswith("_")}
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _shown(path) -> str:
    """A path as the user would type it: relative to the working folder when it is below it."""
    import os

    p = os.path.abspath(path)
    rel = os.path.relpath(p)
    return p if rel.startswith("..") else rel


def table(rep: dict) -> str:
    s = rep["summary"]
    rows = [("loudest / quietest second", "loudness_ratio", "{:.1f}x"), ("onsets per second", "onsets_per_s", "{:.2f}"),
            ("harmonic share (HPSS)", "harmonic_share", "{:.3f}"), ("chroma top-7 share", "chroma_top7", "{:.3f}"),
            ("chroma change per 0.5 s", "chroma_change", "{:.3f}"), ("median spectral flatness", "flatness", "{:.2e}"),
            ("spectral centroid (Hz)", "centroid_hz", "{:.0f}"),
            ("model's bits/sample on the clip", "model_bits", "{:.3f}")]
    from wavelm.decode.sampling import Sampling

    shown = Sampling.make(None, **rep["sampling"])
    lines = [f"{rep['clips']} clips x {rep['seconds']:g} s, sampling: {shown} (medians over clips)",
             f"{'measure':34s} {'real':>10s} {'generated':>10s}"]
    for label, k, fmt in rows:
        lines.append(f"{label:34s} {fmt.format(s['real'][k]):>10s} {fmt.format(s['generated'][k]):>10s}")
    if "flatness_raw" in s["real"]:
        lines.append(f"  (real audio measured through the 8-bit codec; the raw renders' flatness is "
                     f"{s['real']['flatness_raw']:.2e})")
    for side in ("real", "generated"):
        for m in rep[side]:
            tag = f"seed {m['seed']}" if side == "generated" else m["name"]
            lines.append(f"  pitches, {side} {tag}: {' '.join(m['pitches'])}")
    ov = [s[k].get("pitch_overlap") for k in ("real", "generated")]
    lines.append("strongest pitches, mean overlap between clips (Jaccard): "
                 + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in zip(("real", "generated"), ov))
                 + f"; seeds differ (< 0.5): {s['generated_pitches_differ']}")
    if "continuation" in s:
        c = s["continuation"]
        lines.append(f"continuations ({len(rep['continuations'])}, first 1 s after a mid-note cut): flatness "
                     f"{c['flatness_ratio']:.1f}x the real one's, harmonic share {c['harmonic_gap']:+.3f} below it")
        for x in rep["continuations"]:
            g = " ".join(f"{w['flatness']:.0e}" for w in x["generated"])
            r = " ".join(f"{w['flatness']:.0e}" for w in x["real"])
            lines.append(f"  {x['name']} @ {x['cut_s']:.2f} s, flatness per 0.25 s: generated {g} | real {r}")
    for split, sc in rep["score"].items():
        lines.append(f"bits/sample on {split}: {sc['bits_per_sample']:.4f} pooled over {sc['files']} files "
                     f"({sc['samples'] / 16000 / 3600:.3f} h), files {sc['file_min']:.3f}..{sc['file_max']:.3f}")
        lpc = sc["lpc"]
        lines.append(f"  adaptive LPC (order {lpc['order']}, window {lpc['window']}, no trained parameters): "
                     f"{lpc['bits_per_sample']:.4f}; the model is {sc['bits_per_sample'] - lpc['bits_per_sample']:+.4f} "
                     f"from it")
        if len(sc["per_piano"]) > 1 or "all" not in sc["per_piano"]:
            lines.append("  per piano: " + ", ".join(f"{k} {v:.3f}" for k, v in sc["per_piano"].items()))
        lines.append("  where (model / adaptive LPC): "
                     + ", ".join(f"{k} {v['bits_per_sample']:.3f} / {v['lpc_bits_per_sample']:.3f} "
                                 f"({v['share']:.0%} of samples)" for k, v in sc["regions"].items()))
    return "\n".join(lines)
