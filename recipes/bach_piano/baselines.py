"""Reference bits per sample on a rendered piano set (8-bit mu-law tokens): recipes/bach_piano,
or recipes/piano (then also per piano, and on its unseen-piano split).

    .venv/bin/python recipes/bach_piano/baselines.py                      # data/bach_piano
    .venv/bin/python recipes/bach_piano/baselines.py --data /tmp/bach20 --splits test

Three models, all fit on the train split, scored on val and test (bits = total -log2 p over
all samples of a split / number of samples, i.e. pooled over files):
- unigram: token frequencies (add-one smoothed);
- bigram: P(q_t | q_{t-1}) with add-one smoothing; the token before a file's first is 128;
- linear predictor: x_t predicted from the previous 16 decoded mu-law samples with
  least-squares taps; the residual is Gaussian with sigma = RMS of the last 256 residuals
  (fewer at a file's start, floored at --sigma-min); P(q_t) is the Gaussian mass over the
  waveform interval that mu-law maps to q_t (the end bins reach to -inf/+inf), floored at --eps;
- adaptive LPC (no trained parameters): the LPC path of the model alone (wavelm/model/lpc.py,
  docs/design.md): every 64 samples Levinson-Durbin on a Hann-windowed window of the past decoded
  samples; a logistic centred on the prediction, scale 0.6 x the previous block's mean |residual|,
  mixed with a 1e-4 uniform floor; one row per (order, window), `--adaptive`.
Contexts before a file's start are token 128 (mu-law zero), as in the models' teacher forcing.
Prints a markdown table and writes DATA/baselines.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from wavelm.audio import ZERO  # mu-law code of silence

Q = 256


def split_files(data: Path, split: str) -> list[Path]:
    from natsort import natsorted

    return natsorted((data / split).glob("*.wav"), key=lambda p: p.name)


def piano_of(path: Path) -> str:
    """recipes/piano names files <piece>__<piano>.wav; other files are one group, 'all'."""
    return path.stem.rsplit("__", 1)[1] if "__" in path.stem else "all"


def load_split(data: Path, split: str) -> list[np.ndarray]:
    """The split's files as uint8 mu-law token arrays, natural-sorted by name."""
    from wavelm.audio import load_audio, mulaw_encode

    files = split_files(data, split)
    if not files:
        raise SystemExit(f"baselines.py: no .wav files in {data / split} "
                         "(render first: .venv/bin/python recipes/bach_piano/render.py)")
    return [mulaw_encode(load_audio(p, sample_rate=16000)).astype(np.uint8) for p in files]


# ----------------------------------------------------------------------------- n-grams

def unigram_bits(train, evals) -> list[np.ndarray]:
    counts = sum(np.bincount(q, minlength=Q) for q in train) + 1.0
    logp = np.log2(counts / counts.sum())
    return [-logp[q] for q in evals]


def _prev(q: np.ndarray) -> np.ndarray:
    return np.concatenate([[ZERO], q[:-1]]).astype(np.int64)


def bigram_bits(train, evals) -> list[np.ndarray]:
    counts = sum(np.bincount(_prev(q) * Q + q, minlength=Q * Q) for q in train)
    counts = counts.reshape(Q, Q).astype(np.float64) + 1.0  # (prev, next), add-one
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))
    return [-logp[_prev(q), q] for q in evals]


# ----------------------------------------------------------------------------- linear predictor

def _contexts(x: np.ndarray, order: int, pad: float) -> np.ndarray:
    """(N, order) view: row t = x[t-order .. t-1] (oldest first), padded before the start."""
    xp = np.concatenate([np.full(order, pad), x])
    return np.lib.stride_tricks.sliding_window_view(xp, order)[: len(x)]


def fit_lpc(train_x, order: int, pad: float, chunk: int = 1 << 20) -> np.ndarray:
    """Least-squares taps w (order,), x_t ~ contexts[t] @ w, over all train samples."""
    xtx = np.zeros((order, order))
    xty = np.zeros(order)
    for x in train_x:
        c = _contexts(x, order, pad)
        for i in range(0, len(x), chunk):
            a = np.ascontiguousarray(c[i:i + chunk])
            xtx += a.T @ a
            xty += a.T @ x[i:i + chunk]
    return np.linalg.solve(xtx + 1e-9 * np.trace(xtx) / order * np.eye(order), xty)


def bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Waveform interval [lo, hi) of each mu-law code under round-to-nearest encoding."""
    k = np.arange(Q, dtype=np.float64)
    y = np.clip((np.concatenate([k - 0.5, [Q - 0.5]])) / (Q - 1) * 2 - 1, -1, 1)
    e = np.sign(y) * np.expm1(np.abs(y) * np.log1p(Q - 1)) / (Q - 1)
    e[0], e[-1] = -np.inf, np.inf
    return e[:-1], e[1:]


def lpc_bits(w, evals_q, order: int, window: int, sigma_min: float, eps: float) -> list[np.ndarray]:
    import torch

    from wavelm.audio import mulaw_decode

    lo, hi = bin_edges()
    pad = float(mulaw_decode(np.array([ZERO]))[0])
    out = []
    for q in evals_q:
        x = mulaw_decode(q.astype(np.int64)).astype(np.float64)
        mu = _contexts(x, order, pad) @ w
        r2 = (x - mu) ** 2
        # sigma_t from residuals t-window .. t-1 (causal); cumulative sums give each window
        cs = np.concatenate([[0.0], np.cumsum(r2)])
        t = np.arange(len(x))
        n = np.minimum(t, window)
        s2 = (cs[t] - cs[t - n]) / np.maximum(n, 1)
        sigma = np.maximum(np.sqrt(np.maximum(s2, 0)), sigma_min)
        a = torch.from_numpy((lo[q] - mu) / sigma)
        b = torch.from_numpy((hi[q] - mu) / sigma)
        ndtr = torch.special.ndtr
        # the upper tail through the lower one keeps precision when both ends lie far above mu
        p = torch.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a)).numpy()
        out.append(-np.log2(np.maximum(p, eps)))
    return out


def adaptive_lpc_bits(evals_q, order: int, window: int, hop: int, desc: str = "") -> list[np.ndarray]:
    """The model's LPC path alone (wavelm.model.lpc.adaptive_bits), file by file."""
    from tqdm import tqdm

    from wavelm.model.lpc import adaptive_bits

    return [adaptive_bits(q, order, window, hop) for q in tqdm(evals_q, desc=desc, leave=False)]


# ----------------------------------------------------------------------------- main

def pooled(bits: list[np.ndarray]) -> float:
    return float(sum(b.sum() for b in bits) / sum(len(b) for b in bits))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/bach_piano", help="render.py's output folder")
    ap.add_argument("--splits", nargs="+", default=None, choices=["train", "val", "test", "unseen"],
                    help="splits to score (default: val, test and unseen where DATA has them)")
    ap.add_argument("--order", type=int, default=16, help="linear predictor taps")
    ap.add_argument("--window", type=int, default=256, help="residuals behind sigma")
    ap.add_argument("--sigma-min", type=float, default=1e-6)
    ap.add_argument("--eps", type=float, default=1e-9, help="probability floor")
    ap.add_argument("--adaptive", nargs="*", default=["16,512,64", "32,1024,64", "64,2048,64"],
                    metavar="ORDER,WINDOW,HOP", help="adaptive-LPC settings (default 16,512,64 32,1024,64 64,2048,64)")
    ap.add_argument("--json-out", default=None, help="default: DATA/baselines.json")
    args = ap.parse_args(argv)

    from wavelm.audio import mulaw_decode

    data = Path(args.data)
    t0 = time.time()
    splits = args.splits or [s for s in ("val", "test", "unseen") if (data / s).is_dir()]
    train = load_split(data, "train")
    evals = {s: load_split(data, s) for s in splits}
    pad = float(mulaw_decode(np.array([ZERO]))[0])
    w = fit_lpc((mulaw_decode(q.astype(np.int64)).astype(np.float64) for q in train), args.order, pad)  # one file at a time

    adaptive = {}
    for a in args.adaptive:
        try:
            o, win, hop = (int(v) for v in a.split(","))
        except ValueError:
            raise SystemExit(f"baselines.py: --adaptive takes ORDER,WINDOW,HOP such as 64,2048,64, got {a!r}")
        adaptive[f"alpc{o}_{win}_{hop}"] = (o, win, hop)
    names = {"unigram": "unigram (add-one)", "bigram": "bigram (add-one)",
             "lpc": f"{args.order}-tap linear predictor, Gaussian residual, "
                    f"sigma from the last {args.window} residuals",
             **{k: f"adaptive LPC, order {o}, window {win}, refit every {hop}" for k, (o, win, hop) in adaptive.items()}}
    results = {}
    for s, qs in evals.items():
        bits = {"unigram": unigram_bits(train, qs), "bigram": bigram_bits(train, qs),
                "lpc": lpc_bits(w, qs, args.order, args.window, args.sigma_min, args.eps),
                **{k: adaptive_lpc_bits(qs, *v, desc=f"{s} {k}") for k, v in adaptive.items()}}
        results[s] = {"files": len(qs), "samples": int(sum(map(len, qs))),
                      **{k: pooled(b) for k, b in bits.items()}}
        pianos = [piano_of(p) for p in split_files(data, s)]
        if set(pianos) != {"all"}:   # a multi-piano corpus: the same baselines per piano
            results[s]["per_piano"] = {
                pi: {"files": pianos.count(pi),
                     **{k: pooled([b[i] for i in range(len(qs)) if pianos[i] == pi]) for k, b in bits.items()}}
                for pi in sorted(set(pianos))}

    print(f"Baselines, bits per sample (8-bit mu-law, 16 kHz); data {data}, "
          f"train {len(train)} files / {sum(map(len, train)) / 16000 / 3600:.3f} h")
    print()
    print("| model | " + " | ".join(f"{s} bits/sample" for s in evals) + " |")
    print("|---|" + "---|" * len(evals))
    for k, label in names.items():
        print(f"| {label} | " + " | ".join(f"{results[s][k]:.3f}" for s in evals) + " |")
    print()
    print("files / samples: " + ", ".join(f"{s} {r['files']} / {r['samples']}" for s, r in results.items()))
    for s, r in results.items():
        for pi, v in r.get("per_piano", {}).items():
            print(f"  {s} {pi}: {v['files']} files, unigram {v['unigram']:.3f}, bigram {v['bigram']:.3f}, "
                  f"linear predictor {v['lpc']:.3f}"
                  + "".join(f", {k} {v[k]:.3f}" for k in adaptive))

    card = {
        "data": str(data),
        "tokens": "8-bit mu-law, mu=255, wavelm.mulaw_encode (torchaudio formula)",
        "sample_rate": 16000,
        "bits": "pooled over the split: total -log2 p / samples",
        "train": {"files": len(train), "samples": int(sum(map(len, train)))},
        "models": names,
        "settings": {"order": args.order, "window": args.window, "sigma_min": args.sigma_min,
                     "eps": args.eps, "context_before_start": ZERO,
                     "adaptive": {k: {"order": o, "window": win, "hop": hop} for k, (o, win, hop) in adaptive.items()}},
        "lpc_taps_oldest_first": [round(float(v), 6) for v in w],
        "results": results,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.json_out) if args.json_out else data / "baselines.json"
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
