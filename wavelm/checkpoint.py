"""Checkpoints as plain functions on top of the model: `load_model(path)` and `save_model(model,
path)`. The files and their checks live below the model, in wavelm/model/weights.py (which
never imports WaveLM); nothing in wavelm/model/ imports this module."""
from __future__ import annotations

from wavelm.model.lm import WaveLM
from wavelm.model.weights import (CODECS, FORMAT, PRETRAINED_DIR, CheckpointError, load_weights_into,  # noqa: F401
                                  read_config, save_model)


def load_model(path=None, map_location="cpu", config=None) -> WaveLM:
    """A checkpoint directory (None: the bundled default model) as a WaveLM in eval mode on
    `map_location`; `config` (a ModelConfig), if given, must match the checkpoint's."""
    return WaveLM.from_pretrained(path, map_location=map_location, config=config)
