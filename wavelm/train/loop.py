"""The training loop: steps (loss, optimizer, schedule, accumulation), validation, and `train`."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wavelm.audio import LN2
from wavelm.checkpoint import load_weights_into
from wavelm.data.sampler import IGNORE, CropSampler, split_segments, val_batch, val_crops
from wavelm.files import atomic_write_text, hold_lock
from wavelm.decode.fast import use_lpc_kernel
from wavelm.hardware import machine
from wavelm.interrupt import Interrupted, deferred_stop
from wavelm.model.config import ModelConfig
from wavelm.model.lm import WaveLM, load_model

from .config import DataConfig, TrainConfig
from .distributed import Dist, device_for
from .rundir import (DATA_CHANGED, LOCK_NAME, Metrics, frozen_splits, load_trainer_state, open_data,
                     open_run_data, prepare_run_dir, read_split, rng_state, save_checkpoint,
                     set_rng_state, with_splits)

log = logging.getLogger("wavelm.train")


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is left as it was."""


def loss_fn(logits, y):
    """Mean cross-entropy in nats over the non-padding targets."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def lr_lambda(cfg: TrainConfig):
    def f(step):  # step = optimizer steps done so far; the factor applies to step + 1
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def make_optimizer(model, cfg: TrainConfig, device):
    """AdamW (decay on matrices and embeddings, not on norms and biases) + warm-up/cosine."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            fused=torch.device(device).type == "cuda")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 matrix
    products run 3-4x faster than float32 ones (docs/design.md); elsewhere they are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {f}" in flags for f in ("avx512_bf16", "amx_bf16"))


def use_bf16(device, cfg: TrainConfig) -> bool:
    """bf16 autocast for training steps: with cfg.amp, on CUDA and on CPUs with native bf16."""
    kind = torch.device(device).type
    return cfg.amp and (kind == "cuda" or (kind == "cpu" and cpu_has_bf16()))


def autocast(device, cfg: TrainConfig, train: bool = True):
    """The training step's autocast; validation keeps float32 on CPU (honest numbers, and cheap)."""
    dev = torch.device(device)
    on = use_bf16(dev, cfg) and (train or dev.type == "cuda")
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=on)


def forward_backward(model, batches, cfg: TrainConfig, device, no_sync=None):
    """Accumulate gradients over micro-batches [(x, y), ...]; returns the mean loss (nats) and
    the pre-clip grad norm, both tensors (no host sync)."""
    total = 0.0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        ctx = no_sync() if no_sync is not None and i < len(batches) - 1 else contextlib.nullcontext()
        with ctx:
            with autocast(device, cfg):
                loss = loss_fn(model(x), y) / len(batches)
            loss.backward()
        total = total + loss.detach()
    params = [p for p in model.parameters() if p.grad is not None]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    return total, torch.nn.utils.clip_grad_norm_(params, clip)


@torch.no_grad()
def evaluate(model, pieces, cfg: TrainConfig, seq_len: int, device, dist: Dist) -> float:
    """Validation NLL in bits per sample over the fixed crops, summed over all ranks."""
    was = model.training
    model.eval()
    mine = pieces[dist.rank::dist.world]
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(mine), cfg.batch_size):
        x, y = val_batch(mine[i:i + cfg.batch_size], seq_len)
        x, y = x.to(device), y.to(device)
        with autocast(device, cfg, train=False):
            logits = model(x)
        nll += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=IGNORE, reduction="sum").double()
    model.train(was)
    count = sum(n for _, _, n in mine)
    total, n = dist.all_sum([nll.item(), count], device)
    return total / max(n, 1) / LN2


def train(cfg: TrainConfig, model_cfg: ModelConfig, data, out, resume: bool = False, *,
          data_cfg: DataConfig | None = None, overwrite: bool = False, stop_at: int | None = None,
          progress: bool = True, on_start=None, data_changed: str = "refuse") -> dict:
    """Train `model_cfg` on `data` (TokenCache, cache dir or audio folder) into the run dir `out`.

    resume: continue from out/last (the model config must match) on the split frozen in
    out/split.json at the run's start: data that changed since is refused (DataChanged) unless
    data_changed="ok", which keeps the frozen split (files added since train only).
    stop_at: stop cleanly after that step (saving last/), as if interrupted. SIGINT or SIGTERM
    ends the current step, saves last/ and raises wavelm.interrupt.Interrupted (a
    KeyboardInterrupt). on_start(info): called on rank 0 with a dict describing the run before
    the first step. Returns a summary dict (rank 0's view).
    """
    out = Path(out).expanduser().resolve()
    if data_changed not in DATA_CHANGED:
        raise ValueError(f"data_changed must be one of {', '.join(DATA_CHANGED)}, got {data_changed!r}")
    data_cfg = data_cfg or DataConfig(path=str(data) if not hasattr(data, "meta") else "")
    device_type = "cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = Dist.from_env(device_type)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: is a file; --out must be a run directory")
        # one owner per run folder: rank 0 holds RUN/.wavelm.lock before anything is written
        with hold_lock(out / LOCK_NAME, out) if dist.rank == 0 else contextlib.nullcontext():
            return _train(cfg, model_cfg, data, out, resume, data_cfg, overwrite, stop_at, progress,
                          on_start, dist, data_changed)
    finally:
        dist.close()


def _train(cfg, model_cfg, data, out, resume, data_cfg, overwrite, stop_at, progress, on_start, dist,
           data_changed):
    t_start = time.monotonic()
    device = device_for(cfg, dist.local_rank, dist.world)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.tensorboard and dist.rank == 0:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install 'wavelm[tensorboard]'") from None
    rank0 = dist.rank == 0

    def setup():
        if not rank0:
            return (out / "last" if resume else None), open_data(data, out, data_cfg, progress=False)
        ckpt = prepare_run_dir(out, resume, overwrite)
        frozen = read_split(out) if ckpt is not None else None
        return ckpt, open_run_data(data, out, data_cfg, frozen, data_changed, progress=progress)

    ckpt, cache = dist.rank0_first(setup)
    cache = with_splits(cache, frozen_splits(cache, read_split(out)))   # RUN/split.json, by rank 0
    if cache.sample_rate != model_cfg.sample_rate:
        log.info("model sample_rate %d -> %d (the data's)", model_cfg.sample_rate, cache.sample_rate)
        model_cfg = dataclasses.replace(model_cfg, sample_rate=cache.sample_rate)

    train_segs, val_segs, val_split = split_segments(cache, "train"), split_segments(cache, "val"), "val"
    if not val_segs:
        log.warning("%s: no val split; validating on fixed train crops (optimistic numbers)", cache.path)
        val_segs, val_split = train_segs, "train"
    sampler = CropSampler(train_segs, cfg.seq_len, cfg.seed, dist.rank, cfg.input_noise, model_cfg.vocab_size)
    if sampler.skipped and rank0:
        log.warning("%d of %d train segments are shorter than seq_len=%d and are skipped",
                    sampler.skipped, len(train_segs), cfg.seq_len)
    val_len = cfg.val_seq_len or cfg.seq_len
    pieces = val_crops(val_segs, val_len, cfg.val_crops)

    # model, optimizer, state
    torch.manual_seed(cfg.seed)  # identical init on every rank
    state = None
    if ckpt is not None:
        net, state = load_trainer_state(ckpt, model_cfg)
        net.train()
    elif cfg.init:
        net = WaveLM(model_cfg)     # the requested config; the weights must fit it, dropout may differ
        load_weights_into(net, load_model(Path(cfg.init).expanduser()), cfg.init)
        net.float().train()
        if rank0:
            log.info("weights from %s (optimizer and schedule start afresh)", cfg.init)
    else:
        net = WaveLM(model_cfg)
    net.to(device)
    if device.type == "cpu":
        use_lpc_kernel(net)                  # the LPC path (if any) through numba: same numbers, faster
    opt, sched = make_optimizer(net, cfg, device)
    step, best, best_step = 0, None, None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _apply_hparams(opt, sched, cfg)
        step, best, best_step = state["step"], state.get("best_val_bits"), state.get("best_step")
        rngs = state["rng"]
        if len(rngs) != dist.world:
            log.warning("resuming with %d processes, saved with %d: data order and dropout differ",
                        dist.world, len(rngs))
        set_rng_state(rngs[dist.rank % len(rngs)], device)
    else:
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, dist.rank, 1]).generate_state(1)[0]))
    model = net
    if cfg.compile:
        model = torch.compile(model)
    ddp = None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    data_cfg = dataclasses.replace(  # absolute, so that --resume works from anywhere
        data_cfg, path=str(Path(data_cfg.path).expanduser().resolve()) if data_cfg.path else str(cache.path))
    data_info = {"path": data_cfg.path, "cache": str(cache.path), "codec": cache.codec,
                 "format": data_cfg.format, "hours": cache.meta["hours"], "val_split": val_split}
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.accum * dist.world
    metrics = None
    if rank0:
        atomic_write_text(out / "run.json", json.dumps(
            {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "data": data_cfg.to_dict()}, indent=2) + "\n")
        metrics = Metrics(out, step, cfg.tensorboard)
        bf16 = use_bf16(device, cfg)
        metrics.write({"event": "start", "step": step, "machine": machine(), "device": str(device),
                       "world_size": dist.world, "bf16": bf16, "time": time.time()})
        if on_start is not None:
            on_start({"params": net.num_parameters(), "model": model_cfg, "train": cfg, "data": data_info,
                      "cache": cache, "world_size": dist.world, "device": str(device),
                      "threads": torch.get_num_threads(), "tokens_per_step": tokens_per_step,
                      "bf16": bf16,
                      "start_step": step, "val_crops": len(pieces), "val_seq_len": val_len,
                      "train_segments": len(sampler.segs), "out": str(out)})

    def checkpoint(val_bits, with_state=True, as_best=False):
        rngs = dist.gather(rng_state(device))  # every rank takes part
        if not rank0:
            return
        meta = {"step": step, "val_bits": val_bits, "best_val_bits": best, "best_step": best_step,
                "train": cfg.to_dict(), "data": data_info}
        if as_best:
            save_checkpoint(net, out / "best", meta)
        if with_state:
            ts = {"format": 1, "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "rng": rngs, "sampler": {"kind": "stateless", "seed": cfg.seed, "world_size": dist.world},
                  "best_val_bits": best, "best_step": best_step, "val_bits": val_bits}
            save_checkpoint(net, out / "last", meta, ts)

    bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, smoothing=0.1,
               disable=not (progress and rank0))
    save_every = cfg.save_every or cfg.eval_every
    val_bits = state and state.get("val_bits")
    stopped, tok_s, train_bits = "done", 0.0, None
    evaluated = saved = step  # a resumed step is already validated and saved
    t_log, n_log, loss_log = time.monotonic(), 0, 0.0

    def validate():
        nonlocal val_bits, best, best_step, evaluated
        val_bits = evaluate(net, pieces, cfg, val_len, device, dist)
        improved = best is None or val_bits < best
        if improved:
            best, best_step = val_bits, step
        if metrics:
            metrics.write({"event": "val", "step": step, "val_bits": val_bits, "best_val_bits": best,
                           "time": time.time()})
        evaluated = step
        return improved

    with deferred_stop() as stop:   # SIGINT/SIGTERM: end the step, save last/, then Interrupted
        try:
            while step < cfg.steps:
                if stop_at is not None and step >= stop_at:
                    stopped = "stop_at"
                    break
                batches = [sampler.batch(step, m, cfg.batch_size) for m in range(cfg.accum)]
                loss, gnorm = forward_backward(model, batches, cfg, device, ddp.no_sync if ddp else None)
                over = rank0 and cfg.max_minutes > 0 and time.monotonic() - t_start > cfg.max_minutes * 60
                halt = stop.signum is not None
                loss_sum, gnorm, over, halt = dist.all_sum([loss.item(), gnorm.item(), float(over), float(halt)],
                                                           device)
                if not (math.isfinite(loss_sum) and math.isfinite(gnorm)):
                    raise TrainingDiverged(_diverged_message(out, step + 1, loss_sum, gnorm))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                loss_log += loss_sum / dist.world
                n_log += 1
                if step % cfg.log_every == 0 or step == cfg.steps:
                    dt = time.monotonic() - t_log
                    tok_s = n_log * tokens_per_step / max(dt, 1e-9)
                    train_bits = loss_log / n_log / LN2
                    if metrics:
                        metrics.write({"event": "train", "step": step, "loss_bits": train_bits,
                                       "lr": sched.get_last_lr()[0], "grad_norm": gnorm / dist.world,
                                       "tokens_per_s": tok_s, "elapsed_s": time.monotonic() - t_start,
                                       "time": time.time()})
                    t_log, n_log, loss_log = time.monotonic(), 0, 0.0
                improved = step % cfg.eval_every == 0 and validate()
                if improved or step % save_every == 0:
                    checkpoint(val_bits, with_state=step % save_every == 0, as_best=improved)
                    saved = step if step % save_every == 0 else saved
                if step % cfg.log_every == 0 or step == evaluated:
                    bar.set_postfix_str(f"loss {_fmt(train_bits)} b  val {_fmt(val_bits)} b  {tok_s:,.0f} tok/s")
                if over:
                    stopped = "time"
                    break
                if halt:
                    stopped = "signal"
                    break
            if stopped == "signal":   # save last/ now; no validation (the next one comes when it is due)
                if saved != step:
                    checkpoint(val_bits)
            else:   # the end, a time budget or stop_at: the final step is validated and saved
                improved = evaluated != step and validate()
                if saved != step or improved:
                    checkpoint(val_bits, with_state=saved != step, as_best=improved)
        finally:
            bar.close()
            if metrics:
                metrics.close()
    if stopped == "signal":
        if rank0:
            log.info("stopped by %s at step %d: %s saved; continue with --resume",
                     signal.Signals(stop.signum or signal.SIGTERM).name, step, out / "last")
        raise Interrupted(stop.signum or signal.SIGTERM)
    return {"step": step, "stopped": stopped, "val_bits": val_bits, "best_val_bits": best,
            "best_step": best_step, "tokens_per_s": tok_s, "params": net.num_parameters(),
            "elapsed_s": time.monotonic() - t_start, "out": str(out), "best": str(out / "best"),
            "last": str(out / "last"), "cache": str(cache.path)}


def _apply_hparams(opt, sched, cfg: TrainConfig):
    """After loading a saved optimizer: this run's lr, schedule, betas and decay apply (the same
    floats as before when the config is unchanged, so resume stays exact)."""
    sched.lr_lambdas = [lr_lambda(cfg) for _ in opt.param_groups]
    sched.base_lrs = [cfg.lr] * len(opt.param_groups)
    for g, wd in zip(opt.param_groups, (cfg.weight_decay, 0.0)):
        g.update(initial_lr=cfg.lr, lr=cfg.lr * sched.lr_lambdas[0](sched.last_epoch),
                 betas=(cfg.beta1, cfg.beta2), weight_decay=wd)


def _diverged_message(out: Path, step: int, loss: float, gnorm: float) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    last = out / "last" / "config.json"
    saved = "no checkpoint was saved yet"
    with contextlib.suppress(OSError, ValueError):
        saved = f"the last good checkpoint is {last.parent} (step {json.loads(last.read_text())['step']})"
    return (f"non-finite {what} ({loss if what == 'loss' else gnorm}) at step {step}; {saved}. "
            "Try a lower --lr, more --warmup or --set train.grad_clip=0.5")


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"
