"""Datasets: the token cache (cache.py), the data formats that write one (formats.py: FORMATS,
folder.py for any audio folder, youtubemix.py), the worker pool (encode.py), crops (sampler.py)."""
from importlib import import_module

_EXPORTS = {"YouTubeMix": "wavelm.data.youtubemix", "TokenCache": "wavelm.data.cache",
            "prepare_folder": "wavelm.data.folder", "prepare_youtubemix": "wavelm.data.youtubemix",
            "FORMATS": "wavelm.data.formats", "Format": "wavelm.data.formats",
            "get_format": "wavelm.data.formats", "open_data": "wavelm.data.formats"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavelm.data' has no attribute {name!r}")
