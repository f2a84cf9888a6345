"""Render the Bach chorales of the music21 corpus as solo piano: 16 kHz mono 16-bit WAVs.

    bash recipes/bach_piano/install.sh
    .venv/bin/python recipes/bach_piano/render.py                          # full set -> data/bach_piano
    .venv/bin/python recipes/bach_piano/render.py --limit 20 --out /tmp/bach20   # quick subset

Each score: music21 -> MIDI file -> pretty_midi, every part set to General MIDI program 0
(acoustic grand piano), synthesised by FluidSynth through the TimGM6mb.sf2 soundfont that
pretty_midi ships, peak-normalised to --peak, trailing silence trimmed to --tail seconds.
Split by file (seeded shuffle of the natural-sorted list); variants of one movement
(bwv248.23-2 / bwv248.23-s) stay in the same split. Output: OUT/{train,val,test}/*.wav and
OUT/datacard.json. Reruns skip files already rendered; the same options give the same bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path

INSTALL = "bash recipes/bach_piano/install.sh"
SPLITS = ("train", "val", "test")
# score formats in order of preference when one movement exists in several (bwv366.mxl and
# bwv366.krn encode the same chorale: keep one)
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn")
# a 20 ms frame whose RMS (after peak normalisation) is below this counts as silence: about
# -54 dBFS, above the floor of FluidSynth's 16-bit dither (RMS up to ~8e-4 here at gain 0.2)
SILENCE = 2e-3


# ----------------------------------------------------------------------------- requirements

def missing_requirement() -> str | None:
    """One line naming the first missing piece and how to install it, or None."""
    for mod in ("numpy", "soundfile", "tqdm", "natsort"):  # wavelm's own dependencies
        if importlib.util.find_spec(mod) is None:
            return f"missing Python package {mod} (a wavelm dependency); install with: pip install -e ."
    for mod, pkg in (("music21", "music21"), ("pretty_midi", "pretty_midi"),
                     ("fluidsynth", "pyfluidsynth")):
        if importlib.util.find_spec(mod) is None:
            return f"missing Python package {pkg}; install with: {INSTALL}"
    try:
        import fluidsynth  # noqa: F401  (loads libfluidsynth: fails here when it is absent)
    except (ImportError, OSError):
        return f"missing the FluidSynth library (Debian package libfluidsynth3); install with: {INSTALL}"
    if not soundfont_path().is_file():
        return f"missing the soundfont {soundfont_path()}; reinstall pretty_midi"
    return None


def soundfont_path() -> Path:
    spec = importlib.util.find_spec("pretty_midi")
    return Path(spec.origin).parent / "TimGM6mb.sf2"


# ----------------------------------------------------------------------------- the score list

def list_scores() -> tuple[list[tuple[str, str]], list[dict]]:
    """[(name, path)] natural-sorted by name, one per movement; and what was left out, why."""
    from music21 import corpus
    from natsort import natsorted

    found: dict[str, list[Path]] = {}
    excluded = []
    for p in corpus.getComposer("bach"):
        p = Path(p)
        if p.suffix.lower() not in SCORE_SUFFIXES:
            excluded.append({"name": p.name, "reason": f"not a score ({p.suffix} file, e.g. a "
                             "RomanText harmonic analysis)"})
            continue
        found.setdefault(p.stem, []).append(p)
    scores = []
    for stem in natsorted(found):
        ps = sorted(found[stem], key=lambda q: SCORE_SUFFIXES.index(q.suffix.lower()))
        scores.append((stem, str(ps[0])))
        for q in ps[1:]:
            excluded.append({"name": q.name, "reason": f"duplicate encoding of {ps[0].name}"})
    excluded.sort(key=lambda e: e["name"])
    return scores, excluded


def assign_splits(names: list[str], val: float, test: float, seed: int) -> dict[str, str]:
    """name -> split. Groups (names equal up to a '-variant' suffix) are shuffled with `seed`
    and dealt to test, then val, until each holds round(ratio * N) files; the rest is train."""
    from natsort import natsorted

    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split("-")[0], []).append(n)
    order = natsorted(groups)
    random.Random(seed).shuffle(order)
    want = {"test": _count(test, len(names)), "val": _count(val, len(names))}
    split, have = {}, {"test": 0, "val": 0}
    for g in order:
        s = next((k for k in ("test", "val") if have[k] < want[k]), "train")
        for n in groups[g]:
            split[n] = s
        have[s] = have.get(s, 0) + len(groups[g])
    return split


def _count(ratio: float, n: int) -> int:
    return 0 if ratio <= 0 else max(1, math.floor(ratio * n + 0.5))


# ----------------------------------------------------------------------------- one file

def render_one(job: tuple) -> dict:
    """Render one score to `out` (atomically). Never raises: failures come back as a dict."""
    name, path, out, settings = job
    out = Path(out)
    try:
        n = _render(path, out, **settings)
        return {"name": name, "samples": n, "error": None}
    except Exception as e:  # a bad score is skipped, not fatal
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return {"name": name, "samples": 0, "error": f"{type(e).__name__}: {msg}"}


def _render(path: str, out: Path, sample_rate: int, gain: float, peak: float, tail: float,
            silence: float) -> int:
    import fluidsynth
    import music21
    import pretty_midi

    # music21 prints its parser warnings on stderr: keep the progress bar readable
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        score = music21.converter.parse(path, forceSource=True)
        with tempfile.TemporaryDirectory(prefix="bach_piano_") as d:
            midi = score.write("midi", fp=os.path.join(d, "score.mid"))
            pm = pretty_midi.PrettyMIDI(str(midi))
    for inst in pm.instruments:  # every part (horns, timpani, continuo...) on the piano
        inst.program = 0
        inst.is_drum = False
    if not any(inst.notes for inst in pm.instruments):
        raise ValueError("the score holds no notes")
    # pretty_midi would build this synth itself from the .sf2 path, always at FluidSynth's
    # default gain 0.2; building it here only adds the gain (0.2 gives the same bytes)
    synth = fluidsynth.Synth(gain=gain, samplerate=sample_rate)
    try:
        sfid = synth.sfload(str(soundfont_path()))
        y = pm.fluidsynth(fs=sample_rate, synthesizer=synth, sfid=sfid)  # float64 (N,)
    finally:
        synth.delete()
    return finish(y, out, sample_rate, peak, silence, tail)


def finish(y, out: Path, sample_rate: int, peak: float, silence: float, tail: float) -> int:
    """Peak-normalise `y` to `peak`, cut what follows the last 20 ms frame louder than
    `silence` to `tail` seconds, write 16-bit PCM WAV atomically; returns the frames written."""
    import numpy as np
    import soundfile as sf

    top = float(np.abs(y).max()) if y.size else 0.0
    if not top > 0:
        raise ValueError("rendered audio is silent")
    y = y * (peak / top)
    frame = sample_rate // 50
    n = len(y) // frame
    rms = np.sqrt(np.mean(y[: n * frame].reshape(n, frame) ** 2, axis=1))  # (frames,)
    loud = np.flatnonzero(rms >= silence)
    end = (int(loud[-1]) + 1) * frame if loud.size else len(y)
    y = y[: min(len(y), end + int(round(tail * sample_rate)))]
    pcm = np.round(y * 32767).astype(np.int16)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        sf.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(pcm)


def rendered_frames(out: Path, sample_rate: int) -> int | None:
    """Frames of an existing render made with these settings, else None (render again)."""
    import soundfile as sf

    try:
        info = sf.info(str(out))
    except Exception:
        return None
    ok = info.samplerate == sample_rate and info.channels == 1 and info.subtype == "PCM_16"
    return int(info.frames) if ok and info.frames > 0 else None


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/bach_piano", help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="first N scores only (quick subset)")
    ap.add_argument("--workers", type=int, default=2, help="parallel render processes")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0, help="split shuffle seed")
    ap.add_argument("--val-ratio", type=float, default=0.05)
    ap.add_argument("--test-ratio", type=float, default=0.05)
    ap.add_argument("--gain", type=float, default=0.2,
                    help="FluidSynth master gain (0.2: its default, what pretty_midi uses)")
    ap.add_argument("--peak", type=float, default=0.9, help="peak level of every file")
    ap.add_argument("--tail", type=float, default=0.5, help="seconds kept after the last sound")
    ap.add_argument("--force", action="store_true", help="render again files already there")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if not (0 <= args.val_ratio and 0 <= args.test_ratio and args.val_ratio + args.test_ratio < 1):
        ap.error(f"bad split ratios: val {args.val_ratio}, test {args.test_ratio}")
    if not 0 < args.peak <= 1:
        ap.error(f"--peak must be in (0, 1], got {args.peak}")
    if not 0 < args.gain <= 10:
        ap.error(f"--gain must be in (0, 10], got {args.gain}")

    problem = missing_requirement()
    if problem:
        print(f"render.py: {problem}", file=sys.stderr)
        return 2

    import multiprocessing as mp

    from tqdm import tqdm

    out = Path(args.out)
    scores, excluded = list_scores()
    n_found = len(scores)
    if args.limit:
        scores = scores[: args.limit]
    split = assign_splits([n for n, _ in scores], args.val_ratio, args.test_ratio, args.seed)
    dest = {n: out / split[n] / f"{n}.wav" for n, _ in scores}

    # OUT/{train,val,test} hold exactly this run's files: drop temp files of killed runs, and
    # renders that another seed/ratio/limit put elsewhere (readers take whole folders)
    stale = 0
    for s in SPLITS:
        for p in (out / s).iterdir() if (out / s).is_dir() else ():
            if p.name.startswith(".") and ".tmp" in p.name:
                p.unlink()
            elif p.suffix == ".wav" and dest.get(p.stem) != p:
                if p.stem in dest and not dest[p.stem].exists():  # same score, other split
                    dest[p.stem].parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p, dest[p.stem])
                else:
                    p.unlink()
                    stale += 1
    if stale:
        print(f"render.py: removed {stale} WAVs of an earlier run that this run does not hold",
              file=sys.stderr)

    # every WAV under OUT was rendered with the settings in OUT/render_settings.json: when
    # they change (or --force), the old renders go first, then the new settings are written
    settings = {"sample_rate": args.sample_rate, "gain": args.gain, "peak": args.peak,
                "tail": args.tail, "silence": SILENCE}
    marker = out / "render_settings.json"
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        old = None
    if args.force or (old is not None and old != settings):
        if old is not None and old != settings:
            print(f"render.py: settings changed ({old} -> {settings}): rendering again",
                  file=sys.stderr)
        for s in SPLITS:
            for p in (out / s).glob("*.wav") if (out / s).is_dir() else ():
                p.unlink()
    if old != settings or not marker.exists():
        _write_json(marker, settings)

    frames, todo = {}, []
    for n, path in scores:
        f = rendered_frames(dest[n], args.sample_rate)
        if f is None:
            todo.append((n, path, str(dest[n]), settings))
        else:
            frames[n] = f
    print(f"render.py: {len(scores)} scores, {len(frames)} already rendered, "
          f"{len(todo)} to render into {out}", file=sys.stderr)

    skipped = []
    bar = tqdm(total=len(todo), desc="render", unit="score", dynamic_ncols=True, disable=not todo)
    if args.workers == 1 or len(todo) <= 1:
        results = map(render_one, todo)
        pool = None
    else:
        pool = mp.Pool(min(args.workers, len(todo)))
        results = pool.imap_unordered(render_one, todo, chunksize=1)
    try:
        for r in results:
            bar.update(1)
            if r["error"]:
                skipped.append({"name": r["name"], "reason": r["error"]})
                tqdm.write(f"warning: {r['name']}: skipped ({r['error']})", file=sys.stderr)
            else:
                frames[r["name"]] = r["samples"]
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    skipped.sort(key=lambda s: s["name"])

    card = datacard(args, out, scores, n_found, split, frames, excluded, skipped)
    _write_json(out / "datacard.json", card)

    h = card["hours"]
    print(f"render.py: {card['files']['total']} files, {h['total']:.3f} h "
          f"(train {card['files']['train']} files {h['train']:.3f} h, "
          f"val {card['files']['val']} / {h['val']:.3f} h, "
          f"test {card['files']['test']} / {h['test']:.3f} h) -> {out / 'datacard.json'}",
          file=sys.stderr)
    if skipped:
        print(f"render.py: {len(skipped)} scores skipped:", file=sys.stderr)
        for s in skipped:
            print(f"  {s['name']}: {s['reason']}", file=sys.stderr)
    return 0


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def datacard(args, out, scores, n_found, split, frames, excluded, skipped) -> dict:
    import ctypes
    import importlib.metadata as md

    import fluidsynth
    from natsort import natsorted

    sr = args.sample_rate
    files = {s: natsorted(n for n, _ in scores if split[n] == s and n in frames) for s in SPLITS}
    hours = {s: sum(frames[n] for n in files[s]) / sr / 3600 for s in SPLITS}
    maj, mnr, mic = (ctypes.c_int() for _ in range(3))
    fluidsynth.fluid_version(maj, mnr, mic)
    sf2 = soundfont_path()
    return {
        "name": "bach_piano",
        "description": "Bach chorales (music21 corpus) rendered as solo piano with FluidSynth",
        "sample_rate": sr,
        "channels": 1,
        "format": "WAV, 16-bit PCM",
        "files": {**{s: len(files[s]) for s in SPLITS}, "total": sum(map(len, files.values()))},
        "hours": {**{s: round(hours[s], 4) for s in SPLITS}, "total": round(sum(hours.values()), 4)},
        "samples": {s: sum(frames[n] for n in files[s]) for s in SPLITS},
        "source": {
            "corpus": "music21 corpus, music21.corpus.getComposer('bach')",
            "music21_version": md.version("music21"),
            "paths_found": n_found + len(excluded),
            "scores": n_found,
            "limit": args.limit,
            "excluded": excluded,
            "licence": "music21 code: BSD-3-Clause. Corpus (music21/corpus/license.txt): encodings "
                       "distributed with the permission of the encoders, believed out of copyright "
                       "in the US or licensed for use; some may restrict commercial use. "
                       "The compositions (J. S. Bach, d. 1750) are in the public domain.",
        },
        "rendering": {
            "midi": "music21 Score.write('midi') -> pretty_midi.PrettyMIDI",
            "program": "all parts General MIDI program 0 (acoustic grand piano), no drums",
            "synth": f"FluidSynth {maj.value}.{mnr.value}.{mic.value} via pyfluidsynth "
                     f"{md.version('pyfluidsynth')}, pretty_midi {md.version('pretty_midi')} "
                     f"PrettyMIDI.fluidsynth; synth gain {args.gain}, other settings FluidSynth's "
                     "defaults (reverb and chorus on)",
            "soundfont": "TimGM6mb.sf2 as shipped in the pretty_midi package",
            "soundfont_sha256": hashlib.sha256(sf2.read_bytes()).hexdigest(),
            "soundfont_licence": "GPL-2 (Tim Brechbill 2004, David Bolton 2010; as distributed "
                                 "by MuseScore 1.x and Debian's timgm6mb-soundfont)",
            "peak": args.peak,
            "trim": f"audio after the last 20 ms frame with RMS >= {SILENCE} (about -54 dBFS) "
                    f"cut to {args.tail} s",
        },
        "split": {
            "by": "file; variants of one movement (names equal up to '-suffix') share a split",
            "seed": args.seed,
            "ratios": {"train": round(1 - args.val_ratio - args.test_ratio, 6),
                       "val": args.val_ratio, "test": args.test_ratio},
        },
        "skipped": skipped,
        "split_files": {s: [{"name": n, "seconds": round(frames[n] / sr, 4)} for n in files[s]]
                        for s in SPLITS},
    }


if __name__ == "__main__":
    sys.exit(main())
