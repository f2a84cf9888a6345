"""The ship rule of the bundled model (docs/bundled_model.md, "Round 6"), applied to two
`wavelm bench quality --json` reports made with the same flags: the shipped model's and a
candidate's. Prints each rule with its numbers and exits 0 when the candidate ships, 1 when not.

    wavelm bench quality --data data/piano --json runs/quality_bundle.json
    wavelm bench quality --data data/piano --checkpoint runs/piano6/best --json runs/quality_piano6.json
    .venv/bin/python recipes/piano/ship.py runs/quality_bundle.json runs/quality_piano6.json
    .venv/bin/python recipes/piano/ship.py --listening-only runs/select/wavelm-pretrained.json \
        runs/select/runs-piano6-steps-20000.json        # a screen without scores (recipes/piano/select.sh)

The candidate replaces the bundle when all hold: fewer bits on test and on the unseen piano; a
higher harmonic share and a smaller continuation harmonic gap; no other listening measure more
than 10% worse. "Worse" per measure: further from the real excerpts' value (by ratio for the
flatness and the onsets, by difference for the shares); the real excerpts are the same in both
reports when the flags are. The loudness range (rule 2, stated 2026-12-07 after round 6's step
17,500 and applied from the next measurement on): further outside the real excerpts' own range
of loudness ranges (min..max over the excerpts, by ratio; 0 inside it), because one piece's
loudest/quietest second is 2x and another's 25x, and the median of three is no target
(`--rule 1`: the median, as step 17,500 was measured).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

TOLERANCE = 0.10


def _gap(value: float, real: float, ratio: bool) -> float:
    """How far a measure is from the real excerpts': log-ratio or absolute difference."""
    if ratio:
        return abs(math.log(max(value, 1e-12) / max(real, 1e-12)))
    return abs(value - real)


def _outside(value: float, lo: float, hi: float) -> float:
    """How far (log-ratio) a value lies outside [lo, hi]; 0 inside."""
    v = max(value, 1e-12)
    return max(0.0, math.log(max(lo, 1e-12) / v), math.log(v / max(hi, 1e-12)))


def rules(old: dict, new: dict, listening_only: bool = False, rule: int = 2) -> list[tuple[str, bool, str]]:
    """(rule, holds, numbers) for every rule; `listening_only`: without the bits (reports made
    with --no-score, the checkpoint screen on the val split, recipes/piano/select.sh); `rule`: 2
    judges the loudness range against the real excerpts' spread, 1 against their median."""
    out = []
    for split in () if listening_only else ("test", "unseen"):
        a, b = (r["score"].get(split, {}).get("bits_per_sample") for r in (old, new))
        ok = a is not None and b is not None and b < a
        out.append((f"fewer bits on {split}", ok, f"{b:.4f} vs {a:.4f}" if None not in (a, b) else "not scored"))
    so, sn = old["summary"], new["summary"]
    a, b = so["generated"]["harmonic_share"], sn["generated"]["harmonic_share"]
    out.append(("higher harmonic share", b > a, f"{b:.3f} vs {a:.3f}"))
    if "continuation" in so and "continuation" in sn:
        a, b = so["continuation"]["harmonic_gap"], sn["continuation"]["harmonic_gap"]
        out.append(("smaller continuation harmonic gap", b < a, f"{b:+.3f} vs {a:+.3f}"))
    else:
        out.append(("smaller continuation harmonic gap", False, "no continuations"))
    real = sn["real"]
    others = [("loudness_ratio", True), ("chroma_top7", False), ("chroma_change", False), ("flatness", True),
              ("onsets_per_s", True)]
    for key, ratio in others:
        if any(key not in r["generated"] for r in (so, sn)):     # a report from before the measure
            out.append((f"{key} no more than 10% worse", False, "not measured in both reports"))
            continue
        if key == "loudness_ratio" and rule == 2:
            spread = [m["loudness_ratio"] for m in new["real"]]
            lo, hi = min(spread), max(spread)
            a, b = (_outside(r["generated"][key], lo, hi) for r in (so, sn))
            out.append((f"{key} no more than 10% worse", b <= a + TOLERANCE,
                        f"{sn['generated'][key]:.4g} vs {so['generated'][key]:.4g} (real {lo:.3g}..{hi:.3g})"))
            continue
        a, b = _gap(so["generated"][key], real[key], ratio), _gap(sn["generated"][key], real[key], ratio)
        # 10% worse: the distance to the real value grows by more than 10% of the real value's scale
        scale = 1.0 if ratio else max(abs(real[key]), 1e-12)
        ok = b <= a + TOLERANCE * scale
        out.append((f"{key} no more than 10% worse", ok,
                    f"{sn['generated'][key]:.4g} vs {so['generated'][key]:.4g} (real {real[key]:.4g})"))
    if "continuation" in so and "continuation" in sn:
        a, b = (abs(math.log(max(r["continuation"]["flatness_ratio"], 1e-12))) for r in (so, sn))
        out.append(("continuation flatness no more than 10% worse", b <= a + TOLERANCE,
                    f"{sn['continuation']['flatness_ratio']:.2f}x vs {so['continuation']['flatness_ratio']:.2f}x"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="the shipped model's report")
    p.add_argument("new", help="the candidate's report")
    p.add_argument("--listening-only", action="store_true", help="without the bits (reports made with --no-score)")
    p.add_argument("--rule", type=int, choices=(1, 2), default=2, help="loudness-range rule (default 2)")
    args = p.parse_args(argv)
    argv, listening_only, rule = (args.old, args.new), args.listening_only, args.rule
    old, new = (json.loads(Path(p).read_text()) for p in argv)
    if old.get("sampling") != new.get("sampling"):
        print(f"warning: the reports used different sampling ({old.get('sampling')} vs {new.get('sampling')})")
    results = rules(old, new, listening_only, rule)
    for name, ok, numbers in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {numbers}")
    ships = all(ok for _, ok, _ in results)
    print("the candidate ships" if ships else "the candidate does not ship")
    return 0 if ships else 1


if __name__ == "__main__":
    raise SystemExit(main())
