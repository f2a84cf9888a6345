"""Multi-process training: `torchrun` with 2 CPU processes (gloo) through `wavelm train`."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wavelm.model.lm import load_model
from wavelm.data.folder import write_cache
from wavelm.train import Dist, TrainConfig, evaluate, split_segments, val_crops


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_end_identical_and_agree_on_validation(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(6000)
    files = [(f"{s}{k}.wav", s, (128 + 100 * np.sin(t * rng.uniform(0.05, 0.3))).astype(np.uint8), 0, 0)
             for s, n in (("train", 4), ("val", 1)) for k in range(n)]
    cache = write_cache(tmp_path / "cache", files, 16000, "mulaw", tmp_path)
    run, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           os.path.join(os.path.dirname(__file__), "ddp_worker.py"), str(dump), "--data", str(cache.path), "--out", str(run), "--model", "tiny",
           "--steps", "6", "--batch-size", "2", "--seq-len", "128", "--eval-every", "3", "--lr", "1e-2",
           "--warmup", "1", "--device", "cpu", "--set", "train.val_crops=5", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 processes" in p.stdout and p.stdout.count("done at step 6") == 1  # rank 0 prints

    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    saved = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], saved[k]) for k in r0)

    # the all-reduced validation number equals a single-process evaluation of the same model
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").open()]
    val = [r["val_bits"] for r in logged if r["event"] == "val"]
    model = load_model(run / "last")
    cfg = TrainConfig(batch_size=2, seq_len=128, val_crops=5)
    pieces = val_crops(split_segments(cache, "val"), 128, 5)
    assert len(val) == 2 and evaluate(model, pieces, cfg, 128, "cpu", Dist()) == pytest.approx(val[-1], rel=1e-6)
