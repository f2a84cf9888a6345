"""The formats room (wavelm/data/formats.py): a data format is added in one place, FORMATS, and
trains and scores through the public path; the chunking rule lives in one place,
TokenCache.segments (wavelm/data/cache.py), which training crops and split scoring both read."""
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavelm.cli import main
from wavelm.data.cache import TokenCache, write_cache
from wavelm.data.formats import FORMATS, Format, get_format, open_data
from wavelm.data.sampler import split_segments
from wavelm.model.lm import load_model
from wavelm.scoring import _split_streams, score_split
from wavelm.train import DataConfig

SR = 16000
TINY = ["--model", "tiny", "--batch-size", "2", "--seq-len", "64", "--warmup", "1", "--eval-every", "2",
        "--set", "train.val_crops=2", "--no-progress"]


# ----------------------------------------------------------------------------- a toy format

def prepare_txt(source, out, *, quantization, sample_rate=16000, workers=2, progress=True, force=False):
    """The toy format: .txt files of whitespace-separated integer tokens; files under val/ are
    the val split, the others train."""
    assert quantization == "mulaw"
    source = Path(source)
    files = sorted(source.rglob("*.txt"))
    if not files:
        raise ValueError(f"{source}: no .txt files")
    entries = ((p.relative_to(source).as_posix(), "val" if p.parent.name == "val" else "train",
                np.array(p.read_text().split(), dtype=np.int64), p.stat().st_size, p.stat().st_mtime)
               for p in files)
    return write_cache(out, entries, sample_rate, "mulaw", source, settings={"format": "txt"})


@pytest.fixture
def txt_format(monkeypatch):
    """Adding a format is this one entry."""
    monkeypatch.setitem(FORMATS, "txt", Format("txt", "folders of integer tokens (a test format)", prepare_txt))


@pytest.fixture
def txt_dir(tmp_path):
    d = tmp_path / "txt"
    (d / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):     # a slow ramp plus a little noise: learnable, and every code in 0..255
        t = (128 + 100 * np.sin(np.arange(400) * (0.05 + 0.01 * k)) + rng.integers(-3, 4, 400)).astype(int)
        (d / f"t{k}.txt").write_text(" ".join(map(str, t)))
    (d / "val" / "v0.txt").write_text(" ".join(map(str, (128 + 90 * np.sin(np.arange(300) * 0.06)).astype(int))))
    return d


def test_a_format_added_in_one_place_prepares_trains_and_scores(txt_format, txt_dir, tmp_path, capsys):
    # configs, `wavelm prepare` and `wavelm train` all read the table
    assert get_format("txt").quantizations == ("mulaw",)
    DataConfig(format="txt")
    with pytest.raises(ValueError, match="youtubemix"):
        DataConfig(format="txt", quantization="s4")
    assert main(["prepare", str(txt_dir), "--out", str(tmp_path / "c"), "--format", "txt"]) == 0
    assert "train 3, val 1" in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["train", "--data", str(txt_dir), "--format", "txt", "--out", str(run), "--steps", "4", *TINY]) == 0
    cache = TokenCache(run / "cache")
    assert cache.meta["settings"] == {"format": "txt"} and cache.meta["splits"]["val"] == 1
    assert open_data(run / "cache", run, DataConfig(format="txt")).path == cache.path

    model = load_model(run / "best").double()
    s = score_split(model, run / "cache", split="val")
    y = torch.from_numpy(cache.split_tokens("val")[0].astype(np.int64))
    x = torch.cat([torch.tensor([128]), y[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(x[None])[0], dim=-1)
    ref = float(-logp.gather(1, y[:, None]).sum()) / math.log(2)
    assert [f.path for f in s.files] == ["val/v0.txt"] and s.num_samples == 300 and s.num_chunks == 1
    assert s.total_bits == pytest.approx(ref, rel=1e-9)


def test_unknown_formats_are_refused_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="folder or youtubemix, got 'txt'"):
        get_format("txt")
    with pytest.raises(ValueError, match="data.format must be folder or youtubemix"):
        DataConfig(format="txt")
    with pytest.raises(ValueError, match="data.quantization s4 needs data.format youtubemix"):
        DataConfig(format="folder", quantization="s4")
    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path), "--out", str(tmp_path / "c"), "--format", "txt"])
    assert "invalid choice" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the chunking rule

def _scored_segments(path, split):
    """The token runs split scoring scores on their own, in order."""
    _, files = _split_streams(path, split, None, SR, None)
    return [seg for _, segs in files for seg in segs]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def test_training_and_scoring_cut_a_youtubemix_cache_alike(tmp_path, monkeypatch):
    toks = np.arange(5 * 64) % 256         # file a: 3 chunks of 64, file b: 2
    c = write_cache(tmp_path / "c", [("a.wav", "test", toks[:192], 0, 0), ("b.wav", "test", toks[192:], 0, 0)],
                    SR, "mulaw-s4", tmp_path, settings={"format": "youtubemix", "chunk": 64})
    chunks = [toks[j:j + 64] for j in range(0, len(toks), 64)]
    assert c.segment_length() == 64
    assert _same(c.segments("test"), chunks)
    assert _same(split_segments(c, "test"), chunks) and _same(_scored_segments(c.path, "test"), chunks)

    # one rule: change it in TokenCache and training and scoring both follow
    monkeypatch.setattr(TokenCache, "segment_length", lambda self: 32)
    halves = [toks[j:j + 32] for j in range(0, len(toks), 32)]
    assert _same(split_segments(c, "test"), halves) and _same(_scored_segments(c.path, "test"), halves)
    monkeypatch.undo()

    # a folder cache: whole files for both (an empty file is no segment)
    f = write_cache(tmp_path / "f", [("a.wav", "val", toks[:100], 0, 0), ("e.wav", "val", toks[:0], 0, 0),
                                     ("b.wav", "val", toks[:70], 0, 0)], SR, "mulaw", tmp_path)
    assert f.segment_length() is None
    assert _same(split_segments(f, "val"), [toks[:100], toks[:70]])
    assert _same(_scored_segments(f.path, "val"), [toks[:100], toks[:70]])

    # a partial last chunk, which only a hand-written cache holds: crops need whole chunks,
    # split scoring keeps it (whole_only)
    p = write_cache(tmp_path / "p", [("a.wav", "test", toks[:150], 0, 0)], SR, "mulaw-s4", tmp_path,
                    settings={"format": "youtubemix", "chunk": 64})
    assert [len(s) for s in split_segments(p, "test")] == [64, 64]
    assert [len(s) for s in _scored_segments(p.path, "test")] == [64, 64, 22]


def test_prepared_youtubemix_caches_hold_whole_chunks_only(tmp_path):
    from wavelm.data.youtubemix import prepare_youtubemix

    rng = np.random.default_rng(1)
    for k, n in enumerate((1000, 1500, 700, 650, 2200)):     # remainders the cache must not hold
        sf.write(str(tmp_path / f"clip_{k}.wav"), 0.3 * rng.standard_normal(n).astype(np.float32), SR)
    c = prepare_youtubemix(tmp_path, tmp_path / "cache", chunk=300, workers=1, progress=False)
    assert all(f["num_samples"] % 300 == 0 for f in c.files())
    for split in ("train", "val", "test"):
        assert _same(c.segments(split, whole_only=True), c.segments(split))
        assert all(len(s) == 300 for s in c.segments(split))
