"""Package a trained run as wavelm's bundled default model, with a measured model card.

    .venv/bin/python recipes/bach_piano/bundle.py runs/bundled_small --data data/bach_cache

Copies RUN/best (config.json + model.safetensors) into wavelm/pretrained/, then measures and
writes into the model card (wavelm/pretrained/README.md) and config.json ("card"):
  - test bits per sample over the whole test split (`wavelm score --split test` reproduces it),
  - generation speed (batch 1, this machine),
  - quality of 30 s generated from silence with the default settings: RMS of every 5 s window
    against 1% of the data's median RMS (not silent), and the spectral flatness of the last 5 s
    against the range measured on training clips (no runaway noise).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import wavelm  # noqa: E402
from wavelm.checkpoint import PRETRAINED_DIR  # noqa: E402
from wavelm.files import atomic_write_text  # noqa: E402
from wavelm.data.folder import TokenCache  # noqa: E402

WIN = 5 * 16000


def windows(x: np.ndarray, n: int = WIN):
    return [x[i:i + n] for i in range(0, len(x) - n + 1, n)]


def flatness(x: np.ndarray, frame: int = 1024) -> float:
    """Mean spectral flatness (geometric / arithmetic mean of the power spectrum) over frames."""
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::frame // 2] * np.hanning(frame)
    p = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    return float(np.mean(np.exp(np.mean(np.log(p), axis=1)) / np.mean(p, axis=1)))


def data_reference(cache: TokenCache, n_windows: int = 200, seed: int = 0) -> dict:
    """Median RMS and the flatness range of 5 s windows of the training clips (decoded tokens)."""
    rng = np.random.default_rng(seed)
    segs = [s for s in cache.split_tokens("train") if len(s) >= WIN]
    rms, flat = [], []
    for i in rng.integers(0, len(segs), n_windows):
        s = segs[i]
        t = rng.integers(0, len(s) - WIN + 1)
        x = wavelm.mulaw_decode(np.asarray(s[t:t + WIN]))
        rms.append(float(np.sqrt(np.mean(x ** 2))))
        flat.append(flatness(x))
    return {"median_rms": float(np.median(rms)), "flatness_min": float(np.min(flat)),
            "flatness_max": float(np.max(flat)), "windows": n_windows}


def relative_paths(o):
    """Paths under the repository become repository-relative, others keep their last two parts: no machine paths
    in commits."""
    if isinstance(o, dict):
        return {k: relative_paths(v) for k, v in o.items()}
    if isinstance(o, list):
        return [relative_paths(v) for v in o]
    if isinstance(o, str) and o.startswith(str(REPO) + "/"):
        return o[len(str(REPO)) + 1:]
    if isinstance(o, str) and o.startswith("/") and len(Path(o).parts) > 3:
        return str(Path(*Path(o).parts[-2:]))  # a path elsewhere keeps its last two parts only
    return o


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=REPO / "data/bach_cache")
    ap.add_argument("--out", type=Path, default=PRETRAINED_DIR)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--skip-test", action="store_true", help="do not score the test split")
    args = ap.parse_args()
    torch.set_num_threads(1)

    src = args.run / "best"
    meta = json.loads((src / "config.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    # float16 weights halve the package (loaded back into float32); every number below is
    # measured on the model as shipped, i.e. after this rounding
    from safetensors.torch import load_file, save_file

    sd = {k: v.to(torch.float16) for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(sd, str(args.out / "model.safetensors"), metadata={"format": "1"})
    atomic_write_text(args.out / "config.json", json.dumps(relative_paths(meta), indent=2) + "\n")
    model = wavelm.WaveLM.from_pretrained(args.out)
    cache = TokenCache(args.data)

    card = {"parameters": model.num_parameters()}
    card["train_log"] = {k: meta.get(k) for k in ("step", "best_step", "val_bits", "best_val_bits",
                                                  "train", "data", "elapsed_s") if k in meta}
    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [m for m in metrics if m.get("event") == "train"]
    if train_rows:
        card["train_tokens_per_s_median"] = float(np.median([m["tokens_per_s"] for m in train_rows]))

    # generation speed and quality (default settings, from silence); a short warm-up first so
    # the numba compile (or its on-disk cache load) is not timed
    wavelm.generate(model, seconds=0.1, seed=1)
    t0 = time.perf_counter()
    audio = wavelm.generate(model, seconds=args.seconds, seed=0)[0]
    dt = time.perf_counter() - t0
    card["generate"] = {"seconds": args.seconds, "wall_s": round(dt, 2),
                        "samples_per_s": round(len(audio) / dt), "x_real_time": round(len(audio) / dt / 16000, 3)}
    ref = data_reference(cache)
    w_rms = [float(np.sqrt(np.mean(w ** 2))) for w in windows(audio)]
    last_flat = flatness(audio[-WIN:])
    card["quality"] = {
        "data": ref,
        "window_rms": [round(r, 5) for r in w_rms],
        "not_silent": bool(min(w_rms) > 0.01 * ref["median_rms"]),
        "last_5s_flatness": last_flat,
        "no_runaway_noise": bool(ref["flatness_min"] <= last_flat <= ref["flatness_max"]),
    }
    wavelm.save_audio(args.run / "sample_30s.wav", audio, 16000)

    if not args.skip_test:
        from wavelm.scoring import score_split

        t0 = time.perf_counter()
        res = score_split(model, args.data, "test", progress=True)
        card["test"] = {"bits_per_sample": res.bits_per_sample, "num_samples": res.num_samples,
                        "files": len(res.files), "wall_s": round(time.perf_counter() - t0, 1)}
        res_val = score_split(model, args.data, "val", progress=True)
        card["val"] = {"bits_per_sample": res_val.bits_per_sample, "num_samples": res_val.num_samples}

    meta["card"] = card
    meta = relative_paths(meta)
    atomic_write_text(args.out / "config.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(args.out / "README.md", model_card(model, meta))
    print(json.dumps(card, indent=2))


def model_card(model, meta) -> str:
    cfg, card, tr = model.config, meta["card"], meta.get("train", {})
    stages = ", ".join(f"{n}x d{d} w{w} @{16000 // h / 1000:g} kHz" for n, d, w, h in
                       zip(cfg.stage_layers, cfg.stage_dims, cfg.stage_windows, cfg.hop))
    rf = model.receptive_field()
    reach = (f"receptive field {rf} samples ({rf / cfg.sample_rate:.2f} s), attention-free" if cfg.arch == "conv"
             else f"attention reach {cfg.context_seconds:.2f} s")
    q, g = card["quality"], card["generate"]
    test = card.get("test", {}).get("bits_per_sample")
    val = card.get("val", {}).get("bits_per_sample")
    fmt = (lambda v: f"{v:.3f}" if isinstance(v, float) else "not measured")
    return f"""# wavelm default model: {cfg.arch}, multi-rate, {card['parameters'] / 1e6:.2f} M parameters

Trained by the wavelm project with `wavelm train`; packaged by `recipes/bach_piano/bundle.py`.
Every number below was measured by the project on its own machines.

| | |
|---|---|
| data | `recipes/bach_piano`: 410 Bach chorales (music21 corpus) rendered as solo piano at 16 kHz (FluidSynth, TimGM6mb GM piano); 3.57 h train, 0.17 h val, 0.24 h test, split by file |
| tokens | 8-bit mu-law (mu = 255, torchaudio's formula), 16 kHz |
| arch | `{cfg.arch}`, pool {cfg.pool}: {stages}; {reach} |
| parameters | {card['parameters']:,} (stored as float16: {card['parameters'] * 2 / 2**20:.1f} MB; run in float32) |
| training | {meta.get('step')} steps of {tr.get('batch_size')} x {tr.get('seq_len')} samples, AdamW lr {tr.get('lr')}, warm-up {tr.get('warmup')}, cosine; best checkpoint at step {meta.get('best_step')} |
| hardware | CPU only: 2-core AMD EPYC VM, 1 thread, shared with other jobs (median {card.get('train_tokens_per_s_median', 0):,.0f} tokens/s) |
| **test bits/sample** | **{fmt(test)}** over the whole test split ({card.get('test', {}).get('num_samples', 0):,} samples; `wavelm score --split test data/bach_cache`) |
| val bits/sample | {fmt(val)} (whole split) |
| baselines (test) | unigram 7.531, bigram 5.552, 16-tap linear predictor 3.720 |
| generation | {g['samples_per_s']:,} samples/s batch 1 ({g['x_real_time']}x real time), this machine, numba decoder |

## Quality of generated audio ({q['data']['windows']} training windows of 5 s as reference)

- 30 s from silence, default settings (temperature 1, top-p 1, seed 0): RMS of each 5 s window
  {', '.join(f'{r:.3f}' for r in q['window_rms'])} vs the data's median RMS {q['data']['median_rms']:.3f}
  -> not silent: **{q['not_silent']}** (threshold 1% of the median).
- Spectral flatness of the last 5 s: {q['last_5s_flatness']:.4f}; range on training clips
  [{q['data']['flatness_min']:.4f}, {q['data']['flatness_max']:.4f}] -> no runaway noise: **{q['no_runaway_noise']}**.

## Limits

Trained for well under an hour of one CPU core: it has learnt timbre and short-range structure of
one synthetic piano, not harmony or phrasing over seconds. Synthetic data (one soundfont, constant
velocity) is easier than recorded piano, so these bits are not comparable with YouTubeMix numbers.
Licences: Bach's music is public domain; the music21 corpus encodings are distributed with the
encoders' permission (some may restrict commercial use); the TimGM6mb soundfont is GPL-2.
"""


if __name__ == "__main__":
    main()
