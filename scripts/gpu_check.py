"""Correctness of wavelm on a CUDA device (run by scripts/gpu_check.sh): each check prints one
line and lands in --json; the exit code is non-zero if any failed."""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

from wavelm import ModelConfig, WaveLM
from wavelm.generation import start


def forward_matches_cpu(dev):
    torch.manual_seed(0)
    m = WaveLM(ModelConfig.from_name("piano")).eval()
    x = torch.randint(0, 256, (2, 8192))
    with torch.no_grad():
        a = m(x)
        b = m.to(dev)(x.to(dev)).cpu()
    err = (a - b).abs().max().item()
    return err < 1e-3, {"max_abs_diff": err}


def stream_matches_full(dev):
    torch.manual_seed(0)
    m = WaveLM(ModelConfig.from_name("tiny", arch="conformer", pool=[2, 3])).double().to(dev).eval()
    x = torch.randint(0, 256, (2, 61), device=dev)
    with torch.no_grad():
        full = m(x)
        st = m.init_state(2)
        parts = [m(x[:, t:t + 3], state=st) for t in range(0, 61, 3)]
    err = (torch.cat(parts, 1) - full).abs().max().item()
    return err < 1e-9, {"max_abs_diff": err}


def graph_matches_torch(dev):
    torch.manual_seed(0)
    m = WaveLM(ModelConfig.from_name("piano")).to(dev).eval()
    runs = {}
    for backend in ("cuda-graph", "torch"):
        with torch.inference_mode():
            dec = start(m, batch_size=2, seed=3, backend=backend)
            runs[backend] = dec.run(256)
    same = (runs["cuda-graph"] == runs["torch"]).mean()
    return same > 0.99, {"same_tokens_share": float(same)}   # bf16/TF32 kernels may flip a rare draw


def bf16_training_is_finite(dev):
    from wavelm.train import TrainConfig, forward_backward, make_optimizer

    torch.manual_seed(0)
    m = WaveLM(ModelConfig.from_name("piano")).to(dev)
    cfg = TrainConfig(batch_size=4, seq_len=16384, amp=True)
    opt, _ = make_optimizer(m, cfg, dev)
    x = torch.randint(0, 256, (4, 16385))
    losses = []
    for _ in range(5):
        loss, gn = forward_backward(m, [(x[:, :-1], x[:, 1:])], cfg, dev)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    ok = all(l == l and l < 10 for l in losses) and losses[-1] < losses[0]
    return ok, {"losses_nats": losses}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    out, failed = {}, 0
    for check in (forward_matches_cpu, stream_matches_full, graph_matches_torch, bf16_training_is_finite):
        t = time.perf_counter()
        try:
            ok, info = check(dev)
        except Exception:
            ok, info = False, {"error": traceback.format_exc()[-2000:]}
        info.update(ok=bool(ok), seconds=round(time.perf_counter() - t, 2))
        out[check.__name__] = info
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {check.__name__}: {info}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
