"""Where does the LPC path help? Bits per sample of the LPC study's models, and of the adaptive
LPC alone, split into loud sustained passages, quiet tails and onsets (wavelm.quality.region_bits:
20 ms frames; loud >= -20 dB of the file's loudest frame, quiet < -40 dB, onsets the 60 ms from
each detected onset, excluded from the other two).

    .venv/bin/python recipes/piano/lpc/regions.py --data data/piano --runs runs/lpc \\
        --configs piano piano_lpc piano_lpc_narrow --splits test unseen --max-files 8

Each config's seeds (OUT/<config>/seed<k>/best) are pooled: the bits of all its seeds over the
same files. The files are those compare.py scores with the same `--eval-max-files` (spread
evenly over the split), so `--configs` with no names gives the adaptive LPC's bits on exactly
the study's files. Prints a markdown table per split; `--json` keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/piano", help="rendered folder (DIR/<split>/*.wav)")
    ap.add_argument("--runs", default="runs/lpc", help="the study's folder (compare.py --out)")
    ap.add_argument("--configs", nargs="*", default=["piano", "piano_lpc", "piano_lpc_narrow"],
                    help="the study's configs (none: the adaptive LPC alone)")
    ap.add_argument("--splits", nargs="+", default=["test", "unseen"])
    ap.add_argument("--max-files", type=int, default=8, help="files spread over each split (default 8)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from wavelm import quality
    from wavelm.audio import mulaw_encode
    from wavelm.model.lm import load_model
    from wavelm.model.lpc import adaptive_bits
    from wavelm.scoring import score

    torch.set_num_threads(1)
    models = {}
    for c in args.configs:
        seeds = sorted((Path(args.runs) / c).glob("seed*/best"))
        if not seeds:
            print(f"regions.py: no {Path(args.runs) / c}/seed*/best (train the study first)", file=sys.stderr)
            return 2
        models[c] = [load_model(p) for p in seeds]
    o, w, h = quality.BASELINE_LPC
    lpc_name = f"adaptive LPC alone (order {o}, window {w})"
    out = {}
    for split in args.splits:
        files = quality.spread(quality.split_audio(args.data, split, 16000), args.max_files)
        acc = {name: {} for name in [lpc_name, *models]}

        def add(name, y, nll):
            for k, v in {**quality.region_bits(y, nll, 16000),
                         "all": {"bits": float(np.sum(nll)), "samples": len(nll)}}.items():
                a = acc[name].setdefault(k, [0.0, 0])
                a[0] += v["bits"]
                a[1] += v["samples"]

        for _, y in tqdm(files, desc=split):
            add(lpc_name, y, adaptive_bits(mulaw_encode(y), o, w, h))
            for c, ms in models.items():
                for m in ms:
                    add(c, y, score(m, y, sample_rate=16000).nll_bits)
        out[split] = {n: {k: v[0] / max(v[1], 1) for k, v in a.items()} for n, a in acc.items()}
        share = {k: v[1] / acc[lpc_name]["all"][1] for k, v in acc[lpc_name].items()}
        print(f"\n{split}: {len(files)} files; bits per sample (share of samples)\n")
        cols = ["loud_sustained", "quiet", "onsets", "all"]
        print("| model | " + " | ".join(f"{k.replace('_', ' ')} ({share.get(k, 0):.0%})" for k in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for n, v in out[split].items():
            print(f"| {n} | " + " | ".join(f"{v.get(k, float('nan')):.3f}" for k in cols) + " |")
    if args.json:
        from wavelm.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
