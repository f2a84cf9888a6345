"""`wavelm bench train`: training throughput (tokens/s) of model presets on this machine.

    wavelm bench train                                   # every preset but tiny, on CPU
    wavelm bench train --presets base,base-flat --device cuda --batch-size 16 --seq-len 16384
    wavelm bench train --presets piano --lpc 64,2048,64     # each preset without and with the LPC path

Each preset runs the trainer's own step (AdamW, grad clipping, bf16 autocast where it pays: on
CUDA and on CPUs with native bf16; `--no-amp` for float32) on random tokens; tokens/s is
batch * seq_len / the median step time after the warm-up steps; with `--compile` the compile
time (the first step's time beyond the median step) is printed in its own column.
"""
from __future__ import annotations

import statistics
import time

from wavelm.errors import UserError
from wavelm.hardware import machine


def add_arguments(p):
    from wavelm.model.config import PRESETS

    default = ",".join(k for k in PRESETS if k != "tiny")
    p.add_argument("--presets", default=default, help=f"comma-separated model presets (default {default})")
    p.add_argument("--arch", help="override every preset's arch")
    p.add_argument("--steps", type=int, default=5, help="timed steps per preset (default 5)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; see docs/design.md)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model first")
    p.add_argument("--no-amp", action="store_true", help="float32 steps (no bf16 autocast)")
    p.add_argument("--lpc", metavar="ORDER,WINDOW,HOP", type=lpc_fields,
                   help="also each preset with the LPC path (lpc_order, lpc_window, lpc_hop), e.g. 64,2048,64")


def lpc_fields(text: str) -> dict:
    """'64,2048,64' -> the ModelConfig fields of the LPC path (bench train and bench generate)."""
    import argparse

    try:
        order, window, hop = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ORDER,WINDOW,HOP such as 64,2048,64, got {text!r}") from None
    return {"lpc_order": order, "lpc_window": window, "lpc_hop": hop}


def bench_preset(name, args, device, lpc=None) -> dict:
    import torch

    from wavelm.decode.fast import use_lpc_kernel
    from wavelm.model.config import ModelConfig
    from wavelm.model.lm import WaveLM
    from wavelm.train import TrainConfig, forward_backward, make_optimizer

    cfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps + args.warmup_steps,
                      amp=not args.no_amp)
    mcfg = ModelConfig.from_name(name, **({"arch": args.arch} if args.arch else {}), **(lpc or {}))
    torch.manual_seed(0)
    net = WaveLM(mcfg).to(device)
    if device.type == "cpu":
        use_lpc_kernel(net)                  # as the trainer does
    model = torch.compile(net) if args.compile else net
    opt, sched = make_optimizer(net, cfg, device)
    g = torch.Generator().manual_seed(0)
    times, first = [], None
    for i in range(args.warmup_steps + args.steps):
        y = torch.randint(0, 256, (cfg.batch_size, cfg.seq_len), generator=g)
        x = torch.cat([torch.full_like(y[:, :1], 128), y[:, :-1]], dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        loss, _ = forward_backward(model, [(x, y)], cfg, device)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # wait for the step
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - t)
        elif i == 0:
            first = time.perf_counter() - t
    med = statistics.median(times)
    # the first step of a compiled model traces and compiles forward and backward
    compile_s = first - med if args.compile and first is not None else None
    return {"preset": name + ("+lpc" if lpc else ""), "arch": mcfg.arch_name, "params": net.num_parameters(), "ms": med * 1e3,
            "tok_s": cfg.batch_size * cfg.seq_len / med, "compile_s": compile_s}


def run(args) -> int:
    import torch

    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1 or args.seq_len < 2:
        raise UserError("--steps, --batch-size must be >= 1 and --seq-len >= 2")
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device available")
    device = torch.device(name)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    from wavelm.train import TrainConfig, use_bf16

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    bf16 = use_bf16(device, TrainConfig(amp=not args.no_amp))
    print(f"wavelm bench train: batch {args.batch_size} x {args.seq_len} samples, median of "
          f"{args.steps} steps after {args.warmup_steps} warm-up, {device.type}"
          f"{' bf16 autocast' if bf16 else ' float32'}{' compiled' if args.compile else ''}")
    print(f"machine: {machine()}")
    extra = f" {'compile s':>10}" if args.compile else ""
    print(f"{'preset':<14} {'arch':<14} {'params':>8} {'ms/step':>9} {'tokens/s':>10}{extra}")
    for p in presets:
        for lpc in (None, args.lpc) if args.lpc else (None,):
            try:
                r = bench_preset(p, args, device, lpc)
            except ValueError as e:
                raise UserError(f"--presets {p}: {e}") from None
            extra = f" {r['compile_s']:>10.1f}" if r["compile_s"] is not None else ""
            print(f"{r['preset']:<14} {r['arch']:<14} {r['params'] / 1e6:>7.2f}M {r['ms']:>9.1f} "
                  f"{r['tok_s']:>10,.0f}{extra}", flush=True)
    return 0
