"""Generation: the fast decode step equals the model's forward, sampling is deterministic and
identical across decoders, prompts and streaming behave, and the CLI checks its input."""
import logging
import math

import numpy as np
import pytest
import torch

import wavelm
from conftest import CASE_IDS, CASES, tiny
from wavelm import WaveLM
from wavelm.cli import main
from wavelm.decode.lower import compile_model
from wavelm.decode.sampling import Noise, Sampler, Sampling
from wavelm.generation import prefill, prompt_tokens, start

POOLS = [[], [2, 3]]   # pooled with factors that do not divide the test lengths
T = 61                 # > attn_window (8) at every stage, so the KV rings wrap


def make(arch="conformer", pool=(), seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return WaveLM(tiny(arch, pool, **kw)).to(dtype).eval()


def sine(n, rate=16000, f=440.0):
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)


# ----------------------------------------------------------------------------- fast step

@pytest.mark.parametrize("arch, pool, kw", CASES, ids=CASE_IDS)
def test_fast_step_matches_forward(arch, pool, kw):
    """Teacher-forced fast steps after a prefill == the full forward's logits (float64)."""
    model = make(arch, pool, **kw)
    x = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)
        state = model.init_state(2)
        model(x[:, :20], state=state)
    prog = compile_model(model, 2)
    logits = prog.teacher_forced(state, x[:, 20:].numpy())         # (T - 20, B, V)
    np.testing.assert_allclose(logits.transpose(1, 0, 2), full[:, 20:].numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ["conformer", "conv"])
@pytest.mark.parametrize("pool", POOLS, ids=["flat", "pooled"])
@pytest.mark.parametrize("sampling", [{}, {"top_k": 5}, {"top_p": 0.8, "temperature": 0.7}],
                         ids=["plain", "top_k", "top_p"])
def test_fast_and_reference_generate_the_same(arch, pool, sampling):
    model = make(arch, pool)
    prompt = sine(37)
    runs = {}
    for backend in ("fast", "torch"):
        dec = start(model, batch_size=2, seed=3, prompt=prompt, backend=backend, **sampling)
        runs[backend] = np.concatenate([dec.run(7), dec.run(30)], axis=1)
        assert dec.name == {"fast": "numba", "torch": "torch"}[backend]
    np.testing.assert_array_equal(runs["fast"], runs["torch"])


# ----------------------------------------------------------------------------- generate / stream

def test_same_seed_same_audio_different_seed_differs():
    model = make(dtype=torch.float32)
    a = wavelm.generate(model, seconds=0.01, batch_size=2, seed=5)
    b = wavelm.generate(model, seconds=0.01, batch_size=2, seed=5)
    c = wavelm.generate(model, seconds=0.01, batch_size=2, seed=6)
    assert a.shape == (2, 160) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])          # the streams of a batch are independent
    assert np.abs(a).max() <= 1


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_prompt_continuation_keeps_the_prompt_state(backend):
    """The logits of the first generated sample == the full forward over [128, prompt]."""
    model = make("conformer", [2, 3])
    prompt = sine(45)
    dec = start(model, batch_size=1, prompt=prompt, backend=backend)
    dec.run(1)
    tokens = torch.cat([torch.tensor([[128]]), prompt_tokens(prompt, 1, 16000)], dim=1)
    with torch.no_grad():
        want = model(tokens)[:, -1]
    torch.testing.assert_close(dec.last_logits.to(want.dtype), want, rtol=0, atol=1e-9)
    # and the prompt matters: from silence the first logits differ
    silent = start(model, batch_size=1, backend=backend)
    silent.run(1)
    assert not torch.allclose(silent.last_logits.to(want.dtype), want)


def test_stream_chunks_concatenate_to_generate():
    model = make("conv", [2, 3], dtype=torch.float32)
    kw = dict(seconds=0.02, batch_size=2, seed=1, prompt=sine(50), top_p=0.9)
    whole = wavelm.generate(model, **kw)
    chunks = list(wavelm.stream(model, chunk_samples=37, **kw))
    assert [c.shape[1] for c in chunks] == [37] * 8 + [24]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)


def test_cuda_graph_decoder_logic_matches_reference():
    """The CUDA-graph decoder's static-state and period logic, run eagerly on CPU."""
    from wavelm.decode.cuda import GraphDecoder

    model = make("conformer", [2, 3])
    for n_prompt in (None, 37):                      # 37 inputs: not a multiple of the period 6
        prompt = None if n_prompt is None else sine(n_prompt)
        ref = start(model, batch_size=2, seed=4, prompt=prompt, backend="torch")
        want = np.concatenate([ref.run(k) for k in (5, 1, 20, 13)], axis=1)
        state, tok, fed = prefill(model, prompt_tokens(prompt, 2, 16000), 2)
        dec = GraphDecoder(model, state, tok, Sampler(Sampling(), 2, 16000), Noise(4, 2, "cpu"), position=fed,
                           capture=False)
        got = np.concatenate([dec.run(k) for k in (5, 1, 20, 13)], axis=1)
        np.testing.assert_array_equal(got, want)


def test_state_memory_does_not_grow():
    model = make("conformer", [2, 3], dtype=torch.float32)
    dec = start(model, batch_size=2)
    dec.run(10)
    before = dec.state_nbytes()
    dec.run(3000)
    assert dec.state_nbytes() == before


def test_unsupported_model_falls_back_to_reference(monkeypatch, caplog):
    from wavelm.decode import lower as program

    def refuse(model, batch_size):
        raise program.Unsupported("block Mystery")

    monkeypatch.setattr(program, "compile_model", refuse)
    with caplog.at_level(logging.INFO, logger="wavelm.decode"):
        dec = start(make(), batch_size=1)
    assert dec.name == "torch" and "Mystery" in caplog.text
    with pytest.raises(ValueError, match="Mystery"):
        start(make(), batch_size=1, backend="fast")


@pytest.mark.parametrize("kw, match", [
    ({"seconds": 0}, "seconds"), ({"seconds": math.nan}, "seconds"), ({"seconds": 601}, "600"),
    ({"seconds": 1e-6}, "less than one sample"), ({"temperature": 0}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"batch_size": 0}, "batch_size"), ({"chunk_samples": 0}, "chunk_samples"),
    ({"prompt": np.zeros(0)}, "no samples"), ({"prompt": np.array([0.1, np.nan])}, "NaN"),
    ({"prompt": "/no/such.wav"}, "no such file"), ({"backend": "gpu"}, "backend"),
])
def test_bad_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        wavelm.stream(make(dtype=torch.float32), **{"seconds": 0.01, **kw})


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    make("conformer", [2, 2], dtype=torch.float32).save_pretrained(path)
    return path


def test_cli_writes_wavs_of_the_right_length_and_rate(checkpoint, tmp_path, capsys):
    import soundfile as sf

    from wavelm.audio import save_audio

    out = tmp_path / "take.wav"
    assert main(["generate", "--checkpoint", str(checkpoint), "--seconds", "0.05", "--num-samples", "2",
                 "--seed", "3", "-o", str(out), "--no-progress"]) == 0
    for i in range(2):
        info = sf.info(str(tmp_path / f"take_{i}.wav"))
        assert (info.samplerate, info.frames, info.channels) == (16000, 800, 1)
    assert "take_0.wav" in capsys.readouterr().out
    # a prompt at another rate is resampled; --keep-prompt writes it first
    prompt = tmp_path / "p8k.wav"
    save_audio(prompt, sine(800, rate=8000), 8000)
    assert main(["generate", "--checkpoint", str(checkpoint), "--seconds", "0.01", "--prompt", str(prompt),
                 "--prompt-seconds", "0.05", "--keep-prompt", "-o", str(tmp_path / "c.wav"),
                 "--no-progress"]) == 0
    assert sf.info(str(tmp_path / "c.wav")).frames == 800 + 160


@pytest.mark.parametrize("extra, match", [
    (["--seconds", "0"], "--seconds"), (["--seconds", "nan"], "--seconds"), (["--seconds", "1000"], "600"),
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--top-k", "-1"], "--top-k"),
    (["--num-samples", "0"], "--num-samples"), (["--prompt", "MISSING"], "no such file"),
    (["--prompt", "GARBAGE"], "cannot read audio"), (["--prompt-seconds", "1"], "needs --prompt"),
    (["--checkpoint", "OTHER_CODEC"], "codec"),
])
def test_cli_bad_input_exits_2_with_one_line(checkpoint, tmp_path, capsys, extra, match):
    import json
    import shutil

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    meta = json.loads((other / "config.json").read_text())
    meta["codec"] = meta["model"]["codec"] = "dac"
    (other / "config.json").write_text(json.dumps(meta))
    subst = {"MISSING": str(tmp_path / "missing.wav"), "GARBAGE": str(garbage), "OTHER_CODEC": str(other)}
    args = ["generate", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "x.wav"), "--no-progress"]
    rc = main(args + [subst.get(a, a) for a in extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("arch, pool, kw", [("conformer", [2, 3], {}), ("conv/conv/conformer", [2, 3],
                                            {"lpc_order": 3, "lpc_window": 12, "lpc_hop": 6})], ids=["pooled", "lpc"])
def test_a_shared_prompt_is_prefilled_once_for_every_stream(arch, pool, kw):
    """Prompt memory and time do not grow with the number of streams: one stream is prefilled
    and its state broadcast, the same state as prefilling every stream."""
    from wavelm.audio import mulaw_encode
    from wavelm.generation import prefill

    model = make(arch, pool, **kw)
    tokens = torch.from_numpy(mulaw_encode(sine(50)))[None]                  # (1, N): shared
    with torch.no_grad():
        once, tok1, fed1 = prefill(model, tokens, 3)
        each, tok3, fed3 = prefill(model, tokens.expand(3, -1).clone(), 3)
    assert fed1 == fed3 and torch.equal(tok1, tok3) and once.batch_size == 3
    torch.testing.assert_close(once.floats, each.floats, rtol=0, atol=1e-12)
    assert torch.equal(once.ints, each.ints)


def test_cli_writes_as_it_generates_the_same_audio_as_the_api(checkpoint, tmp_path):
    """Long outputs are appended to their files chunk by chunk (memory bounded in --seconds),
    and hold exactly the API's audio (16-bit PCM)."""
    import soundfile as sf

    from wavelm import WaveLM, generate
    from wavelm.audio import save_audio
    from wavelm.cli import main

    out = tmp_path / "x.wav"
    assert main(["generate", "--checkpoint", str(checkpoint), "--seconds", "0.6", "--num-samples", "2",
                 "--seed", "4", "-o", str(out), "--no-progress"]) == 0
    want = generate(WaveLM.from_pretrained(checkpoint), seconds=0.6, batch_size=2, seed=4)
    for i in range(2):
        save_audio(tmp_path / "ref" / f"{i}.wav", want[i])                    # written in one piece
        got, sr = sf.read(tmp_path / f"x_{i}.wav", dtype="int16")
        assert sr == 16000 and len(got) == 9600
        np.testing.assert_array_equal(got, sf.read(tmp_path / "ref" / f"{i}.wav", dtype="int16")[0])
    assert not list(tmp_path.glob(".*"))                                    # no temp files left
