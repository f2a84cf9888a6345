"""Trainer: random crops from a token cache, AdamW with warm-up + cosine, periodic validation,
best/last checkpoints and exact resume; one process or many under `torchrun` (DDP).

    from wavelm.train import TrainConfig, train
    res = train(TrainConfig(steps=2000), ModelConfig.from_name("small"), "data/piano", "runs/piano")
    res["best_val_bits"], res["best"]

    wavelm train --data data/piano --model small --steps 2000 --out runs/piano
    torchrun --standalone --nproc-per-node=4 -m wavelm train --data CACHE --out RUN ...

The run directory:

    run.json        model, train and data configs (what `--resume` starts from)
    metrics.jsonl   one JSON object per log or validation event (rank 0)
    cache/          the token cache when `data` is an audio folder; reused while files are unchanged
    last/           model dir + trainer_state.pt, every `save_every` steps and at the end
    best/           model dir with the lowest validation bits so far
    tb/             TensorBoard events (`tensorboard=True`)

Checkpoints are built in a hidden temp dir, then swapped in with renames (`files.publish_dir`), so after
a crash `last/` (or, between the two renames, `.last.old/`, which `_recover` puts back) holds a
complete set whose files all carry the same step.

Exact resume: the batch of step k on rank r is a pure function of (seed, r, k) (`CropSampler`),
so only the step, optimizer, scheduler and torch RNG states (dropout) need saving.
`batch_size` is per process: a step sees batch_size * seq_len * accum * world_size tokens.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wavelm.audio import LN2, ZERO
from wavelm.checkpoint import CheckpointError, save_model
from wavelm.files import atomic_write, atomic_write_text, publish_dir, recover_dir
from wavelm.model.config import ModelConfig
from wavelm.model.lm import WaveLM, load_model

log = logging.getLogger(__name__)

IGNORE = -100      # target padding of short validation crops
RUN_FILES = ("run.json", "metrics.jsonl", "last", "best", "tb")


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is left as it was."""


# ----------------------------------------------------------------------------- configs

@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 8          # crops per process per micro-batch
    seq_len: int = 4096          # samples per crop
    lr: float = 1e-3             # peak learning rate
    min_lr: float = 0.1          # cosine floor, as a fraction of lr
    warmup: int = 200            # linear warm-up steps
    weight_decay: float = 0.1    # AdamW, on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0       # max global grad norm; 0 = off
    accum: int = 1               # micro-batches per step
    eval_every: int = 500        # validation (and best/ checkpoint) every N steps
    save_every: int = 0          # last/ checkpoint every N steps; 0 = with each validation
    val_crops: int = 64          # fixed validation crops (evenly spread over the val split)
    val_seq_len: int = 0         # 0 = seq_len
    log_every: int = 10
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda
    threads: int = 1             # CPU threads per process; 0 = torch's default (see docs/design.md)
    amp: bool = True             # bf16 autocast on CUDA
    compile: bool = False        # torch.compile the training forward
    max_minutes: float = 0.0     # time budget of this invocation; 0 = none
    tensorboard: bool = False
    init: str = ""               # a model dir whose weights start a new run ("" = random init)

    def __post_init__(self):
        _coerce(self, "train")
        for k in ("steps", "batch_size", "seq_len", "accum", "eval_every", "val_crops", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup", "save_every", "val_seq_len", "threads", "weight_decay", "grad_clip",
                  "max_minutes"):
            if getattr(self, k) < 0:
                raise ValueError(f"train.{k} must be >= 0, got {getattr(self, k)}")
        if not self.lr > 0 or not 0 <= self.min_lr <= 1:
            raise ValueError(f"train.lr must be > 0 and train.min_lr in [0, 1], got {self.lr}, {self.min_lr}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DataConfig:
    path: str = ""               # audio folder or token cache
    format: str = "folder"       # folder | youtubemix (how an audio folder is prepared)
    quantization: str = ""       # youtubemix: s4 (default) | mulaw
    sample_rate: int = 16000

    def __post_init__(self):
        _coerce(self, "data")
        if self.format not in ("folder", "youtubemix"):
            raise ValueError(f"data.format must be folder or youtubemix, got {self.format!r}")
        if self.quantization not in ("", "s4", "mulaw"):
            raise ValueError(f"data.quantization must be s4 or mulaw, got {self.quantization!r}")
        if self.format == "folder" and self.quantization == "s4":
            raise ValueError("data.quantization s4 needs data.format youtubemix (it scales each chunk)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(obj, section):
    """TOML and --set give ints for floats and strings for anything: check and convert by field."""
    for f in dataclasses.fields(obj):
        v, kind = getattr(obj, f.name), type(f.default)
        ok = (isinstance(v, bool) if kind is bool else
              isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (kind is float or v == int(v)) if kind in (int, float) else isinstance(v, kind))
        if not ok:
            what = f"a finite {kind.__name__}" if kind in (int, float) else kind.__name__
            raise ValueError(f"{section}.{f.name} must be {what}, got {v!r}")
        setattr(obj, f.name, kind(v))


def configs_from_recipe(recipe: dict) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    """{"model": {"preset", **ModelConfig fields}, "train": {...}, "data": {...}} -> configs.
    The model is `ModelConfig.from_name(preset or "small", **fields)`."""
    unknown = sorted(set(recipe) - {"model", "train", "data"})
    if unknown:
        raise ValueError(f"unknown recipe table(s) {unknown}; expected [model], [train], [data]")
    model = dict(recipe.get("model", {}))
    preset = model.pop("preset", "small")
    out = []
    for cls, name in ((TrainConfig, "train"), (DataConfig, "data")):
        d = recipe.get(name, {})
        bad = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise ValueError(f"unknown [{name}] key(s) {bad}; known: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        out.append(cls(**d))
    return ModelConfig.from_name(preset, **model), out[0], out[1]


# ----------------------------------------------------------------------------- data

def _segments(cache, split: str) -> list[np.ndarray]:
    """Contiguous token runs of a split: files, or YouTubeMix chunks (never crossed, since each
    chunk is scaled on its own and starts its own stream)."""
    toks = cache.split_tokens(split)
    chunk = cache.meta.get("settings", {}).get("chunk") if cache.meta.get("settings", {}).get(
        "format") == "youtubemix" else None
    if not chunk:
        return [t for t in toks if len(t)]
    return [t[j:j + chunk] for t in toks for j in range(0, len(t) - chunk + 1, chunk)]


class CropSampler:
    """Uniform random crops of `seq_len` over all train segments at least that long.

    Crop (segment, start s): y = seg[s:s+T], x = [seg[s-1] or 128 at s = 0] + seg[s:s+T-1].
    The crops of (step, micro-batch) on `rank` depend on nothing else, which makes resume exact.
    """

    def __init__(self, segments, seq_len: int, seed: int, rank: int = 0):
        self.T, self.seed, self.rank = seq_len, seed, rank
        self.segs = [s for s in segments if len(s) >= seq_len]
        if not self.segs:
            longest = max((len(s) for s in segments), default=0)
            raise ValueError(f"no train file (or YouTubeMix chunk) has seq_len={seq_len} samples "
                             f"(longest: {longest}); lower --seq-len")
        self.skipped = len(segments) - len(self.segs)
        self.cum = np.cumsum([len(s) - seq_len + 1 for s in self.segs])  # crop starts per segment

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        u = rng.integers(0, self.cum[-1], batch_size)
        idx = np.searchsorted(self.cum, u, side="right")
        rows = np.empty((batch_size, self.T + 1), dtype=np.int64)   # (B, T + 1): x[0], then y
        for b, (i, v) in enumerate(zip(idx, u)):
            s = int(v - (self.cum[i - 1] if i else 0))
            seg = self.segs[i]
            rows[b, 0] = seg[s - 1] if s else ZERO
            rows[b, 1:] = seg[s:s + self.T]
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


def val_crops(segments, seq_len: int, n: int) -> list[tuple[np.ndarray, int, int]]:
    """A fixed, seed-independent validation set: every segment cut into consecutive pieces of
    `seq_len` (the last may be shorter), then `n` of them evenly spread, as (segment, start, len)."""
    pieces = [(seg, s, min(seq_len, len(seg) - s)) for seg in segments for s in range(0, len(seg), seq_len)]
    if len(pieces) > n:
        pieces = [pieces[i] for i in np.unique(np.linspace(0, len(pieces) - 1, n).round().astype(int))]
    return pieces


def _val_batch(pieces, seq_len):
    x = np.full((len(pieces), seq_len), ZERO, dtype=np.int64)
    y = np.full((len(pieces), seq_len), IGNORE, dtype=np.int64)
    for b, (seg, s, n) in enumerate(pieces):
        x[b, 0] = seg[s - 1] if s else ZERO
        x[b, 1:n] = seg[s:s + n - 1]
        y[b, :n] = seg[s:s + n]
    return torch.from_numpy(x), torch.from_numpy(y)


def open_data(data, out: Path, data_cfg: DataConfig, progress: bool = True):
    """A TokenCache from `data`: a TokenCache, a cache dir (has meta.json), or an audio folder,
    prepared into `out`/cache (reused while its files are unchanged)."""
    from wavelm.data.folder import TokenCache, prepare_folder

    if isinstance(data, TokenCache):
        return data
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        return TokenCache(path)
    cache_dir = Path(out) / "cache"
    if data_cfg.format == "youtubemix":
        from wavelm.data.youtubemix import prepare_youtubemix

        return prepare_youtubemix(path, cache_dir, quantization=data_cfg.quantization or "s4",
                                  sample_rate=data_cfg.sample_rate, progress=progress)
    return prepare_folder(path, cache_dir, sample_rate=data_cfg.sample_rate, progress=progress)


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False          # we initialised the process group (and destroy it)

    @classmethod
    def from_env(cls, device_type: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)

    def all_sum(self, values, device) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def rank0_first(self, fn):
        """Run fn on rank 0, then (if it succeeded) on the other ranks: rank 0 writes shared
        files (the cache) that the others then read. A failure on rank 0 reaches every rank."""
        err = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:  # re-raised below, after telling the other ranks
                err = e
        if self.world > 1 and self.all_sum([err is not None], "cpu" if self._gloo() else "cuda")[0]:
            raise err if err is not None else ValueError("rank 0 could not set up the run (see its error)")
        if err is not None:
            raise err
        return fn() if self.rank else result

    def _gloo(self):
        return self.world == 1 or torch.distributed.get_backend() == "gloo"

    def close(self):
        if self.owned:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints

def _recover(final: Path):
    """After a crash: put back a checkpoint whose swap stopped half-way; remove temp dirs."""
    recover_dir(final)
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(model, final: Path, meta: dict, trainer_state: dict | None = None):
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    try:
        save_model(model, tmp, extra=meta)
        if trainer_state is not None:
            atomic_write(tmp / "trainer_state.pt", lambda f: torch.save(trainer_state, f))
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trainer_state(path: Path, model_cfg: ModelConfig):
    """(model, trainer_state) from a last/ checkpoint; checks the model config and that the
    weights and the trainer state are of the same step."""
    model = load_model(path, config=model_cfg)
    f = path / "trainer_state.pt"
    if not f.is_file():
        raise CheckpointError(f"{path}: no trainer_state.pt (a model dir, not a training checkpoint)")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{f}: unreadable ({str(e)[:200]})") from None
    if state.get("step") != model.checkpoint_meta.get("step"):
        raise CheckpointError(f"{path}: weights are of step {model.checkpoint_meta.get('step')} but "
                              f"trainer_state.pt of step {state.get('step')}")
    return model, state


def _rng_state(device):
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(s, device):
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and s.get("cuda") is not None:
        torch.cuda.set_rng_state(s["cuda"], device)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool):
    """Refuse to reuse a run without --resume / --overwrite; with --overwrite remove the old
    run's files (the cache stays). Returns the checkpoint to resume from, or None."""
    if out.is_file():
        raise ValueError(f"{out}: is a file; --out must be a run directory")
    for name in ("last", "best"):
        _recover(out / name)
    if resume:
        if not (out / "last" / "config.json").is_file():
            raise ValueError(f"{out}: nothing to resume (no last/ checkpoint); drop --resume to start")
        return out / "last"
    present = sorted(p.name for p in out.iterdir() if p.name != "cache") if out.is_dir() else []
    started = set(present) - {"run.json", "metrics.jsonl", "tb"}  # a run with no checkpoint is no loss
    if started and not overwrite:
        what = "a wavelm run" if set(present) & set(RUN_FILES) else "not empty"
        raise ValueError(f"{out}: exists ({what}); pass --resume to continue it or --overwrite "
                         "to start again")
    for name in present:
        if name in RUN_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class Metrics:
    """JSONL log (and TensorBoard scalars) on rank 0."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool):
        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop records after the checkpoint we resume from (and a torn line)
            keep = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= start_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        self.f = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)

    def write(self, rec: dict):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "event", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{rec['event']}/{k}", v, rec["step"])

    def close(self):
        self.f.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- steps

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


def autocast(device, cfg: TrainConfig):
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda")


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
        x, y = _val_batch(mine[i:i + cfg.batch_size], seq_len)
        x, y = x.to(device), y.to(device)
        with autocast(device, cfg):
            logits = model(x)
        nll += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=IGNORE, reduction="sum").double()
    model.train(was)
    count = sum(n for _, _, n in mine)
    total, n = dist.all_sum([nll.item(), count], device)
    return total / max(n, 1) / LN2


# ----------------------------------------------------------------------------- the loop

def _device(cfg: TrainConfig, local_rank: int, world: int) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but no CUDA device is available")
        if name == "cuda":
            name = f"cuda:{local_rank if world > 1 else torch.cuda.current_device()}"
        torch.cuda.set_device(name)
    return torch.device(name)


def train(cfg: TrainConfig, model_cfg: ModelConfig, data, out, resume: bool = False, *,
          data_cfg: DataConfig | None = None, overwrite: bool = False, stop_at: int | None = None,
          progress: bool = True, on_start=None) -> dict:
    """Train `model_cfg` on `data` (TokenCache, cache dir or audio folder) into the run dir `out`.

    resume: continue from out/last (the model config must match). stop_at: stop cleanly after
    that step (saving last/), as if interrupted. on_start(info): called on rank 0 with a dict
    describing the run before the first step. Returns a summary dict (rank 0's view).
    """
    out = Path(out).expanduser().resolve()
    data_cfg = data_cfg or DataConfig(path=str(data) if not hasattr(data, "meta") else "")
    device_type = "cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = Dist.from_env(device_type)
    try:
        return _train(cfg, model_cfg, data, out, resume, data_cfg, overwrite, stop_at, progress,
                      on_start, dist)
    finally:
        dist.close()


def _train(cfg, model_cfg, data, out, resume, data_cfg, overwrite, stop_at, progress, on_start, dist):
    t_start = time.monotonic()
    device = _device(cfg, dist.local_rank, dist.world)
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
        ckpt = prepare_run_dir(out, resume, overwrite) if rank0 else (out / "last" if resume else None)
        return ckpt, open_data(data, out, data_cfg, progress=progress and rank0)

    ckpt, cache = dist.rank0_first(setup)
    if cache.sample_rate != model_cfg.sample_rate:
        log.info("model sample_rate %d -> %d (the data's)", model_cfg.sample_rate, cache.sample_rate)
        model_cfg = dataclasses.replace(model_cfg, sample_rate=cache.sample_rate)

    train_segs, val_segs, val_split = _segments(cache, "train"), _segments(cache, "val"), "val"
    if not val_segs:
        log.warning("%s: no val split; validating on fixed train crops (optimistic numbers)", cache.path)
        val_segs, val_split = train_segs, "train"
    sampler = CropSampler(train_segs, cfg.seq_len, cfg.seed, dist.rank)
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
        net = load_model(Path(cfg.init).expanduser(), config=model_cfg).float().train()
        if rank0:
            log.info("weights from %s (optimizer and schedule start afresh)", cfg.init)
    else:
        net = WaveLM(model_cfg)
    net.to(device)
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
        _set_rng_state(rngs[dist.rank % len(rngs)], device)
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
        if on_start is not None:
            on_start({"params": net.num_parameters(), "model": model_cfg, "train": cfg, "data": data_info,
                      "cache": cache, "world_size": dist.world, "device": str(device),
                      "threads": torch.get_num_threads(), "tokens_per_step": tokens_per_step,
                      "start_step": step, "val_crops": len(pieces), "val_seq_len": val_len,
                      "train_segments": len(sampler.segs), "out": str(out)})

    def checkpoint(val_bits, with_state=True, as_best=False):
        rngs = dist.gather(_rng_state(device))  # every rank takes part
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

    from tqdm import tqdm

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

    try:
        while step < cfg.steps:
            if stop_at is not None and step >= stop_at:
                stopped = "stop_at"
                break
            batches = [sampler.batch(step, m, cfg.batch_size) for m in range(cfg.accum)]
            loss, gnorm = forward_backward(model, batches, cfg, device, ddp.no_sync if ddp else None)
            over = rank0 and cfg.max_minutes > 0 and time.monotonic() - t_start > cfg.max_minutes * 60
            loss_sum, gnorm, over = dist.all_sum([loss.item(), gnorm.item(), float(over)], device)
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
        # the end, a time budget or stop_at: the final step is validated and saved
        improved = evaluated != step and validate()
        if saved != step or improved:
            checkpoint(val_bits, with_state=saved != step, as_best=improved)
    finally:
        bar.close()
        if metrics:
            metrics.close()
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
