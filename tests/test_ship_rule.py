"""The bundled model's ship rule (recipes/piano/ship.py) on made-up reports."""
import copy
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("ship", Path(__file__).parents[1] / "recipes/piano/ship.py")
ship = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship)

REAL = {"loudness_ratio": 9.0, "chroma_top7": 0.8, "chroma_change": 0.2, "flatness": 1e-3, "onsets_per_s": 3.0,
        "harmonic_share": 0.97}


def report(bits, harm, gap, loud=1.4, flat=7e-3, cont_flat=6.0, change=0.05):
    gen = {"loudness_ratio": loud, "chroma_top7": 0.63, "chroma_change": change, "flatness": flat, "onsets_per_s": 6.0,
           "harmonic_share": harm}
    return {"score": {"test": {"bits_per_sample": bits}, "unseen": {"bits_per_sample": bits + 1.5}},
            "real": [{"loudness_ratio": v} for v in (3.0, 9.0, 25.0)],      # the excerpts' own spread
            "summary": {"real": REAL, "generated": gen,
                        "continuation": {"harmonic_gap": gap, "flatness_ratio": cont_flat}}}


def verdict(old, new):
    return all(ok for _, ok, _ in ship.rules(old, new))


def test_better_everywhere_ships_and_each_rule_can_stop_it():
    old = report(3.15, 0.62, 0.25)
    new = report(2.90, 0.80, 0.10, loud=3.0, flat=4e-3)
    assert verdict(old, new)
    assert not verdict(old, report(3.20, 0.80, 0.10))                      # more bits
    assert not verdict(old, report(2.90, 0.60, 0.10))                      # less harmonic
    assert not verdict(old, report(2.90, 0.80, 0.30))                      # wider continuation gap
    assert not verdict(old, report(2.90, 0.80, 0.10, flat=2e-2))           # flatter: further from real
    assert not verdict(old, report(2.90, 0.80, 0.10, cont_flat=20.0))      # continuations noisier
    assert not verdict(old, report(2.90, 0.80, 0.10, change=0.0))          # a drone: the harmony stops
    no_change = copy.deepcopy(new)
    del no_change["summary"]["generated"]["chroma_change"]
    assert not verdict(old, no_change)                                     # a report without the measure
    worse_but_within = report(2.90, 0.80, 0.10, loud=1.3)                  # 1.4x -> 1.3x: within 10%
    assert verdict(old, worse_but_within)
    no_unseen = copy.deepcopy(new)
    del no_unseen["score"]["unseen"]
    assert not verdict(old, no_unseen)


def test_listening_only_skips_the_bits():
    old, new = report(3.15, 0.62, 0.25), report(2.90, 0.80, 0.10, loud=3.0, flat=4e-3)
    for r in (old, new):
        r["score"] = {}                                                    # --no-score reports
    assert not verdict(old, new)                                           # the full rule needs bits
    res = ship.rules(old, new, listening_only=True)
    assert all(ok for _, ok, _ in res) and not any("bits" in name for name, _, _ in res)
    assert not all(ok for _, ok, _ in ship.rules(old, report(2.9, 0.5, 0.1), listening_only=True))


def test_loudness_range_is_judged_against_the_real_excerpts_spread():
    """Round 6 at step 17,500: excerpts of 2.3x, 3.3x and 25.4x (median 3.3x), the bundle's static
    1.3x, the candidate's 14.1x. Rule 1 (distance to the median) calls 14.1x worse; rule 2 (distance
    outside the excerpts' spread) does not, and still refuses a range beyond every excerpt's."""
    def with_real(r):
        r["real"] = [{"loudness_ratio": v} for v in (2.3, 3.3, 25.4)]
        r["summary"]["real"] = {**REAL, "loudness_ratio": 3.3}
        return r
    old = with_real(report(3.15, 0.62, 0.25, loud=1.3))
    new = with_real(report(2.90, 0.80, 0.10, loud=14.1, flat=4e-3))
    loud = {v: dict((n, ok) for n, ok, _ in ship.rules(old, new, rule=v))["loudness_ratio no more than 10% worse"]
            for v in (1, 2)}
    assert loud == {1: False, 2: True} and verdict(old, new)
    assert not verdict(old, with_real(report(2.90, 0.80, 0.10, loud=400.0, flat=4e-3)))   # silences: beyond all
