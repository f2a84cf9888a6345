"""Listening proxies on signals whose answer is known, and `wavelm bench quality` end to end."""
import json

import numpy as np
import pytest

pytest.importorskip("librosa")

from wavelm import quality  # noqa: E402

SR = 16000


def tone(seconds=4.0, f=220.0, decay=1.2):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.exp(-decay * t) * sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3))).astype(np.float32)


def test_decaying_harmonic_tone():
    m = quality.measures(tone(), SR)
    assert m["harmonic_share"] > 0.95
    assert m["loudness_ratio"] > 20               # exp(-1.2 t) over 4 s: ~36x from first to last second
    assert m["chroma_top7"] > 0.9
    assert m["flatness"] < 1e-3
    assert "A3" in m["pitches"] and "A4" in m["pitches"]


def test_chroma_change_tells_a_moving_tune_from_a_drone():
    notes = [220.0, 262.0, 330.0, 392.0, 294.0, 247.0, 349.0, 440.0]           # a new note each 0.5 s
    tune = np.concatenate([tone(0.5, f, decay=2.0) for f in notes])
    drone = tone(4.0, 220.0, decay=0.0)
    assert quality.chroma_change(tune, SR) > 0.3
    assert quality.chroma_change(drone, SR) < 0.01
    assert quality.chroma_change(tone(0.3), SR) == 0.0                           # under two windows


def test_the_codec_floor_raises_flatness_not_harmonic_share():
    # real audio is compared as the codec writes it: 8-bit mu-law adds a noise floor that no
    # model of the tokens can avoid (flatness up), while the tone stays a tone
    y = tone()
    q = quality.codec_audio(y)
    assert q.dtype == np.float32 and q.shape == y.shape and np.abs(q - y).max() < 0.01
    assert quality._flat(q, SR) > 3 * quality._flat(y, SR)
    assert abs(quality.harmonic_share(q, SR) - quality.harmonic_share(y, SR)) < 0.01


def test_white_noise():
    y = (0.1 * np.random.default_rng(0).standard_normal(4 * SR)).astype(np.float32)
    m = quality.measures(y, SR)
    assert 0.45 < m["flatness"] < 0.65
    assert abs(m["chroma_top7"] - 7 / 12) < 0.06
    assert abs(m["harmonic_share"] - 0.5) < 0.05
    assert m["loudness_ratio"] < 1.1


def test_silence_is_finite():
    m = quality.measures(np.zeros(3 * SR, np.float32), SR)
    assert m["loudness_ratio"] == 1.0 and m["onsets_per_s"] == 0 and m["pitches"] == []
    assert all(np.isfinite(v) for v in m.values() if isinstance(v, float))
    assert quality.region_bits(np.zeros(SR), np.ones(SR), SR)["quiet"]["samples"] == SR


def test_region_bits_split_onsets_loud_and_quiet():
    y = np.concatenate([np.zeros(SR // 2, np.float32), tone(1.5, decay=0.1), np.full(SR, 1e-5, np.float32)])
    nll = np.ones(len(y))
    r = quality.region_bits(y, nll, SR)
    assert r["onsets"]["samples"] > 0 and r["loud_sustained"]["samples"] > SR
    assert r["quiet"]["samples"] >= SR
    assert sum(v["bits"] for v in r.values()) <= len(y)


def test_piano_of_names():
    assert quality.piano_of("test/bach_bwv5.7__muse-1.wav") == "muse-1"
    assert quality.piano_of("test/bwv5.7.wav") == "all"


@pytest.mark.slow
def test_bench_quality_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from wavelm.audio import save_audio
    from wavelm.cli import main

    for split, names in (("test", ["a__p1", "b__p2"]), ("unseen", ["a__p3"])):
        for i, n in enumerate(names):
            save_audio(tmp_path / "d" / split / f"{n}.wav", np.concatenate([tone(2.0, 220 + 30 * i)] * 2), SR)
    rc = main(["bench", "quality", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "d"),
               "--clips", "2", "--seconds", "1.5", "--prompt-seconds", "0.5",
               "--json", str(tmp_path / "q.json"), "--plot", str(tmp_path / "q.png")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "harmonic share" in out and "bits/sample on unseen" in out and "per piano: p1" in out
    rep = json.loads((tmp_path / "q.json").read_text())
    assert set(rep["score"]) == {"test", "unseen"} and len(rep["generated"]) == 2
    assert rep["score"]["test"]["files"] == 2 and len(rep["continuations"]) == 2
    assert (tmp_path / "q.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_quality_no_score(tiny_checkpoint, tmp_path, capsys):
    """--no-score: the listening measures of a sampling sweep, no split scored; --seed: the clips' seeds."""
    from wavelm.audio import save_audio
    from wavelm.cli import main

    save_audio(tmp_path / "d" / "test" / "a__p1.wav", np.concatenate([tone(2.0, 220)] * 2), SR)
    rc = main(["bench", "quality", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "d"),
               "--clips", "1", "--seconds", "1.5", "--prompt-seconds", "0.5", "--no-score", "--seed", "7",
               "--json", str(tmp_path / "q.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "harmonic share" in out and "bits/sample on test" not in out
    rep = json.loads((tmp_path / "q.json").read_text())
    assert rep["score"] == {} and len(rep["generated"]) == 1 and len(rep["continuations"]) == 1
    assert rep["seed"] == 7 and rep["generated"][0]["seed"] == 7          # a screen's seeds are not the ship run's
