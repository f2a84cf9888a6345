"""`wavelm bench generate`: how fast does a model generate audio on this machine?

    wavelm bench generate                                   # the bundled model (else preset small)
    wavelm bench generate --model small --batch 1,16 --seconds 5
    wavelm bench generate --model small-flat --attn-window 2048 --batch 1
    wavelm bench generate --checkpoint runs/piano --seconds 60 --batch 1
    wavelm bench generate --model piano --lpc 64,2048,64 --repeat 15   # the LPC path's price, batch 1

For each batch size: the decoder generation uses (`--backend`, default the fastest here),
timed over `--repeat` runs of `--seconds` of audio per stream after a short warm-up (JIT
compile, caches), as the median samples/s per stream and for all streams, and x real time per
stream; the state memory at the start and at the end (it must not grow: `--seconds 60`); and the
speed-up over two slower ways measured in the same run on a few hundred samples: the torch
reference step (the model's forward with state, one sample per call) and naive generation
(the full forward over the last `context` samples for every new sample, no state; context
defaults to the innermost attention span, W x hop samples). Speed does not depend on the
weights, so random weights measure a preset fairly; the output says which it was.
"""
from __future__ import annotations

import statistics
import time

from wavelm.commands._common import check_device
from wavelm.commands.bench_train import lpc_fields
from wavelm.errors import UserError


def add_arguments(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", metavar="DIR", default=None, help="model directory (default: the bundled model)")
    g.add_argument("--model", metavar="PRESET", default=None, help="a ModelConfig preset with random weights")
    p.add_argument("--arch", default=None, help="with --model: the architecture")
    p.add_argument("--attn-window", type=int, default=None, help="with --model: attention window (all stages)")
    p.add_argument("--pool", default=None, help="with --model: pooling factors such as 4,4, or none")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio per stream per timed run (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per batch size; the median is shown (default 3)")
    p.add_argument("--naive-samples", type=int, default=200,
                   help="samples timed for the reference step and naive generation (naive stops after 10 s; "
                        "default 200)")
    p.add_argument("--context", type=int, default=None, help="naive: samples recomputed per new sample")
    p.add_argument("--backend", default="auto", help="decoder: auto (default), fast, torch, cuda-graph")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    p.add_argument("--lpc", metavar="ORDER,WINDOW,HOP", type=lpc_fields, default=None,
                   help="with --model: the preset without and with the LPC path, batch 1, runs interleaved")
    from wavelm.commands._common import add_sampling_arguments

    add_sampling_arguments(p, "sampling (the decoders' timed runs)")


def _model(args):
    import torch

    from wavelm.checkpoint import PRETRAINED_DIR, load_model
    from wavelm.model.config import ModelConfig
    from wavelm.model.lm import WaveLM

    over = {k: v for k, v in (("arch", args.arch), ("attn_window", args.attn_window)) if v is not None}
    if args.pool is not None:
        over["pool"] = [] if args.pool.strip().lower() in ("", "none", "0") else _ints(args.pool, "--pool")
    if args.checkpoint is None and args.model is None and (PRETRAINED_DIR / "config.json").exists() and not over:
        args.checkpoint = str(PRETRAINED_DIR)
    if args.checkpoint is not None:
        if over:
            raise UserError("--arch, --attn-window and --pool go with --model")
        model = load_model(args.checkpoint, map_location=args.device)
        return model, f"checkpoint {args.checkpoint}"
    name = args.model or "small"
    torch.manual_seed(0)
    model = WaveLM(ModelConfig.from_name(name, **over)).to(args.device).eval()
    why = "" if args.model else ", no bundled model"
    return model, f"preset {name} with random weights{why} (speed does not depend on weights)"


def _ints(text, flag):
    try:
        v = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 1:
        raise UserError(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return v


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _naive_rate(model, n, context, device, budget=10.0):
    """Samples/s of generation that reruns the full forward over the last `context` samples
    (n samples, or fewer if they take longer than `budget` seconds; at least 3)."""
    import torch

    from wavelm.audio import ZERO
    from wavelm.decode.sampling import Noise, Sampling, sample_torch

    noise, s = Noise(0, 1, device), Sampling()
    seq = torch.full((1, context), ZERO, dtype=torch.int64, device=device)   # a full context
    with torch.inference_mode():
        model(seq)                                                   # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for i in range(n):
            logits = model(seq)[:, -1]
            tok = sample_torch(logits, noise.take(1)[0], s)
            seq = torch.cat([seq[:, 1:], tok[:, None]], 1)
            if i >= 2 and time.perf_counter() - t0 > budget:
                break
        _sync(device)
    return (i + 1) / (time.perf_counter() - t0), i + 1


def _rate(model, batch, seconds, backend, device, warm=0.2, repeat=1, sampling=None):
    """(decoder, median samples/s per stream over `repeat` runs of `seconds`, state bytes
    before and after); the runs continue one stream, so the last one ends at repeat x seconds."""
    from wavelm.generation import start

    dec = start(model, batch_size=batch, seed=0, backend=backend, sampling=sampling)
    sr = model.config.sample_rate
    dec.run(max(1, int(warm * sr)))                                 # JIT, caches, graph capture
    before = dec.state_nbytes()
    n = max(1, round(seconds * sr))
    rates = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        dec.run(n)
        rates.append(n / (time.perf_counter() - t0))
    return dec.name, statistics.median(rates), before, dec.state_nbytes()


def run(args) -> int:
    import torch

    from wavelm.hardware import machine

    batches = _ints(args.batch, "--batch")
    if not args.seconds > 0 or min(args.naive_samples, args.threads, args.repeat) < 1:
        raise UserError("--seconds must be > 0; --naive-samples, --threads and --repeat >= 1")
    check_device(args.device)
    from wavelm.commands._common import check_generation_flags, model_sampling, sampling_options

    check_generation_flags(None, max(batches), batch_flag="--batch", **sampling_options(args))
    torch.set_num_threads(args.threads)
    if args.lpc is not None:
        return _lpc_price(args)
    model, what = _model(args)
    args.sampling = model_sampling(model, args)                     # the model's own, the flags on top
    check_generation_flags(None, max(batches), sampling=args.sampling, batch_flag="--batch")   # its best_of too
    cfg, sr = model.config, model.config.sample_rate
    context = args.context or cfg.stage_windows[-1] * cfg.hop[-1]
    print(f"wavelm bench generate: {what}")
    print(f"model: {cfg.arch_name}, pool {cfg.pool or 'none'}, widths {cfg.stage_dims}, layers {cfg.stage_layers}, "
          f"windows {cfg.stage_windows}, {model.num_parameters() / 1e6:.2f} M parameters")
    print(f"machine: {machine()}")
    print(f"sampling: {args.sampling}")
    naive, n_naive = _naive_rate(model, args.naive_samples, context, args.device)
    _, ref, _, _ = _rate(model, 1, args.naive_samples / sr, "torch", args.device, warm=0.002)
    print(f"naive generation (full forward over the last {context} samples for each sample, batch 1): "
          f"{naive:,.1f} samples/s over {n_naive} samples")
    print(f"torch reference step (the model's forward with state, batch 1): {ref:,.0f} samples/s "
          f"over {args.naive_samples} samples")
    rows, base = [], None
    for b in batches:
        name, r, m0, m1 = _rate(model, b, args.seconds, args.backend, args.device, repeat=args.repeat,
                                sampling=args.sampling)
        base = base or (r * b if b == 1 else None)
        rows.append((b, name, r, r * b, r / sr, m0, m1, r * b / naive))
    print(f"median of {args.repeat} runs of {args.seconds:g} s per stream, after a 0.2 s warm-up; state "
          f"memory at the start and after {args.repeat * args.seconds:g} s (x real time: per stream; "
          "total vs naive: all streams vs naive batch 1):")
    head = ("batch", "decoder", "samples/s/stream", "samples/s total", "x real time", "state MB start", "end",
            "total vs naive", "vs batch 1")
    table = [head]
    for b, name, r, tot, rt, m0, m1, vs in rows:
        table.append((f"{b}", name, f"{r:,.0f}", f"{tot:,.0f}", f"{rt:.2f}", f"{m0 / 1e6:.3g}", f"{m1 / 1e6:.3g}",
                      f"{vs:,.0f}x", f"{tot / base:.2f}x" if base else "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return 0


def _lpc_price(args) -> int:
    """The preset without and with the LPC path at batch 1, `repeat` runs of each interleaved
    (a load that comes and goes hits both alike): medians and the median of the paired ratios."""
    import torch

    from wavelm.generation import start
    from wavelm.hardware import machine
    from wavelm.model.config import ModelConfig
    from wavelm.model.lm import WaveLM

    if args.model is None:
        raise UserError("--lpc goes with --model PRESET (the same preset is built without and with the path)")
    over = {k: v for k, v in (("arch", args.arch), ("attn_window", args.attn_window)) if v is not None}
    decs = {}
    for name, lpc in (("without", {}), ("with", args.lpc)):
        torch.manual_seed(0)
        try:
            model = WaveLM(ModelConfig.from_name(args.model, **over, **lpc)).to(args.device).eval()
        except ValueError as e:
            raise UserError(str(e)) from None
        decs[name] = start(model, batch_size=1, seed=0, backend=args.backend, sampling=args.sampling)
        decs[name].run(max(1, int(0.2 * model.config.sample_rate)))              # JIT, caches
    n = max(1, round(args.seconds * model.config.sample_rate))
    rates = {k: [] for k in decs}
    for _ in range(args.repeat):
        for k, dec in decs.items():
            _sync(args.device)
            t0 = time.perf_counter()
            dec.run(n)
            rates[k].append(n / (time.perf_counter() - t0))
    ratio = statistics.median(w / wo for w, wo in zip(rates["with"], rates["without"]))
    o = args.lpc
    print(f"wavelm bench generate: preset {args.model} with random weights, without and with the LPC path "
          f"(order {o['lpc_order']}, window {o['lpc_window']}, hop {o['lpc_hop']}), batch 1, decoder "
          f"{decs['with'].name}, {args.repeat} interleaved runs of {args.seconds:g} s")
    print(f"machine: {machine()}")
    for k in decs:
        print(f"  {k + ' the path':16s} {statistics.median(rates[k]):>10,.0f} samples/s (median)")
    print(f"  with / without: {ratio:.3f} (median of the paired runs)")
    return 0

