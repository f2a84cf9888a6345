import os

import pytest
import torch

# Tiny models decode faster on one thread (OpenMP hand-off costs more than the work).
torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from wavelm.model.config import ARCHS

# mixed stacks (per-stage blocks, `stage_archs`) and deeper pooling, pinned like uniform archs:
# (stage kinds joined by "/", pool, extra config)
MIXED = [("conv/conv/conformer", [2, 3], {}),
         ("conformer/conv/transformer", [3, 2], {}),
         ("cat/conformer_llm/conv", [2, 3], {}),
         ("conv/conv/conv/conformer", [2, 2, 2], {}),
         ("conv", [2, 3], {"conv_dilations": [1, 3, 9], "conv_kernel": 4, "n_layers": 3})]
# the LPC path (wavelm/model/lpc.py) on a flat and a pooled stack: T = 61 crosses many blocks
LPC = [("conformer", [], {"lpc_order": 4, "lpc_window": 16, "lpc_hop": 4}),
       ("conv/conv/conformer", [2, 3], {"lpc_order": 3, "lpc_window": 12, "lpc_hop": 6})]
# every uniform arch flat and pooled, then the mixed stacks
CASES = [(a, p, {}) for a in ARCHS for p in ([], [2, 3])] + MIXED + LPC
CASE_IDS = [f"{a}-{'x'.join(map(str, p)) or 'flat'}{'-' + '-'.join(k) if k else ''}" for a, p, k in CASES]


def tiny(arch, pool=(), **kw):
    """The tiny config for an arch or a "/"-joined stack of per-stage kinds."""
    from wavelm import ModelConfig

    kinds = arch.split("/")
    return ModelConfig.from_name("tiny", arch=kinds[0], pool=list(pool),
                                 **({"stage_archs": kinds} if len(kinds) > 1 else {}), **kw)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A float32 tiny pooled conformer saved as a checkpoint directory."""
    from wavelm import WaveLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    WaveLM(tiny("conformer", [2, 2])).save_pretrained(path)
    return path
