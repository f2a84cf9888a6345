"""YouTubeMix with state-spaces/s4 conventions (wavelm.data.youtubemix)."""
import numpy as np
import pytest
import soundfile as sf
import torch

from wavelm.audio import load_audio, mulaw_encode
from wavelm.cli import main
from wavelm.data.youtubemix import YouTubeMix, prepare_youtubemix, split_bounds

SR = 16000
CHUNK = 1024
N_FILES = 20
STEREO, SHORT, RESAMPLED, QUIET = 7, 3, 12, 19   # clip numbers with something special


def clip_len(k):
    return 500 if k == SHORT else CHUNK * (1 + k % 3) + 37 * k   # remainders to drop


@pytest.fixture(scope="module")
def ytm(tmp_path_factory):
    """clip_1.wav .. clip_20.wav: natural order differs from lexicographic (clip_10 < clip_2)."""
    d = tmp_path_factory.mktemp("youtube_mix")
    rng = np.random.default_rng(0)
    for k in range(1, N_FILES + 1):
        n = clip_len(k)
        if k == STEREO:
            sf.write(str(d / f"clip_{k}.wav"), 0.3 * rng.standard_normal((n, 2)).clip(-3, 3) / 3, SR)
        elif k == RESAMPLED:
            sf.write(str(d / f"clip_{k}.wav"), 0.1 * rng.standard_normal(2 * n).clip(-3, 3), 2 * SR)
        else:
            amp = 0.01 if k == QUIET else 0.3
            sf.write(str(d / f"clip_{k}.wav"), amp * rng.standard_normal(n).clip(-3, 3) / 3, SR)
    (d / "README.md").write_text("not audio")
    return d


def natural_names():
    return [f"clip_{k}.wav" for k in range(1, N_FILES + 1)]


def s4_reference(x):
    """s4's mu_law_encode (src/dataloaders/audio.py), written out independently in torch:
    minmax_scale to [-1, 1] with +1e-6, compand log1p(mu |x + 1e-8|), quantize
    floor((y + 1) / 2 * (256 - 0.01) + 0.005)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    s = -1 + 2 * (t - t.min()) / (t.max() - t.min() + 1e-6)
    mu = torch.tensor(255.0)
    y = torch.sign(s) * (torch.log1p(mu * torch.abs(s + 1e-8)) / torch.log1p(mu))
    y = (y + 1) / 2
    y = y * (256 - 0.01)
    y = y + 0.01 / 2
    return y.long().numpy()


def test_split_bounds_follow_s4_index_arithmetic():
    assert split_bounds(241) == {"train": (0, 212), "val": (212, 226), "test": (226, 241)}
    assert split_bounds(20) == {"train": (0, 17), "val": (17, 18), "test": (18, 20)}
    for n in range(1, 300):
        b = split_bounds(n)
        assert b["train"][0] == 0 and b["train"][1] == b["val"][0] and b["val"][1] == b["test"][0]
        assert b["test"][1] == n and b["train"][1] == int(0.88 * n)


def test_files_are_natural_sorted_and_split_by_file(ytm):
    names = natural_names()
    got = {s: [p.name for p in YouTubeMix(ytm, s, chunk=CHUNK).files] for s in ("train", "val", "test")}
    assert got == {"train": names[:17], "val": names[17:18], "test": names[18:]}
    assert got["train"][:3] == ["clip_1.wav", "clip_2.wav", "clip_3.wav"]


def test_chunk_counts_drop_the_remainder(ytm):
    ds = YouTubeMix(ytm, "train", chunk=CHUNK)
    want = [clip_len(k) // CHUNK for k in range(1, 18)]
    assert ds.chunks_per_file == want and len(ds) == sum(want)
    assert ds.chunks_per_file[SHORT - 1] == 0   # shorter than a chunk: no chunk at all
    assert ds.locate(0) == (0, 0) and ds.locate(want[0]) == (1, 0)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_s4_codes_match_the_floor_formula(ytm):
    ds = YouTubeMix(ytm, "train", chunk=CHUNK)
    for i in range(len(ds)):
        f, j = ds.locate(i)
        audio = load_audio(ds.files[f], SR)[j * CHUNK:(j + 1) * CHUNK]
        x, y = ds[i]
        np.testing.assert_array_equal(y.numpy(), s4_reference(audio), err_msg=f"chunk {i}")
    assert y.min() == 0 and y.max() >= 254  # min-max scaling spans the code range


def test_inputs_are_targets_shifted_right_from_128(ytm):
    ds = YouTubeMix(ytm, "test", chunk=CHUNK)
    x, y = ds[0]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (CHUNK,)
    assert x[0] == 128 and torch.equal(x[1:], y[:-1])


def test_mulaw_mode_has_no_gain_normalisation(ytm):
    ds = YouTubeMix(ytm, "val", quantization="mulaw", chunk=CHUNK)  # val = clip_18
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i][1].numpy(), mulaw_encode(ds.audio(i)))
    quiet = YouTubeMix(ytm, "test", quantization="mulaw", chunk=CHUNK)  # clip_19 (quiet), clip_20
    f, _ = quiet.locate(0)
    assert quiet.files[f].name == f"clip_{QUIET}.wav"
    y = quiet[0][1]
    assert 60 < y.min() and y.max() < 196  # a quiet clip stays near code 128
    assert YouTubeMix(ytm, "test", chunk=CHUNK)[0][1].min() == 0  # s4 mode rescales it


def test_stereo_is_mixed_and_other_rates_resampled(ytm):
    ds = YouTubeMix(ytm, "train", chunk=CHUNK)
    for k in (STEREO, RESAMPLED):
        f = [p.name for p in ds.files].index(f"clip_{k}.wav")
        full = load_audio(ds.files[f], SR)
        assert ds.num_samples[f] == len(full)
        i = sum(ds.chunks_per_file[:f]) + ds.chunks_per_file[f] - 1  # last chunk of the file
        j = ds.chunks_per_file[f] - 1
        np.testing.assert_array_equal(ds.audio(i), full[j * CHUNK:(j + 1) * CHUNK])


def test_default_chunk_is_131072(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(1, 4):
        sf.write(str(tmp_path / f"out{k:03d}.wav"), 0.2 * rng.standard_normal(131072 + 1000 * k).clip(-1, 1), SR)
    train = YouTubeMix(tmp_path)   # 3 files: train 2, val 0, test 1
    assert [p.name for p in train.files] == ["out001.wav", "out002.wav"] and len(train) == 2
    x, y = train[1]
    assert x.shape == (131072,) and x[0] == 128
    assert len(YouTubeMix(tmp_path, "val")) == 0 and len(YouTubeMix(tmp_path, "test")) == 1


def test_prepare_youtubemix_cache_equals_the_dataset(ytm, tmp_path):
    cache = prepare_youtubemix(ytm, tmp_path / "c", chunk=CHUNK, workers=1, progress=False)
    assert cache.codec == "mulaw-s4" and cache.meta["settings"]["chunk"] == CHUNK
    assert [s["path"] for s in cache.meta["skipped"]] == [f"clip_{SHORT}.wav"]
    assert cache.meta["splits"] == {"train": 16, "val": 1, "test": 2}  # 17 train files - the short one
    for split in ("train", "val", "test"):
        ds = YouTubeMix(ytm, split, chunk=CHUNK)
        ys = [ds[i][1].numpy() for i in range(len(ds))]
        got = np.concatenate([t.astype(np.int64) for t in cache.split_tokens(split)])
        np.testing.assert_array_equal(got, np.concatenate(ys))
    again = prepare_youtubemix(ytm, tmp_path / "c", chunk=CHUNK, workers=1, progress=False)
    assert again.reused
    mulaw = prepare_youtubemix(ytm, tmp_path / "c", quantization="mulaw", chunk=CHUNK, workers=1, progress=False)
    assert not mulaw.reused and mulaw.codec == "mulaw"


def test_cli_prepare_youtubemix(ytm, tmp_path, capsys):
    argv = ["prepare", str(ytm), "--out", str(tmp_path / "c"), "--format", "youtubemix",
            "--chunk", str(CHUNK), "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mulaw-s4" in out and "train 16, val 1, test 2" in out
    assert main(["prepare", str(ytm), "--out", str(tmp_path / "d"), "--quantization", "s4"]) == 2
    assert "youtubemix" in capsys.readouterr().err


def test_hugging_face_layout_and_bad_arguments(tmp_path):
    (tmp_path / "youtube_mix.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unzip"):
        YouTubeMix(tmp_path)
    sub = tmp_path / "youtube_mix"
    sub.mkdir()
    sf.write(str(sub / "out000.wav"), np.zeros(2048, np.float32), SR)
    ds = YouTubeMix(tmp_path, chunk=CHUNK)           # descends into the unzipped folder
    assert [p.name for p in ds.files] == [] and ds.root == sub  # 1 file: int(0.88) = 0 train files
    assert len(YouTubeMix(tmp_path, "test", chunk=CHUNK)) == 2
    with pytest.raises(ValueError, match="quantization"):
        YouTubeMix(sub, quantization="linear")
    with pytest.raises(ValueError, match="split"):
        YouTubeMix(sub, split="dev")
