"""Sampling options (wavelm/decode/sampling.py): every option gives the same tokens in the fast
decoder and the torch reference, the periodicity-aware temperature follows the audio, best-of
keeps the candidate the model ranks, and bad values are refused naming the option or flag."""
import dataclasses

import numpy as np
import pytest
import torch

import wavelm
from conftest import tiny
from wavelm import WaveLM
from wavelm.cli import main
from wavelm.decode import sample_ops, simd
from wavelm.decode.sampling import Sampler, Sampling, sample_torch
from wavelm.generation import start

# a value off the default for every Sampling field: a new option without one fails
# test_every_option_is_covered, and then every test below runs it through both decoders
OFF_DEFAULT = {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.02, "floor": 0.002,
               "tonal_temperature": 0.4, "tonal_threshold": 0.2, "tonal_gate_db": -60.0, "tonal_lags_ms": (1.0, 4.0),
               "tonal_window_ms": 10.0, "best_of": 3, "best_rank": 0.0}
FIELDS = [f.name for f in dataclasses.fields(Sampling)]


def make(pool=(2, 3), dtype=torch.float64):
    torch.manual_seed(0)
    return WaveLM(tiny("conformer", list(pool))).to(dtype).eval()


def sine(n, f=440.0, amp=0.5, rate=16000):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)


def test_every_option_is_covered():
    """Every option has a test value here, and a flag in the CLI (and so in bench quality)."""
    from wavelm.cli import build_parser

    assert sorted(OFF_DEFAULT) == sorted(FIELDS)
    sub = build_parser()._subparsers._group_actions[0].choices["generate"]
    flags = {o for a in sub._actions for o in a.option_strings}
    assert {f"--{n.replace('_', '-')}" for n in FIELDS} <= flags


@pytest.mark.parametrize("option", FIELDS)
def test_fast_and_reference_agree_on_each_option(option):
    """Each option alone (and the tonal ones with the tonal temperature on): the same tokens,
    the same sampler state, from a tonal prompt."""
    model = make()
    kw = {option: OFF_DEFAULT[option]}
    if option.startswith("tonal_") and option != "tonal_temperature":
        kw["tonal_temperature"] = 0.4
    runs, samplers = {}, {}
    for backend in ("fast", "torch"):
        dec = start(model, batch_size=2, seed=5, prompt=sine(700), backend=backend, **kw)
        runs[backend] = np.concatenate([dec.run(5), dec.run(120)], axis=1)
        samplers[backend] = dec.sampler
    np.testing.assert_array_equal(runs["fast"], runs["torch"])
    for k in ("hist", "r", "energy", "head", "nll"):        # to rounding (sample_ops.py)
        np.testing.assert_allclose(getattr(samplers["fast"], k).numpy(), getattr(samplers["torch"], k).numpy(),
                                   rtol=1e-12, atol=1e-12)


def test_all_options_together_float32():
    model = make(dtype=torch.float32)
    kw = {k: v for k, v in OFF_DEFAULT.items() if k not in ("top_k",)}
    runs = [np.concatenate([d.run(50), d.run(150)], 1) for d in
            (start(model, batch_size=2, seed=1, prompt=sine(500), backend=b, **kw) for b in ("fast", "torch"))]
    np.testing.assert_array_equal(*runs)


def test_sampling_rule_is_shared():
    """sample_torch and the numba draw pick the same token for the same u and temperature."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 256, generator=g, dtype=torch.float64) * 3
    u = torch.rand(64, generator=g, dtype=torch.float64)
    t = 0.5 + torch.rand(64, generator=g, dtype=torch.float64)
    ex = simd.exp_workspace(np.float64, 256)
    for s in (Sampling(), Sampling(0.5, 7), Sampling(1.3, None, 0.6), Sampling(1.0, 3, 0.5),
              Sampling(min_p=0.1), Sampling(floor=0.003), Sampling(top_p=0.8, min_p=0.05, floor=0.001),
              Sampling(floor=0.9)):
        ref = sample_torch(logits, u, s, t).numpy()
        fast = [sample_ops.sample(logits[i].numpy().copy(), s.numeric(), float(t[i]), float(u[i]), ex, np.empty(256))
                for i in range(64)]
        np.testing.assert_array_equal(fast, ref)
        p = torch.softmax(logits / t[:, None], -1)
        chosen = p[torch.arange(64), torch.from_numpy(ref)]
        if s.top_k:
            assert all(tok in k for tok, k in zip(ref, logits.topk(s.top_k, dim=-1).indices.numpy()))
        if s.min_p:
            assert (chosen >= s.min_p * p.amax(-1) * (1 - 1e-12)).all()
        if s.floor == 0.9:                                  # nothing above the floor: the most likely
            np.testing.assert_array_equal(ref, logits.argmax(-1).numpy())


def test_floor_renormalises_as_lpcnet():
    """p' = max(p - floor, 0) / sum: the empirical frequencies of many draws."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.199, 0.001] + [1e-9] * 252], dtype=torch.float64))
    s = Sampling(floor=0.002)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tok = sample_torch(logits.expand(20000, -1), u, s).numpy()
    p = np.clip(np.array([0.5, 0.3, 0.199, 0.001]) - 0.002, 0, None)
    np.testing.assert_allclose(np.bincount(tok, minlength=4)[:4] / 20000, p / p.sum(), atol=0.01)
    assert np.bincount(tok, minlength=256)[3:].sum() == 0


def test_periodicity_temperature_follows_the_audio():
    """A loud sine: the temperature falls to the tonal one; noise or a sine under the gate: it
    stays; the closed-form prime equals running the recursion over the same outputs."""
    s = Sampling(temperature=1.0, tonal_temperature=0.5)
    from wavelm.audio import mulaw_encode

    def temp_after(x):
        sm = Sampler(s, 1, 16000)
        sm.prime(torch.from_numpy(mulaw_encode(x))[None])
        return float(sm.temperature()[0]), sm

    t_sine, sm = temp_after(sine(4000, 220.0))
    assert t_sine == pytest.approx(0.5, abs=0.02)
    t_noise, _ = temp_after(np.random.default_rng(0).uniform(-0.5, 0.5, 4000).astype(np.float32))
    assert t_noise == pytest.approx(1.0, abs=0.02)
    t_quiet, _ = temp_after(sine(4000, 220.0, amp=0.002))          # -57 dB: under the -40 dB gate
    assert t_quiet == 1.0
    # the recursion (Sampler.track, as each decoder runs it) from zero == the closed form
    toks = torch.from_numpy(mulaw_encode(sine(3000, 330.0)))[None]
    run = Sampler(s, 1, 16000)
    for t in toks[0]:
        run.track(t[None])
    primed = Sampler(s, 1, 16000)
    primed.prime(toks)
    np.testing.assert_allclose(primed.r.numpy(), run.r.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(primed.energy.numpy(), run.energy.numpy(), rtol=1e-9)
    x = lambda sm: np.roll(sm.hist[0, :sm.hist.shape[1] // 2].numpy(), -int(sm.head))  # noqa: E731
    np.testing.assert_array_equal(x(primed), x(run))


def test_best_of_keeps_the_ranked_candidate():
    """best_of N decodes the same rows as batch_size N; best_rank 0 keeps the one with the
    fewest bits by the model's own score, 1 the most."""
    model = make(dtype=torch.float32)
    cands = wavelm.generate(model, seconds=0.02, batch_size=4, seed=2)
    bits = [wavelm.score(model, c).bits_per_sample for c in cands]
    best = wavelm.generate(model, seconds=0.02, best_of=4, best_rank=0.0, seed=2)
    worst = wavelm.generate(model, seconds=0.02, best_of=4, best_rank=1.0, seed=2)
    np.testing.assert_array_equal(best[0], cands[int(np.argmin(bits))])
    np.testing.assert_array_equal(worst[0], cands[int(np.argmax(bits))])
    two = wavelm.generate(model, seconds=0.02, batch_size=2, best_of=2, best_rank=0.0, seed=2, prompt=sine(100))
    assert two.shape == (2, 320)


@pytest.mark.parametrize("kw, match", [
    ({"min_p": 1.0}, "min_p"), ({"floor": -0.1}, "floor"), ({"tonal_temperature": -1}, "tonal_temperature"),
    ({"tonal_lags_ms": (5, 2)}, "tonal_lags_ms"), ({"tonal_lags_ms": "2"}, "tonal_lags_ms"),
    ({"best_of": 0}, "best_of"), ({"best_of": 65}, "best_of"), ({"best_rank": 1.5}, "best_rank"),
    ({"tonal_gate_db": float("nan")}, "tonal_gate_db"), ({"mystery": 1}, "mystery"),
    ({"best_of": 2}, "generate"), ({"best_of": 64, "batch_size": 8}, "best_of x batch_size"),
])
def test_bad_options_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        wavelm.stream(make(dtype=torch.float32), seconds=0.01, **kw)


@pytest.mark.parametrize("flags, match", [
    (["--min-p", "1"], "--min-p"), (["--tonal-lags-ms", "3,x"], "--tonal-lags-ms"),
    (["--best-of", "64", "--num-samples", "8"], "--best-of x --num-samples"), (["--floor", "nan"], "--floor"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, flags, match, tiny_checkpoint):
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "x.wav"), *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and not (tmp_path / "x.wav").exists()


def test_cli_best_of_and_tonal(tmp_path, tiny_checkpoint):
    import soundfile as sf

    out = tmp_path / "take.wav"
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "--seconds", "0.05", "--num-samples", "2",
                 "--best-of", "3", "--tonal-temperature", "0.5", "--floor", "0.002", "--no-progress",
                 "-o", str(out)]) == 0
    for i in range(2):
        assert sf.info(str(tmp_path / f"take_{i}.wav")).frames == 800


def test_cuda_graph_logic_keeps_the_sampler_state():
    """The CUDA-graph decoder's period logic (run eagerly on CPU) with a tonal, floored sampler
    equals the reference: its warm-up runs on copies of the state and the sampler."""
    from wavelm.decode.cuda import GraphDecoder
    from wavelm.decode.sampling import Noise
    from wavelm.generation import prefill, prompt_tokens

    model = make()
    kw = dict(tonal_temperature=0.4, floor=0.002, tonal_lags_ms=(1.0, 4.0))
    ref = start(model, batch_size=2, seed=4, prompt=sine(37), backend="torch", **kw)
    want = np.concatenate([ref.run(k) for k in (5, 20, 13)], axis=1)
    tokens = prompt_tokens(sine(37), 2, 16000)
    state, tok, fed = prefill(model, tokens, 2)
    sampler = Sampler(Sampling(**kw), 1, 16000)
    sampler.prime(tokens)
    dec = GraphDecoder(model, state, tok, sampler.expand(2), Noise(4, 2, "cpu"), position=fed, capture=False)
    got = np.concatenate([dec.run(k) for k in (5, 20, 13)], axis=1)
    np.testing.assert_array_equal(got, want)


def test_a_checkpoint_ships_its_own_sampling(tmp_path, capsys):
    """config.json "sampling": generate / stream / the CLI use it when given nothing; options and
    flags apply on top of it; a bad one is refused at load naming the file."""
    import json

    model = make(dtype=torch.float32)
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "sampling": {"min_p": 0.3, "temperature": 0.7}}))
    own = WaveLM.from_pretrained(ck)
    assert own.sampling == Sampling(min_p=0.3, temperature=0.7) and str(own.sampling) == "temperature 0.7, min_p 0.3"
    own.save_pretrained(tmp_path / "again")                                               # kept when saved
    assert WaveLM.from_pretrained(tmp_path / "again").sampling == own.sampling
    want = wavelm.generate(model, seconds=0.02, seed=3, min_p=0.3, temperature=0.7)
    np.testing.assert_array_equal(wavelm.generate(own, seconds=0.02, seed=3), want)
    np.testing.assert_array_equal(np.concatenate(list(wavelm.stream(own, seconds=0.02, seed=3)), 1), want)
    np.testing.assert_array_equal(wavelm.generate(own, seconds=0.02, seed=3, min_p=0.0),      # on top of it
                                  wavelm.generate(model, seconds=0.02, seed=3, temperature=0.7))
    np.testing.assert_array_equal(wavelm.generate(own, seconds=0.02, seed=3, sampling=Sampling()),
                                  wavelm.generate(model, seconds=0.02, seed=3))               # replaced whole
    import soundfile as sf

    for name, flags, ref in (("a", [], want), ("b", ["--temperature", "1"], wavelm.generate(model, seconds=0.02, seed=3, min_p=0.3))):
        assert main(["generate", "--checkpoint", str(ck), "--seconds", "0.02", "--seed", "3", "--no-progress",
                     "-o", str(tmp_path / f"{name}.wav"), *flags]) == 0
        got, _ = sf.read(str(tmp_path / f"{name}.wav"), dtype="float32")
        np.testing.assert_allclose(got, ref[0], atol=1e-4)                                      # 16-bit file
    (ck / "config.json").write_text(json.dumps({**cfg, "sampling": {"min_p": 2}}))
    assert main(["generate", "--checkpoint", str(ck), "-o", str(tmp_path / "c.wav")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "min_p" in err and "Traceback" not in err


def test_zero_turns_off_top_k_and_the_tonal_temperature():
    """0 is "off" for the two options whose default is off, so a flag can undo a model's own."""
    assert Sampling.make(Sampling(top_k=5, tonal_temperature=0.5), top_k=0, tonal_temperature=0) == Sampling()
    assert str(Sampling(tonal_lags_ms=(2.0, 30.0))) == "temperature 1, tonal_lags_ms 2,30"
