import os

import pytest
import torch

# Tiny models decode faster on one thread (OpenMP hand-off costs more than the work).
torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ARCHS = ["transformer", "conformer_llm", "conformer", "cat", "conv"]


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param
