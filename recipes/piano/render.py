"""Render a multi-piano corpus from the music21 corpus: 16 kHz mono 16-bit WAVs, offline.

    bash recipes/piano/install.sh
    .venv/bin/python recipes/piano/render.py                               # -> data/piano
    .venv/bin/python recipes/piano/render.py --limit 30 --out /tmp/piano30 # quick subset

Music: the keyboard, string and vocal scores of many composers in the music21 corpus (Bach
chorales, Beethoven and Haydn quartets, Mozart, Schumann, Monteverdi madrigals, Palestrina
masses capped to --max-per-composer, trecento songs, ...), every part on a piano program.
Pianos: General-MIDI programs 0-2 of three soundfonts (TimGM6mb from pretty_midi, Debian's
MuseScore General and FluidR3 GM); FluidR3's grand (`fluid-0`) is never trained on: the test
pieces are rendered on it a second time into OUT/unseen/ (the unseen-piano split).
Performance, drawn per file from a seeded RNG: phrase dynamics (a slow random curve) plus
per-note velocity jitter, a tempo factor, an output level, reverb on or off.
Synthesis is FluidSynth's float output (`fluid_synth_write_float`), so there is no 16-bit
dither floor under the music; each file is peak-normalised to its drawn level, trimmed, and
written as 16-bit PCM (quantisation RMS ~1e-5, below the smallest mu-law step, 1.7e-4).

Split by piece (variants such as bwv248.23-2 / bwv248.23-s share a split). Output:
OUT/{train,val,test,unseen}/<piece>__<piano>.wav and OUT/datacard.json. Reruns skip files
already rendered with the same settings; the same options give the same bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.util
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bach_piano.render import SILENCE, _write_json, assign_splits, finish, rendered_frames  # noqa: E402
from bach_piano.render import list_scores as bach_list_scores  # noqa: E402

INSTALL = "bash recipes/piano/install.sh"
SPLITS = ("train", "val", "test", "unseen")
SF2 = Path("/usr/share/sounds/sf2")
# name -> (soundfont file, GM program, Debian package or None for pretty_midi's copy)
PIANOS = {
    "tim-0": ("TimGM6mb.sf2", 0, None),
    "tim-1": ("TimGM6mb.sf2", 1, None),
    "muse-0": ("MuseScore_General_Full.sf2", 0, "musescore-general-soundfont-lossless"),
    "muse-1": ("MuseScore_General_Full.sf2", 1, "musescore-general-soundfont-lossless"),
    "muse-2": ("MuseScore_General_Full.sf2", 2, "musescore-general-soundfont-lossless"),
    "fluid-0": ("FluidR3_GM.sf2", 0, "fluid-soundfont-gm"),
}
UNSEEN = "fluid-0"
TRAIN_PIANOS = tuple(p for p in PIANOS if p != UNSEEN)
# composers of the music21 corpus whose scores render (music21.corpus.getComposer names)
COMPOSERS = ("bach", "beethoven", "mozart", "haydn", "schumann_robert", "schumann_clara",
             "chopin", "joplin", "corelli", "cpebach", "handel", "schubert", "weber", "verdi",
             "beach", "monteverdi", "palestrina", "trecento", "ciconia", "luca", "lusitano",
             "johnson_j_r", "liliuokalani", "schoenberg", "webern")
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn")
# Palestrina alone has 1,318 mass movements (~30 h): keep evenly spaced ones
CAPS = {"palestrina": 200}


# ----------------------------------------------------------------------------- requirements

def soundfont(piano: str) -> Path:
    name = PIANOS[piano][0]
    if PIANOS[piano][2] is None:
        return Path(importlib.util.find_spec("pretty_midi").origin).parent / name
    return SF2 / name


def missing_requirement(pianos) -> str | None:
    """One line naming the first missing piece and how to install it, or None."""
    for mod, pkg in (("music21", "music21"), ("pretty_midi", "pretty_midi"), ("fluidsynth", "pyfluidsynth")):
        if importlib.util.find_spec(mod) is None:
            return f"missing Python package {pkg}; install with: {INSTALL}"
    try:
        import fluidsynth  # noqa: F401  (loads libfluidsynth)
    except (ImportError, OSError):
        return f"missing the FluidSynth library (Debian package libfluidsynth3); install with: {INSTALL}"
    for p in pianos:
        if not soundfont(p).is_file():
            pkg = PIANOS[p][2] or "pretty_midi (pip)"
            return f"missing the soundfont {soundfont(p)} of piano {p} (package {pkg}); install with: {INSTALL}"
    return None


# ----------------------------------------------------------------------------- the score list

def list_scores(max_per_composer: int | None = None) -> tuple[list[tuple[str, str]], list[dict]]:
    """[(name, path)] one per movement, composer by composer, natural-sorted within each;
    composers with more movements than their cap (CAPS, or `max_per_composer` for all) keep
    evenly spaced ones. Names are composer + the path inside the composer's folder."""
    from music21 import corpus
    from natsort import natsorted

    scores, excluded = [], []
    for comp in COMPOSERS:
        found: dict[str, list[Path]] = {}
        for p in map(Path, corpus.getComposer(comp)):
            if p.suffix.lower() not in SCORE_SUFFIXES:
                excluded.append({"name": f"{comp}/{p.name}", "reason": f"not a score ({p.suffix})"})
                continue
            inner = p.parts[p.parts.index(comp) + 1:] if comp in p.parts else (p.name,)
            found.setdefault("_".join((*inner[:-1], p.stem)), []).append(p)
        stems = natsorted(found)
        cap = min(x for x in (CAPS.get(comp), max_per_composer, len(stems)) if x is not None)
        if len(stems) > cap:
            keep = {stems[int(i * len(stems) / cap)] for i in range(cap)}
            excluded.append({"name": f"{comp}/*", "reason": f"{len(stems) - len(keep)} of {len(stems)} "
                             f"movements left out (cap {cap})"})
            stems = [s for s in stems if s in keep]
        for stem in stems:
            ps = sorted(found[stem], key=lambda q: SCORE_SUFFIXES.index(q.suffix.lower()))
            scores.append((re.sub(r"[^A-Za-z0-9.-]+", "_", f"{comp}_{stem}"), str(ps[0])))
            excluded += [{"name": f"{comp}/{q.name}", "reason": f"duplicate of {ps[0].name}"} for q in ps[1:]]
    return scores, excluded


def plan(scores, val: float, test: float, seed: int) -> list[tuple[str, str, str, str]]:
    """[(name, path, split, piano)]: every piece once on a training piano (dealt round-robin
    after a seeded shuffle, so pianos get about equal shares in every split), and the test
    pieces again on the unseen piano. Bach chorales keep their recipes/bach_piano split, so a
    model trained here never heard that set's val or test chorales."""
    bach = [n for n, _ in bach_list_scores()[0]]
    split = {f"bach_{n}": s for n, s in assign_splits(bach, 0.05, 0.05, 0).items()}
    split.update(assign_splits([n for n, _ in scores if n not in split], val, test, seed))
    jobs = []
    for s in ("train", "val", "test"):
        piece = [(n, p) for n, p in scores if split[n] == s]
        order = list(range(len(piece)))
        random.Random(f"{seed}:{s}").shuffle(order)
        for k, i in enumerate(order):
            jobs.append((*piece[i], s, TRAIN_PIANOS[k % len(TRAIN_PIANOS)]))
        if s == "test":
            jobs += [(n, p, "unseen", UNSEEN) for n, p in piece]
    return jobs


# ----------------------------------------------------------------------------- performance

def performance(name: str, seed: int) -> dict:
    """The drawn performance of one piece (deterministic in name and seed): the unseen-piano
    copy of a test piece is the same performance on another piano."""
    r = random.Random(f"{seed}:{name}")
    return {"tempo": round(r.uniform(0.85, 1.2), 4),
            "level": round(math.exp(r.uniform(math.log(0.25), math.log(0.95))), 4),
            "reverb": r.random() < 0.5,
            "vel_center": round(r.uniform(50, 92), 2), "vel_span": round(r.uniform(10, 30), 2),
            "vel_jitter": 6.0,
            "phrases": [(round(r.uniform(lo, hi), 3), round(r.uniform(0, 2 * math.pi), 4))
                        for lo, hi in ((2, 6), (6, 15), (15, 40))],
            "seed": r.getrandbits(32)}


def velocities(starts, perf) -> list[int]:
    """Phrase dynamics (three slow sinusoids of random period and phase) plus jitter."""
    r = random.Random(perf["seed"])
    out = []
    for t in starts:
        curve = sum(a * math.sin(2 * math.pi * t / P + ph)
                    for a, (P, ph) in zip((0.3, 0.4, 0.3), perf["phrases"]))
        v = perf["vel_center"] + perf["vel_span"] * curve + r.gauss(0, perf["vel_jitter"])
        out.append(int(min(127, max(15, round(v)))))
    return out


# ----------------------------------------------------------------------------- synthesis

def synthesize(events, sf2: str, program: int, sample_rate: int, reverb: bool, tail: float = 1.0):
    """events [(time s, on 1 / off 0, channel, key, velocity)] -> float64 mono (N,), rendered
    with FluidSynth's float output (no dither). A fresh synth per file: no state carries over."""
    import fluidsynth
    import numpy as np

    synth = fluidsynth.Synth(gain=0.2, samplerate=sample_rate,
                             **{"synth.reverb.active": int(reverb), "synth.chorus.active": 0})
    write = fluidsynth._fl.fluid_synth_write_float
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    try:
        sfid = synth.sfload(sf2)
        if sfid < 0:
            raise RuntimeError(f"FluidSynth could not load {sf2}")
        for ch in range(16):
            synth.program_select(ch, sfid, 0, program)
        end = int(round((max(e[0] for e in events) + tail) * sample_rate))
        left, right = np.zeros(end, np.float32), np.zeros(end, np.float32)
        pos = 0

        def run(n):
            nonlocal pos
            if n > 0:
                write(synth.synth, n, left.ctypes.data, pos, 1, right.ctypes.data, pos, 1)
                pos += n

        for t, on, ch, key, vel in sorted(events):
            run(min(end, int(round(t * sample_rate))) - pos)
            if on:
                synth.noteon(ch, key, vel)
            else:
                synth.noteoff(ch, key)
        run(end - pos)
    finally:
        synth.delete()
    return (left.astype(np.float64) + right) / 2


def midi_events(path: str, perf: dict):
    """music21 score -> note events on up to 15 channels (9, GM drums, is skipped)."""
    import music21
    import pretty_midi

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        score = music21.converter.parse(path, forceSource=True)
        if not isinstance(score, music21.stream.Score):
            raise ValueError(f"not a single score ({type(score).__name__})")
        with tempfile.TemporaryDirectory(prefix="piano_") as d:
            midi = score.write("midi", fp=os.path.join(d, "score.mid"))
            pm = pretty_midi.PrettyMIDI(str(midi))   # raises on absurd tick counts
    notes = [(n.start, n.end, n.pitch, i) for i, inst in enumerate(pm.instruments) for n in inst.notes]
    if not notes:
        raise ValueError("the score holds no notes")
    notes.sort()
    t0 = notes[0][0]
    f = perf["tempo"]
    starts = [(s - t0) / f for s, *_ in notes]
    vel = velocities(starts, perf)
    channels = [c for c in range(16) if c != 9]
    events = []
    for (s, e, key, part), t, v in zip(notes, starts, vel):
        ch = channels[part % len(channels)]
        events += [(t, 1, ch, key, v), (max(t + 0.01, (e - t0) / f), 0, ch, key, 0)]
    return events


class Timeout(BaseException):
    """Raised by the alarm; a BaseException so that music21's `except Exception` blocks do not
    swallow it."""


def _alarm(signum, frame):
    raise Timeout("took longer than the --timeout")


def render_one(job: tuple) -> dict:
    """Render one file atomically, in at most `timeout` seconds (some scores make music21
    parse for many minutes). Never raises: failures come back in the dict."""
    import signal

    name, path, piano, out, settings, timeout = job
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    try:
        return {"name": name, "piano": piano, "samples": _render(name, path, piano, Path(out), **settings),
                "error": None}
    except (Exception, Timeout) as e:  # a bad score is skipped, not fatal
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return {"name": name, "piano": piano, "samples": 0, "error": f"{type(e).__name__}: {msg}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _render(name, path, piano, out: Path, sample_rate, seed, tail, silence, **_) -> int:
    perf = performance(name, seed)
    y = synthesize(midi_events(path, perf), str(soundfont(piano)), PIANOS[piano][1], sample_rate,
                   perf["reverb"])
    # peak level and silence threshold both follow the level drawn for this file
    return finish(y, out, sample_rate, perf["level"], silence * perf["level"] / 0.9, tail)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/piano", help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="N pieces only, spread over the composers (quick subset)")
    ap.add_argument("--max-per-composer", type=int, default=None,
                    help="movements kept per composer (default: all, Palestrina 200 of 1,318)")
    ap.add_argument("--workers", type=int, default=2, help="parallel render processes")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0, help="split and performance seed")
    ap.add_argument("--val-ratio", type=float, default=0.04)
    ap.add_argument("--test-ratio", type=float, default=0.04)
    ap.add_argument("--tail", type=float, default=0.5, help="seconds kept after the last sound")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per file before it is skipped")
    args = ap.parse_args(argv)
    for flag, v, ok in (("--limit", args.limit, args.limit is None or args.limit >= 1),
                        ("--workers", args.workers, args.workers >= 1), ("--timeout", args.timeout, args.timeout >= 1),
                        ("--max-per-composer", args.max_per_composer, (args.max_per_composer or 1) >= 1),
                        ("--val-ratio", args.val_ratio, 0 <= args.val_ratio < 0.5),
                        ("--test-ratio", args.test_ratio, 0 < args.test_ratio < 0.5)):
        if not ok:
            ap.error(f"bad {flag}: {v}")
    problem = missing_requirement(PIANOS)
    if problem:
        print(f"render.py: {problem}", file=sys.stderr)
        return 2

    import multiprocessing as mp

    from tqdm import tqdm

    out = Path(args.out)
    scores, excluded = list_scores(args.max_per_composer)
    if args.limit:
        scores = scores[:: max(1, len(scores) // args.limit)][: args.limit]  # spread over composers
    jobs = plan(scores, args.val_ratio, args.test_ratio, args.seed)
    dest = {(n, pi): out / s / f"{n}__{pi}.wav" for n, _, s, pi in jobs}
    settings = {"sample_rate": args.sample_rate, "seed": args.seed, "tail": args.tail, "silence": SILENCE,
                "synthesis": "float", "version": 1}

    marker = out / "render_settings.json"
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        old = None
    keep = set(dest.values()) if old == settings else set()
    removed = 0
    for s in SPLITS:
        for p in (out / s).iterdir() if (out / s).is_dir() else ():
            if p not in keep and (p.suffix == ".wav" or ".tmp" in p.name):
                p.unlink()
                removed += 1
    if removed:
        print(f"render.py: removed {removed} files of an earlier run with other settings or pieces",
              file=sys.stderr)
    if old != settings:
        _write_json(marker, settings)

    frames, todo = {}, []
    for n, path, s, pi in jobs:
        f = rendered_frames(dest[n, pi], args.sample_rate)
        if f is None:
            todo.append((n, path, pi, str(dest[n, pi]), settings, args.timeout))
        else:
            frames[n, pi] = f
    print(f"render.py: {len(scores)} pieces, {len(jobs)} files, {len(frames)} already rendered, "
          f"{len(todo)} to render into {out}", file=sys.stderr)
    # the longest scores first, so that the pool does not end on one straggler
    todo.sort(key=lambda j: -os.path.getsize(j[1]))
    failed = []
    bar = tqdm(total=len(todo), desc="render", unit="file", dynamic_ncols=True, disable=not todo)
    pool = mp.Pool(min(args.workers, len(todo))) if args.workers > 1 and len(todo) > 1 else None
    results = pool.imap_unordered(render_one, todo) if pool else map(render_one, todo)
    try:
        for r in results:
            bar.update(1)
            if r["error"]:
                failed.append({"name": r["name"], "piano": r["piano"], "reason": r["error"]})
                tqdm.write(f"warning: {r['name']} on {r['piano']}: skipped ({r['error']})", file=sys.stderr)
            else:
                frames[r["name"], r["piano"]] = r["samples"]
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    card = datacard(args, scores, jobs, frames, excluded, sorted(failed, key=lambda f: f["name"]))
    _write_json(out / "datacard.json", card)
    h = card["hours"]
    print(f"render.py: {card['files']['total']} files, {h['total']:.2f} h ("
          + ", ".join(f"{s} {card['files'][s]} files {h[s]:.2f} h" for s in SPLITS)
          + f"), {len(failed)} failed -> {out / 'datacard.json'}", file=sys.stderr)
    return 0


def datacard(args, scores, jobs, frames, excluded, failed) -> dict:
    import importlib.metadata as md

    import fluidsynth

    sr = args.sample_rate
    done = [(n, s, pi) for n, _, s, pi in jobs if (n, pi) in frames]
    hours = {s: sum(frames[n, pi] for n, s2, pi in done if s2 == s) / sr / 3600 for s in SPLITS}
    per_piano = {pi: {s: round(sum(frames[n, p2] for n, s2, p2 in done if s2 == s and p2 == pi) / sr / 3600, 3)
                      for s in SPLITS} for pi in PIANOS}
    composers = {}
    for n, s, pi in done:
        c = composers.setdefault(n.split("_")[0], {"files": 0, "hours": 0.0})
        c["files"] += 1
        c["hours"] = round(c["hours"] + frames[n, pi] / sr / 3600, 4)
    maj, mnr, mic = (ctypes.c_int() for _ in range(3))
    fluidsynth.fluid_version(maj, mnr, mic)
    return {
        "name": "piano",
        "description": "music21 corpus scores of many composers rendered on six General-MIDI piano "
                       "sounds with varied dynamics, tempo, level and reverb (FluidSynth, float output)",
        "sample_rate": sr, "channels": 1, "format": "WAV, 16-bit PCM",
        "files": {**{s: sum(1 for d in done if d[1] == s) for s in SPLITS}, "total": len(done)},
        "hours": {**{s: round(hours[s], 4) for s in SPLITS}, "total": round(sum(hours.values()), 4)},
        "hours_per_piano": per_piano,
        "composers": composers,
        "pianos": {pi: {"soundfont": PIANOS[pi][0], "program": PIANOS[pi][1],
                        "package": PIANOS[pi][2] or "pretty_midi (PyPI)",
                        "sha256": hashlib.sha256(soundfont(pi).read_bytes()).hexdigest()[:16],
                        "role": "unseen (test pieces only, never trained on)" if pi == UNSEEN else "train/val/test"}
                   for pi in PIANOS},
        "licences": {
            "scores": "music21 corpus (music21/corpus/license.txt): encodings distributed with the encoders' "
                      "permission, some not for commercial use; the compositions are public domain",
            "TimGM6mb.sf2": "GPL-2 (Tim Brechbill, David Bolton)",
            "MuseScore_General_Full.sf2": "MIT (S. Christian Collins, MuseScore General)",
            "FluidR3_GM.sf2": "MIT (Frank Wen, FluidR3)",
        },
        "rendering": {
            "synth": f"FluidSynth {maj.value}.{mnr.value}.{mic.value} float output via pyfluidsynth "
                     f"{md.version('pyfluidsynth')}; chorus off; reverb on or off per file; music21 "
                     f"{md.version('music21')} -> MIDI -> pretty_midi {md.version('pretty_midi')} notes",
            "performance": "per file: tempo factor U(0.85, 1.2); peak level log-uniform in [0.25, 0.95]; "
                           "velocity = centre U(50, 92) + span U(10, 30) x phrase curve (three sinusoids, "
                           "periods 2-6, 6-15, 15-40 s) + N(0, 6) per note, clipped to [15, 127]; reverb p=0.5",
            "trim": f"after the last 20 ms frame louder than {SILENCE} x level/0.9, {args.tail} s kept",
        },
        "split": {"by": "piece; variants of one movement share a split; Bach chorales keep the "
                         "bach_piano split (seed 0, 5%/5%); pianos dealt round-robin per split",
                  "seed": args.seed, "val_ratio": args.val_ratio, "test_ratio": args.test_ratio,
                  "max_per_composer": args.max_per_composer, "limit": args.limit},
        "excluded": excluded, "failed": failed,
    }


if __name__ == "__main__":
    sys.exit(main())
