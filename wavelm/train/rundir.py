"""The run directory: checkpoints (built in a temp dir, published with renames), the metrics
log, refusing to overwrite a run by accident, and the token cache of the run's data."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path

import torch

from wavelm.checkpoint import CheckpointError, save_model
from wavelm.data.cache import SPLITS, TokenCache
from wavelm.data.formats import get_format, open_data   # open_data: also imported from here
from wavelm.files import atomic_write, atomic_write_text, publish_dir, recover_dir
from wavelm.model.config import ModelConfig
from wavelm.model.lm import load_model

from .config import DataConfig

RUN_FILES = ("run.json", "metrics.jsonl", "last", "best", "tb", "split.json")
LOCK_NAME = ".wavelm.lock"   # held by the run's one writer (files.hold_lock), removed when it ends
SPLIT_NAME = "split.json"    # the files the run trains and validates on, frozen at its start
DATA_CHANGED = ("refuse", "ok")

log = logging.getLogger("wavelm.train")


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
    # a run with no checkpoint is no loss
    started = set(present) - {"run.json", "metrics.jsonl", "tb", SPLIT_NAME}
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


# ----------------------------------------------------------------------------- the frozen split

class DataChanged(ValueError):
    """The run's data changed since the run started: resuming would train on another split."""


def _stats(entries) -> dict:
    return {e["path"]: (int(e.get("size", -1)), float(e.get("mtime", -1))) for e in entries}


def read_split(out: Path) -> dict | None:
    """The run's frozen split ({"files": [{path, split, size, mtime}], "skipped": [...]}), or
    None for a run started before wavelm froze splits."""
    p = out / SPLIT_NAME
    if not p.is_file():
        return None
    try:
        frozen = json.loads(p.read_text())
        _stats(frozen["files"] + frozen["skipped"])
        bad = [f["path"] for f in frozen["files"] if f["split"] not in SPLITS]
        if bad:
            raise ValueError(f"unknown split for {bad[0]}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{p}: unreadable split file ({e}); start again with --overwrite") from None
    return frozen


def write_split(out: Path, cache, splits: dict) -> None:
    """Freeze `splits` ({path: split}) of the cache's files, with the sizes and mtimes of the
    source files, in RUN/split.json (atomically)."""
    files = [{"path": f["path"], "split": splits[f["path"]], "size": f.get("size", -1),
              "mtime": f.get("mtime", -1)} for f in cache.meta["files"]]
    skipped = [{"path": s["path"], "size": s.get("size", -1), "mtime": s.get("mtime", -1)}
               for s in cache.meta["skipped"]]
    atomic_write_text(out / SPLIT_NAME, json.dumps({"version": 1, "source": cache.source, "files": files,
                                                    "skipped": skipped}, indent=1) + "\n")


def data_changes(frozen: dict, now: dict) -> dict:
    """{"removed", "added", "modified"}: lists of paths, between two {path: (size, mtime)}."""
    was = _stats(frozen["files"] + frozen["skipped"])
    return {"removed": sorted(set(was) - set(now)), "added": sorted(set(now) - set(was)),
            "modified": sorted(p for p in set(was) & set(now) if was[p] != now[p])}


def check_data(where, frozen: dict, now: dict, data_changed: str) -> dict:
    """DataChanged naming (some of) the files that changed since the run froze its split, unless
    data_changed == "ok". Returns the changes."""
    changes = data_changes(frozen, now)
    if any(changes.values()) and data_changed != "ok":
        def some(paths):
            return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

        what = "; ".join(f"{k} {len(v)}: {some(v)}" for k, v in changes.items() if v)
        raise DataChanged(f"{where}: audio files changed since this run started ({what}); resuming "
                          "would reshuffle the train/val split. Restore them, or pass --data-changed ok "
                          "to keep the run's split (new files train only)")
    return changes


def frozen_splits(cache, frozen: dict | None) -> dict:
    """{path: split} for the cache's files: the frozen split where the run has one, train for
    files added since (so nothing trained on ever becomes validation, and back)."""
    was = {} if frozen is None else {f["path"]: f["split"] for f in frozen["files"]}
    return {f["path"]: was.get(f["path"], "train" if frozen else f["split"]) for f in cache.meta["files"]}


def with_splits(cache, splits: dict):
    """`cache` itself when its splits are `splits`, else a copy whose metadata uses them."""
    if all(f["split"] == splits[f["path"]] for f in cache.meta["files"]):
        return cache
    files = [dict(f, split=splits[f["path"]]) for f in cache.meta["files"]]
    used = sorted({f["split"] for f in files} | set(cache.meta["splits"]))
    hours = {s: sum(f["num_samples"] for f in files if f["split"] == s) / cache.sample_rate / 3600
             for s in used}
    hours["total"] = sum(hours.values())
    out = copy.copy(cache)
    out.meta = {**cache.meta, "files": files, "hours": hours,
                "splits": {s: sum(f["split"] == s for f in files) for s in used}}
    return out


def open_run_data(data, out: Path, data_cfg: DataConfig, frozen: dict | None, data_changed: str,
                  progress: bool = True):
    """open_data for a run (rank 0): with a frozen split (a resumed run), an audio folder is
    compared with it before its cache is rebuilt, and any data with the cache's file list;
    DataChanged unless data_changed == "ok". Writes RUN/split.json: the frozen split, plus the
    files added since (train only). Returns the TokenCache."""
    path = None if isinstance(data, TokenCache) else Path(data).expanduser()
    scan = get_format(data_cfg.format, "data.format").scan
    if frozen is not None and scan is not None and path is not None and not (path / "meta.json").is_file():
        check_data(path, frozen, scan(path), data_changed)   # before a rebuild replaces the cache
    cache = open_data(data, out, data_cfg, progress=progress)
    if frozen is None:
        write_split(out, cache, frozen_splits(cache, None))
        return cache
    changes = check_data(path or cache.path, frozen, _stats(cache.meta["files"] + cache.meta["skipped"]),
                         data_changed)
    if any(changes.values()):
        splits = frozen_splits(cache, frozen)
        gone = [f["path"] for f in frozen["files"] if f["split"] != "train" and f["path"] not in splits]
        log.warning("%s: data changed since the run started (%s); keeping the run's split, new files "
                    "train only%s", path or cache.path,
                    ", ".join(f"{k} {len(v)}" for k, v in changes.items() if v),
                    f"; {len(gone)} held-out files are gone, so validation numbers change" if gone else "")
        write_split(out, cache, splits)
    return cache
