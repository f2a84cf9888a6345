"""Setting a training run up, step by step, in the order `wavelm.train.loop.train` calls them
(the RNG draws are part of exact resume): the device, the run dir and its data, the crops, the
model, the optimizer and schedule (AdamW, warm-up + cosine), the compiled / DDP wrapper."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from wavelm.checkpoint import load_model, load_weights_into
from wavelm.data.sampler import CropSampler, split_segments, val_crops
from wavelm.decode.fast import use_lpc_kernel
from wavelm.model.config import ModelConfig
from wavelm.model.lm import WaveLM

from .config import DataConfig, TrainConfig
from .distributed import Dist, device_for
from .rundir import (frozen_splits, load_trainer_state, open_data, open_run_data, prepare_run_dir, read_split,
                     set_rng_state, with_splits)

log = logging.getLogger("wavelm.train")


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


def choose_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    """This process's device (cfg.threads on CPU); --tensorboard without its package is refused
    before anything is written."""
    device = device_for(cfg, dist.local_rank, dist.world)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.tensorboard and dist.rank == 0:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install 'wavelm[tensorboard]'") from None
    return device


def open_run(data, out: Path, data_cfg: DataConfig, dist: Dist, *, resume, overwrite, data_changed, progress):
    """(the checkpoint to resume from or None, the token cache on the run's frozen split): rank 0
    first prepares the run dir, the cache and RUN/split.json, then the other ranks open them."""
    def setup():
        if dist.rank != 0:
            return (out / "last" if resume else None), open_data(data, out, data_cfg, progress=False)
        ckpt = prepare_run_dir(out, resume, overwrite)
        frozen = read_split(out) if ckpt is not None else None
        return ckpt, open_run_data(data, out, data_cfg, frozen, data_changed, progress=progress)

    ckpt, cache = dist.rank0_first(setup)
    return ckpt, with_splits(cache, frozen_splits(cache, read_split(out)))   # RUN/split.json, by rank 0


def crops(cfg: TrainConfig, model_cfg: ModelConfig, cache, dist: Dist):
    """(the train crop sampler, the fixed validation crops, their length, the split they are from)."""
    train_segs, val_segs, val_split = split_segments(cache, "train"), split_segments(cache, "val"), "val"
    if not val_segs:
        log.warning("%s: no val split; validating on fixed train crops (optimistic numbers)", cache.path)
        val_segs, val_split = train_segs, "train"
    sampler = CropSampler(train_segs, cfg.seq_len, cfg.seed, dist.rank, cfg.input_noise, model_cfg.vocab_size)
    if sampler.skipped and dist.rank == 0:
        log.warning("%d of %d train segments are shorter than seq_len=%d and are skipped",
                    sampler.skipped, len(train_segs), cfg.seq_len)
    val_len = cfg.val_seq_len or cfg.seq_len
    return sampler, val_crops(val_segs, val_len, cfg.val_crops), val_len, val_split


def build_net(cfg: TrainConfig, model_cfg: ModelConfig, ckpt, device, dist: Dist):
    """(the model on `device` in train mode, the trainer state to resume or None): from the
    checkpoint `ckpt`, from cfg.init's weights, or fresh; the same init on every rank."""
    torch.manual_seed(cfg.seed)  # identical init on every rank
    state = None
    if ckpt is not None:
        net, state = load_trainer_state(ckpt, model_cfg)
        net.train()
    elif cfg.init:
        net = WaveLM(model_cfg)     # the requested config; the weights must fit it, dropout may differ
        load_weights_into(net, load_model(Path(cfg.init).expanduser()), cfg.init)
        net.float().train()
        if dist.rank == 0:
            log.info("weights from %s (optimizer and schedule start afresh)", cfg.init)
    else:
        net = WaveLM(model_cfg)
    net.to(device)
    if device.type == "cpu":
        use_lpc_kernel(net)                  # the LPC path (if any) through numba: same numbers, faster
    return net, state


def optimizer_for(net, cfg: TrainConfig, device, dist: Dist, state: dict | None):
    """(optimizer, scheduler): with a trainer state, its optimizer, schedule and this rank's RNG
    (this run's hyper-parameters applied); else this rank's own dropout seed."""
    opt, sched = make_optimizer(net, cfg, device)
    if state is None:
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, dist.rank, 1]).generate_state(1)[0]))
        return opt, sched
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    apply_hparams(opt, sched, cfg)
    rngs = state["rng"]
    if len(rngs) != dist.world:
        log.warning("resuming with %d processes, saved with %d: data order and dropout differ",
                    dist.world, len(rngs))
    set_rng_state(rngs[dist.rank % len(rngs)], device)
    return opt, sched


def wrap(net, cfg: TrainConfig, device, dist: Dist):
    """(what the steps run: `net`, compiled with cfg.compile, in DDP over several processes;
    the DDP module or None)."""
    model = torch.compile(net) if cfg.compile else net
    if dist.world == 1:
        return model, None
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, ddp


def apply_hparams(opt, sched, cfg: TrainConfig):
    """After loading a saved optimizer: this run's lr, schedule, betas and decay apply (the same
    floats as before when the config is unchanged, so resume stays exact)."""
    sched.lr_lambdas = [lr_lambda(cfg) for _ in opt.param_groups]
    sched.base_lrs = [cfg.lr] * len(opt.param_groups)
    for g, wd in zip(opt.param_groups, (cfg.weight_decay, 0.0)):
        g.update(initial_lr=cfg.lr, lr=cfg.lr * sched.lr_lambdas[0](sched.last_epoch),
                 betas=(cfg.beta1, cfg.beta2), weight_decay=wd)
