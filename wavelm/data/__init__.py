"""Datasets: any audio folder -> token cache (folder.py), YouTubeMix (youtubemix.py)."""
from importlib import import_module

_EXPORTS = {"YouTubeMix": "wavelm.data.youtubemix", "TokenCache": "wavelm.data.folder",
            "prepare_folder": "wavelm.data.folder"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavelm.data' has no attribute {name!r}")
