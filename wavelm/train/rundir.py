"""The run directory: checkpoints (built in a temp dir, published with renames), the metrics
log, refusing to overwrite a run by accident, and the token cache of the run's data."""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

import torch

from wavelm.checkpoint import CheckpointError, save_model
from wavelm.data.folder import TokenCache, prepare_folder
from wavelm.data.youtubemix import prepare_youtubemix
from wavelm.files import atomic_write, atomic_write_text, publish_dir, recover_dir
from wavelm.model.config import ModelConfig
from wavelm.model.lm import load_model

from .config import DataConfig

RUN_FILES = ("run.json", "metrics.jsonl", "last", "best", "tb")
LOCK_NAME = ".wavelm.lock"   # held by the run's one writer (files.hold_lock), removed when it ends


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


def rng_state(device):
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(s, device):
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
    # hidden entries are wavelm's own: the lock, scratch folders of killed runs
    present = sorted(p.name for p in out.iterdir() if p.name != "cache" and not p.name.startswith(".")) \
        if out.is_dir() else []
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


def open_data(data, out: Path, data_cfg: DataConfig, progress: bool = True):
    """A TokenCache from `data`: a TokenCache, a cache dir (has meta.json), or an audio folder,
    prepared into `out`/cache (reused while its files are unchanged)."""
    if isinstance(data, TokenCache):
        return data
    path = Path(data).expanduser()
    if (path / "meta.json").is_file():
        return TokenCache(path)
    cache_dir = Path(out) / "cache"
    if data_cfg.format == "youtubemix":
        return prepare_youtubemix(path, cache_dir, quantization=data_cfg.quantization or "s4",
                                  sample_rate=data_cfg.sample_rate, progress=progress)
    return prepare_folder(path, cache_dir, sample_rate=data_cfg.sample_rate, progress=progress)
