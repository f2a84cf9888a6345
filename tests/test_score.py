"""Scoring audio (wavelm.score in wavelm/scoring.py, `wavelm score`, `wavelm bench score`): tiny models, CPU."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import wavelm
from wavelm import ModelConfig, WaveLM, mulaw_encode
from wavelm.cli import main
from wavelm.scoring import _rechunk, score, score_split

SR = 16000


def tiny(pool=(), seed=0, arch="conformer"):
    torch.manual_seed(seed)
    return WaveLM(ModelConfig.from_name("tiny", arch=arch, pool=list(pool))).double().eval()


def noise(n, seed=0, amp=0.3):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (amp * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)).clip(-1, 1).astype(np.float32)


def reference_bits(model, audio):
    """NLL in bits of each sample, computed independently: one forward over [128, q[:-1]],
    then log_softmax and gather."""
    q = mulaw_encode(torch.from_numpy(np.asarray(audio, dtype=np.float32)))
    x = torch.cat([torch.tensor([128]), q[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(x[None])[0].double(), dim=-1)       # (T, 256)
    return (-logp.gather(1, q[:, None])[:, 0] / math.log(2)).numpy()


# ----------------------------------------------------------------------------- library

@pytest.mark.parametrize("pool", [(), (2, 3)], ids=["flat", "pooled"])
@pytest.mark.parametrize("arch", ["conformer", "conv"])
def test_chunked_score_equals_whole_file_score(pool, arch):
    model = tiny(pool, arch=arch)
    a = noise(401)                                   # prime: no chunk size divides it
    whole = score(model, a, chunk_seconds=1.0)       # one forward pass
    assert whole.num_samples == 401
    for chunk in (1, 7, 13, 64):                     # 7, 13 divide neither 401 nor the pools
        part = score(model, a, chunk_seconds=chunk / SR)
        np.testing.assert_allclose(part.nll_bits, whole.nll_bits, rtol=0, atol=1e-6)
        assert part.total_bits == pytest.approx(whole.total_bits, rel=1e-12)


@pytest.mark.parametrize("pool", [(), (2, 3)], ids=["flat", "pooled"])
def test_bits_equal_independent_cross_entropy(pool):
    model = tiny(pool, seed=1)
    a = noise(300, seed=1)
    ref = reference_bits(model, a)
    res = score(model, a, chunk_seconds=11 / SR)
    assert res.nll_bits.dtype == np.float32 and res.nll_bits.shape == (300,)
    np.testing.assert_allclose(res.nll_bits, ref, rtol=1e-6, atol=1e-6)
    assert res.total_bits == pytest.approx(ref.sum(), rel=1e-12)
    assert res.bits_per_sample == pytest.approx(ref.mean(), rel=1e-12)
    assert res.duration_seconds == pytest.approx(300 / SR)
    assert res.path is None


def test_score_file_equals_score_array_and_torch_input(tmp_path):
    model = tiny()
    a = noise(2500, seed=2)
    f = tmp_path / "a.wav"
    sf.write(str(f), a, SR, subtype="FLOAT")
    from_file = score(model, f, chunk_seconds=300 / SR)
    from_array = score(model, a)
    from_torch = score(model, torch.from_numpy(a)[None])     # (1, N) is accepted too
    assert from_file.path == str(f)
    np.testing.assert_allclose(from_file.nll_bits, from_array.nll_bits, atol=1e-6)
    np.testing.assert_allclose(from_torch.nll_bits, from_array.nll_bits, atol=0)


def test_keep_per_sample_false_keeps_only_totals():
    model = tiny()
    a = noise(200)
    full = score(model, a, chunk_seconds=9 / SR)
    lean = score(model, a, chunk_seconds=9 / SR, keep_per_sample=False)
    assert lean.nll_bits is None
    assert lean.total_bits == pytest.approx(full.total_bits, rel=1e-12)


def test_wavelm_score_and_generate_are_functions_after_module_imports():
    import wavelm.generation
    import wavelm.scoring

    assert wavelm.score is wavelm.scoring.score and wavelm.generate is wavelm.generation.generate
    res = wavelm.score(tiny(), noise(50))
    assert isinstance(res, wavelm.ScoreResult) and res.num_samples == 50


def test_rechunk_cuts_exact_pieces():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal(k) for k in (5, 0, 17, 3, 40, 1)]
    pieces = list(_rechunk(blocks, 8))
    assert [len(p) for p in pieces[:-1]] == [8] * (len(pieces) - 1) and 0 < len(pieces[-1]) <= 8
    np.testing.assert_array_equal(np.concatenate(pieces), np.concatenate(blocks))


@pytest.mark.parametrize("bad, match", [(np.zeros(0), "empty"), (np.array([0.1, np.nan]), "NaN"),
                                        (np.zeros((2, 5)), "1-D"),
                                        (np.zeros(10, np.int16), "float waveform")])
def test_bad_arrays_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        score(tiny(), bad)


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    WaveLM(ModelConfig.from_name("tiny")).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    paths = []
    for k, n in enumerate((1600, 2345)):
        p = d / f"clip{k}.wav"
        sf.write(str(p), noise(n, seed=k), SR, subtype="FLOAT")
        paths.append(p)
    return paths


def cli(capsys, *argv):
    code = main(["score", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_has_the_keys_and_matches_the_library(ckpt, wavs, capsys):
    code, out, err = cli(capsys, *wavs, "--checkpoint", ckpt, "--json", "--chunk-seconds", "0.05")
    assert code == 0, err
    d = json.loads(out)
    assert d["checkpoint"] == str(ckpt) and d["failed"] == []
    assert [f["path"] for f in d["files"]] == [str(p) for p in wavs]
    for f in d["files"]:
        assert set(f) >= {"path", "bits_per_sample", "num_samples", "duration_seconds", "total_bits"}
    model = WaveLM.from_pretrained(ckpt)
    lib = [score(model, p) for p in wavs]
    for f, r in zip(d["files"], lib):
        assert f["num_samples"] == r.num_samples
        assert f["bits_per_sample"] == pytest.approx(r.bits_per_sample, rel=1e-6)
    pooled = sum(r.total_bits for r in lib) / sum(r.num_samples for r in lib)
    assert d["mean_bits_per_sample"] == pytest.approx(pooled, rel=1e-6)


def test_cli_table_is_aligned(ckpt, wavs, capsys):
    code, out, _ = cli(capsys, *wavs, "--checkpoint", ckpt)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "bits/sample", "total", "bits", "samples", "duration"]
    assert "all 2 files (pooled)" in lines[-1]
    widths = {len(line) for line in lines}
    assert len(widths) == 1, lines                  # every row ends in the same column


def test_cli_bad_files_exit_2_and_good_files_still_scored(ckpt, wavs, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    zero = tmp_path / "zero.wav"
    sf.write(str(zero), np.zeros(0, np.float32), SR)
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.1, np.nan, 0.2], np.float32), SR, subtype="FLOAT")
    bad = [tmp_path / "missing.wav", tmp_path, empty, text, zero, nan]
    code, out, err = cli(capsys, wavs[0], *bad, wavs[1], "--checkpoint", ckpt, "--json")
    assert code == 2
    d = json.loads(out)
    assert [f["path"] for f in d["files"]] == [str(wavs[0]), str(wavs[1])]
    assert [f["path"] for f in d["failed"]] == [str(p) for p in bad]
    lines = err.strip().splitlines()
    assert len(lines) == len(bad)
    for line, p in zip(lines, bad):
        assert line.startswith("wavelm score: error: ") and str(p) in line
    assert "NaN" in lines[-1] and "0 samples" in lines[-2] and "directory" in lines[1]


def test_cli_per_sample_npy_and_csv_one_value_per_sample(ckpt, wavs, tmp_path, capsys):
    model = WaveLM.from_pretrained(ckpt)
    lib = [score(model, p) for p in wavs]
    code, _, err = cli(capsys, *wavs, "--checkpoint", ckpt, "--per-sample", tmp_path / "nll.npy")
    assert code == 0, err
    for p, r in zip(wavs, lib):
        v = np.load(tmp_path / f"nll_{p.stem}.npy")
        assert v.dtype == np.float32 and v.shape == (r.num_samples,)
        np.testing.assert_allclose(v, r.nll_bits, atol=1e-5)
    code, _, _ = cli(capsys, wavs[0], "--checkpoint", ckpt, "--per-sample", tmp_path / "one.npy")
    assert code == 0 and np.load(tmp_path / "one.npy").shape == (lib[0].num_samples,)

    code, _, _ = cli(capsys, *wavs, "--checkpoint", ckpt, "--per-sample", tmp_path / "nll.csv")
    assert code == 0
    lines = (tmp_path / "nll.csv").read_text().splitlines()
    assert lines[0] == "file,sample,time_s,nll_bits"
    rows = [line.rsplit(",", 3) for line in lines[1:]]
    assert len(rows) == sum(r.num_samples for r in lib)
    for p, r in zip(wavs, lib):
        mine = [row for row in rows if row[0] == str(p)]
        assert [int(row[1]) for row in mine] == list(range(r.num_samples))
        np.testing.assert_allclose([float(row[3]) for row in mine], r.nll_bits, atol=1e-4)


def test_cli_plot_writes_a_real_png(ckpt, wavs, tmp_path, capsys):
    from matplotlib.image import imread

    code, _, err = cli(capsys, wavs[1], "--checkpoint", ckpt, "--plot", tmp_path / "nll.png")
    assert code == 0, err
    data = (tmp_path / "nll.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    img = imread(str(tmp_path / "nll.png"))
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05                  # drawn, not a blank canvas
    assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 100


def test_outputs_for_several_files_get_suffixed_names():
    from wavelm.commands.score import output_paths
    from wavelm.scoring import ScoreResult

    rs = [ScoreResult(p, 1.0, None, 1, 1.0, 1.0) for p in ("a/x.wav", "b/x.flac", "y.wav")]
    assert [p.name for p in output_paths("out/nll.png", rs)] == ["nll_x.png", "nll_x_2.png", "nll_y.png"]
    assert [str(p) for p in output_paths("nll.npy", rs[:1])] == ["nll.npy"]


def test_cli_rejects_bad_flags(ckpt, wavs, capsys):
    code, _, err = cli(capsys, wavs[0], "--checkpoint", ckpt, "--per-sample", "out.txt")
    assert code == 2 and ".npy or .csv" in err
    code, _, err = cli(capsys, wavs[0], "--checkpoint", ckpt, "--chunk-seconds", "0")
    assert code == 2 and "--chunk-seconds" in err


# ----------------------------------------------------------------------------- splits

CHUNK = 700


@pytest.fixture(scope="module")
def ytm(tmp_path_factory):
    """20 clips: the test split is the last two (s4 arithmetic); they hold 2 and 1 chunks of
    700 samples plus remainders; the others are short (they are never read)."""
    d = tmp_path_factory.mktemp("youtube_mix")
    for k in range(1, 21):
        n = {19: 2 * CHUNK + 123, 20: CHUNK + 5}.get(k, 50)
        sf.write(str(d / f"clip_{k}.wav"), noise(n, seed=k, amp=0.2 + 0.02 * k), SR, subtype="FLOAT")
    return d


def per_chunk_reference(model, ds):
    """The SaShiMi metric written out: every chunk (x, y) of the split through one forward pass
    from a zero state, cross-entropy by log_softmax + gather, pooled over all positions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            logp = torch.log_softmax(model(x[None])[0], dim=-1)
            total += float(-logp.gather(1, y[:, None]).sum()) / math.log(2)
            count += len(y)
    return total / count, count


@pytest.mark.parametrize("quantization", ["s4", "mulaw"])
def test_split_score_equals_independent_per_chunk_computation(ytm, quantization):
    from wavelm.data.youtubemix import YouTubeMix

    model = tiny((2, 3), seed=3)
    ds = YouTubeMix(ytm, split="test", quantization=quantization, chunk=CHUNK)
    assert len(ds) == 3
    ref, count = per_chunk_reference(model, ds)
    s = score_split(model, ytm, split="test", quantization=quantization, chunk=CHUNK,
                    chunk_seconds=97 / SR)
    assert s.num_samples == count == 3 * CHUNK and s.num_chunks == 3
    assert [f.path for f in s.files] == ["clip_19.wav", "clip_20.wav"]
    assert s.bits_per_sample == pytest.approx(ref, rel=1e-12)


def test_split_score_of_a_token_cache_equals_the_folder(ytm, tmp_path):
    from wavelm.data.youtubemix import prepare_youtubemix

    cache = prepare_youtubemix(ytm, tmp_path / "cache", chunk=CHUNK, workers=1, progress=False)
    model = tiny(seed=4)
    a = score_split(model, ytm, split="test", chunk=CHUNK, chunk_seconds=0.05)
    b = score_split(model, cache.path, split="test", chunk_seconds=0.02)
    assert b.codec == "mulaw-s4" and b.num_chunks == 3
    assert b.bits_per_sample == pytest.approx(a.bits_per_sample, rel=1e-12)


def test_cli_split_json(ytm, ckpt, capsys):
    code, out, err = cli(capsys, "--split", "test", ytm, "--chunk", CHUNK, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["split"] == "test" and d["num_chunks"] == 3 and d["codec"] == "mulaw-s4"
    assert d["num_samples"] == 3 * CHUNK and len(d["files"]) == 2
    assert d["mean_bits_per_sample"] == pytest.approx(
        score_split(WaveLM.from_pretrained(ckpt), ytm, split="test", chunk=CHUNK).bits_per_sample, rel=1e-6)


# ----------------------------------------------------------------------------- bench

def test_bench_score_reports_speed_and_machine(capsys):
    import argparse

    from wavelm.commands import bench_score

    p = argparse.ArgumentParser()
    bench_score.add_arguments(p)
    args = p.parse_args(["--model", "tiny", "--seconds", "0.05", "--chunk-seconds", "0.02",
                         "--repeat", "2", "--json"])
    assert bench_score.run(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["samples_per_second"] > 0 and d["real_time_factor"] == pytest.approx(SR / d["samples_per_second"])
    assert "random weights" in d["model"] and d["machine"]["threads"] == 1 and d["machine"]["cpu"]


def test_split_score_of_a_folder_cache_scores_whole_files(tmp_path):
    from wavelm.data.folder import prepare_folder

    for split, k in (("train", 0), ("test", 1), ("test", 2)):
        (tmp_path / "src" / split).mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / "src" / split / f"c{k}.wav"), noise(300 + 50 * k, seed=k), SR, subtype="FLOAT")
    cache = prepare_folder(tmp_path / "src", tmp_path / "cache", workers=1, progress=False)
    model = tiny(seed=5)
    s = score_split(model, cache.path, split="test", chunk_seconds=37 / SR)
    assert [f.path for f in s.files] == ["test/c1.wav", "test/c2.wav"] and s.num_chunks == 2
    for f, k in zip(s.files, (1, 2)):
        assert f.total_bits == pytest.approx(score(model, tmp_path / "src" / "test" / f"c{k}.wav").total_bits,
                                             rel=1e-12)
