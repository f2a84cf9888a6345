"""Checkpoint files: a directory with `config.json` and `model.safetensors`, every file written
atomically (temp file in the same directory, then os.replace), read and validated (config
field by field, the weights' header shapes against the config on the meta device) before
anything is allocated.

This module sits below the model: it imports ModelConfig, never WaveLM (`load` takes the class),
so WaveLM.from_pretrained / save_pretrained are built on it, and wavelm/checkpoint.py offers
the same as plain functions (load_model, save_model) on top of the model."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from wavelm import __version__
from wavelm.files import atomic_write, atomic_write_text
from wavelm.model.config import ModelConfig

FORMAT = 1
CODECS = ("mulaw",)
PRETRAINED_DIR = Path(__file__).parent.parent / "pretrained"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the requested model."""


def save_model(model, path, extra: dict | None = None) -> Path:
    from safetensors.torch import save

    path = Path(path)
    cfg = model.config
    meta = {"format": FORMAT, "wavelm_version": __version__, "sample_rate": cfg.sample_rate,
            "codec": cfg.codec, "model": cfg.to_dict(), **(extra or {})}
    own = getattr(model, "sampling", None)            # the sampling it shipped with (_sampling), kept
    if own is not None and "sampling" not in meta:
        meta["sampling"] = {k: list(v) if isinstance(v, tuple) else v for k, v in own.changed().items()}
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
    fmt = meta.get("format", FORMAT)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise CheckpointError(f"{cfg_file}: format must be an integer, got {fmt!r}")
    if not isinstance(meta["model"], dict):
        raise CheckpointError(f"{cfg_file}: 'model' must be an object of ModelConfig fields")
    if fmt > FORMAT:
        raise CheckpointError(f"{cfg_file}: format {meta['format']} is newer than this wavelm ({FORMAT})")
    codec = meta.get("codec", meta["model"].get("codec", "mulaw"))
    if codec not in CODECS:
        raise CheckpointError(f"{path}: codec {codec!r} is not supported (this wavelm reads {', '.join(CODECS)})")
    return meta


def load_weights_into(model, source, path) -> None:
    """Copy the weights of `source` (a model read from the checkpoint `path`) into `model` (one
    built from the requested config, e.g. for `--init`): every weight must have the same name
    and shape; settings that hold no weights (dropout, ...) may differ. CheckpointError names
    the first weight that does not fit and the config fields that differ."""
    have, want = source.state_dict(), model.state_dict()
    odd = sorted(set(have) ^ set(want))
    bad = odd or [k for k in want if have[k].shape != want[k].shape]
    if bad:
        k = bad[0]
        where = (f"{k} {'only in the checkpoint' if k in have else 'missing from the checkpoint'}" if odd
                 else f"{k}: {tuple(have[k].shape)} in the checkpoint, {tuple(want[k].shape)} requested")
        a, b = source.config.to_dict(), model.config.to_dict()
        diff = ", ".join(f"{f}={a.get(f)!r} (requested {v!r})" for f, v in b.items() if a.get(f) != v)
        raise CheckpointError(f"{path}: weights do not fit the requested model ({where}); "
                              f"the configs differ in {diff or 'nothing'}")
    model.load_state_dict(have)


def load(cls, path=None, map_location="cpu", config=None):
    """A checkpoint directory (None: the bundled default model) as a `cls` (WaveLM) in eval mode
    on `map_location`; `config` (a ModelConfig), if given, must match the checkpoint's."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

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
    dev = torch.device(map_location)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cannot load {path} on {map_location}: no CUDA device is available")
    # the header's shapes against the config's, on the meta device: nothing is allocated until
    # both agree (a config of absurd sizes cannot ask for hundreds of GB first)
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt weights ({str(e)[:200]})") from None
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
    missing, unexpected = set(want) - set(shapes), set(shapes) - set(want)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the config "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    bad = [k for k in want if want[k] != shapes[k]]
    if bad:
        raise CheckpointError(f"{weights}: weights do not fit the config ({bad[0]}: {shapes[bad[0]]} in the "
                              f"file, {want[bad[0]]} in config.json)")
    try:
        sd = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: corrupt weights ({str(e)[:200]})") from None
    model = cls(cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the config ({str(e)[:300]})") from None
    model.checkpoint_path = path
    model.checkpoint_meta = meta
    model.sampling = _sampling(meta, path)
    return model.to(map_location).eval()


def _sampling(meta: dict, path):
    """The sampling a checkpoint ships with (config.json "sampling": Sampling fields measured on
    this model, e.g. {"min_p": 0.002}); None where it sets none (the Sampling defaults)."""
    from wavelm.decode.sampling import Sampling   # the decoders import the model: imported late

    fields = meta.get("sampling")
    if fields is None:
        return None
    try:
        if not isinstance(fields, dict):
            raise ValueError(f"must be an object of sampling options, got {fields!r}")
        return Sampling.make(None, **fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: \"sampling\": {e}") from None
