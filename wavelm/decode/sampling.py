"""How a token is drawn from the logits, shared by every decoder.

`Sampling` holds every option, checked once where it is made; the CLI, the API and the demo
build one and it reaches the decoders unchanged. The rule, per stream and step:

1. temperature T; with `tonal_temperature` set, T falls towards it as the recent output gets
   periodic (LPCNet's pitch-dependent temperature): c = the largest normalised autocorrelation
   of the generated audio at lags of `tonal_lags_ms`, tracked with an exponential window of
   `tonal_window_ms`; w = clip((c - threshold) / (1 - threshold), 0, 1), and 0 while the
   window's RMS is below `tonal_gate_db`; 1/T = 1/temperature + (1/tonal_temperature -
   1/temperature) w. Defaults (threshold 1/3, tonal_temperature = temperature / 2) are LPCNet's.
2. e = exp(logits / T - max); top-k zeroes e below the k-th largest (ties kept); top-p keeps the
   most likely tokens until their mass reaches top_p (the one crossing it included); min-p
   zeroes e below min_p times the largest; floor subtracts `floor` from every probability
   and clips at 0 (LPCNet's 0.002; the most likely token is kept if nothing else is).
3. token = the first index whose float64 cumsum of e exceeds u * sum, u ~ U[0, 1) from a
   seeded torch.Generator drawn in fixed blocks, so the audio depends on the seed only, not on
   chunk sizes or the decoder.

`best_of` > 1 draws that many candidates per stream as one batch; each decoder adds up the
model's own negative log-likelihood (temperature 1, no masks) of the tokens it draws, and
wavelm.generation keeps the candidate at quantile `best_rank` of the ranking by it (0: the
most likely). The numba decoder (sample_ops.py) implements the same rule on the same state
(`Sampler`); tests/test_sampling.py pins the two equal for every option.
"""
from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import torch

NOISE_BLOCK = 4096         # uniforms are drawn in blocks of this many steps (fixed: see top)
MAX_BEST_OF = 64


def _number(name, v, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    v = float(v)
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if not math.isfinite(v) or below or above:
        if hi == math.inf:
            rng = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number {rng}, got {v!r}")
    return v


def _integer(name, v, lo, hi):
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {v!r}")
    return int(v)


def _option(default, metavar: str, help: str, kind=float):
    """A Sampling field with what the CLI needs to make its flag (wavelm/commands/_common.py)."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "type": kind})


@dataclass(frozen=True)
class Sampling:
    """Every sampling option (see the module docstring); ValueError naming a bad one.
    Each field's metadata holds its flag's help, metavar and type (`_option`)."""
    temperature: float = _option(1.0, "T", "softmax temperature > 0")
    top_k: int | None = _option(None, "K", "sample among the K most likely values (0: off)", int)
    top_p: float = _option(1.0, "P", "nucleus sampling: the smallest set of values with mass >= P, 0 < P <= 1")
    min_p: float = _option(0.0, "M", "drop values less likely than M times the most likely, 0 <= M < 1")
    floor: float = _option(0.0, "F", "subtract F from every probability and renormalise (LPCNet: 0.002), "
                                     "0 <= F < 1")
    tonal_temperature: float | None = _option(None, "T2", "temperature where the recent output is fully "
                                                          "periodic (LPCNet: half the temperature; 0: off)")
    tonal_threshold: float = _option(1 / 3, "C", "periodicity below which the temperature is not lowered, "
                                                 "0 <= C < 1")
    tonal_gate_db: float = _option(-40.0, "DB", "RMS (dB full scale) below which the temperature is not lowered")
    tonal_lags_ms: tuple = _option((2.0, 20.0), "MIN,MAX", "lags searched for periodicity, in ms", str)
    tonal_window_ms: float = _option(30.0, "MS", "time constant of the periodicity estimate, ms")
    best_of: int = _option(1, "N", "draw N candidates per output and keep one, ranked by the model's "
                                   "bits/sample", int)
    best_rank: float = _option(0.5, "Q", "the candidate kept: quantile Q of the ranking, 0 = fewest bits, "
                                         "1 = most")

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalise in place
        put("temperature", _number("temperature", self.temperature, 0, math.inf, lo_open=True))
        for name in ("top_k", "tonal_temperature"):      # 0 turns them off (a model's own included)
            v = getattr(self, name)
            if not isinstance(v, bool) and isinstance(v, (int, float)) and v == 0:
                put(name, None)
        if self.top_k is not None:
            put("top_k", _integer("top_k", self.top_k, 1, 1 << 30))
        put("top_p", _number("top_p", self.top_p, 0, 1, lo_open=True))
        put("min_p", _number("min_p", self.min_p, 0, 1, hi_open=True))
        put("floor", _number("floor", self.floor, 0, 1, hi_open=True))
        if self.tonal_temperature is not None:
            put("tonal_temperature", _number("tonal_temperature", self.tonal_temperature, 0, math.inf, lo_open=True))
        put("tonal_threshold", _number("tonal_threshold", self.tonal_threshold, 0, 1, hi_open=True))
        put("tonal_gate_db", _number("tonal_gate_db", self.tonal_gate_db, -300, 0))
        lags = self.tonal_lags_ms
        if isinstance(lags, str):
            lags = lags.split(",")
        if not (isinstance(lags, (tuple, list)) and len(lags) == 2):
            raise ValueError(f"tonal_lags_ms must be two numbers MIN,MAX, got {self.tonal_lags_ms!r}")
        lo, hi = (_number("tonal_lags_ms", float(x) if isinstance(x, str) and _isfloat(x) else x, 0, 200,
                          lo_open=True) for x in lags)
        if lo >= hi:
            raise ValueError(f"tonal_lags_ms must be MIN < MAX, got {lo:g},{hi:g}")
        put("tonal_lags_ms", (lo, hi))
        put("tonal_window_ms", _number("tonal_window_ms", self.tonal_window_ms, 0, 10000, lo_open=True))
        put("best_of", _integer("best_of", self.best_of, 1, MAX_BEST_OF))
        put("best_rank", _number("best_rank", self.best_rank, 0, 1))

    @classmethod
    def make(cls, sampling: Sampling | None = None, **options) -> Sampling:
        """`sampling` with `options` replaced (ValueError naming an unknown one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown sampling option {unknown[0]!r} (options: {', '.join(sorted(names))})")
        return dataclasses.replace(sampling or cls(), **options) if options else (sampling or cls())

    def changed(self) -> dict:
        """The fields that differ from the defaults, temperature always: {name: value}."""
        base = type(self)()
        return {"temperature": self.temperature,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "temperature" and getattr(self, f.name) != getattr(base, f.name)}}

    def __str__(self) -> str:
        """"temperature 1, min_p 0.002": the fields that differ from the defaults."""
        return ", ".join(f"{k} {_shown(v)}" for k, v in self.changed().items())

    @property
    def tonal(self) -> bool:
        return self.tonal_temperature is not None

    def numeric(self) -> "Numeric":
        """The kernels' form: the same fields as fixed-type numbers (0 for an option that is off)."""
        return Numeric(float(self.temperature), int(self.top_k or 0), float(self.top_p), float(self.min_p),
                       float(self.floor), float(self.tonal_temperature or 0.0), float(self.tonal_threshold),
                       int(self.best_of))


def _shown(v) -> str:
    """A field's value as its flag takes it: 0.002, 4, 2,20."""
    if isinstance(v, (tuple, list)):
        return ",".join(f"{x:g}" for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _isfloat(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


Numeric = namedtuple("Numeric", "temperature top_k top_p min_p floor tonal_temperature tonal_threshold best_of")


# ----------------------------------------------------------------------------- the sampler's state

class Sampler:
    """A Sampling and the per-stream state its rule needs, as plain tensors (float64) that the
    numba decoder reads as numpy views, like the model's State:
        hist (B, 2 L)  the last L outputs (mu-law decoded), a ring written twice (slots h and
                       h + L) so the lagged values are one contiguous slice; L = max lag + 1
        r (B, n_lags)  exponentially windowed x[t] x[t - l], r[:, j] at lag max_lag - j
        energy (B,)    the same window's sum of x[t]^2
        head (1,)      h, the slot of the next output
        nll (B,)       the model's negative log-likelihood (nats) of the drawn tokens (best_of > 1)
    `prime(tokens)` sets the periodicity state from a prompt (a closed form of the recursion)."""

    def __init__(self, sampling: Sampling, batch_size: int, sample_rate: int, device="cpu"):
        self.s, self.B, self.sr = sampling, batch_size, sample_rate
        lo, hi = sampling.tonal_lags_ms
        self.lag_min = max(1, round(lo * sample_rate / 1000))
        self.lag_max = max(self.lag_min, round(hi * sample_rate / 1000))
        L = self.lag_max + 1 if sampling.tonal else 1
        n = self.lag_max - self.lag_min + 1 if sampling.tonal else 1
        f64 = dict(dtype=torch.float64, device=device)
        self.decay = math.exp(-1000.0 / (sampling.tonal_window_ms * sample_rate))
        self.gate = 10 ** (sampling.tonal_gate_db / 10)            # mean square
        self.consts = torch.tensor([self.decay, self.gate], **f64)
        self.table = torch.from_numpy(_mulaw_table()).to(device)
        self.hist = torch.zeros((batch_size, 2 * L), **f64)
        self.r = torch.zeros((batch_size, n), **f64)
        self.energy = torch.zeros(batch_size, **f64)
        self.head = torch.zeros(1, dtype=torch.int64, device=device)
        self.nll = torch.zeros(batch_size, **f64)

    def clone(self) -> Sampler:
        c = object.__new__(Sampler)
        c.__dict__.update({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()})
        return c

    def expand(self, batch_size: int) -> Sampler:
        """This state (batch 1) copied to `batch_size` streams (a prompt shared by every stream)."""
        c = self.clone()
        for k in ("hist", "r", "energy", "nll"):
            setattr(c, k, getattr(self, k).expand(batch_size, *getattr(self, k).shape[1:]).clone())
        c.B = batch_size
        return c

    def prime(self, tokens: torch.Tensor) -> None:
        """The periodicity state after the outputs `tokens` (B, T) from a zero state."""
        if not self.s.tonal:
            return
        L, a = self.lag_max + 1, self.decay
        keep = min(tokens.shape[1], int(20 * self.s.tonal_window_ms * self.sr / 1000) + L)   # older: weight < e^-20
        x = self.table[tokens[:, -keep:].to(self.hist.device)]                  # (B, T)
        T = x.shape[1]
        w = a ** torch.arange(T - 1, -1, -1, dtype=torch.float64, device=x.device)
        self.energy.copy_((w * x * x).sum(1))
        for j, lag in enumerate(range(self.lag_max, self.lag_min - 1, -1)):
            self.r[:, j] = (w[lag:] * x[:, lag:] * x[:, :T - lag]).sum(1) if lag < T else 0.0
        last = torch.zeros((x.shape[0], L), dtype=torch.float64, device=x.device)
        n = min(T, L)
        last[:, L - n:] = x[:, T - n:]                       # slots 0..L-1 = x[T-L .. T-1] (head 0)
        self.hist.copy_(torch.cat([last, last], 1))
        self.head.zero_()

    # -- one step, in torch ops (no host sync: CUDA graphs capture it) ---------------------------
    def temperature(self) -> torch.Tensor:
        """(B,) float64: each stream's temperature for the next step."""
        s = self.s
        t = torch.full((self.B,), s.temperature, dtype=torch.float64, device=self.r.device)
        if not s.tonal:
            return t
        peak = self.r.amax(1).clamp_min(0.0)
        c = torch.where(self.energy > 0, peak / self.energy.clamp_min(1e-300), torch.zeros_like(peak))
        w = ((c - s.tonal_threshold) / (1 - s.tonal_threshold)).clamp(0.0, 1.0)
        w = torch.where(self.energy * (1 - self.decay) >= self.gate, w, torch.zeros_like(w))
        return 1.0 / (1.0 / s.temperature + (1.0 / s.tonal_temperature - 1.0 / s.temperature) * w)

    def step(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Tokens (B,) for logits (B, V) and uniforms u (B,); the state advanced."""
        tok = sample_torch(logits, u, self.s, self.temperature())
        if self.s.best_of > 1:
            lg = logits.to(torch.float64)
            self.nll += torch.logsumexp(lg, -1) - lg.gather(1, tok[:, None])[:, 0]
        self.track(tok)
        return tok

    def track(self, tok: torch.Tensor) -> None:
        if not self.s.tonal:
            return
        L = self.hist.shape[1] // 2
        x = self.table[tok]
        h = self.head
        self.hist.index_copy_(1, torch.cat([h, h + L]), x[:, None].expand(-1, 2).contiguous())
        idx = h + 1 + torch.arange(self.r.shape[1], device=h.device)
        self.r.copy_(self.decay * self.r + x[:, None] * self.hist.index_select(1, idx))
        self.energy.copy_(self.decay * self.energy + x * x)
        self.head.copy_((h + 1) % L)

    def arrays(self) -> tuple:
        """The numba decoder's view of this state (sample_ops.py): shared memory, not copies."""
        v = lambda t: t.numpy()  # noqa: E731
        return v(self.hist), v(self.r), v(self.energy), v(self.head), v(self.nll), v(self.table), v(self.consts)


def _mulaw_table() -> np.ndarray:
    from wavelm.audio import mulaw_decode

    return mulaw_decode(np.arange(256)).astype(np.float64)


def sample_torch(logits: torch.Tensor, u: torch.Tensor, s: Sampling, t: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (B,) from logits (B, V), uniforms u (B,) in [0, 1) and temperatures t (B,)
    (default s.temperature): rule 2-3 of the module docstring in torch ops without host sync."""
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if t is None:
        x = logits.to(dt) / s.temperature
    else:
        x = logits.to(dt) / t.to(dt)[:, None]
    e = (x - x.amax(-1, keepdim=True)).exp()
    V = e.shape[-1]
    if s.top_k is not None and s.top_k < V:
        kth = e.topk(s.top_k, dim=-1).values[:, -1:]
        e = e.masked_fill(e < kth, 0)
    if s.top_p < 1:
        prob = e / e.to(torch.float64).sum(-1, keepdim=True).to(e.dtype)
        sp = prob.sort(-1, descending=True).values
        c = sp.to(torch.float64).cumsum(-1)
        before = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], -1)   # mass of the more likely
        thr = sp.masked_fill(before >= s.top_p, float("inf")).amin(-1, keepdim=True)
        e = e.masked_fill(prob < thr, 0)
    if s.min_p > 0:
        e = e.masked_fill(e < torch.tensor(s.min_p, dtype=e.dtype), 0)   # the threshold in e's dtype
    if s.floor > 0:
        tot = e.to(torch.float64).sum(-1, keepdim=True)
        f = (e.to(torch.float64) - s.floor * tot).clamp_min(0.0)
        top = torch.nn.functional.one_hot(e.argmax(-1), V).to(torch.float64)
        e = torch.where(f.sum(-1, keepdim=True) > 0, f, top).to(e.dtype)
    cdf = e.to(torch.float64).cumsum(-1)
    tok = torch.searchsorted(cdf, (u.to(torch.float64) * cdf[:, -1])[:, None], right=True)[:, 0]
    last = (torch.arange(V, device=e.device) * (e > 0)).argmax(-1)       # rounding guard
    return torch.where(tok < V, tok, last)


class Noise:
    """Uniforms u (steps, B) from a seeded torch.Generator, drawn NOISE_BLOCK steps at a time."""

    def __init__(self, seed: int, batch_size: int, device):
        self.gen = torch.Generator(device=device).manual_seed(int(seed))
        self.B, self.device = batch_size, device
        self.block, self.pos = None, NOISE_BLOCK

    def take(self, n: int) -> torch.Tensor:
        """The next n steps' uniforms (n, B)."""
        parts = [torch.empty((0, self.B), dtype=torch.float64, device=self.device)]
        while n > 0:
            if self.pos == NOISE_BLOCK:
                self.block = torch.rand((NOISE_BLOCK, self.B), generator=self.gen, dtype=torch.float64,
                                        device=self.device)
                self.pos = 0
            k = min(n, NOISE_BLOCK - self.pos)
            parts.append(self.block[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return parts[-1] if len(parts) <= 2 else torch.cat(parts[1:])
