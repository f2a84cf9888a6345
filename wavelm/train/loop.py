"""The training loop: steps (loss, bf16 autocast, accumulation), validation, and `train`.

`train` sets a run up in named steps (wavelm/train/setup.py: device, run dir and data, crops,
model, optimizer, compile/DDP; in this order, for the RNG draws are part of exact resume), then
a `Trainer` runs the loop, which reads like nanoGPT's: a step and its log record, validation
and checkpoints when they are due, and the reasons to stop."""
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

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wavelm.audio import LN2
from wavelm.data.sampler import IGNORE, CropSampler, val_batch
from wavelm.files import atomic_write_text, hold_lock
from wavelm.hardware import machine
from wavelm.interrupt import Interrupted, deferred_stop
from wavelm.model.config import ModelConfig
from wavelm.model.lm import WaveLM

from .config import DataConfig, TrainConfig
from .distributed import Dist
from .rundir import DATA_CHANGED, LOCK_NAME, Metrics, rng_state, save_checkpoint
from .setup import build_net, choose_device, crops, open_run, optimizer_for, wrap

log = logging.getLogger("wavelm.train")


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is left as it was."""


def loss_fn(logits, y):
    """Mean cross-entropy in nats over the non-padding targets."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


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
            trainer = _setup(cfg, model_cfg, data, out, dist, data_cfg=data_cfg, resume=resume,
                             overwrite=overwrite, data_changed=data_changed, progress=progress)
            trainer.announce(on_start)
            return trainer.run(stop_at)
    finally:
        dist.close()


# -- the run, set up in order (wavelm/train/setup.py) ------------------------------------------

def _setup(cfg, model_cfg, data, out, dist, *, data_cfg, resume, overwrite, data_changed, progress) -> Trainer:
    """The run ready for its first step: device, data, model, optimizer, in this order."""
    t_start = time.monotonic()
    device = choose_device(cfg, dist)
    ckpt, cache = open_run(data, out, data_cfg, dist, resume=resume, overwrite=overwrite,
                           data_changed=data_changed, progress=progress)
    if cache.sample_rate != model_cfg.sample_rate:
        log.info("model sample_rate %d -> %d (the data's)", model_cfg.sample_rate, cache.sample_rate)
        model_cfg = dataclasses.replace(model_cfg, sample_rate=cache.sample_rate)
    sampler, pieces, val_len, val_split = crops(cfg, model_cfg, cache, dist)
    net, state = build_net(cfg, model_cfg, ckpt, device, dist)
    opt, sched = optimizer_for(net, cfg, device, dist, state)
    model, ddp = wrap(net, cfg, device, dist)
    data_cfg = dataclasses.replace(  # absolute, so that --resume works from anywhere
        data_cfg, path=str(Path(data_cfg.path).expanduser().resolve()) if data_cfg.path else str(cache.path))
    data_info = {"path": data_cfg.path, "cache": str(cache.path), "codec": cache.codec,
                 "format": data_cfg.format, "hours": cache.meta["hours"], "val_split": val_split}
    t = Trainer(cfg=cfg, model_cfg=model_cfg, data_cfg=data_cfg, out=out, dist=dist, device=device, net=net,
                model=model, ddp=ddp, opt=opt, sched=sched, sampler=sampler, pieces=pieces, val_len=val_len,
                cache=cache, data_info=data_info, progress=progress, t_start=t_start)
    if state is not None:
        t.step, t.best, t.best_step, t.val_bits = (state["step"], state.get("best_val_bits"),
                                                   state.get("best_step"), state.get("val_bits"))
    t.evaluated = t.saved = t.step  # a resumed step is already validated and saved
    return t


# -- the loop -----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Trainer:
    """A run set up by `_setup`: `run` is the loop, each step a method. `net` holds the weights
    that are saved; `model` is what the steps run (`net` compiled and/or in DDP)."""
    cfg: TrainConfig
    model_cfg: ModelConfig
    data_cfg: DataConfig
    out: Path
    dist: Dist
    device: torch.device
    net: WaveLM
    model: torch.nn.Module
    ddp: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    sampler: CropSampler
    pieces: list                   # the fixed validation crops
    val_len: int
    cache: object
    data_info: dict
    progress: bool
    t_start: float
    step: int = 0                  # optimizer steps done
    best: float | None = None      # the lowest validation bits so far, and its step
    best_step: int | None = None
    val_bits: float | None = None  # the latest validation
    evaluated: int = 0             # the step last validated
    saved: int = 0                 # the step last saved with its trainer state (last/)
    metrics: Metrics | None = None  # rank 0
    bar: tqdm | None = None
    train_bits: float | None = None  # the latest train record's loss and tokens/s
    tok_s: float = 0.0
    t_log: float = 0.0             # the window of steps since that record: start, steps, loss sum
    n_log: int = 0
    loss_log: float = 0.0

    @property
    def rank0(self) -> bool:
        return self.dist.rank == 0

    @property
    def save_every(self) -> int:
        return self.cfg.save_every or self.cfg.eval_every

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.cfg.accum * self.dist.world

    def announce(self, on_start=None):
        """Rank 0: run.json, the metrics log with its `start` record, and on_start(the run)."""
        if not self.rank0:
            return
        cfg, model_cfg = self.cfg, self.model_cfg
        atomic_write_text(self.out / "run.json", json.dumps(
            {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "data": self.data_cfg.to_dict()}, indent=2) + "\n")
        self.metrics = Metrics(self.out, self.step, cfg.tensorboard)
        bf16 = use_bf16(self.device, cfg)
        self.metrics.write({"event": "start", "step": self.step, "machine": machine(), "device": str(self.device),
                            "world_size": self.dist.world, "bf16": bf16, "time": time.time()})
        if on_start is not None:
            on_start({"params": self.net.num_parameters(), "model": model_cfg, "train": cfg, "data": self.data_info,
                      "cache": self.cache, "world_size": self.dist.world, "device": str(self.device),
                      "threads": torch.get_num_threads(), "tokens_per_step": self.tokens_per_step,
                      "bf16": bf16, "start_step": self.step, "val_crops": len(self.pieces), "val_seq_len": self.val_len,
                      "train_segments": len(self.sampler.segs), "out": str(self.out)})

    def run(self, stop_at: int | None = None) -> dict:
        """Steps until cfg.steps, stop_at, the time budget or a signal; the summary."""
        self.bar = tqdm(total=self.cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, smoothing=0.1,
                        disable=not (self.progress and self.rank0))
        self.t_log = time.monotonic()
        with deferred_stop() as stop:   # SIGINT/SIGTERM: end the step, save last/, then Interrupted
            try:
                stopped = self.loop(stop, stop_at)
                self.finish(stopped)
            finally:
                self.close()
        if stopped == "signal":
            signum = stop.signum or signal.SIGTERM
            if self.rank0:
                log.info("stopped by %s at step %d: %s saved; continue with --resume",
                         signal.Signals(signum).name, self.step, self.out / "last")
            raise Interrupted(signum)
        return self.summary(stopped)

    def loop(self, stop, stop_at: int | None) -> str:
        """The steps; returns why they ended: done, stop_at, time (cfg.max_minutes) or signal."""
        while self.step < self.cfg.steps:
            if stop_at is not None and self.step >= stop_at:
                return "stop_at"
            over, halt = self.train_step(stop)
            improved = self.step % self.cfg.eval_every == 0 and self.validate()
            keep = bool(self.cfg.keep_every) and self.step % self.cfg.keep_every == 0
            if improved or keep or self.step % self.save_every == 0:
                self.save(with_state=self.step % self.save_every == 0, as_best=improved, keep=keep)
            self.show()
            if over:
                return "time"
            if halt:
                return "signal"
        return "done"

    def train_step(self, stop) -> tuple[float, float]:
        """One optimizer step over cfg.accum micro-batches, logged; returns (over the time budget,
        a stop signal), summed over the ranks (with the loss: one sync) so that all stop alike."""
        cfg, dist = self.cfg, self.dist
        batches = [self.sampler.batch(self.step, m, cfg.batch_size) for m in range(cfg.accum)]
        loss, gnorm = forward_backward(self.model, batches, cfg, self.device, self.ddp.no_sync if self.ddp else None)
        over = self.rank0 and cfg.max_minutes > 0 and time.monotonic() - self.t_start > cfg.max_minutes * 60
        halt = stop.signum is not None
        loss, gnorm, over, halt = dist.all_sum([loss.item(), gnorm.item(), float(over), float(halt)], self.device)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise TrainingDiverged(_diverged_message(self.out, self.step + 1, loss, gnorm))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.bar.update(1)
        self.log_step(loss, gnorm)
        return over, halt

    def log_step(self, loss_sum: float, gnorm_sum: float):
        """The step's loss joins the window; every log_every steps (and at the last) the window's
        `train` record."""
        self.loss_log += loss_sum / self.dist.world
        self.n_log += 1
        if self.step % self.cfg.log_every != 0 and self.step != self.cfg.steps:
            return
        dt = time.monotonic() - self.t_log
        self.tok_s = self.n_log * self.tokens_per_step / max(dt, 1e-9)
        self.train_bits = self.loss_log / self.n_log / LN2
        if self.metrics:
            self.metrics.write({"event": "train", "step": self.step, "loss_bits": self.train_bits,
                                "lr": self.sched.get_last_lr()[0], "grad_norm": gnorm_sum / self.dist.world,
                                "tokens_per_s": self.tok_s, "elapsed_s": time.monotonic() - self.t_start,
                                "time": time.time()})
        self.t_log, self.n_log, self.loss_log = time.monotonic(), 0, 0.0

    def validate(self) -> bool:
        """Validation bits of this step (a `val` record); whether they are the best so far."""
        self.val_bits = evaluate(self.net, self.pieces, self.cfg, self.val_len, self.device, self.dist)
        improved = self.best is None or self.val_bits < self.best
        if improved:
            self.best, self.best_step = self.val_bits, self.step
        if self.metrics:
            self.metrics.write({"event": "val", "step": self.step, "val_bits": self.val_bits,
                                "best_val_bits": self.best, "time": time.time()})
        self.evaluated = self.step
        return improved

    def save(self, with_state: bool = True, as_best: bool = False, keep: bool = False):
        """This step's last/ (with the trainer state: optimizer, schedule, every rank's RNG) and/or
        best/ and/or steps/<step>/ (`keep_every`: the model only, to choose among checkpoints by
        listening, which does not follow the val bits); every rank takes part, rank 0 writes."""
        rngs = self.dist.gather(rng_state(self.device))
        if with_state:
            self.saved = self.step
        if not self.rank0:
            return
        cfg = self.cfg
        meta = {"step": self.step, "val_bits": self.val_bits, "best_val_bits": self.best,
                "best_step": self.best_step, "train": cfg.to_dict(), "data": self.data_info}
        if as_best:
            save_checkpoint(self.net, self.out / "best", meta)
        if keep:
            save_checkpoint(self.net, self.out / "steps" / str(self.step), meta)
        if with_state:
            ts = {"format": 1, "step": self.step, "optimizer": self.opt.state_dict(),
                  "scheduler": self.sched.state_dict(), "rng": rngs,
                  "sampler": {"kind": "stateless", "seed": cfg.seed, "world_size": self.dist.world},
                  "best_val_bits": self.best, "best_step": self.best_step, "val_bits": self.val_bits}
            save_checkpoint(self.net, self.out / "last", meta, ts)

    def show(self):
        if self.step % self.cfg.log_every == 0 or self.step == self.evaluated:
            self.bar.set_postfix_str(f"loss {_fmt(self.train_bits)} b  val {_fmt(self.val_bits)} b  "
                                     f"{self.tok_s:,.0f} tok/s")

    def finish(self, stopped: str):
        """After the loop. On a signal: last/ now, no validation (the next comes when it is due).
        At the end, a time budget or stop_at: the final step validated and saved."""
        if stopped == "signal":
            if self.saved != self.step:
                self.save()
            return
        improved = self.evaluated != self.step and self.validate()
        if self.saved != self.step or improved:
            self.save(with_state=self.saved != self.step, as_best=improved)

    def close(self):
        """The progress bar, the metrics log, and the DDP wrapper: it must go before `train`
        closes the process group (a gloo rank can hang in its destructor after)."""
        self.bar.close()
        if self.metrics:
            self.metrics.close()
        self.model = self.ddp = None

    def summary(self, stopped: str) -> dict:
        out = self.out
        return {"step": self.step, "stopped": stopped, "val_bits": self.val_bits, "best_val_bits": self.best,
                "best_step": self.best_step, "tokens_per_s": self.tok_s, "params": self.net.num_parameters(),
                "elapsed_s": time.monotonic() - self.t_start, "out": str(out), "best": str(out / "best"),
                "last": str(out / "last"), "cache": str(self.cache.path)}


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
