"""`wavelm bench score`: how fast does a model score audio on this machine?

    wavelm bench score                                  # the bundled model
    wavelm bench score --model small-pooled             # a preset, random weights
    wavelm bench score --model small --seconds 5 --threads 2 --json

Scores `--seconds` of synthetic audio `--repeat` times (after one warm-up) with
`wavelm.score` and reports the median samples/s and real-time factor (scoring time / audio
duration; below 1 is faster than real time), with the machine it ran on. Speed does not depend
on the weights, so random weights measure a preset's speed fairly; the output says which it was.
Timings on a shared machine are noisy: the median of the runs is the number to quote.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from wavelm.commands._common import check_device
from wavelm.errors import UserError
from wavelm.hardware import cpu_name


def add_arguments(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", metavar="DIR", default=None, help="model directory (default: the bundled model)")
    g.add_argument("--model", metavar="PRESET", default=None, help="a ModelConfig preset with random weights")
    p.add_argument("--arch", default=None, help="with --model: the architecture (default: the preset's)")
    p.add_argument("--seconds", type=float, metavar="S", default=10.0, help="audio per run (default 10)")
    p.add_argument("--chunk-seconds", type=float, metavar="C", default=2.0, help="audio per forward pass (default 2)")
    p.add_argument("--repeat", type=int, metavar="N", default=3, help="timed runs; the median is reported (default 3)")
    p.add_argument("--threads", type=int, metavar="N", default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _model(args):
    from wavelm.checkpoint import load_model

    if args.model:
        import torch

        from wavelm.model.config import ModelConfig
        from wavelm.model.lm import WaveLM

        over = {"arch": args.arch} if args.arch else {}
        torch.manual_seed(0)
        return WaveLM(ModelConfig.from_name(args.model, **over)).to(args.device).eval(), \
            f"preset {args.model} (random weights)"
    if args.arch:
        raise UserError("--arch goes with --model")
    try:
        model = load_model(args.checkpoint, map_location=args.device)
    except ValueError as e:
        hint = "" if args.checkpoint else "; or bench a preset: --model small-pooled"
        raise UserError(f"{e}{hint}") from None
    return model, f"checkpoint {model.checkpoint_path}"


def run(args) -> int:
    if args.seconds <= 0 or args.chunk_seconds <= 0 or args.repeat < 1 or args.threads < 1:
        raise UserError("--seconds and --chunk-seconds must be > 0; --repeat and --threads >= 1")
    import torch

    from wavelm.scoring import score

    check_device(args.device)
    model, what = _model(args)
    sr = model.config.sample_rate
    rng = np.random.default_rng(0)
    n = max(1, round(args.seconds * sr))
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / sr) + 0.05 * rng.standard_normal(n)).astype(np.float32)

    def once(x):
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        score(model, x, chunk_seconds=args.chunk_seconds, keep_per_sample=False, threads=args.threads)
        return time.perf_counter() - t  # score() reads the result back: the device has finished

    once(audio[:min(n, round(args.chunk_seconds * sr))])   # warm-up (allocator, kernels)
    times = [once(audio) for _ in range(args.repeat)]
    rates = sorted(n / t for t in times)
    med = statistics.median(rates)
    cfg = model.config
    out = {"model": what, "arch": cfg.arch_name, "pool": cfg.pool, "parameters": model.num_parameters(),
           "seconds": n / sr, "chunk_seconds": args.chunk_seconds, "repeat": args.repeat,
           "samples_per_second": med, "samples_per_second_min": rates[0], "samples_per_second_max": rates[-1],
           "real_time_factor": sr / med,
           "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
                       "device": str(next(model.parameters()).device), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    m = out["machine"]
    print(f"wavelm bench score: {what}, {cfg.arch_name}, pool {cfg.pool or 'none'}, "
          f"{model.num_parameters() / 1e6:.2f} M parameters")
    print(f"machine: {m['gpu'] or m['cpu']} ({m['cpus']} CPUs), {m['threads']} thread(s), torch {m['torch']}")
    print(f"{n / sr:.1f} s of audio x {args.repeat} runs, chunks of {args.chunk_seconds:g} s "
          "(median; shared machines are noisy)")
    print(f"  samples/s         {med:>10,.0f}   (min {rates[0]:,.0f}, max {rates[-1]:,.0f})")
    print(f"  real-time factor  {sr / med:>10.4f}   (scoring time / audio time; {med / sr:,.2f}x real time)")
    return 0
