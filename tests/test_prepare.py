"""Audio folder -> token cache (wavelm.data.folder) and `wavelm prepare`."""
import json
import logging
import os
import pickle

import numpy as np
import pytest
import soundfile as sf

from wavelm.audio import load_audio, mulaw_encode
from wavelm.cli import main
from wavelm.data.folder import TokenCache, assign_splits, prepare_folder, write_cache

SR = 16000


def tone(n, sr, freq=440.0, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)[:, None] + 0.05 * rng.standard_normal((n, channels))
    return (x if channels > 1 else x[:, 0]).astype(np.float32)


def write_zero_frames_wav(path):
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        f.write(np.zeros(0, dtype=np.float32))


@pytest.fixture
def mixed_dir(tmp_path):
    """Good files (16 kHz mono, 44.1 kHz stereo, a FLAC in a subfolder) plus a .txt, a corrupt
    .wav, a 0-byte .wav and a .wav with a header but no frames."""
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    for k, n in ((1, 8000), (2, 7000), (10, 6000)):       # natural order 1, 2, 10
        sf.write(str(d / f"tone_{k}.wav"), tone(n, SR, 220.0 * k, seed=k), SR, subtype="PCM_16")
    sf.write(str(d / "stereo44k.wav"), tone(17640, 44100, 330.0, seed=5, channels=2), 44100)
    sf.write(str(d / "sub" / "clip.flac"), tone(5000, SR, 550.0, seed=6), SR)
    (d / "notes.txt").write_text("not audio")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 8)
    (d / "empty.wav").write_bytes(b"")
    write_zero_frames_wav(d / "zero_frames.wav")
    return d


GOOD = ["stereo44k.wav", "sub/clip.flac", "tone_1.wav", "tone_2.wav", "tone_10.wav"]
BAD = ["corrupt.wav", "empty.wav", "zero_frames.wav"]


def test_cache_tokens_equal_mulaw_of_load_audio(mixed_dir, tmp_path):
    cache = prepare_folder(mixed_dir, tmp_path / "cache", workers=1, progress=False)
    assert [f["path"] for f in cache.files()] == GOOD  # natural order of relative paths
    assert cache.codec == "mulaw" and cache.sample_rate == SR
    assert cache.meta["source"] == str(mixed_dir.resolve())
    for f in cache.files():
        want = mulaw_encode(load_audio(mixed_dir / f["path"], SR))
        got = cache.tokens(f["index"])
        assert got.dtype == np.uint8 and f["num_samples"] == len(got)
        np.testing.assert_array_equal(got, want)
    offsets = np.load(tmp_path / "cache" / "offsets.npy")
    assert offsets.dtype == np.int64 and len(offsets) == len(GOOD) + 1
    assert (tmp_path / "cache" / "tokens.bin").stat().st_size == offsets[-1] == cache.num_samples()
    assert cache.meta["hours"]["total"] == pytest.approx(offsets[-1] / SR / 3600)


def test_unreadable_and_empty_files_are_skipped_with_one_warning(mixed_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="wavelm"):
        cache = prepare_folder(mixed_dir, tmp_path / "cache", workers=1, progress=False)
    skipped = {s["path"]: s["reason"] for s in cache.meta["skipped"]}
    assert sorted(skipped) == sorted(BAD)  # the .txt is not audio: ignored, not skipped
    assert "0 bytes" in skipped["empty.wav"] and "0 samples" in skipped["zero_frames.wav"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(b in warnings[0] for b in BAD)


def test_block_decoding_matches_whole_file(mixed_dir, tmp_path):
    # a 0.01 s block: every file is decoded in many blocks through iter_audio
    cache = prepare_folder(mixed_dir, tmp_path / "cache", workers=1, progress=False, block_seconds=0.01)
    for f in cache.files():
        want = mulaw_encode(load_audio(mixed_dir / f["path"], SR))
        got = cache.tokens(f["index"]).astype(np.int64)
        assert len(got) == len(want)
        if f["path"] == "stereo44k.wav":  # streaming resampler: equal up to rounding
            assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 1e-3
        else:
            np.testing.assert_array_equal(got, want)


def test_parallel_workers_write_the_same_cache(mixed_dir, tmp_path):
    a = prepare_folder(mixed_dir, tmp_path / "a", workers=1, progress=False)
    b = prepare_folder(mixed_dir, tmp_path / "b", workers=2, progress=False)
    assert (tmp_path / "a" / "tokens.bin").read_bytes() == (tmp_path / "b" / "tokens.bin").read_bytes()
    assert a.meta["files"] == b.meta["files"] and a.meta["skipped"] == b.meta["skipped"]


def test_split_by_train_val_test_subfolders(tmp_path):
    d = tmp_path / "d"
    layout = {"train/a.wav": 1, "train/b.wav": 2, "val/c.wav": 3, "test/d.wav": 4, "misc/e.wav": 5}
    for rel, seed in layout.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(d / rel), tone(1000, SR, seed=seed), SR)
    cache = prepare_folder(d, tmp_path / "cache", workers=1, progress=False)
    assert {f["path"]: f["split"] for f in cache.files()} == {
        "train/a.wav": "train", "train/b.wav": "train", "val/c.wav": "val", "test/d.wav": "test"}
    assert cache.meta["splits"] == {"train": 2, "val": 1, "test": 1}
    assert [s["path"] for s in cache.meta["skipped"]] == ["misc/e.wav"]
    assert [f["path"] for f in cache.files("val")] == ["val/c.wav"]
    assert len(cache.split_tokens("train")) == 2 and cache.num_samples("test") == 1000


def many_files(d, n=20):
    d.mkdir()
    for k in range(n):
        sf.write(str(d / f"f{k}.wav"), tone(400, SR, seed=k), SR)
    return d


def test_seeded_split_is_deterministic_and_follows_ratios(tmp_path):
    d = many_files(tmp_path / "d")
    a = prepare_folder(d, tmp_path / "a", split=(0.8, 0.1, 0.1), seed=3, workers=1, progress=False)
    b = prepare_folder(d, tmp_path / "b", split=(0.8, 0.1, 0.1), seed=3, workers=1, progress=False)
    assert a.meta["splits"] == {"train": 16, "val": 2, "test": 2}
    assert [f["split"] for f in a.files()] == [f["split"] for f in b.files()]
    assert assign_splits(20, (0.8, 0.1, 0.1), seed=3) == [f["split"] for f in a.files()]
    assert assign_splits(20, (0.8, 0.1, 0.1), seed=4) != assign_splits(20, (0.8, 0.1, 0.1), seed=3)


def test_tiny_folders_keep_a_train_file():
    assert assign_splits(1, (0.9, 0.05, 0.05)) == ["train"]
    assert assign_splits(3, (0.9, 0.05, 0.05)) == ["train"] * 3   # val/test may be empty
    s = assign_splits(2, (0.2, 0.4, 0.4))
    assert s.count("train") >= 1
    with pytest.raises(ValueError, match="split"):
        assign_splits(10, (0.5, 0.2, 0.2))


def test_rerun_reuses_cache_and_a_touched_file_rebuilds_it(mixed_dir, tmp_path):
    out = tmp_path / "cache"
    first = prepare_folder(mixed_dir, out, workers=1, progress=False)
    assert not first.reused
    stamp = (out / "meta.json").stat().st_mtime_ns
    again = prepare_folder(mixed_dir, out, workers=1, progress=False)
    assert again.reused and (out / "meta.json").stat().st_mtime_ns == stamp

    f = mixed_dir / "tone_2.wav"
    st = f.stat()
    os.utime(f, (st.st_atime, st.st_mtime + 10))
    rebuilt = prepare_folder(mixed_dir, out, workers=1, progress=False)
    assert not rebuilt.reused
    assert {e["path"]: e["mtime"] for e in rebuilt.files()}["tone_2.wav"] == f.stat().st_mtime
    assert prepare_folder(mixed_dir, out, workers=1, progress=False).reused
    assert not prepare_folder(mixed_dir, out, seed=1, workers=1, progress=False).reused  # settings
    # nothing left beside the cache: temp and old directories are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "cache"]


def test_failed_write_keeps_the_old_cache(tmp_path):
    out = tmp_path / "cache"
    write_cache(out, [("a.wav", "train", np.arange(10, dtype=np.uint8), 1, 2.0)], SR, "mulaw", tmp_path)

    def entries():
        yield "b.wav", "train", np.zeros(5, np.uint8), 1, 2.0
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_cache(out, entries(), SR, "mulaw", tmp_path)
    cache = TokenCache(out)
    assert [f["path"] for f in cache.files()] == ["a.wav"]
    np.testing.assert_array_equal(cache.tokens(0), np.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_write_cache_refuses_to_replace_a_non_cache_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not a wavelm token cache"):
        write_cache(tmp_path / "mine", [], SR, "mulaw", tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        write_cache(tmp_path / "c", [("a", "train", np.array([300]), 1, 1.0)], SR, "mulaw", tmp_path)


def test_token_cache_roundtrip_and_pickle(tmp_path):
    entries = [("a", "train", np.array([1, 2, 3]), 10, 1.5), ("b", "test", np.array([], np.uint8), 0, 1.0),
               ("c", "train", np.array([255]), 11, 2.5)]
    cache = write_cache(tmp_path / "c", entries, 8000, "mulaw-s4", tmp_path,
                        skipped=[{"path": "d", "reason": "bad"}])
    assert cache.codec == "mulaw-s4" and cache.sample_rate == 8000 and len(cache) == 3
    assert [f["index"] for f in cache.files("train")] == [0, 2]
    assert [t.tolist() for t in cache.split_tokens("train")] == [[1, 2, 3], [255]]
    assert cache.num_samples("train") == 4 and cache.num_samples("test") == 0
    assert cache.meta["splits"] == {"train": 2, "val": 0, "test": 1}
    assert isinstance(cache.tokens(0), np.memmap) and cache.tokens(-1).tolist() == [255]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.tokens(0).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown split"):
        cache.files("dev")


def test_token_cache_rejects_non_caches_and_bad_meta(tmp_path):
    with pytest.raises(ValueError, match="not a token cache"):
        TokenCache(tmp_path)
    out = tmp_path / "c"
    write_cache(out, [("a", "train", np.zeros(4, np.uint8), 1, 1.0)], SR, "mulaw", tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(dict(meta, version=2)))
    with pytest.raises(ValueError, match="version 2"):
        TokenCache(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        TokenCache(out)
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "tokens.bin").write_bytes(b"\x00")  # truncated
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        TokenCache(out)


def test_bad_folders_raise_errors_naming_the_folder(tmp_path, mixed_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: folder is empty"):
        prepare_folder(empty, tmp_path / "o", progress=False)
    text_only = tmp_path / "text"
    text_only.mkdir()
    (text_only / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{text_only}: no audio files"):
        prepare_folder(text_only, tmp_path / "o", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"nope" * 10)
    (bad / "y.flac").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{bad}: none of the 2 audio files could be decoded"):
        prepare_folder(bad, tmp_path / "o", workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare_folder(tmp_path / "missing", tmp_path / "o", progress=False)
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_folder(mixed_dir / "tone_1.wav", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_empty_folder_exits_2_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty) in err[0] and "empty" in err[0]
    assert main(["prepare", str(empty), "--out", str(tmp_path / "o"), "--split", "0.9,0.1"]) == 2
    assert "--split" in capsys.readouterr().err


def test_cli_prepare_prints_summary(mixed_dir, tmp_path, capsys):
    argv = ["prepare", str(mixed_dir), "--out", str(tmp_path / "o"), "--workers", "1", "--seed", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "written" in out and "train 5" in out and "skipped 3" in out and "hours" in out
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out
