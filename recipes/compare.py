"""Train several recipes on the same data for the same budget; print val/test bits per sample.

    .venv/bin/python recipes/compare.py --data data/bach_cache \\
        --configs recipes/bach_piano/compare/*.toml --max-minutes 6 --out runs/compare/bach
    .venv/bin/python recipes/compare.py --data data/ytm_cache --full-eval --out runs/compare/ytm \\
        --configs recipes/youtubemix/{transformer,conformer_llm,conformer,cat}.toml

Every config trains with the same data, seed, batch, seq_len and time budget (flags override
the recipes; the run refuses configs that still disagree). Steps: `--steps N`; else, with
`--max-minutes`, estimated from a few timed training steps so that the cosine schedule ends
when the budget does; else the recipes' own (which must agree). Validation runs once, at the
end (`--eval-every` to change), and the best checkpoint is scored on the same fixed crops for
every config: `--eval-crops` crops of `--eval-seq-len` samples spread evenly over the val and
the test split (wavelm.train.val_crops; the val number is the trainer's own, on exactly those
crops). `--full-eval` (youtubemix format) adds the paper's metric: every 131072-sample chunk of
val and test scored on its own (wavelm.score.score_split over wavelm.data.youtubemix.YouTubeMix
chunks when the audio folder is there, else the cache's chunks, which hold the same tokens).

Each config trains in its own spawned process (memory goes back between configs) into
OUT/<config name>/, which gets result.json when done; a re-run skips configs already done with
the same settings, and starts interrupted ones again (a time budget cannot be resumed fairly).
OUT/results.json holds every result and the machine; the table is printed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import tomllib
from pathlib import Path

log = logging.getLogger("compare")

# flag -> [train] field, applied to every config when given
OVERRIDES = ("batch_size", "seq_len", "lr", "warmup", "seed", "threads", "device")
SHARED = ("batch_size", "seq_len", "accum", "seed", "threads", "device", "max_minutes")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="token cache or audio folder")
    p.add_argument("--format", choices=("folder", "youtubemix"), default=None,
                   help="how to prepare an audio folder (default: the recipes' [data] format)")
    p.add_argument("--quantization", choices=("s4", "mulaw"), default=None, help="youtubemix only")
    p.add_argument("--configs", nargs="+", required=True, metavar="TOML")
    p.add_argument("--out", required=True, help="output dir: one run dir per config + results.json")
    p.add_argument("--max-minutes", type=float, default=0.0, help="training budget per config")
    p.add_argument("--steps", type=int, help="steps of the schedule (default: fit to --max-minutes, "
                   "else the recipes' own)")
    p.add_argument("--eval-every", type=int, help="validate every N steps (default: at the end only)")
    p.add_argument("--eval-crops", type=int, default=64, help="fixed crops per split")
    p.add_argument("--eval-seq-len", type=int, default=8192, help="samples per eval crop")
    p.add_argument("--full-eval", action="store_true", help="youtubemix: also score every chunk")
    p.add_argument("--timing-steps", type=int, default=3, help="timed steps for the step estimate")
    for k in OVERRIDES:
        p.add_argument(f"--{k.replace('_', '-')}", type=str if k == "device" else
                       float if k == "lr" else int, default=None, help="override for every config")
    p.add_argument("--force", action="store_true", help="train again configs already done")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- settings

def load_recipe(path: Path, args, data_cfg: dict) -> dict:
    """The recipe of one config with the shared settings laid over it."""
    try:
        with open(path, "rb") as f:
            r = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        die(f"{path}: {e}")
    r["data"] = dict(r.get("data", {}), **data_cfg)
    t = r.setdefault("train", {})
    t.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    t.update(max_minutes=args.max_minutes, val_crops=args.eval_crops, val_seq_len=args.eval_seq_len)
    return r


def die(msg: str):
    print(f"compare: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_shared(recipes: dict[str, dict], shared=SHARED):
    """Every config must train with the same batch, crop length, seed, threads and device."""
    from wavelm.train import configs_from_recipe

    seen = {}
    for name, r in recipes.items():
        try:
            cfg = configs_from_recipe(r)[1]
        except ValueError as e:
            die(f"{name}: {e}")
        seen[name] = tuple(getattr(cfg, k) for k in shared)
    if len(set(seen.values())) > 1:
        rows = "; ".join(f"{n}: {dict(zip(shared, v))}" for n, v in seen.items())
        die(f"the configs disagree on shared settings ({rows}); set them with flags, "
            "e.g. --batch-size 2 --seq-len 8192")


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


# ----------------------------------------------------------------------------- one config

def time_steps(model_cfg, cfg, cache, device, n: int, cap_s: float) -> float:
    """Median seconds per optimizer step over `n` steps after a warm-up one (fewer if slow)."""
    import torch

    from wavelm.model.lm import WaveLM
    from wavelm.train import CropSampler, _segments, forward_backward, make_optimizer

    torch.manual_seed(cfg.seed)
    net = WaveLM(model_cfg).to(device)
    opt, _ = make_optimizer(net, cfg, device)
    sampler = CropSampler(_segments(cache, "train"), cfg.seq_len, cfg.seed)
    times, t_all = [], time.perf_counter()
    for k in range(n + 1):
        t0 = time.perf_counter()
        loss, gnorm = forward_backward(net, [sampler.batch(k, m, cfg.batch_size) for m in range(cfg.accum)],
                                       cfg, device)
        loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_all > cap_s:
            break
    return statistics.median(times[1:] or times)


def harmonic_tokens_per_s(run: Path) -> float | None:
    """The run's training throughput: harmonic mean of the logged windows (equal-sized windows,
    so this is tokens / time over them)."""
    rates = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(ln)
        if rec.get("event") == "train" and rec.get("tokens_per_s"):
            rates.append(rec["tokens_per_s"])
    return len(rates) / sum(1 / r for r in rates) if rates else None


def run_one(name: str, recipe: dict, cache_path: str, run: str, args_d: dict, key: str):
    """In a spawned process: time, train, score; writes RUN/result.json."""
    import torch

    from wavelm.checkpoint import load_model
    from wavelm.data.folder import TokenCache
    from wavelm.train import Dist, _device, _segments, configs_from_recipe, evaluate, train, val_crops

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name}: %(message)s", datefmt="%H:%M:%S")
    run = Path(run)
    model_cfg, cfg, data_cfg = configs_from_recipe(recipe)
    cache = TokenCache(cache_path)
    device = _device(cfg, 0, 1)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    step_s = None
    if args_d["steps"] is not None:
        cfg.steps = args_d["steps"]
    elif cfg.max_minutes > 0:
        budget = cfg.max_minutes * 60
        step_s = time_steps(model_cfg, cfg, cache, device, args_d["timing_steps"], cap_s=max(10.0, 0.05 * budget))
        cfg.steps = max(1, int((budget - 5) / step_s))  # ~5 s of setup inside the budget
        log.info("%.2f s/step -> %d steps in %g min", step_s, cfg.steps, cfg.max_minutes)
    cfg.eval_every = args_d["eval_every"] or cfg.steps
    if cfg.warmup >= cfg.steps:
        log.warning("warm-up (%d) >= steps (%d): the learning rate never reaches its peak", cfg.warmup, cfg.steps)
    load0 = os.getloadavg()[0]
    res = train(cfg, model_cfg, cache_path, run, data_cfg=data_cfg, overwrite=True, progress=False,
                on_start=lambda info: log.info("%s %s: %.3fM parameters, %d steps of %d tokens", model_cfg.arch,
                                               model_cfg.pool or "flat", info["params"] / 1e6, cfg.steps,
                                               info["tokens_per_step"]))
    t_train = res["elapsed_s"]
    load1 = os.getloadavg()[0]

    t0 = time.monotonic()
    net = load_model(run / "best", map_location=device).eval()
    test = val_crops(_segments(cache, "test"), args_d["eval_seq_len"], args_d["eval_crops"])
    test_bits = evaluate(net, test, cfg, args_d["eval_seq_len"], device, Dist()) if test else None
    full = {}
    if args_d["full_eval"]:
        from wavelm.score import score_split

        src = Path(cache.source)
        data = src if src.is_dir() else cache.path  # YouTubeMix chunks from the audio when it is there
        for split in ("val", "test"):
            s = score_split(net, data, split, quantization=data_cfg.quantization or None)
            full[split] = {"bits": s.bits_per_sample, "chunks": s.num_chunks, "samples": s.num_samples}
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.accum
    out = {"name": name, "key": key, "arch": model_cfg.arch, "pool": model_cfg.pool,
           "stage_layers": model_cfg.stage_layers, "stage_dims": model_cfg.stage_dims,
           "params": res["params"], "steps_planned": cfg.steps, "steps": res["step"],
           "stopped": res["stopped"], "tokens_seen": res["step"] * tokens_per_step,
           "tokens_per_s": harmonic_tokens_per_s(run), "timed_s_per_step": step_s,
           "train_minutes": t_train / 60, "val_bits": res["best_val_bits"], "best_step": res["best_step"],
           "test_bits": test_bits, "eval_crops": args_d["eval_crops"], "eval_seq_len": args_d["eval_seq_len"],
           "full_eval": full or None, "eval_minutes": (time.monotonic() - t0) / 60,
           "loadavg_start_end": [load0, load1], "train": cfg.to_dict(), "model": model_cfg.to_dict()}
    tmp = run / "result.json.tmp"
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, run / "result.json")
    log.info("val %.4f, test %s bits/sample", res["best_val_bits"], f"{test_bits:.4f}" if test_bits else "-")


# ----------------------------------------------------------------------------- table

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    full = any(r.get("full_eval") for r in results)
    head = ["config", "arch", "params", "steps done", "tokens seen", "train tok/s", "val bits", "test bits"]
    if full:
        head += ["full val bits", "full test bits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        arch = r["arch"] + (f", pool {r['pool']}" if r["pool"] else ", flat")
        row = [r["name"], arch, f"{r['params'] / 1e6:.2f}M", f"{r['steps']}/{r['steps_planned']}",
               f"{r['tokens_seen'] / 1e6:.2f}M", fmt(r["tokens_per_s"], ",.0f"),
               fmt(r["val_bits"], ".3f"), fmt(r["test_bits"], ".3f")]
        if full:
            fe = r.get("full_eval") or {}
            row += [fmt(fe.get(s, {}).get("bits"), ".3f") for s in ("val", "test")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from wavelm.train import DataConfig, open_data

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(c) for c in args.configs]
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        die(f"config names (file stems) must differ: {names}")
    for p in paths:
        if not p.is_file():
            die(f"{p}: no such config")

    # the data: the first recipe's [data], then the flags; prepared once and shared
    first = tomllib.loads(paths[0].read_text()).get("data", {})
    data_cfg = {k: first[k] for k in ("format", "quantization", "sample_rate") if k in first}
    data_cfg.update({k: v for k, v in (("format", args.format), ("quantization", args.quantization)) if v})
    try:
        dc = DataConfig(**data_cfg)
    except ValueError as e:
        die(str(e))
    if args.full_eval and dc.format != "youtubemix":
        die("--full-eval needs the youtubemix format (--format youtubemix or the recipes' [data])")
    cache = open_data(args.data, out, dc)  # an audio folder is prepared once, into OUT/cache
    cache_path = str(Path(cache.path).resolve())
    data_cfg.update(path=cache_path, format=dc.format, quantization=dc.quantization)
    recipes = {n: load_recipe(p, args, data_cfg) for n, p in zip(names, paths)}
    check_shared(recipes, SHARED + (("steps",) if args.steps is None and not args.max_minutes else ()))

    shared = {k: getattr(args, k) for k in ("steps", "max_minutes", "eval_every", "eval_crops", "eval_seq_len",
                                            "full_eval", "timing_steps")}
    ctx = mp.get_context("spawn")
    results, failed = [], []
    for i, (name, path) in enumerate(zip(names, paths)):
        run = out / name
        key = hashlib.sha256(json.dumps([recipes[name], shared], sort_keys=True).encode()).hexdigest()[:16]
        done = run / "result.json"
        if done.is_file() and not args.force:
            r = json.loads(done.read_text())
            if r.get("key") == key:
                log.info("[%d/%d] %s: done already (val %.4f), skipped", i + 1, len(names), name, r["val_bits"])
                results.append(r)
                continue
            die(f"{done} was made with other settings; pass --force to train {name} again, "
                "or use another --out")
        log.info("[%d/%d] %s (%s)", i + 1, len(names), name, path)
        done.unlink(missing_ok=True)
        proc = ctx.Process(target=run_one, args=(name, recipes[name], cache_path, str(run), shared, key))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not done.is_file():
            log.error("%s failed (exit code %s); see the log above", name, proc.exitcode)
            failed.append(name)
            continue
        results.append(json.loads(done.read_text()))

    summary = {"data": cache_path, "hours": cache.meta.get("hours"), "machine": machine(),
               "settings": shared, "runs": results, "failed": failed}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    m = summary["machine"]
    budget = ", ".join(([f"{args.max_minutes:g} min"] if args.max_minutes else [])
                       + ([f"{args.steps} steps"] if args.steps else []))
    print(f"\n{len(results)} configs on {cache_path} ({m['gpu'] or m['cpu']}, {m['cpus']} CPUs, "
          f"torch {m['torch']}); budget {budget} each; eval {args.eval_crops} crops x "
          f"{args.eval_seq_len} per split\n")
    print(table(results))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
