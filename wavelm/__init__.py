"""wavelm: autoregressive raw-audio waveform language models.

    import wavelm
    model = wavelm.WaveLM.from_pretrained()          # the bundled default model
    audio = wavelm.generate(model, seconds=5)        # float32 (1, 80000) at 16 kHz
    res = wavelm.score(model, "piano.wav")           # res.bits_per_sample
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "mulaw_encode": "wavelm.audio",
    "mulaw_decode": "wavelm.audio",
    "load_audio": "wavelm.audio",
    "save_audio": "wavelm.audio",
    "ModelConfig": "wavelm.model.config",
    "WaveLM": "wavelm.model.lm",
    "generate": "wavelm.generation",
    "stream": "wavelm.generation",
    "Sampling": "wavelm.decode.sampling",
    "score": "wavelm.scoring",
    "ScoreResult": "wavelm.scoring",
}
__all__ = list(_EXPORTS) + ["data"]


def __getattr__(name):  # lazy: `import wavelm` stays cheap, torch loads on first use
    if name == "data":
        return import_module("wavelm.data")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavelm' has no attribute {name!r}")
