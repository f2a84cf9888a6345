"""`wavelm train`: train a model on an audio folder or a token cache.

    wavelm train --data data/piano --model small --steps 20000 --out runs/piano
    wavelm train --data data/youtubemix --format youtubemix \\
        --config recipes/youtubemix/conformer.toml --out runs/ytm-conformer
    wavelm train --out runs/piano --resume --steps 40000      # continue exactly, then further
    torchrun --standalone --nproc-per-node=4 -m wavelm train --data CACHE --out RUN ...

Settings, later wins: RUN/run.json (with --resume) < --config recipe.toml < flags < --set.
A recipe has [model] (preset + ModelConfig fields), [train] (TrainConfig fields) and [data]
(format, quantization, sample_rate). An audio folder is prepared into RUN/cache (reused while its
files are unchanged); pass a cache made by `wavelm prepare` to share one between runs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from wavelm.errors import UserError
from wavelm.data.formats import FORMATS, all_quantizations, quantization_help

# flag -> (table, key)
FLAGS = {"model": ("model", "preset"), "arch": ("model", "arch"), "steps": ("train", "steps"),
         "batch_size": ("train", "batch_size"), "seq_len": ("train", "seq_len"), "lr": ("train", "lr"),
         "device": ("train", "device"), "max_minutes": ("train", "max_minutes"),
         "eval_every": ("train", "eval_every"), "warmup": ("train", "warmup"), "seed": ("train", "seed"),
         "threads": ("train", "threads"), "format": ("data", "format"),
         "quantization": ("data", "quantization"), "data": ("data", "path"),
         "init": ("train", "init"), "input_noise": ("train", "input_noise"), "keep_every": ("train", "keep_every")}


def add_arguments(p):
    p.add_argument("--data", metavar="DIR|CACHE", help="audio folder or token cache (from run.json with --resume)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (checkpoints, metrics)")
    p.add_argument("--config", metavar="TOML", help="recipe: [model], [train], [data] tables")
    p.add_argument("--model", metavar="PRESET", help="model preset (tiny, small, base, piano, small-flat, base-flat)")
    p.add_argument("--arch", help="transformer | conformer_llm | conformer | cat | conv")
    p.add_argument("--steps", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="B", help="crops per process per step")
    p.add_argument("--seq-len", type=int, metavar="T", help="samples per crop")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, metavar="N", help="linear warm-up steps")
    p.add_argument("--eval-every", type=int, metavar="N", help="validate (and save) every N steps")
    p.add_argument("--keep-every", type=int, metavar="N",
                   help="also keep the model at every N steps in RUN/steps/<step>/, to choose among them "
                        "by listening (`wavelm bench quality`); 0 = off (default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--input-noise", type=float, metavar="SIGMA",
                   help="noise on training inputs: per-crop std drawn from [0, SIGMA] mu-law steps, "
                        "0 <= SIGMA <= 64 (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="CPU threads per process (default 1; 0 = torch's default)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop cleanly after M minutes, saving last/ (0 = no limit, the default)")
    p.add_argument("--format", choices=tuple(FORMATS), help="how to prepare an audio folder (default folder)")
    p.add_argument("--quantization", choices=all_quantizations(), help=f"by format: {quantization_help()}")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="any recipe field, e.g. --set model.d_model=64 --set train.grad_clip=0.5")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="start from these weights (fine-tuning; every weight must keep its shape, dropout may change)")
    p.add_argument("--resume", action="store_true", help="continue RUN from RUN/last")
    p.add_argument("--overwrite", action="store_true", help="start RUN again (its cache is kept)")
    p.add_argument("--data-changed", choices=("refuse", "ok"), default="refuse",
                   help="with --resume, when audio files changed since the run started: refuse "
                        "(default), or ok: keep the run's train/val split, new files train only")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="stop cleanly at STEP (resume later)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard events to RUN/tb")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--no-amp", action="store_true",
                   help="float32 steps (default: bf16 autocast on CUDA and on CPUs with native bf16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _toml_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def _read_toml(path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UserError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path}: invalid TOML ({e})") from None


def recipe_layers(args) -> list[dict]:
    layers = []
    if args.resume:
        run = Path(args.out) / "run.json"
        if not run.is_file():
            raise UserError(f"{args.out}: nothing to resume (no run.json); drop --resume to start")
        try:
            layer = json.loads(run.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{run}: unreadable run file ({e}); start again with --overwrite") from None
        if not isinstance(layer, dict):
            raise UserError(f"{run}: not a run file (expected an object of tables)")
        layers.append(layer)
    if args.config:
        layers.append(_read_toml(args.config))
    flags = {}
    for name, (table, key) in FLAGS.items():
        if getattr(args, name) is not None:
            flags.setdefault(table, {})[key] = getattr(args, name)
    for name in ("tensorboard", "compile"):
        if getattr(args, name):
            flags.setdefault("train", {})[name] = True
    if args.no_amp:
        flags.setdefault("train", {})["amp"] = False
    layers.append(flags)
    sets = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        table, dot, field = key.strip().partition(".")
        if not (eq and dot and field):
            raise UserError(f"--set {item!r}: expected TABLE.KEY=VALUE, e.g. model.d_model=64")
        sets.setdefault(table, {})[field] = _toml_value(value.strip())
    layers.append(sets)
    return layers


def merge(layers: list[dict]) -> dict:
    """Later layers win, key by key; a layer naming a model preset starts the model afresh."""
    out: dict = {}
    for layer in layers:
        for table, values in layer.items():
            if not isinstance(values, dict):
                raise UserError(f"recipe entry {table!r} must be a table, got {values!r}")
            if table == "model" and "preset" in values:
                out["model"] = {}
            out.setdefault(table, {}).update(values)
    return out


def header(info) -> str:
    m, t, d = info["model"], info["train"], info["data"]
    h = d["hours"]
    stages = " / ".join(f"{n}x d{c}" for n, c in zip(m.stage_layers, m.stage_dims))
    pool = f", pool {m.pool}" if m.pool else ""
    procs = info["world_size"]
    return "\n".join([
        f"model   {m.arch_name}, {stages}{pool}, window {m.stage_windows}: {info['params'] / 1e6:.2f}M parameters",
        f"data    {d['path']}: train {h.get('train', 0):.3f} h ({info['train_segments']} segments), "
        f"val {h.get('val', 0):.3f} h ({info['val_crops']} fixed crops of {info['val_seq_len']}); "
        f"{d['codec']} @ {info['cache'].sample_rate} Hz",
        f"steps   {info['start_step']} -> {t.steps}: {info['tokens_per_step']:,} tokens/step "
        f"({t.batch_size} x {t.seq_len}{f' x {t.accum}' if t.accum > 1 else ''} x {procs} "
        f"process{'es' if procs > 1 else ''}), lr {t.lr:g}, warm-up {t.warmup}",
        f"device  {info['device']}, {info['threads']} thread{'s' if info['threads'] > 1 else ''}"
        f"{', bf16 autocast (float32 validation on CPU)' if info.get('bf16') else ', float32'}",
        f"out     {info['out']}"])


def run(args) -> int:
    from wavelm.files import check_output_dir
    from wavelm.train import TrainingDiverged, configs_from_recipe, train

    check_output_dir(args.out)                  # before any data is prepared
    recipe = merge(recipe_layers(args))
    model_cfg, cfg, data_cfg = configs_from_recipe(recipe)
    if not data_cfg.path:
        raise UserError("--data is required (an audio folder or a token cache)")
    if cfg.init:
        from wavelm.checkpoint import read_config

        read_config(Path(cfg.init).expanduser())    # a missing or broken --init fails before data prep
    rank0 = int(os.environ.get("RANK", "0")) == 0
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        res = train(cfg, model_cfg, data_cfg.path, args.out, resume=args.resume, data_cfg=data_cfg,
                    overwrite=args.overwrite, stop_at=args.stop_at, progress=progress,
                    data_changed=args.data_changed,
                    on_start=lambda info: print(header(info), flush=True))
    except TrainingDiverged as e:
        print(f"wavelm train: error: {e}", file=sys.stderr)
        return 1
    if rank0:
        best = "-" if res["best_val_bits"] is None else f"{res['best_val_bits']:.4f}"
        why = {"done": "done", "time": f"time budget of {cfg.max_minutes:g} min reached",
               "stop_at": "stopped as asked"}[res["stopped"]]
        print(f"{why} at step {res['step']}: best val {best} bits/sample (step {res['best_step']}); "
              f"checkpoints in {res['best']} and {res['last']}", flush=True)
        if res["stopped"] != "done":
            print(f"continue with: wavelm train --out {args.out} --resume", flush=True)
    return 0
