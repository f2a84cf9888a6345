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
    vocab_size: int = 256
    sample_rate: int = 16000
    codec: str = "mulaw"
    dropout: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.llm_conv not in ("small", "large"):
            raise ValueError(f"llm_conv must be 'small' or 'large', got {self.llm_conv!r}")
        self.pool = [int(p) for p in self.pool]
        if any(p < 2 for p in self.pool):
            raise ValueError(f"pooling factors must be >= 2, got {self.pool}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        n = len(self.pool) + 1
        if self.stage_layers is None:
            self.stage_layers = [self.n_layers] * n
        if self.stage_dims is None:
            self.stage_dims = [self.d_model * self.expand**i for i in range(n)]
        if self.stage_windows is None:
            self.stage_windows = [self.attn_window] * n
        for name in ("stage_layers", "stage_dims", "stage_windows"):
            v = [int(x) for x in getattr(self, name)]
            if len(v) != n:
                raise ValueError(f"{name} needs {n} entries (len(pool) + 1), got {v}")
            setattr(self, name, v)
        if any(d % self.head_dim for d in self.stage_dims):
            raise ValueError(f"stage widths {self.stage_dims} must be multiples of head_dim={self.head_dim}")
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
        """Attention span of the innermost stage, in seconds of audio."""
        return self.stage_windows[-1] * self.hop[-1] / self.sample_rate

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
            for k in ("stage_layers", "stage_dims", "stage_windows"):
                kw.pop(k, None)
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
    # flat twins with about the same parameter count (every layer at the sample rate), for the
    # multi-rate comparison; their 1,024-sample window is 0.064 s of audio
    "small-flat": dict(d_model=192, n_heads=6, ffn_mult=2.0, n_layers=4, attn_window=1024),
    "base-flat": dict(d_model=256, n_heads=8, ffn_mult=2.0, n_layers=5, attn_window=1024),
}
