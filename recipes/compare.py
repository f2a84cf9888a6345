"""Which block wins? Train configs for an equal number of steps over several seeds; one table.

    .venv/bin/python recipes/compare.py --data runs/piano/cache --configs recipes/piano/study/*.toml \\
        --steps 1200 --seeds 0,1 --best-seeds 3 --out runs/study
    .venv/bin/python recipes/compare.py --out runs/study --table              # the table again
    .venv/bin/python recipes/compare.py --out runs/study --plot docs/study_val.png

Every (config, seed) run trains the same number of steps with the same batch, crop length,
schedule and data order (the crop sampler is seeded by the run's seed, so seed k draws the same
crops for every config): load on the machine changes how long a run takes, never what it
learns. Flags override the recipes' [train] tables; the study refuses configs that still
disagree on batch, crop length, steps, warm-up or lr.

Resumable: each run lives in OUT/<config>/seed<k>/. A finished run has its line in the results
file (OUT/results.jsonl, or `--results FILE`: keep it in git and the study outlives the machine)
and is never redone; a run that was killed continues from its last/
checkpoint (the trainer's exact resume), and a split already scored is kept in the run's
scores.json; `--max-runs N` trains at most N runs and stops, so a
study can be spread over sessions. After the `--seeds` of every config, the two configs with
the lowest mean validation bits get seeds up to `--best-seeds`; configs judged on the crops alone
(below) run last. A `pooled` line stands for runs whose folders were lost before their lines
were kept in git: their config, seeds and each seed's run key, params, tokens and (mean, min, max)
of val crops, val and test bits, as the table printed them; those seeds count as done and pool
with later runs.

Scoring: the best checkpoint on the whole val and test splits, each file one stream from a zero
state (`--eval-max-files` for a quick look). A recipe may say `[study] whole_splits = false`: that
config is judged on the fixed validation crops alone (the flat Conformer, whose whole-split
scoring at 16 kHz in every layer would cost more than the rest of the study). The validation
curve (the trainer's fixed crops, every `--eval-every` steps) gives the plot of val bits vs tokens. `--bench` measures, one config
at a time on this machine and before any training, training tokens/s and fast-decoder samples/s
at batch 1 (medians), once per config (`--bench --max-runs 0` measures and trains nothing).
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
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger("compare")

OVERRIDES = ("batch_size", "seq_len", "lr", "warmup", "threads", "device")
SHARED = ("steps", "batch_size", "seq_len", "accum", "lr", "warmup", "threads", "device")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="study folder: a run folder per config and seed (and results.jsonl)")
    p.add_argument("--results", metavar="JSONL", help="the results file (default OUT/results.jsonl); keep it "
                   "in git to keep a study that outlives its run folders")
    p.add_argument("--data", help="token cache or audio folder (prepared once into OUT/cache)")
    p.add_argument("--configs", nargs="+", metavar="TOML")
    p.add_argument("--steps", type=int, help="steps of every run (required to train)")
    p.add_argument("--seeds", default="0,1", help="seeds of every config (default 0,1)")
    p.add_argument("--best-seeds", type=int, default=3, help="seeds of the best two configs (default 3)")
    p.add_argument("--eval-every", type=int, default=None, help="validation crops every N steps (default steps/10)")
    p.add_argument("--eval-crops", type=int, default=32, help="fixed validation crops for the curve")
    p.add_argument("--eval-max-files", type=int, default=None, help="score N files per split, not all")
    p.add_argument("--max-runs", type=int, default=None, help="train at most N runs now, then stop")
    p.add_argument("--bench", action="store_true", help="also measure training tokens/s and decoding samples/s")
    p.add_argument("--table", action="store_true", help="print the table and the reading of the results file")
    p.add_argument("--plot", metavar="PNG", help="plot val bits vs tokens per config and stop")
    for k in OVERRIDES:
        p.add_argument(f"--{k.replace('_', '-')}", type=str if k == "device" else float if k == "lr" else int,
                       default=None, help="override for every config")
    return p.parse_args(argv)


def die(msg: str):
    print(f"compare: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- results file

POOLED = ("config", "seeds", "keys", "tokens_seen", "val_crop_bits", "val_bits", "test_bits")


def read_results(p: Path) -> list[dict]:
    if not p.is_file():
        return []
    rows = []
    for i, ln in enumerate(p.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            die(f"{p}:{i}: not a JSON line (edit or remove it)")
        missing = [k for k in POOLED if k not in rows[-1]] if rows[-1].get("kind") == "pooled" else []
        if missing:
            die(f"{p}:{i}: a pooled line needs {', '.join(missing)}")
    pooled = {(r["config"], s) for r in rows if r["kind"] == "pooled" for s in r["seeds"]}
    for r in rows:
        if r["kind"] == "run" and (r["config"], r["seed"]) in pooled:
            die(f"{p}: {r['config']} seed {r['seed']} has a run line and is in a pooled line (keep one)")
    return rows


def append_result(p: Path, row: dict):
    """Rewrite the results file with one more line, atomically."""
    from wavelm.files import atomic_write_text

    rows = [r for r in read_results(p) if not (r["kind"] == row["kind"] and r.get("run") == row.get("run")
                                               and r.get("config") == row.get("config"))]
    atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in rows + [row]))


def done_keys(rows: list[dict], config: str, seed: int) -> list[str]:
    """The keys of the finished runs of (config, seed): its run line, or its seed's in a pooled line."""
    return ([r["key"] for r in rows if r["kind"] == "run" and r["config"] == config and r["seed"] == seed]
            + [r["keys"][str(seed)] for r in rows if r["kind"] == "pooled" and r["config"] == config
               and seed in r["seeds"]])


def data_id(cache) -> str:
    """The study's data wherever it lies: each file's path in the folder, split and length; rate, codec."""
    files = [(f["path"], f["split"], f["num_samples"]) for f in cache.meta["files"]]
    return hashlib.sha256(json.dumps([cache.sample_rate, cache.codec, files]).encode()).hexdigest()[:16]


def run_key(recipe: dict, seed: int, max_files: int | None, data: str) -> str:
    """A run's settings as a short hash: its recipe (the data as its data_id, not as a path on
    this machine, so a results file in git holds on any clone), seed and file limit."""
    r = dict(recipe, data=dict(recipe["data"], path=data))
    return hashlib.sha256(json.dumps([r, seed, max_files], sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- settings

def load_recipe(path: Path, args, data_path: str) -> dict:
    try:
        with open(path, "rb") as f:
            r = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        die(f"{path}: {e}")
    study = r.get("study", {})
    if set(study) - {"whole_splits"} or not isinstance(study.get("whole_splits", True), bool):
        die(f"{path}: [study] takes one key, whole_splits = true or false")
    r["data"] = dict(r.get("data", {}), path=data_path)
    t = r.setdefault("train", {})
    t.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    t.update(steps=args.steps, val_crops=args.eval_crops, eval_every=args.eval_every or max(1, args.steps // 10),
             max_minutes=0.0)
    return r


def check_shared(recipes: dict[str, dict]):
    from wavelm.train import configs_from_recipe

    seen = {}
    for name, r in recipes.items():
        try:
            cfg = configs_from_recipe(without_study(r))[1]
        except ValueError as e:
            die(f"{name}: {e}")
        seen[name] = tuple(getattr(cfg, k) for k in SHARED)
    if len(set(seen.values())) > 1:
        rows = "; ".join(f"{n}: {dict(zip(SHARED, v))}" for n, v in seen.items())
        die(f"the configs disagree on shared settings ({rows}); set them with flags, e.g. --batch-size 2")


def without_study(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k != "study"}


def whole_splits(recipe: dict) -> bool:
    """Whether the config is scored on the whole val and test splits (else on the val crops alone)."""
    return recipe.get("study", {}).get("whole_splits", True)


def machine() -> str:
    from wavelm.hardware import machine as m

    return m() + f", {platform.python_version()}"


# ----------------------------------------------------------------------------- one run

def curve(run: Path, tokens_per_step: int) -> list[list[float]]:
    out = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(ln)
        if rec.get("event") == "val":
            out.append([rec["step"] * tokens_per_step, rec["val_bits"]])
    return out


def throughput(run: Path) -> float | None:
    rates = [json.loads(ln).get("tokens_per_s") for ln in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    return len(rates) / sum(1 / r for r in rates) if rates else None


def split_bits(model, cache, split: str, max_files: int | None) -> float | None:
    from wavelm.scoring import _Stream
    from wavelm.model.lm import inference

    from wavelm.quality import spread

    files = spread(cache.files(split), max_files)
    total = count = 0
    t0 = time.monotonic()
    with inference(model, 1):
        for f in files:
            s = _Stream(model, keep_per_sample=False)
            t = cache.tokens(f["index"])
            for i in range(0, len(t), 32768):
                s.feed(t[i:i + 32768])
            total, count = total + s.total_bits, count + s.n
    bits = total / count if count else None
    log.info("scored %s: %d files, %.1f M samples in %.1f min: %s bits/sample", split, len(files), count / 1e6,
             (time.monotonic() - t0) / 60, f"{bits:.4f}" if bits is not None else "-")
    return bits


def saved_split_bits(run: Path, net, cache, split: str, max_files: int | None, best_step: int,
                     run_key: str) -> float | None:
    """split_bits, saved in RUN/scores.json as soon as each split is scored: a study killed while
    scoring test resumes without scoring val again. Keyed by split, best step and file limit; a
    file written for other run settings (another run key) is not read."""
    from wavelm.files import atomic_write_text

    p, key = run / "scores.json", f"{split}@{best_step}/{max_files or 'all'}"
    saved = json.loads(p.read_text()) if p.is_file() else {}
    if saved.get("run_key") != run_key:
        saved = {"run_key": run_key, "bits": {}}
    if key not in saved["bits"]:
        saved["bits"][key] = split_bits(net, cache, split, max_files)
        atomic_write_text(p, json.dumps(saved, indent=1) + "\n")
    else:
        log.info("%s: scored before (%s)", split, p)
    return saved["bits"][key]


def run_one(config: str, seed: int, recipe: dict, cache_path: str, run: str, key: str, out: str, results: str,
            max_files: int | None):
    """In a spawned process: train (or resume) one run, score it, append its result line."""
    from wavelm.model.lm import load_model
    from wavelm.data.folder import TokenCache
    from wavelm.train import configs_from_recipe, train
    from wavelm.train.distributed import device_for

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {config}/seed{seed}: %(message)s", datefmt="%H:%M:%S")
    run = Path(run)
    recipe = json.loads(json.dumps(recipe))
    recipe["train"]["seed"] = seed
    whole = whole_splits(recipe)
    model_cfg, cfg, data_cfg = configs_from_recipe(without_study(recipe))
    resume = (run / "last").is_dir()
    if resume:
        log.info("resuming from %s", run / "last")
    t0 = time.monotonic()
    res = train(cfg, model_cfg, cache_path, run, resume=resume, overwrite=not resume, data_cfg=data_cfg,
                progress=False)
    cache = TokenCache(cache_path)
    net = load_model(run / "best").to(device_for(cfg, 0, 1)).eval()    # scored where it trained
    tps = cfg.batch_size * cfg.seq_len * cfg.accum
    row = {"kind": "run", "config": config, "seed": seed, "run": str(run.relative_to(out)), "key": key,
           "arch": model_cfg.arch_name, "pool": model_cfg.pool, "params": res["params"], "steps": res["step"],
           "tokens_seen": res["step"] * tps, "best_step": res["best_step"], "val_crop_bits": res["best_val_bits"],
           "val_bits": saved_split_bits(run, net, cache, "val", max_files, res["best_step"], key) if whole else None,
           "test_bits": saved_split_bits(run, net, cache, "test", max_files, res["best_step"], key) if whole else None,
           # the held-out split (a piano never trained on), where the data has one
           "unseen_bits": saved_split_bits(run, net, cache, "unseen", max_files, res["best_step"], key)
           if whole and cache.files("unseen") else None,
           "eval_files": max_files, "tokens_per_s": throughput(run), "minutes": (time.monotonic() - t0) / 60,
           "resumed": resume, "curve": curve(run, tps), "model": model_cfg.to_dict(), "train": cfg.to_dict()}
    append_result(Path(results), row)
    log.info("val crops %.4f, val %.4f, test %.4f bits/sample", row["val_crop_bits"],
             row["val_bits"] or float("nan"), row["test_bits"] or float("nan"))


def bench_one(config: str, recipe: dict, results: str):
    """In a spawned process: training tokens/s (median of 5 steps) and decoding samples/s."""
    import numpy as np
    import torch

    from wavelm.generation import start
    from wavelm.model.lm import WaveLM, inference
    from wavelm.train import configs_from_recipe, forward_backward, make_optimizer

    model_cfg, cfg, _ = configs_from_recipe(without_study(recipe))
    torch.set_num_threads(cfg.threads or 1)
    torch.manual_seed(0)
    net = WaveLM(model_cfg)
    opt, _ = make_optimizer(net, cfg, "cpu")
    x = torch.randint(0, 256, (cfg.batch_size, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    times = []
    for k in range(7):
        t = time.perf_counter()
        loss, _ = forward_backward(net, [(x[:, :-1], x[:, 1:])], cfg, torch.device("cpu"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    train_tps = cfg.batch_size * cfg.seq_len / statistics.median(times[2:])
    rates = []
    with inference(net, 1):
        dec = start(net, 1, seed=0)
        dec.run(2000)
        for _ in range(3):
            t = time.perf_counter()
            dec.run(16000)
            rates.append(16000 / (time.perf_counter() - t))
    append_result(Path(results), {"kind": "speed", "config": config, "arch": model_cfg.arch_name,
                                  "params": net.num_parameters(), "train_tokens_per_s": train_tps,
                                  "decode_samples_per_s": float(np.median(rates)), "decoder": dec.name,
                                  "machine": machine(), "loadavg": os.getloadavg()[0]})


# ----------------------------------------------------------------------------- table and plot

def summarize(rows: list[dict]) -> list[dict]:
    """One row per config: stats (mean, min, max) over seeds, a `pooled` line counting as its
    seeds; configs with whole-split scores first, by mean val bits, then the crops-only ones by
    mean val-crop bits."""
    by, pooled = {}, {}
    for r in rows:
        if r["kind"] in ("run", "pooled"):
            (by if r["kind"] == "run" else pooled).setdefault(r["config"], []).append(r)
    speed = {r["config"]: r for r in rows if r["kind"] == "speed"}
    out = []
    for name in {**by, **pooled, **speed}:   # a config benched but not trained yet has a row with its speeds
        rs, ps, s = by.get(name, []), pooled.get(name, []), speed.get(name, {})
        first = (rs + ps + [s])[0]

        def stats(k):
            parts = [(v, v, v, 1) for v in (r[k] for r in rs) if v is not None]
            parts += [(*p[k], len(p["seeds"])) for p in ps if p.get(k)]     # (mean, min, max, seeds)
            if not parts:
                return None
            n = sum(q[3] for q in parts)
            return sum(q[0] * q[3] for q in parts) / n, min(q[1] for q in parts), max(q[2] for q in parts)
        out.append({"config": name, "arch": first.get("arch", "-"), "params": first.get("params"),
                    "seeds": len(rs) + sum(len(p["seeds"]) for p in ps), "tokens": first.get("tokens_seen"),
                    "crops": stats("val_crop_bits"), "val": stats("val_bits"), "test": stats("test_bits"),
                    "unseen": stats("unseen_bits"),
                    "train_tps": s.get("train_tokens_per_s"), "decode_sps": s.get("decode_samples_per_s")})
    return sorted(out, key=lambda r: (r["val"] is None, r["crops"] is None, (r["val"] or r["crops"] or (99,))[0]))


def table(rows: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{v[0]:.3f} ({v[1]:.3f}..{v[2]:.3f})"

    def n(v, f=",.0f"):
        return "-" if v is None else format(v, f)

    def millions(v, digits):
        return "-" if v is None else f"{v / 1e6:.{digits}f}M"

    head = ["config", "blocks", "params", "tokens seen", "seeds", "val crops, mean (min..max)",
            "val bits, mean (min..max)", "test bits, mean (min..max)", "unseen bits, mean (min..max)",
            "train tok/s", "decode samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summarize(rows):
        lines.append("| " + " | ".join([r["config"], r["arch"], millions(r["params"], 2), millions(r["tokens"], 1),
                                        str(r["seeds"]), ms(r["crops"]), ms(r["val"]), ms(r["test"]), ms(r["unseen"]),
                                        n(r["train_tps"]), n(r["decode_sps"])]) + " |")
    return "\n".join(lines)


# (paper, what it says, the config it favours, the config it is said to beat)
CLAIMS = [
    ("Conformer-LLM", "convolution modules between decoder layers beat the Transformer",
     "conformer_llm_small", "transformer"),
    ("Conformer-LLM", "the large convolution module beats the Transformer", "conformer_llm_large", "transformer"),
    ("Conformer", "a convolution module inside each block beats the Transformer", "conformer", "transformer"),
    ("CAT", "convolutions on Q, K and V beat plain attention", "cat", "transformer"),
    ("ConvSamba", "gated dilated convolution beats attention (the Transformer)", "conv", "transformer"),
    ("ConvSamba", "gated dilated convolution beats attention (the Conformer)", "conv", "conformer"),
    ("wavelm", "conv at the two fast rates, Conformer inner, beats the all-Conformer stack", "hybrid", "conformer"),
    ("wavelm", "conv at the two fast rates, Conformer inner, beats the all-conv stack", "hybrid", "conv"),
    ("SaShiMi", "multi-rate stages beat one flat stack at the sample rate", "conformer", "conformer_flat"),
    ("LPCNet", "an adaptive LPC path (features + gated log-prior) beats the same model without it",
     "piano_lpc", "piano"),
    ("LPCNet", "with the LPC path a narrower 16 kHz stage still beats the full model without it",
     "piano_lpc_narrow", "piano"),
]


def verdict(a: dict, b: dict) -> tuple[str, str]:
    """Config a vs config b on whole-split val bits (val crops where either lacks them): a wins when
    its worst seed beats b's best seed, loses the other way round; else not resolved."""
    k = "val" if a["val"] and b["val"] else "crops"
    (ma, lo_a, hi_a), (mb, lo_b, hi_b) = a[k], b[k]
    if a["seeds"] < 2 or b["seeds"] < 2:
        word = "not resolved (one seed)"
    elif hi_a < lo_b:
        word = "confirmed"
    elif hi_b < lo_a:
        word = "refuted"
    else:
        word = "not resolved (seed ranges overlap)"
    name = "val" if k == "val" else "val crops"
    return word, (f"{name} {ma:.3f} ({lo_a:.3f}..{hi_a:.3f}) vs {mb:.3f} ({lo_b:.3f}..{hi_b:.3f}), "
                  f"difference {mb - ma:+.3f}")


def reading(rows: list[dict]) -> str:
    """Each paper's claim whose two configs are in the study: confirmed, refuted or not resolved."""
    by = {r["config"]: r for r in summarize(rows) if r["seeds"]}
    lines = []
    for paper, says, a, b in CLAIMS:
        if a in by and b in by:
            word, why = verdict(by[a], by[b])
            lines.append(f"- {paper}: {says} (`{a}` vs `{b}`): **{word}**; {why}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from wavelm.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by = {}
    for r in rows:
        if r["kind"] == "run" and r["curve"]:
            by.setdefault(r["config"], []).append((r["seed"], np.array(r["curve"])))
    late, color = [], {}
    for name, runs in sorted(by.items()):
        seeds, cs = ",".join(str(s) for s, _ in runs), [c for _, c in runs]
        n = min(len(c) for c in cs)
        bits = np.array([c[:n, 1] for c in cs])
        x = cs[0][:n, 0] / 1e6
        line, = ax.plot(x, bits.mean(0), marker=".", label=f"{name} (seed{'s' * (len(cs) > 1)} {seeds})")
        color[name] = line.get_color()
        if len(cs) > 1:                                    # the spread between seeds
            ax.fill_between(x, bits.min(0), bits.max(0), color=line.get_color(), alpha=0.2, lw=0)
        late.append(bits[:, n // 5:])
    pooled = sorted((r for r in rows if r["kind"] == "pooled" and r["val_crop_bits"]), key=lambda r: r["config"])
    for i, p in enumerate(pooled):                         # pooled runs: their end points (the curves are gone),
        m, lo, hi = p["val_crop_bits"]                    # spread a little along x so that the bars do not hide
        seeds = ",".join(map(str, p["seeds"]))            # one another
        x = p["tokens_seen"] / 1e6 * (1 + 0.012 * (i - (len(pooled) - 1) / 2))
        ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="s", ms=4, capsize=3,
                    color=color.get(p["config"]), label=f"{p['config']} (seeds {seeds}: end point)")
        late.append(np.array([lo, hi]))
    if late:                                               # the early, steep evaluations run off the top
        lo, hi = min(b.min() for b in late), max(b.max() for b in late)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("validation bits/sample (fixed crops)")
    ax.set_title("lines: mean over the seeds named, band min..max" + ("; squares: end points of pooled "
                                                                      "runs (curves lost)" if pooled else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (args.out or args.results and (args.table or args.plot)):
        die("--out is needed (or --results, with --table or --plot)")
    out = Path(args.out).expanduser().resolve() if args.out else None
    results = Path(args.results).expanduser().resolve() if args.results else out / "results.jsonl"
    if args.table or args.plot:
        rows = read_results(results)
        if not rows:
            die(f"{results}: no results yet")
        if args.plot:
            plot(rows, args.plot)
            print(f"wrote {args.plot}")
        if args.table:
            print(table(rows))
            print("\n" + reading(rows))
        return 0
    if not (args.data and args.configs and args.steps and out):
        die("training needs --out, --data, --configs and --steps")
    if args.steps < 1 or args.best_seeds < 0:
        die("--steps must be >= 1 and --best-seeds >= 0")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        die(f"--seeds: comma-separated integers, got {args.seeds!r}")
    from wavelm.files import OutputError, check_output, check_output_dir
    from wavelm.train import DataConfig, open_data

    try:                # before any training: a run's result line must have somewhere to go
        check_output_dir(out)
        check_output(results)
    except OutputError as e:
        die(str(e))
    out.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(c) for c in args.configs]
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        die(f"config names (file stems) must differ: {names}")
    for p in paths:
        if not p.is_file():
            die(f"{p}: no such config")
    cache = open_data(args.data, out, DataConfig(path=args.data))
    cache_path, data = str(Path(cache.path).resolve()), data_id(cache)
    recipes = {n: load_recipe(p, args, cache_path) for n, p in zip(names, paths)}
    check_shared(recipes)
    ctx = mp.get_context("spawn")
    trained = 0

    def spawn(target, args_, failed: str, hint: str = ""):
        """One run or bench in its own process (a clean torch and thread setup each); a failure stops the study."""
        proc = ctx.Process(target=target, args=args_)
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            die(f"{failed} (exit code {proc.exitcode}){hint}")

    def run_all(plan):
        nonlocal trained
        for name, seed in plan:
            key = run_key(recipes[name], seed, args.eval_max_files, data)
            run = out / name / f"seed{seed}"
            done = done_keys(read_results(results), name, seed)
            if done and done[0] == key:
                continue
            if done:
                die(f"{name} seed {seed} in {results} was made with other settings; "
                    "use another --results and --out")
            if args.max_runs is not None and trained >= args.max_runs:
                log.info("--max-runs %d reached; run again to continue", args.max_runs)
                return False
            log.info("%s seed %d", name, seed)
            spawn(run_one, (name, seed, recipes[name], cache_path, str(run), key, str(out), str(results),
                            args.eval_max_files),
                  f"{name} seed {seed} failed", "; rerun to resume it")
            trained += 1
        return True

    if args.bench:   # first, so no run of this study shares the machine with it; once per config
        have = {r["config"] for r in read_results(results) if r["kind"] == "speed"}
        for name in names:
            if name not in have:
                log.info("%s: bench", name)
                spawn(bench_one, (name, recipes[name], str(results)), f"{name}: bench failed")
    # whole-split configs first (seeds, then the best two's extra seeds), crops-only ones last
    whole = [n for n in names if whole_splits(recipes[n])]
    if not run_all([(n, s) for s in seeds for n in whole]):
        return 0
    best = [r["config"] for r in summarize(read_results(results)) if r["config"] in whole and r["val"]][:2]
    extra = [s for s in range(max(seeds) + 1, max(seeds) + 1 + args.best_seeds - len(seeds))]
    if not run_all([(n, s) for s in extra for n in best]):
        return 0
    if not run_all([(n, s) for s in seeds for n in names if n not in whole]):
        return 0
    print(f"\n{len(names)} configs, {args.steps} steps each, on {cache_path}; {machine()}\n")
    rows = read_results(results)
    print(table(rows))
    print("\n" + reading(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
