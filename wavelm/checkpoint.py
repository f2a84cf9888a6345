"""Checkpoints: a directory with `config.json` and `model.safetensors`, every file written
atomically (temp file in the same directory, then os.replace)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FORMAT = 1
CODECS = ("mulaw",)
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the requested model."""


def atomic_write(path, write_fn, mode="wb"):
    """Call write_fn(file) on a temp file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path, text: str):
    return atomic_write(path, lambda f: f.write(text), mode="w")


def save_model(model, path, extra: dict | None = None) -> Path:
    from safetensors.torch import save

    from wavelm import __version__

    path = Path(path)
    cfg = model.config
    meta = {"format": FORMAT, "wavelm_version": __version__, "sample_rate": cfg.sample_rate,
            "codec": cfg.codec, "model": cfg.to_dict(), **(extra or {})}
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    blob = save(sd, metadata={"format": str(FORMAT)})
    atomic_write(path / "model.safetensors", lambda f: f.write(blob))
    atomic_write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    return path


def read_config(path) -> dict:
    path = Path(PRETRAINED_DIR if path is None else path)
    cfg_file = path / "config.json"
    if path.is_file():
        raise CheckpointError(f"{path}: a checkpoint is a directory (with config.json), not a file")
    if not cfg_file.exists():
        if path == PRETRAINED_DIR:
            raise CheckpointError(f"no bundled model in {path}: train one (`make bundle`) or pass --checkpoint")
        raise CheckpointError(f"{path}: not a wavelm checkpoint (no config.json)")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: corrupt config ({e})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{cfg_file}: not a wavelm model config")
    if meta.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"{cfg_file}: format {meta['format']} is newer than this wavelm ({FORMAT})")
    codec = meta.get("codec", meta["model"].get("codec", "mulaw"))
    if codec not in CODECS:
        raise CheckpointError(f"{path}: codec {codec!r} is not supported (this wavelm reads {', '.join(CODECS)})")
    return meta


def load_model(path=None, map_location="cpu", config=None):
    """Load a WaveLM; `config` (a ModelConfig), if given, must match the checkpoint's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from wavelm.model.config import ModelConfig
    from wavelm.model.lm import WaveLM

    path = Path(PRETRAINED_DIR if path is None else path)
    meta = read_config(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: invalid model config ({e})") from None
    if config is not None and config.to_dict() != cfg.to_dict():
        diff = {k: (v, cfg.to_dict()[k]) for k, v in config.to_dict().items() if cfg.to_dict()[k] != v}
        raise CheckpointError(f"{path}: checkpoint config differs from the requested model: "
                              + ", ".join(f"{k}={b!r} (requested {a!r})" for k, (a, b) in diff.items()))
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{path}: no model.safetensors")
    try:
        sd = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: corrupt weights ({str(e)[:200]})") from None
    model = WaveLM(cfg)
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the config "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the config ({str(e)[:300]})") from None
    model.checkpoint_path = path
    model.checkpoint_meta = meta
    return model.to(map_location).eval()
