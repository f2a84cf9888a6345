"""Package a run trained on recipes/piano as wavelm's bundled model, with a measured model card.

    # the candidate as it would ship (float16), measured beside the bundle, the ship rule (rule 3,
    # docs/bundled_model.md: whole test and unseen splits, 9 clips and continuations of test, seeds 300-308):
    .venv/bin/python recipes/piano/bundle.py runs/piano6 --best runs/piano6/steps/N --out runs/cand --copy-only
    wavelm bench quality --checkpoint runs/cand --clips 9 --seed 300 --json runs/cand/quality.json
    wavelm bench quality --clips 9 --seed 300 --json runs/quality_bundle.json        # the same flags
    .venv/bin/python recipes/piano/ship.py runs/quality_bundle.json runs/cand/quality.json
    # it ships: copy, measure what the report lacks (Bach-piano test, speed), write the card
    .venv/bin/python recipes/piano/bundle.py runs/piano6 --quality runs/cand/quality.json \\
        --quality-is-shipped --quality-old runs/quality_bundle.json \\
        --replaces wavelm/pretrained/config.json --command "..."   # (--best runs/piano6/steps/N)

Copies RUN/best into wavelm/pretrained/ as float16 (every number is measured on the model as
shipped, after that rounding) and measures, saving each result in RUN/bundle_scores.json so a
rerun skips what is done: bits/sample on the whole test and unseen-piano splits of the corpus
cache, on the whole recipes/bach_piano test split (comparable with earlier bundled models), and
generation speed with the fast decoder at batch 1. The card (wavelm/pretrained/README.md) adds
the training log, the exact command, and the `wavelm bench quality` tables of this model and
the previous one side by side. A run that continued an earlier bundled model (`wavelm train
--init`) passes that model's config.json as `--previous`: the card then lists every training
round (steps, tokens, minutes, precision, command) and compares with the previous model; a run
that continued a checkpoint of another run passes that checkpoint as `--init-from` (its run's log
up to that step becomes the first round, `--init-command` its command).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "recipes")]

import wavelm  # noqa: E402
from bach_piano.bundle import relative_paths  # noqa: E402
from wavelm.checkpoint import PRETRAINED_DIR  # noqa: E402
from wavelm.files import atomic_write_text  # noqa: E402
from wavelm.hardware import machine  # noqa: E402
from wavelm.quality import piano_of  # noqa: E402

COMMAND = ("wavelm train --data data/piano --config recipes/piano/train.toml --out runs/piano "
           "--max-minutes 120")    # round 1: the command of a run from random weights


def train_minutes(rows) -> float:
    """Minutes of training over all invocations of a run (elapsed_s restarts at each resume)."""
    total, last = 0.0, 0.0
    for r in rows:
        if r["elapsed_s"] < last:
            total += last
        last = r["elapsed_s"]
    return (total + last) / 60


def this_round(meta, rows, command, bf16_here) -> dict:
    """The run's round: steps, tokens, minutes, and the machines and precision its invocations
    logged (`start` events; a run from before they were logged is taken as trained here)."""
    tr = meta.get("train", {})
    train_rows = [r for r in rows if r.get("event") == "train"]
    starts = [r for r in rows if r.get("event") == "start"]
    prec = list(dict.fromkeys("bf16 autocast" if r["bf16"] else "float32" for r in starts))
    return {"steps": meta["step"], "tokens": meta["step"] * tr["batch_size"] * tr["seq_len"],
            "minutes": round(train_minutes(train_rows), 1), "lr": tr.get("lr"), "warmup": tr.get("warmup"),
            "tokens_per_s_median": round(float(np.median([r["tokens_per_s"] for r in train_rows]))),
            "precision": " then ".join(prec) or ("bf16 autocast" if bf16_here else "float32"),
            "hardware": " then ".join(dict.fromkeys(r["machine"] for r in starts)) or machine(),
            "input_noise": tr.get("input_noise", 0.0), "command": command}


def previous_rounds(prev: dict) -> list:
    """The training rounds of the model a run started from (a card without them is round 1)."""
    card = prev.get("card", {})
    if "rounds" in card:
        return card["rounds"]
    tr = prev.get("train", {})
    return [{"steps": prev["step"], "tokens": card["tokens"], "minutes": round(card["train_minutes"], 1),
             "lr": tr.get("lr"), "warmup": tr.get("warmup"), "tokens_per_s_median": round(card["train_tokens_per_s_median"]),
             "precision": "float32", "command": COMMAND}]


def bf16_of(run: Path) -> bool:
    """Whether the run's recipe trains in bf16 on this machine's CPU (for logs without `start` events)."""
    from wavelm.train import TrainConfig, use_bf16
    return use_bf16("cpu", TrainConfig(**json.loads((run / "run.json").read_text())["train"]))


def log_rows(run: Path, step: int) -> list:
    """The run's log (RUN/metrics.jsonl) up to a checkpoint's step."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in rows if r.get("step", 0) <= step]


def run_rounds(ckpt: Path, command: str) -> list:
    """The round of the run a checkpoint (RUN/steps/N, RUN/best or RUN/last) belongs to, from its
    log up to the checkpoint's step: what `wavelm train --init CKPT` continued."""
    run = ckpt.parent.parent if ckpt.parent.name == "steps" else ckpt.parent
    meta = json.loads((ckpt / "config.json").read_text())
    return [this_round(meta, log_rows(run, meta["step"]), command, bf16_of(run))]


MEASURES = ("unseen", "test", "bach_piano_test", "generate")


def from_quality(q: dict) -> dict:
    """The whole-split scores of a `bench quality` report that scored every file (no
    --max-files) of the model as shipped: the card's test and unseen rows without scoring twice."""
    if q.get("max_files", 0) is not None:
        return {}
    return {split: {"bits_per_sample": sc["bits_per_sample"], "num_samples": sc["samples"], "files": sc["files"],
                    "per_piano": sc["per_piano"], "from": "wavelm bench quality"}
            for split, sc in q["score"].items() if split in ("test", "unseen")}


def saved_scores(run: Path, step: int) -> dict:
    """The measurements saved in RUN/bundle_scores*.json for the checkpoint of `step` (a file
    of another checkpoint of the run is ignored)."""
    m = {}
    for p in sorted(run.glob("bundle_scores*.json")):
        d = json.loads(p.read_text())
        if d.pop("step", None) == step:
            m.update(d)
    return m


def measure(model, run: Path, cache: Path, bach: Path, step: int, only=MEASURES, known: dict | None = None) -> dict:
    """The measurements in `only` of the checkpoint of `step`, each saved in
    RUN/bundle_scores[-<first of only>].json as soon as it is done (two processes may split the
    work: --only unseen / --only test,...); `known` ones (from_quality) are saved, not measured
    again; a file of another step is started again."""
    from wavelm.scoring import score, score_split

    path = run / ("bundle_scores.json" if tuple(only) == MEASURES else f"bundle_scores-{only[0]}.json")
    done = json.loads(path.read_text()) if path.is_file() else {}
    if done.get("step") != step:
        done = {"step": step}
    done.update({k: v for k, v in (known or {}).items() if k in only and k not in done})
    atomic_write_text(path, json.dumps(done, indent=1) + "\n")

    def keep(key, fn):
        if key in only and key not in done:
            t0 = time.perf_counter()
            done[key] = fn()
            done[key]["wall_s"] = round(time.perf_counter() - t0, 1)
            atomic_write_text(path, json.dumps(done, indent=1) + "\n")
            print(f"{key}: {done[key]}", flush=True)

    for split in ("unseen", "test"):
        def split_bits(split=split):
            s = score_split(model, cache, split)
            per = {}
            for f in s.files:
                pi = piano_of(f.path)
                a = per.setdefault(pi, [0.0, 0])
                a[0] += f.total_bits
                a[1] += f.num_samples
            return {"bits_per_sample": s.bits_per_sample, "num_samples": s.num_samples, "files": len(s.files),
                    "per_piano": {k: v[0] / v[1] for k, v in sorted(per.items())}}
        keep(split, split_bits)

    def bach_bits():  # each file one stream from a zero state, as `wavelm score` does
        files = sorted(bach.glob("*.wav"))
        rs = [score(model, f, keep_per_sample=False) for f in files]
        n = sum(r.num_samples for r in rs)
        return {"bits_per_sample": sum(r.total_bits for r in rs) / n, "num_samples": n, "files": len(rs)}
    if bach.is_dir():
        keep("bach_piano_test", bach_bits)

    def speed():
        wavelm.generate(model, seconds=0.1, seed=1)           # the numba compile is not timed
        rates = []
        for s in range(3):
            t0 = time.perf_counter()
            a = wavelm.generate(model, seconds=10, seed=s)
            rates.append(a.shape[1] / (time.perf_counter() - t0))
        from wavelm.generation import start
        return {"samples_per_s_median": float(np.median(rates)), "runs": [round(r) for r in rates],
                "decoder": start(model, 1).name}
    keep("generate", speed)
    return done


def own_sampling(q: dict) -> dict:
    """The sampling options a `bench quality` report used beyond the defaults: the model ships
    with them (config.json "sampling", wavelm.generation.model_sampling)."""
    return {k: v for k, v in q.get("sampling", {}).items() if not (k == "temperature" and v == 1.0)}


def sampling_text(q: dict) -> str:
    """The sampling a `bench quality` report used, as flags ("temperature 1" when plain)."""
    from wavelm.decode.sampling import _shown

    return " ".join(f"`--{k.replace('_', '-')} {_shown(v)}`" for k, v in own_sampling(q).items()) or "temperature 1"


def quality_rows(q: dict | None, q_old: dict | None) -> str:
    if not q:
        return "(run `wavelm bench quality` and pass --quality)"
    keys = [("loudest / quietest second", "loudness_ratio", "{:.1f}x"), ("onsets per second", "onsets_per_s", "{:.2f}"),
            ("harmonic share (HPSS)", "harmonic_share", "{:.3f}"), ("chroma top-7 share", "chroma_top7", "{:.3f}"),
            ("chroma change per 0.5 s (harmony moving; a drone ~0)", "chroma_change", "{:.3f}"),
            ("median spectral flatness", "flatness", "{:.1e}"), ("spectral centroid (Hz)", "centroid_hz", "{:.0f}"),
            ("strongest pitches, overlap between clips", "pitch_overlap", "{:.2f}"),
            ("model's own bits/sample on the clip", "model_bits", "{:.3f}")]
    s, so = q["summary"], (q_old or {}).get("summary")
    head = (f"| measure (median of {q['clips']} clips x {q['seconds']:g} s; this model {sampling_text(q)}, "
            f"previous {sampling_text(q_old) if q_old and 'sampling' in q_old else 'temperature 1'}) "
            "| real excerpts (through the 8-bit codec) | this model | previous model |")
    lines = [head, "|---|---|---|---|"]
    for label, k, f in keys:
        old = f.format(so["generated"][k]) if so and so["generated"].get(k) is not None else "-"
        if k in s["real"]:
            lines.append(f"| {label} | {f.format(s['real'][k])} | {f.format(s['generated'][k])} | {old} |")
    c, co = s.get("continuation", {}), (so or {}).get("continuation", {})
    if c:
        lines.append(f"| continuation, first 1 s: flatness / the real one's | 1x | {c['flatness_ratio']:.1f}x | "
                     f"{co.get('flatness_ratio', float('nan')):.1f}x |")
        lines.append(f"| continuation, first 1 s: harmonic share below the real one's | 0 | {c['harmonic_gap']:+.3f} | "
                     f"{co.get('harmonic_gap', float('nan')):+.3f} |")
    return "\n".join(lines)


def targets(m: dict, q: dict | None, base: dict) -> str:
    """The bundled model's targets, each with its measured value: met or missed, and by how much."""
    rows = []

    def row(what, ok, measured):
        rows.append(f"- {'met' if ok else 'missed'}: {what} ({measured})")
    for key, name in (("test", "piano corpus test"), ("unseen", "unseen piano"), ("bach_piano_test", "Bach-piano test")):
        if key in m and key in base:
            b, a = m[key]["bits_per_sample"], base[key]["alpc"]
            row(f"{name} below the adaptive LPC's {a:.3f} (no trained parameters)", b < a, f"{b:.3f}, {b - a:+.3f}")
    if "generate" in m:
        g = m["generate"]["samples_per_s_median"]
        row(">= 32,000 samples/s at batch 1 with the sampling it ships with", g >= 32000, f"{g:,.0f}")
    if q:
        s = q["summary"]
        gen, real = s["generated"], s["real"]
        row("loudest / quietest second >= 5x", gen["loudness_ratio"] >= 5, f"{gen['loudness_ratio']:.1f}x")
        row("harmonic share >= 0.90", gen["harmonic_share"] >= 0.9, f"{gen['harmonic_share']:.3f}")
        row("chroma top-7 share >= 0.75", gen["chroma_top7"] >= 0.75, f"{gen['chroma_top7']:.3f}")
        r = gen["flatness"] / real["flatness"]
        row("median flatness within 3x of the data's", r <= 3, f"{r:.1f}x")
        row("strongest pitches differ between seeds", bool(s.get("generated_pitches_differ")),
            f"overlap {gen.get('pitch_overlap', float('nan')):.2f}, real excerpts {real.get('pitch_overlap', float('nan')):.2f}")
        c = s.get("continuation", {})
        if c:
            row("continuations keep their notes (flatness within 3x, harmonic share within 0.05)",
                c["flatness_ratio"] <= 3 and c["harmonic_gap"] <= 0.05,
                f"{c['flatness_ratio']:.1f}x, {c['harmonic_gap']:+.3f}")
    return "\n".join(rows)


def baselines(corpus: Path, bach: Path) -> dict:
    """The classical baselines of the splits the card scores ({split: {"lpc", "alpc"}}): the
    16-tap linear predictor and the adaptive LPC (order 64, window 2,048, refit every 64), from
    each corpus's baselines.json (`recipes/bach_piano/baselines.py`)."""
    out = {}
    for path, splits in ((corpus / "baselines.json", {"test": "test", "unseen": "unseen", "val": "val"}),
                         (bach.parent / "baselines.json", {"test": "bach_piano_test"})):
        if path.is_file():
            res = json.loads(path.read_text())["results"]
            out.update({key: {"lpc": res[sp]["lpc"], "alpc": res[sp]["alpc64_2048_64"]}
                        for sp, key in splits.items() if sp in res})
    return out


OLD_HARDWARE = "2-vCPU AMD EPYC VM, CPU only, 1 torch thread"  # rounds trained before `start` events


def hardware(rounds) -> str:
    """The machines of the training rounds, each with the rounds it ran."""
    hw = [r.get("hardware", OLD_HARDWARE) for r in rounds]
    if len(set(hw)) == 1:
        return hw[0]
    return "; ".join(f"round {', '.join(str(i + 1) for i, x in enumerate(hw) if x == h)}: {h}"
                     for h in dict.fromkeys(hw))


def rounds_text(rounds) -> str:
    return "; ".join(f"{f'round {i + 1}: ' if len(rounds) > 1 else ''}{r['steps']} steps to its checkpoint, {r['tokens'] / 1e6:.0f} M tokens, {r['minutes']:.0f} min, "
                     f"peak lr {r['lr']}, {r['precision']}"
                     f"{', input noise up to %g mu-law steps' % r['input_noise'] if r.get('input_noise') else ''}"
                     f"{' from random weights' if i == 0 else ' from round ' + str(i) + ' weights'}"
                     for i, r in enumerate(rounds))


def model_card(model, meta, m: dict, q, q_old, base: dict) -> str:
    cfg, tr = model.config, meta.get("train", {})
    stages = ", ".join(f"{a} {n}x d{d}{f' w{w}' if a != 'conv' else ''} @{16000 / h / 1000:g} kHz" for a, n, d, w, h in
                       zip(cfg.stage_archs, cfg.stage_layers, cfg.stage_dims, cfg.stage_windows, cfg.hop))
    card = meta["card"]
    fmt = (lambda k: f"{m[k]['bits_per_sample']:.3f}" if k in m else "not measured")
    prv = card.get("previous_scores", {})
    was = (lambda k, dflt: f"{prv[k]['bits_per_sample']:.3f}" if k in prv else dflt)  # noqa: E731
    pp = lambda k: ", ".join(f"`{p}` {v:.3f}" for p, v in m.get(k, {}).get("per_piano", {}).items())  # noqa: E731
    g = m.get("generate", {})
    bl = (lambda k: f"16-tap linear predictor {base[k]['lpc']:.3f}, adaptive LPC {base[k]['alpc']:.3f}"  # noqa: E731
          if k in base else "baselines not measured")
    lpc = (f"; an LPC path (order {cfg.lpc_order}, window {cfg.lpc_window}, refit every {cfg.lpc_hop}) predicts "
           "each sample from the past ones and the network corrects it" if getattr(cfg, "lpc_order", 0) else "")
    return f"""# wavelm default model: {cfg.arch_name}, multi-rate, {card['parameters'] / 1e6:.2f} M parameters

Trained by the wavelm project with its own `wavelm train` on `recipes/piano`; packaged by
`recipes/piano/bundle.py`. Every number below was measured by the project on its own machine.

| | |
|---|---|
| data | `recipes/piano`: 805 movements of the music21 corpus (Bach, Palestrina, trecento, Monteverdi, Beethoven, Haydn, Mozart, Schumann, ...) on five GM piano sounds (TimGM6mb 0-1, MuseScore General 0-2) with varied dynamics, tempo, level and reverb; 20.96 h train, 1.01 h val, 0.82 h test; FluidR3's grand held out as the unseen piano (0.82 h) |
| tokens | 8-bit mu-law (mu = 255, torchaudio's formula), 16 kHz |
| arch | `{cfg.arch_name}`, pool {cfg.pool}: {stages}; attention reach {cfg.context_seconds:.2f} s at {cfg.sample_rate / cfg.hop[-1]:g} Hz with a KV ring; receptive field {model.receptive_field():,} samples{lpc} |
| parameters | {card['parameters']:,} (stored as float16: {card['parameters'] * 2 / 2**20:.1f} MB; run in float32) |
| training | {card['tokens'] / 1e6:.0f} M tokens ({card['tokens'] / 16000 / 3600 / 20.96:.2f} epochs) in {card['train_minutes']:.0f} min, batches of {tr.get('batch_size')} x {tr.get('seq_len')} samples, AdamW, linear warm-up then cosine to 10%; {rounds_text(card['rounds'])}; the checkpoint of the last round's step {meta['step']}{'' if meta['step'] == meta.get('best_step') else f" (kept with --keep-every; the lowest val bits were at step {meta.get('best_step')})"} |
| command | {'; then '.join(f"`{r['command']}`" for r in card['rounds'])} |
| hardware | {hardware(card['rounds'])}, shared with the project's other jobs (median tokens/s per round: {', '.join(f"{r['tokens_per_s_median']:,}" for r in card['rounds'])}) |
| **test bits/sample** | **{fmt('test')}** (whole test split, {m.get('test', {}).get('num_samples', 0):,} samples; per piano {pp('test')}); {bl('test')}, previous bundled model {was('test', 'not measured')} |
| **unseen piano** | **{fmt('unseen')}** (whole split, FluidR3 GM grand, never trained on); {bl('unseen')}, previous bundled model {card.get('old_unseen', 'not measured')} |
| val bits/sample | {card['best_val_crops']:.3f} on the trainer's 32 fixed val crops of 32,768 samples (the whole val split is not scored here); on the whole split {bl('val')} |
| Bach-piano test split | {fmt('bach_piano_test')} (`recipes/bach_piano` test, {m.get('bach_piano_test', {}).get('num_samples', 0):,} samples; previous bundled model {was('bach_piano_test', 'not measured')}, the conv bundle trained on that soundfont 3.156; {bl('bach_piano_test')}) |
| sampling | {sampling_text(q) if q else 'temperature 1'} by default (config.json "sampling"; any flag overrides it), chosen by measurement: docs/bundled_model.md |
| generation | {g.get('samples_per_s_median', 0):,.0f} samples/s at batch 1 ({g.get('samples_per_s_median', 0) / 16000:.2f}x real time), {g.get('decoder', '?')} decoder, this machine, 1 thread |

## What it sounds like (`wavelm bench quality`: {(q or {}).get('clips', 3)} clips of {(q or {}).get('seconds', 30):g} s from silence vs {(q or {}).get('clips', 3)} real test excerpts)

{quality_rows(q, q_old)}

Real excerpts are measured after the 8-bit mu-law round trip, the best any model of these tokens
can sound (docs/design.md, "Listening proxies"); the raw renders' median flatness is
{(q or {}).get('summary', {}).get('real', {}).get('flatness_raw', float('nan')):.1e}.

![real (top) vs generated (bottom)](../../docs/quality.png)

## Targets, met and missed

{targets(m, q, base)}

## Limits

Trained for {card['train_minutes']:.0f} minutes of one CPU core in all ({card['tokens'] / 16000 / 3600 / 20.96:.2f} of an epoch of the corpus). The corpus is
synthetic (sampled GM pianos, MIDI timing), so these bits are not comparable with recorded-piano
(YouTubeMix) numbers. Licences: the compositions are public domain (bar two Schoenberg pieces and
one by Webern in the corpus); music21's corpus encodings are distributed with the encoders'
permission (some may restrict commercial use); TimGM6mb is GPL-2, MuseScore General and FluidR3
are MIT.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache", type=Path, default=None, help="token cache (default RUN/cache)")
    ap.add_argument("--bach", type=Path, default=REPO / "data/bach_piano/test")
    ap.add_argument("--corpus", type=Path, default=REPO / "data/piano", help="the piano corpus (its baselines.json)")
    ap.add_argument("--out", type=Path, default=PRETRAINED_DIR)
    ap.add_argument("--card-only", action="store_true", help="rewrite the card from saved measurements")
    ap.add_argument("--only", default=",".join(MEASURES), help=f"measurements to make (default {','.join(MEASURES)})")
    ap.add_argument("--no-copy", action="store_true", help="measure the model already in --out")
    ap.add_argument("--best", type=Path, default=None,
                    help="the checkpoint to ship (default RUN/best; a copy of it while the run goes on)")
    ap.add_argument("--copy-only", action="store_true", help="copy RUN/best into --out as float16 and stop")
    ap.add_argument("--quality", type=Path, default=None)
    ap.add_argument("--quality-old", type=Path, default=None)
    ap.add_argument("--quality-is-shipped", action="store_true",
                    help="--quality was measured on the model as shipped (float16 in --out): take its "
                         "whole-split test and unseen scores instead of scoring them again")
    ap.add_argument("--old-unseen", type=Path, default=None, help="`wavelm score --json` of the old model")
    ap.add_argument("--previous", type=Path, default=None,
                    help="config.json of the bundled model this run started from (--init): rounds, comparison")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="the checkpoint of another run this run started from (`wavelm train --init`): its round")
    ap.add_argument("--init-command", default="", help="with --init-from: the command(s) of that run")
    ap.add_argument("--replaces", type=Path, default=None,
                    help="config.json of the bundled model this one replaces, from other weights: its "
                         "scores are compared, its rounds are not this model's (default: --previous)")
    ap.add_argument("--command", default=COMMAND, help="the exact command(s) of this run, for the card")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # read before --out is written (--replaces is often --out's own config.json)
    prev = json.loads(args.previous.read_text()) if args.previous else None
    old_model = json.loads(args.replaces.read_text()) if args.replaces else prev   # compared with
    src = args.best or args.run / "best"
    meta = json.loads((src / "config.json").read_text())
    q = json.loads(args.quality.read_text()) if args.quality else None
    shipped = args.out / "config.json"
    if q:   # the model ships with the sampling its card measured
        meta.pop("sampling", None)
        meta.update({"sampling": own} if (own := own_sampling(q)) else {})
    elif (args.card_only or args.no_copy) and shipped.is_file():      # the model in --out keeps its own
        meta.update({k: v for k, v in json.loads(shipped.read_text()).items() if k == "sampling"})
    if not (args.card_only or args.no_copy):
        from safetensors.torch import load_file, save_file

        args.out.mkdir(parents=True, exist_ok=True)
        sd = {k: v.to(torch.float16) for k, v in load_file(str(src / "model.safetensors")).items()}
        save_file(sd, str(args.out / "model.safetensors"), metadata={"format": "1"})
        atomic_write_text(args.out / "config.json", json.dumps(relative_paths(meta), indent=2) + "\n")
        if args.copy_only:
            print(f"wrote {args.out} (float16)")
            return
    model = wavelm.WaveLM.from_pretrained(args.out)
    if not args.card_only:
        measure(model, args.run, args.cache or args.run / "cache", args.bach, meta["step"],
                tuple(args.only.split(",")), known=from_quality(q) if q and args.quality_is_shipped else None)
    m = saved_scores(args.run, meta["step"])
    rows = log_rows(args.run, meta["step"])      # the log up to the shipped checkpoint
    bf16 = bf16_of(args.run)
    before = previous_rounds(prev) if prev else run_rounds(args.init_from, args.init_command) if args.init_from else []
    rounds = before + [this_round(meta, rows, args.command, bf16)]
    card = {"parameters": model.num_parameters(), "tokens": sum(r["tokens"] for r in rounds),
            "train_tokens_per_s_median": rounds[-1]["tokens_per_s_median"],
            "train_minutes": sum(r["minutes"] for r in rounds), "rounds": rounds,
            "val_curve": [[r["step"], round(r["val_bits"], 4)] for r in rows if r.get("event") == "val"],
            "best_val_crops": meta.get("val_bits"),       # the shipped step's (best/ or steps/<step>/)
            "scores": m, "previous_scores": (old_model or {}).get("card", {}).get("scores", {})}
    if args.old_unseen and args.old_unseen.is_file():
        card["old_unseen"] = f"{json.loads(args.old_unseen.read_text())['mean_bits_per_sample']:.3f}"
    elif old_model and "unseen" in old_model.get("card", {}).get("scores", {}):
        card["old_unseen"] = f"{old_model['card']['scores']['unseen']['bits_per_sample']:.3f}"
    q_old = json.loads(args.quality_old.read_text()) if args.quality_old else None
    if q_old is None and old_model and "quality" in old_model.get("card", {}):
        q_old = {"summary": old_model["card"]["quality"], "sampling": old_model.get("sampling", {})}
    if q:
        card["quality"] = q["summary"]
    meta["card"] = card
    meta = relative_paths(meta)
    atomic_write_text(args.out / "config.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(args.out / "README.md", model_card(model, meta, m, q, q_old, baselines(args.corpus, args.bach)))
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
