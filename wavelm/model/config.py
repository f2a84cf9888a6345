"""ModelConfig: the model's hyper-parameters as data, with named presets.

    cfg = ModelConfig.from_name("small", arch="conformer", attn_window=2048)

A model is a stack of *stages*. Stage 0 runs at the sample rate; with `pool = [4, 4]` stage 1
runs at 1/4 of it and stage 2 at 1/16 (SaShiMi-style multi-rate). Per-stage lists
(`stage_layers`, `stage_dims`, `stage_windows`) are derived from the scalar fields when not given:
widths double at each pooling, every stage gets `n_layers` blocks, and every stage's attention
window is `attn_window` steps *of that stage* (so the inner stages see p times further back).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

ARCHS = ("transformer", "conformer_llm", "conformer", "cat", "conv")

# every number a config may hold, with its range: a config file (a checkpoint's, a recipe's) is
# checked field by field, so a bad one fails with the field's name before anything is allocated
INTS = {"d_model": (1, 8192), "n_layers": (1, 256), "n_heads": (1, 256), "attn_window": (1, 1 << 17),
        "conv_kernel": (1, 1024), "cat_kernel": (1, 1024), "expand": (1, 16), "vocab_size": (2, 1 << 16),
        "sample_rate": (1000, 384000), "lpc_order": (0, 256), "lpc_window": (2, 1 << 16), "lpc_hop": (1, 1 << 14)}
FLOATS = {"ffn_mult": (1e-3, 64.0), "dropout": (0.0, 0.99), "rope_base": (1.0, 1e12)}
INT_LISTS = {"pool": (2, 1024), "stage_layers": (0, 256), "stage_dims": (1, 8192),
             "stage_windows": (1, 1 << 17), "conv_dilations": (1, 1 << 17)}
MAX_STAGES = 8


def _int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {v}")
    return v


@dataclass
class ModelConfig:
    arch: str = "conformer"
    d_model: int = 128          # width of stage 0 (the sample-rate stage)
    n_layers: int = 4           # blocks per stage (unless stage_layers is given)
    n_heads: int = 4            # heads of stage 0; head_dim = d_model // n_heads everywhere
    attn_window: int = 1024     # sliding window of stage 0, in samples
    ffn_mult: float = 4.0       # FFN hidden width = ffn_mult * width
    conv_kernel: int = 7        # conformer depthwise kernel; conv arch kernel
    cat_kernel: int = 3         # CAT: causal depthwise conv kernel on Q, K, V
    llm_conv: str = "small"     # conformer_llm conv module: "small" (3,7) or "large" (2,3,5)
    pool: list[int] = field(default_factory=list)   # [] = flat; [4, 4] = 16k -> 4k -> 1k
    expand: int = 2             # width multiplier per pooling level
    stage_layers: list[int] | None = None
    stage_dims: list[int] | None = None
    stage_windows: list[int] | None = None
    stage_archs: list[str] | None = None     # per-stage block kind, e.g. ["conv", "conv", "conformer"]
    conv_dilations: list[int] | None = None  # conv arch: dilation cycle (default 1, 2, 4, ..., 512)
    vocab_size: int = 256
    sample_rate: int = 16000
    codec: str = "mulaw"
    dropout: float = 0.0
    rope_base: float = 10000.0
    # the LPC path (docs/design.md): a backward-adaptive linear predictor of order `lpc_order`
    # (0 = off), refitted every `lpc_hop` samples on the last `lpc_window`, feeds the 16 kHz
    # stage its prediction and adds its distribution over the codes to the logits, gated
    lpc_order: int = 0
    lpc_window: int = 1024
    lpc_hop: int = 64

    def __post_init__(self):
        for name, (lo, hi) in INTS.items():
            setattr(self, name, _int(name, getattr(self, name), lo, hi))
        for name, (lo, hi) in FLOATS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {v!r}")
            setattr(self, name, float(v))
        for name, (lo, hi) in INT_LISTS.items():
            v = getattr(self, name)
            if v is None and name != "pool":
                continue
            if not isinstance(v, (list, tuple)) or len(v) > 1 << 10:
                raise ValueError(f"{name} must be a list of integers, got {v!r}")
            setattr(self, name, [_int(f"{name} entry", x, lo, hi) for x in v])
        if len(self.pool) + 1 > MAX_STAGES:
            raise ValueError(f"at most {MAX_STAGES - 1} pooling levels, got pool {self.pool}")
        for name in ("arch", "llm_conv", "codec"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.llm_conv not in ("small", "large"):
            raise ValueError(f"llm_conv must be 'small' or 'large', got {self.llm_conv!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        n = len(self.pool) + 1
        if self.stage_layers is None:
            self.stage_layers = [self.n_layers] * n
        if self.stage_dims is None:
            self.stage_dims = [self.d_model * self.expand**i for i in range(n)]
        if self.stage_windows is None:
            self.stage_windows = [self.attn_window] * n
        if self.stage_archs is None:
            self.stage_archs = [self.arch] * n
        if not isinstance(self.stage_archs, (list, tuple)) or not all(isinstance(a, str) for a in self.stage_archs):
            raise ValueError(f"stage_archs must be a list of arch names, got {self.stage_archs!r}")
        self.stage_archs = list(self.stage_archs)
        if len(self.stage_archs) != n:
            raise ValueError(f"stage_archs needs {n} entries (len(pool) + 1), got {self.stage_archs}")
        for a in self.stage_archs:
            if a not in ARCHS:
                raise ValueError(f"unknown arch {a!r} in stage_archs; choose from {', '.join(ARCHS)}")
        if self.conv_dilations is not None and not self.conv_dilations:
            raise ValueError("conv_dilations must be a non-empty list (or null for the default cycle)")
        for name in ("stage_layers", "stage_dims", "stage_windows"):
            v = [_int(f"{name} entry", x, *INT_LISTS[name]) for x in getattr(self, name)]
            if len(v) != n:
                raise ValueError(f"{name} needs {n} entries (len(pool) + 1), got {v}")
            setattr(self, name, v)
        if any(d % self.head_dim for d in self.stage_dims):
            raise ValueError(f"stage widths {self.stage_dims} must be multiples of head_dim={self.head_dim}")
        if self.lpc_order and self.lpc_window < self.lpc_hop + self.lpc_order:
            raise ValueError(f"lpc_window ({self.lpc_window}) must be >= lpc_hop + lpc_order "
                             f"({self.lpc_hop} + {self.lpc_order})")
        if self.lpc_order and (self.vocab_size != 256 or self.codec != "mulaw"):
            raise ValueError("the LPC path needs the 256-code mu-law codec")
        if self.stage_layers[-1] < 1 or min(self.stage_windows) < 1:
            raise ValueError("the innermost stage needs >= 1 layer and windows must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hop(self) -> list[int]:
        """Samples per step of each stage: [1, 4, 16] for pool [4, 4]."""
        out = [1]
        for p in self.pool:
            out.append(out[-1] * p)
        return out

    @property
    def context_seconds(self) -> float:
        """Attention span of the innermost stage with attention, in seconds of audio (0 if none)."""
        spans = [w * h for w, h, a in zip(self.stage_windows, self.hop, self.stage_archs) if a != "conv"]
        return max(spans, default=0) / self.sample_rate

    @property
    def arch_name(self) -> str:
        """`arch`, or the per-stage kinds joined by '/' for a mixed stack (conv/conv/conformer)."""
        return self.arch if len(set(self.stage_archs)) == 1 and self.stage_archs[0] == self.arch \
            else "/".join(self.stage_archs)

    def dilation(self, layer: int) -> int:
        """Dilation of the conv arch's `layer`-th block in a stage (the cycle repeats)."""
        cycle = self.conv_dilations or [2 ** i for i in range(10)]
        return cycle[layer % len(cycle)]

    # -- presets and (de)serialisation ----------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(bad)}")
        kw = dict(PRESETS[name])
        if any(k in overrides for k in ("pool", "n_layers", "d_model", "attn_window", "expand")):
            # scalar overrides re-derive the per-stage lists unless those are overridden too
            for k in ("stage_layers", "stage_dims", "stage_windows", "stage_archs"):
                kw.pop(k, None)
        if "arch" in overrides:   # one block kind everywhere, unless stage_archs is given too
            kw.pop("stage_archs", None)
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"config has unknown field(s) {unknown}: written by a newer wavelm?")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


PRESETS: dict[str, dict] = {
    # tests: tiny and fast, small window so that T > W is cheap
    "tiny": dict(d_model=16, n_layers=2, n_heads=2, attn_window=8, conv_kernel=3, ffn_mult=2.0),
    # multi-rate (the defaults): a light 16 kHz stage, most work at 4 kHz and 1 kHz, where a
    # 1,024-step window covers 16,384 samples (1.02 s). Sized for CPU training and real-time-ish
    # CPU generation.
    "small": dict(d_model=48, n_heads=2, ffn_mult=2.0, pool=[4, 4], stage_layers=[1, 2, 3],
                  stage_dims=[48, 96, 192], stage_windows=[32, 128, 1024]),
    "base": dict(d_model=64, n_heads=2, ffn_mult=2.0, pool=[4, 4], stage_layers=[2, 2, 4],
                 stage_dims=[64, 128, 256], stage_windows=[64, 256, 1024]),
    # the bundled model's shape: cheap gated convs at 16 kHz, 4 kHz and 1 kHz, Conformer blocks
    # (attention + conv module) at 250 Hz, where a 512-step window reaches 2.05 s
    "piano": dict(arch="conformer", stage_archs=["conv", "conv", "conv", "conformer"], d_model=64, n_heads=2,
                  ffn_mult=2.0, conv_kernel=5, pool=[4, 4, 4], stage_layers=[2, 2, 2, 3],
                  stage_dims=[64, 96, 128, 256], stage_windows=[32, 128, 256, 512]),
    # flat twins with about the same parameter count (every layer at the sample rate), for the
    # multi-rate comparison; their 1,024-sample window is 0.064 s of audio
    "small-flat": dict(d_model=192, n_heads=6, ffn_mult=2.0, n_layers=4, attn_window=1024),
    "base-flat": dict(d_model=256, n_heads=8, ffn_mult=2.0, n_layers=5, attn_window=1024),
}
