"""The bundled default model: it loads without a download, matches its card, and makes sound."""
import json
from pathlib import Path

import numpy as np
import pytest

import wavelm
from wavelm.checkpoint import PRETRAINED_DIR

pytestmark = pytest.mark.skipif(not (PRETRAINED_DIR / "model.safetensors").exists(),
                                reason="no bundled model in wavelm/pretrained/")


def test_bundled_model_loads_and_matches_its_card():
    model = wavelm.WaveLM.from_pretrained()
    meta = json.loads((PRETRAINED_DIR / "config.json").read_text())
    assert model.num_parameters() == meta["card"]["parameters"]
    card = meta["card"]
    if "scores" in card:   # packaged by recipes/piano/bundle.py: below the adaptive LPC (docs/bundled_model.md)
        assert card["scores"]["test"]["bits_per_sample"] < 2.984
        assert card["scores"]["unseen"]["bits_per_sample"] < 4.075
        assert card["scores"]["bach_piano_test"]["bits_per_sample"] < 3.383
    else:                  # packaged by recipes/bach_piano/bundle.py
        assert card["test"]["bits_per_sample"] < 3.720
    assert (PRETRAINED_DIR / "README.md").exists()
    assert (PRETRAINED_DIR / "model.safetensors").stat().st_size < 8 * 2**20  # a few MB at most


def test_bundled_config_holds_no_machine_paths():
    def strings(o):
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            return [s for v in o for s in strings(v)]
        return [o] if isinstance(o, str) else []
    found = [s for s in strings(json.loads((PRETRAINED_DIR / "config.json").read_text())) if s.startswith("/")]
    assert not found, f"absolute paths in the bundled config.json: {found}"


def test_bundled_model_gets_the_fast_decoder():
    from wavelm.generation import start

    assert start(wavelm.WaveLM.from_pretrained(), 1).name == "numba"


def test_bundled_model_generates_audible_non_runaway_audio():
    model = wavelm.WaveLM.from_pretrained()
    q = json.loads((PRETRAINED_DIR / "config.json").read_text())["card"]["quality"]
    median_rms = q["real"]["rms_median"] if "real" in q else q["data"]["median_rms"]
    audio = wavelm.generate(model, seconds=3, seed=0)[0]
    assert audio.shape == (48000,) and np.isfinite(audio).all()
    rms = [np.sqrt(np.mean(w ** 2)) for w in np.split(audio, 3)]
    assert min(rms) > 0.01 * median_rms                      # not silent
    assert max(rms) < 0.9                                    # not saturated noise


def test_bundled_model_scores_a_piano_like_tone_better_than_noise():
    model = wavelm.WaveLM.from_pretrained()
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-2 * t)).astype(np.float32)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32)
    assert wavelm.score(model, tone).bits_per_sample < wavelm.score(model, noise).bits_per_sample - 1


def piano_bundle():
    """recipes/piano/bundle.py as a module (recipes are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("piano_bundle", Path(__file__).resolve().parents[1] / "recipes/piano/bundle.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    return bundle


def test_model_card_names_each_rounds_machine_and_precision_from_start_events():
    bundle = piano_bundle()
    meta = {"step": 8, "train": {"batch_size": 2, "seq_len": 16, "lr": 1e-3, "warmup": 1}}
    rows = [{"event": "start", "step": 0, "machine": "AMD", "bf16": False},
            {"event": "train", "step": 4, "elapsed_s": 60.0, "tokens_per_s": 10.0},
            {"event": "start", "step": 4, "machine": "Intel", "bf16": True},  # resumed elsewhere
            {"event": "train", "step": 8, "elapsed_s": 30.0, "tokens_per_s": 20.0}]
    r = bundle.this_round(meta, rows, "cmd", bf16_here=False)
    assert r["precision"] == "float32 then bf16 autocast" and r["hardware"] == "AMD then Intel"
    assert r["minutes"] == 1.5 and r["tokens"] == 8 * 2 * 16
    assert bundle.hardware([{}, {}, r]) == f"round 1, 2: {bundle.OLD_HARDWARE}; round 3: AMD then Intel"
    assert bundle.hardware([{}, {}]) == bundle.OLD_HARDWARE


def test_model_card_takes_the_round_of_the_checkpoint_a_run_started_from(tmp_path):
    """--init-from RUN/steps/N: the other run's log up to step N is the first round, never past it."""
    bundle = piano_bundle()
    run = tmp_path / "run"
    (run / "steps" / "8").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"train": {"amp": False}}))
    meta = {"step": 8, "train": {"batch_size": 2, "seq_len": 16, "lr": 1e-3, "warmup": 1}}
    (run / "steps" / "8" / "config.json").write_text(json.dumps(meta))
    rows = [{"event": "start", "step": 0, "machine": "AMD", "bf16": False},
            {"event": "train", "step": 8, "elapsed_s": 60.0, "tokens_per_s": 10.0},
            {"event": "start", "step": 12, "machine": "Intel", "bf16": True},   # after the checkpoint
            {"event": "train", "step": 12, "elapsed_s": 90.0, "tokens_per_s": 30.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (r,) = bundle.run_rounds(run / "steps" / "8", "wavelm train ...")
    assert r["steps"] == 8 and r["tokens"] == 8 * 2 * 16 and r["minutes"] == 1.0
    assert r["hardware"] == "AMD" and r["precision"] == "float32" and r["tokens_per_s_median"] == 10
    assert r["command"] == "wavelm train ..."


def test_model_card_targets_compare_with_the_adaptive_lpc(tmp_path):
    bundle = piano_bundle()
    for d, res in (("piano", {"test": {"lpc": 3.7, "alpc64_2048_64": 3.0}, "unseen": {"lpc": 4.8, "alpc64_2048_64": 4.1}}),
                   ("bach", {"test": {"lpc": 3.7, "alpc64_2048_64": 3.4}})):
        (tmp_path / d / "test").mkdir(parents=True)
        (tmp_path / d / "baselines.json").write_text(json.dumps({"results": res}))
    base = bundle.baselines(tmp_path / "piano", tmp_path / "bach" / "test")
    assert base == {"test": {"lpc": 3.7, "alpc": 3.0}, "unseen": {"lpc": 4.8, "alpc": 4.1},
                    "bach_piano_test": {"lpc": 3.7, "alpc": 3.4}}
    m = {"test": {"bits_per_sample": 2.9}, "unseen": {"bits_per_sample": 4.2},
         "bach_piano_test": {"bits_per_sample": 3.3}, "generate": {"samples_per_s_median": 40000.0}}
    lines = bundle.targets(m, None, base).splitlines()
    assert lines[0].startswith("- met: piano corpus test below the adaptive LPC's 3.000")
    assert lines[1].startswith("- missed: unseen piano below the adaptive LPC's 4.100") and "+0.100" in lines[1]
    assert lines[2].startswith("- met: Bach-piano test") and lines[3].startswith("- met: >= 32,000")
    sc = {"bits_per_sample": 2.5, "samples": 10, "files": 2, "per_piano": {"p": 2.5}}
    whole = bundle.from_quality({"max_files": None, "score": {"test": sc, "unseen": sc}})
    assert whole["test"]["bits_per_sample"] == 2.5 and set(whole) == {"test", "unseen"}
    assert bundle.from_quality({"max_files": 3, "score": {"test": sc}}) == {}   # some files only
    assert bundle.from_quality({"score": {"test": sc}}) == {}                   # a report from before max_files
