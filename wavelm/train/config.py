"""Training settings: TrainConfig, DataConfig and recipes ([model], [train], [data] tables)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from wavelm.data.formats import get_format, quantization_of
from wavelm.model.config import ModelConfig


MAX_INPUT_NOISE = 64.0   # mu-law steps; beyond it the inputs are noise, not audio


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
    keep_every: int = 0          # also keep the model at every N steps in RUN/steps/<step>/; 0 = off
    val_crops: int = 64          # fixed validation crops (evenly spread over the val split)
    val_seq_len: int = 0         # 0 = seq_len
    log_every: int = 10
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda
    threads: int = 1             # CPU threads per process; 0 = torch's default (see docs/design.md)
    amp: bool = True             # bf16 autocast on CUDA and on CPUs with native bf16 (loop.use_bf16)
    compile: bool = False        # torch.compile the training forward
    max_minutes: float = 0.0     # time budget of this invocation; 0 = none
    tensorboard: bool = False
    init: str = ""               # a model dir whose weights start a new run ("" = random init)
    input_noise: float = 0.0     # max std (mu-law steps) of the noise on training inputs (CropSampler)

    def __post_init__(self):
        _coerce(self, "train")
        for k in ("steps", "batch_size", "seq_len", "accum", "eval_every", "val_crops", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup", "save_every", "keep_every", "val_seq_len", "threads", "weight_decay", "grad_clip",
                  "max_minutes", "input_noise"):
            if getattr(self, k) < 0:
                raise ValueError(f"train.{k} must be >= 0, got {getattr(self, k)}")
        if self.input_noise > MAX_INPUT_NOISE:
            raise ValueError(f"train.input_noise must be from 0 to {MAX_INPUT_NOISE:g} mu-law steps "
                             f"(a quarter of the 256 codes), got {self.input_noise:g}")
        if not self.lr > 0 or not 0 <= self.min_lr <= 1:
            raise ValueError(f"train.lr must be > 0 and train.min_lr in [0, 1], got {self.lr}, {self.min_lr}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DataConfig:
    path: str = ""               # audio folder or token cache
    format: str = "folder"       # a name in wavelm.data.formats.FORMATS (how an audio folder is prepared)
    quantization: str = ""       # "" = the format's default; youtubemix: s4 (default) | mulaw
    sample_rate: int = 16000

    def __post_init__(self):
        _coerce(self, "data")
        fmt = get_format(self.format, "data.format")     # the formats room: wavelm/data/formats.py
        quantization_of(fmt, self.quantization, "data.quantization", "data.format")

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
