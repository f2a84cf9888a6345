"""One process or many under torchrun: ranks, reductions, the device of each process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False          # we initialised the process group (and destroy it)

    @classmethod
    def from_env(cls, device_type: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)

    def all_sum(self, values, device) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def rank0_first(self, fn):
        """Run fn on rank 0, then (if it succeeded) on the other ranks: rank 0 writes shared
        files (the cache) that the others then read. A failure on rank 0 reaches every rank."""
        err = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:  # re-raised below, after telling the other ranks
                err = e
        if self.world > 1 and self.all_sum([err is not None], "cpu" if self._gloo() else "cuda")[0]:
            raise err if err is not None else ValueError("rank 0 could not set up the run (see its error)")
        if err is not None:
            raise err
        return fn() if self.rank else result

    def _gloo(self):
        return self.world == 1 or torch.distributed.get_backend() == "gloo"

    def close(self):
        if self.owned:
            torch.distributed.destroy_process_group()


def device_for(cfg, local_rank: int, world: int) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but no CUDA device is available")
        if name == "cuda":
            name = f"cuda:{local_rank if world > 1 else torch.cuda.current_device()}"
        torch.cuda.set_device(name)
    return torch.device(name)
