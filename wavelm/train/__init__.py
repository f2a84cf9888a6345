"""Trainer: random crops from a token cache, AdamW with warm-up + cosine, periodic validation,
best/last checkpoints and exact resume; one process or many under `torchrun` (DDP).

    from wavelm.train import TrainConfig, train
    res = train(TrainConfig(steps=2000), ModelConfig.from_name("small"), "data/piano", "runs/piano")
    res["best_val_bits"], res["best"]

    wavelm train --data data/piano --model small --steps 2000 --out runs/piano
    torchrun --standalone --nproc-per-node=4 -m wavelm train --data CACHE --out RUN ...

The run directory:

    run.json        model, train and data configs (what `--resume` starts from)
    metrics.jsonl   one JSON object per event (rank 0): `start` (each invocation: machine, device,
                    bf16), `train` (loss, lr, tokens/s), `val`
    split.json      the files (sizes, mtimes) and their split, frozen at the start: `--resume` refuses
                    data that changed since, unless `data_changed="ok"` (new files train only)
    cache/          the token cache when `data` is an audio folder; reused while files are unchanged
    last/           model dir + trainer_state.pt, every `save_every` steps and at the end
    best/           model dir with the lowest validation bits so far
    steps/<step>/   model dirs kept every `keep_every` steps (--keep-every), to choose among by listening
    tb/             TensorBoard events (`tensorboard=True`)
    .wavelm.lock    while a run writes: its PID, under an flock (a second `train --out RUN` is refused)

Checkpoints are built in a hidden temp dir, then swapped in with renames (`files.publish_dir`), so after
a crash `last/` (or, between the two renames, `.last.old/`, which `_recover` puts back) holds a
complete set whose files all carry the same step.

Exact resume: the batch of step k on rank r is a pure function of (seed, r, k) (`CropSampler`),
so only the step, optimizer, scheduler and torch RNG states (dropout) need saving.
`batch_size` is per process: a step sees batch_size * seq_len * accum * world_size tokens.
"""
from __future__ import annotations

from wavelm.data.sampler import CropSampler, split_segments, val_crops

from .config import DataConfig, TrainConfig, configs_from_recipe
from .distributed import Dist
from .loop import TrainingDiverged, evaluate, forward_backward, loss_fn, train, use_bf16
from .rundir import DataChanged, load_trainer_state, open_data, prepare_run_dir, save_checkpoint
from .setup import lr_lambda, make_optimizer

__all__ = ["CropSampler", "DataChanged", "DataConfig", "Dist", "TrainConfig", "TrainingDiverged",
           "configs_from_recipe", "evaluate", "forward_backward", "load_trainer_state", "loss_fn", "lr_lambda", "make_optimizer",
           "open_data", "prepare_run_dir", "save_checkpoint", "split_segments", "train", "use_bf16", "val_crops"]
