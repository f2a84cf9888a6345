"""The trainer (wavelm.train) and `wavelm train`: learning, exact resume, crash safety, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import wavelm.train as wt
from wavelm.checkpoint import CheckpointError
from wavelm.model.lm import load_model
from wavelm.cli import main
from wavelm.commands.train import merge
from wavelm.data.folder import prepare_folder, write_cache
from wavelm.model.config import ModelConfig
from wavelm.train import CropSampler, TrainConfig, configs_from_recipe, train

SR = 16000
TINY = ["--model", "tiny", "--batch-size", "4", "--seq-len", "128", "--warmup", "2",
        "--set", "train.val_crops=4", "--no-progress"]


def tones(n, seed):
    """Tones + noise: a sine of random pitch plus a little white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.4 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tones")
    for split, n in (("train", 8), ("val", 2)):
        (d / split).mkdir()
        for k in range(n):
            sf.write(str(d / split / f"t{k}.wav"), tones(8000, seed=100 * (split == "val") + k), SR,
                     subtype="PCM_16")
    return d


@pytest.fixture(scope="module")
def cache(audio_dir, tmp_path_factory):
    return prepare_folder(audio_dir, tmp_path_factory.mktemp("c") / "cache", workers=1, progress=False)


def tiny_cfg(**kw):
    base = dict(steps=20, batch_size=4, seq_len=128, lr=1e-2, warmup=2, eval_every=10, val_crops=4)
    return TrainConfig(**{**base, **kw})


def weights(run, name="last"):
    return load_file(str(run / name / "model.safetensors"))


def test_training_beats_unigram_entropy(cache, tmp_path):
    val = np.concatenate(cache.split_tokens("val"))
    p = np.bincount(val, minlength=256) / len(val)
    unigram = -(p[p > 0] * np.log2(p[p > 0])).sum()
    res = train(tiny_cfg(steps=80, seq_len=256, eval_every=40, val_crops=8), ModelConfig.from_name("tiny"),
                cache, tmp_path / "run", progress=False)
    assert res["best_val_bits"] < unigram - 1.0, (res["best_val_bits"], unigram)
    vals = [r["val_bits"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())
            if r["event"] == "val"]
    assert vals == sorted(vals, reverse=True) and len(vals) == 2
    best = load_model(tmp_path / "run" / "best")
    assert best.checkpoint_meta["step"] == res["best_step"] and best.checkpoint_meta["val_bits"] == vals[-1]


def test_resume_after_interruption_matches_uninterrupted_run(cache, tmp_path):
    mcfg = ModelConfig.from_name("tiny", dropout=0.1)  # dropout: the RNG state must be restored too
    cfg = tiny_cfg(eval_every=7)
    full = train(cfg, mcfg, cache, tmp_path / "a", progress=False)
    part = train(cfg, mcfg, cache, tmp_path / "b", progress=False, stop_at=10)
    assert part["stopped"] == "stop_at" and part["step"] == 10
    again = train(cfg, mcfg, cache, tmp_path / "b", progress=False, resume=True)
    assert again["step"] == full["step"] == 20
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["val_bits"] == full["val_bits"]


def test_cli_resume_extends_a_run_like_one_long_run(audio_dir, cache, tmp_path):
    # the schedule is set by --steps: stopping at 6 of 12 and resuming equals running 12
    assert main(["train", "--data", str(cache.path), "--out", str(tmp_path / "a"), "--steps", "12",
                 "--eval-every", "6", *TINY]) == 0
    assert main(["train", "--data", str(audio_dir), "--out", str(tmp_path / "b"), "--steps", "12",
                 "--eval-every", "6", "--stop-at", "6", *TINY]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--no-progress"]) == 0  # run.json
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "cache" / "meta.json").is_file()
    rows = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r["event"] == "start"]   # each invocation names its machine
    assert [r["step"] for r in starts] == [0, 6] and all(r["machine"] and r["device"] == "cpu" for r in starts)


def test_time_budget_stops_cleanly_and_saves_last(cache, tmp_path):
    res = train(tiny_cfg(steps=10_000, max_minutes=1e-6), ModelConfig.from_name("tiny"), cache,
                tmp_path / "run", progress=False)
    assert res["stopped"] == "time" and res["step"] == 1
    model, state = wt.load_trainer_state(tmp_path / "run" / "last", ModelConfig.from_name("tiny"))
    assert state["step"] == 1 and model.checkpoint_meta["val_bits"] == res["val_bits"]


def test_crops_are_teacher_forced_slices(tmp_path):
    toks = np.arange(1000) % 256
    c = write_cache(tmp_path / "c", [("a.wav", "train", toks[:300], 0, 0), ("b.wav", "train", toks[:50], 0, 0)],
                    SR, "mulaw", tmp_path)
    s = CropSampler(wt.split_segments(c, "train"), 64, seed=3)
    assert s.skipped == 1  # b.wav is shorter than a crop
    x, y = s.batch(5, 0, 16)
    assert x.shape == y.shape == (16, 64) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert all(int(x[b, 0]) == (128 if int(y[b, 0]) == 0 else int(y[b, 0]) - 1) for b in range(16))
    assert torch.equal(s.batch(5, 0, 16)[1], y) and not torch.equal(s.batch(6, 0, 16)[1], y)
    assert not torch.equal(CropSampler(wt.split_segments(c, "train"), 64, seed=3, rank=1).batch(5, 0, 16)[1], y)


def test_youtubemix_crops_never_cross_chunks(tmp_path):
    toks = np.repeat(np.arange(4, dtype=np.uint8), 64)  # 4 chunks of 64: chunk j is all j
    c = write_cache(tmp_path / "c", [("out0.wav", "train", toks, 0, 0)], SR, "mulaw-s4", tmp_path,
                    settings={"format": "youtubemix", "chunk": 64})
    x, y = CropSampler(wt.split_segments(c, "train"), 64, seed=0).batch(0, 0, 8)
    assert all(len(set(row.tolist())) == 1 for row in y) and (x[:, 0] == 128).all()


def test_recipe_file_then_flags_then_set(tmp_path):
    rec = {"model": {"preset": "tiny", "d_model": 32, "n_heads": 2}, "train": {"lr": 1, "steps": 5},
           "data": {"format": "folder"}}
    merged = merge([rec, {"train": {"steps": 9}}, {"model": {"attn_window": 4}, "train": {"lr": 0.5}}])
    m, t, d = configs_from_recipe(merged)
    assert (m.d_model, m.attn_window, m.n_layers, t.steps, t.lr) == (32, 4, 2, 9, 0.5)
    assert merge([rec, {"model": {"preset": "small"}}])["model"] == {"preset": "small"}
    with pytest.raises(ValueError, match="warmpu"):
        configs_from_recipe({"train": {"warmpu": 3}})
    with pytest.raises(ValueError, match="train.steps"):
        configs_from_recipe({"train": {"steps": "many"}})


# ----------------------------------------------------------------------------- faults

def test_empty_folder_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "empty") in err[0]


def test_nan_loss_stops_naming_the_step_and_keeps_last_good(audio_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = wt.loop.loss_fn

    def loss_nan_from_step_8(logits, y):
        calls["n"] += 1
        out = real(logits, y)
        return out * float("nan") if calls["n"] >= 8 else out

    monkeypatch.setattr(wt.loop, "loss_fn", loss_nan_from_step_8)
    rc = main(["train", "--data", str(audio_dir), "--out", str(tmp_path / "run"), "--steps", "20",
               "--eval-every", "5", *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and "step 8" in err and "step 5" in err
    model = load_model(tmp_path / "run" / "last")
    assert model.checkpoint_meta["step"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_with_other_model_config_is_refused(audio_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--data", str(audio_dir), "--out", run, "--steps", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--steps", "4", "--set", "model.d_model=32",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "d_model" in err[0]
    assert main(["train", "--data", str(audio_dir), "--out", run, "--steps", "2", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="differs"):
        train(tiny_cfg(), ModelConfig.from_name("tiny", arch="conv"), tmp_path / "run" / "cache",
              tmp_path / "run", resume=True, progress=False)


def test_init_starts_from_a_models_weights(audio_dir, cache, tmp_path, capsys):
    run = tmp_path / "a"
    assert main(["train", "--data", str(cache.path), "--out", str(run), "--steps", "6", *TINY]) == 0
    start = load_model(run / "best")
    res = train(tiny_cfg(steps=1, lr=1e-12, warmup=0, init=str(run / "best")), ModelConfig.from_name("tiny"),
                cache, tmp_path / "b", progress=False)
    b = weights(tmp_path / "b")            # one step at lr ~0: the weights it started from
    assert all(torch.allclose(b[k], v, atol=1e-6) for k, v in start.state_dict().items())
    assert res["step"] == 1 and json.loads((tmp_path / "b" / "run.json").read_text())["train"]["init"]
    capsys.readouterr()
    assert main(["train", "--data", str(cache.path), "--out", str(tmp_path / "c"), "--steps", "2",
                 "--init", str(run / "best"), *TINY, "--set", "model.d_model=32"]) == 2
    assert "d_model" in capsys.readouterr().err
    assert main(["train", "--data", str(cache.path), "--out", str(tmp_path / "d"), "--steps", "2",
                 "--init", str(tmp_path / "nowhere"), *TINY]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_interrupted_swap_is_recovered(cache, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(steps=4, eval_every=4), ModelConfig.from_name("tiny"), cache, run, progress=False)
    os.replace(run / "last", run / ".last.old")          # killed between the two renames
    (run / ".last.tmp-1-abc").mkdir()                   # and a half-written new one
    res = train(tiny_cfg(steps=6, eval_every=4), ModelConfig.from_name("tiny"), cache, run, resume=True,
                progress=False)
    assert res["step"] == 6 and not (run / ".last.old").exists() and not (run / ".last.tmp-1-abc").exists()


def test_sigkill_leaves_a_consistent_checkpoint_that_resumes(cache, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wavelm", "train", "--data", str(cache.path), "--out", str(run),
           "--steps", "100000", "--eval-every", "3", "--set", "train.save_every=1", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (run / "last" / "trainer_state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few more saves: the kill lands at some point of the loop
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = wt.prepare_run_dir(run, resume=True, overwrite=False)  # what --resume does first
    model, state = wt.load_trainer_state(last, ModelConfig.from_name("tiny"))
    assert state["step"] == model.checkpoint_meta["step"] >= 1
    res = train(tiny_cfg(steps=state["step"] + 2, eval_every=3, save_every=1), ModelConfig.from_name("tiny"),
                cache, run, resume=True, progress=False)
    assert res["step"] == state["step"] + 2 and not math.isnan(res["val_bits"])


def test_bf16_cpu_steps_track_float32(cache, tmp_path, monkeypatch):
    """bf16 autocast (the CPU default where the CPU multiplies bf16 natively) follows the float32
    loss curve over the first steps, and validation stays float32."""
    monkeypatch.setattr(wt.loop, "cpu_has_bf16", lambda: True)
    assert wt.use_bf16("cpu", TrainConfig()) and not wt.use_bf16("cpu", TrainConfig(amp=False))
    curves = {}
    for amp in (False, True):
        train(tiny_cfg(steps=12, eval_every=12, log_every=1, amp=amp), ModelConfig.from_name("tiny", arch="conformer"),
              cache, tmp_path / str(amp), progress=False)
        curves[amp] = [r["loss_bits"] for r in map(json.loads, (tmp_path / str(amp) / "metrics.jsonl").open())
                       if r["event"] == "train"]
    assert len(curves[True]) == 12 and curves[True] != curves[False]
    np.testing.assert_allclose(curves[True], curves[False], atol=0.02)


def test_input_noise_perturbs_inputs_only_and_is_reproducible(tmp_path):
    toks = (np.arange(3000) * 7) % 256
    c = write_cache(tmp_path / "c", [("a.wav", "train", toks, 0, 0)], SR, "mulaw", tmp_path)
    segs = wt.split_segments(c, "train")
    x0, y0 = CropSampler(segs, 256, seed=1).batch(4, 0, 32)
    noisy = CropSampler(segs, 256, seed=1, input_noise=3.0)
    x, y = noisy.batch(4, 0, 32)
    assert torch.equal(y, y0)                                   # targets stay clean
    d = (x - x0).abs()
    assert d.max() > 0 and x.min() >= 0 and x.max() <= 255     # inputs moved, within the vocabulary
    per_crop = d.float().mean(dim=1)
    assert per_crop.max() > 4 * per_crop.min()                 # each crop has its own noise level
    assert float((x - x0).float().mean().abs()) < 0.1          # zero-mean
    assert torch.equal(noisy.batch(4, 0, 32)[0], x)             # same step, same noise: exact resume


def test_training_with_input_noise_runs_and_records_it(audio_dir, tmp_path):
    assert main(["train", "--data", str(audio_dir), "--out", str(tmp_path / "r"), "--model", "tiny",
                 "--steps", "3", "--batch-size", "2", "--seq-len", "64", "--eval-every", "3",
                 "--input-noise", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train"]["input_noise"] == 2.0
    assert main(["train", "--data", str(audio_dir), "--out", str(tmp_path / "bad"), "--model", "tiny",
                 "--input-noise", "-1", "--no-progress"]) == 2


def test_compiled_training_follows_eager(cache, tmp_path):
    """`train.compile` (torch.compile of the training forward, here on CPU in float32) gives the
    eager loss curve over the first steps within float tolerance."""
    curves = {}
    for comp in (False, True):
        train(tiny_cfg(steps=6, eval_every=6, log_every=1, amp=False, compile=comp),
              ModelConfig.from_name("tiny", arch="conformer"), cache, tmp_path / str(comp), progress=False)
        curves[comp] = [r["loss_bits"] for r in map(json.loads, (tmp_path / str(comp) / "metrics.jsonl").open())
                        if r["event"] == "train"]
    assert len(curves[True]) == 6
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
def test_bench_train_prints_tokens_per_s_and_compile_time(compiled, monkeypatch, capsys):
    """`wavelm bench train` prints one row per preset; with --compile, a compile-time column
    (torch.compile is replaced by a slow identity here: the column is the first step's extra time)."""
    if compiled:
        monkeypatch.setattr(torch, "compile", lambda m: _SlowFirstCall(m))
    argv = ["bench", "train", "--presets", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch-size", "1",
            "--seq-len", "64", "--no-amp"] + (["--compile"] if compiled else [])
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(out) if ln.startswith("preset"))
    row = out[head + 1].split()
    assert row[0] == "tiny" and float(row[4].replace(",", "")) > 0
    assert ("compile s" in out[head]) == compiled
    if compiled:
        assert float(row[5]) >= 0.4


class _SlowFirstCall(torch.nn.Module):
    """Stands in for a compiled module: the first call pays a 0.5 s 'compile'."""

    def __init__(self, m):
        super().__init__()
        self.m, self.done = m, False

    def forward(self, x):
        if not self.done:
            time.sleep(0.5)
            self.done = True
        return self.m(x)


def test_lpc_path_trains_and_resumes_exactly(audio_dir, cache, tmp_path):
    """The LPC path (docs/design.md) through the CLI's --set; its numba step in training keeps
    the exact resume; the untrained model starts at the LPC's score and training improves on it."""
    lpc = ["--set", "model.lpc_order=4", "--set", "model.lpc_window=48", "--set", "model.lpc_hop=16"]
    assert main(["train", "--data", str(cache.path), "--out", str(tmp_path / "a"), "--steps", "12",
                 "--eval-every", "6", *TINY, *lpc]) == 0
    assert main(["train", "--data", str(cache.path), "--out", str(tmp_path / "b"), "--steps", "12",
                 "--eval-every", "6", "--stop-at", "6", *TINY, *lpc]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--no-progress"]) == 0
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert "lpc_gate.bias" in a and all(torch.equal(a[k], b[k]) for k in a)
    vals = [r["val_bits"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").open()) if r["event"] == "val"]
    assert load_model(tmp_path / "a" / "best").config.lpc_order == 4 and vals[-1] < 8


def test_keep_every_keeps_the_model_at_those_steps(audio_dir, cache, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(cache.path), "--out", str(run), "--steps", "12", "--eval-every", "12",
                 "--keep-every", "5", *TINY]) == 0
    assert sorted(p.name for p in (run / "steps").iterdir()) == ["10", "5"]
    kept = load_model(run / "steps" / "10")
    assert kept.checkpoint_meta["step"] == 10 and not (run / "steps" / "10" / "trainer_state.pt").exists()
    assert main(["train", "--out", str(run), "--resume", "--steps", "16", "--no-progress"]) == 0   # run.json keeps it
    assert sorted(int(p.name) for p in (run / "steps").iterdir()) == [5, 10, 15]
