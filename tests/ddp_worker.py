"""Run `wavelm train` under torchrun and save this rank's final parameters (test helper, so the
library carries no test hook): python tests/ddp_worker.py DUMP_DIR <wavelm train args...>"""
import os
import sys
from pathlib import Path

import torch
import torch.nn.parallel

from wavelm.cli import main

seen = []


class Capture(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        seen.append(module)


torch.nn.parallel.DistributedDataParallel = Capture   # the trainer imports it when it wraps the model
rc = main(["train", *sys.argv[2:]])
dump = Path(sys.argv[1])
dump.mkdir(parents=True, exist_ok=True)
torch.save({k: v.detach().cpu() for k, v in seen[0].state_dict().items()}, dump / f"rank{os.environ['RANK']}.pt")
sys.exit(rc)
