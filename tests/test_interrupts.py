"""Runs that outlive their inputs or their terminal: a resumed run keeps the split it started
with, SIGTERM/SIGINT stop training and preparing cleanly (and workers die with their parent),
the demo's temp folder stays bounded."""
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavelm.cli import main
from wavelm.data.folder import prepare_folder

SR = 16000
TINY = ["--model", "tiny", "--batch-size", "2", "--seq-len", "64", "--warmup", "1", "--eval-every", "2",
        "--set", "train.val_crops=2", "--no-progress"]


def write_tone(path, seed, n=1000):
    rng = np.random.default_rng(seed)
    sf.write(str(path), (0.3 * np.sin(np.arange(n) * rng.uniform(0.05, 0.3))).astype(np.float32), SR,
             subtype="PCM_16")


@pytest.fixture
def one_worker(monkeypatch):
    """Runs prepare their folder in-process (no worker start-up in these tests)."""
    import wavelm.data.folder as folder   # the folder format (wavelm/data/formats.py) calls it from there

    monkeypatch.setattr(folder, "prepare_folder", functools.partial(prepare_folder, workers=1))


# ----------------------------------------------------------------------------- A: frozen split

def _splits(run):
    return {f["path"]: f["split"] for f in json.loads((run / "split.json").read_text())["files"]}


def test_resume_refuses_changed_audio_then_keeps_the_frozen_split(tmp_path, one_worker, capsys):
    audio, run = tmp_path / "audio", tmp_path / "run"
    audio.mkdir()
    for k in range(20):                    # 0.9/0.05/0.05 of 20 files: one val, one test file
        write_tone(audio / f"f{k:02d}.wav", k)
    assert main(["train", "--data", str(audio), "--out", str(run), "--steps", "4", "--stop-at", "2", *TINY]) == 0
    frozen = _splits(run)
    assert len(frozen) == 20 and sorted(frozen.values()).count("val") == 1
    trained = sorted(p for p, s in frozen.items() if s == "train")

    (audio / trained[0]).unlink()          # a file trained on is removed, two are added
    write_tone(audio / "a_new.wav", 100)
    write_tone(audio / "z_new.wav", 101)
    meta = (run / "cache" / "meta.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("wavelm train: error: "), err
    assert trained[0] in err and "a_new.wav" in err and "--data-changed ok" in err, err
    assert (run / "cache" / "meta.json").read_bytes() == meta      # refused before any rebuild
    assert _splits(run) == frozen

    assert main(["train", "--out", str(run), "--resume", "--data-changed", "ok", "--no-progress"]) == 0
    now = _splits(run)
    assert now == {**{p: s for p, s in frozen.items() if p != trained[0]}, "a_new.wav": "train",
                   "z_new.wav": "train"}
    cache = json.loads((run / "cache" / "meta.json").read_text())
    # the rebuilt cache alone would have reshuffled: the run's split is not the cache's
    assert {f["path"]: f["split"] for f in cache["files"]} != now
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--no-progress"]) == 0  # frozen anew


def test_resume_of_an_unchanged_folder_is_quiet(tmp_path, one_worker):
    import wavelm.train as wt
    from wavelm.model.config import ModelConfig

    audio, run = tmp_path / "audio", tmp_path / "run"
    audio.mkdir()
    for k in range(3):
        write_tone(audio / f"f{k}.wav", k)
    cfg = wt.TrainConfig(steps=2, batch_size=2, seq_len=64, warmup=1, eval_every=1, val_crops=2)
    wt.train(cfg, ModelConfig.from_name("tiny"), audio, run, progress=False, stop_at=1)
    before = (run / "split.json").read_bytes()
    wt.train(cfg, ModelConfig.from_name("tiny"), audio, run, progress=False, resume=True)
    assert (run / "split.json").read_bytes() == before
    os.utime(audio / "f1.wav", (1, 1))     # touched: a changed mtime counts as a change
    with pytest.raises(wt.DataChanged, match="modified 1: f1.wav"):
        wt.train(cfg, ModelConfig.from_name("tiny"), audio, run, progress=False, resume=True)


# ----------------------------------------------------------------------------- B: signals

def _descendants(pid: int) -> set[int]:
    """Live (not zombie) processes below `pid`, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parent[int(d)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        todo.extend(kids - found)
        found |= kids
    return found


def _alive(pids) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def _wait_for(cond, seconds):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


POOL_SCRIPT = """
import sys
import time
from pathlib import Path

from wavelm.data.folder import encode_files
from wavelm.interrupt import exit_code, raise_on_sigterm

def slow(src, dst):      # a decode that would take minutes
    time.sleep(300)

if __name__ == "__main__":
    raise_on_sigterm()
    sys.modules["slowjob"] = sys.modules["__main__"]
    print("ready", flush=True)
    try:
        encode_files([(f"f{k}", Path(__file__)) for k in range(4)], slow, Path(sys.argv[1]), workers=2,
                     progress=False)
    except KeyboardInterrupt as e:
        sys.exit(exit_code(e))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_decode_workers_stop_with_their_parent(tmp_path, sig):
    """A pool of two busy decode workers (and its forkserver) is gone within seconds of the
    parent's SIGTERM or SIGINT (exit 143 / 130), or of its SIGKILL (the workers watch it)."""
    script = tmp_path / "slowjob.py"
    script.write_text(POOL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline() == "ready\n"
        # the forkserver and the two workers (the resource tracker may be there too)
        assert _wait_for(lambda: len(_descendants(proc.pid)) >= 3 and any(
            len(_descendants(c)) >= 2 for c in _descendants(proc.pid)), 60), _descendants(proc.pid)
        time.sleep(0.5)                       # the workers are inside slow()
        pool = _descendants(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(timeout=15)
        assert rc == (-9 if sig == signal.SIGKILL else 128 + sig)
        assert _wait_for(lambda: not _alive(pool), 10), _alive(pool)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("sig")
    (d / "audio").mkdir()
    for k in range(4):
        write_tone(d / "audio" / f"f{k}.wav", k, n=4000)
    return prepare_folder(d / "audio", d / "cache", workers=1, progress=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_training_saving_last(small_cache, tmp_path, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wavelm", "train", "--data", str(small_cache.path), "--out", str(run),
           "--steps", "100000", *TINY, "--eval-every", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # the loop is running once it has logged a step (a signal during set-up ends the run
        # before any step, with nothing to save)
        started = lambda: (run / "metrics.jsonl").is_file() and '"train"' in (run / "metrics.jsonl").read_text()
        assert _wait_for(started, 90)
        assert not (run / "last").exists()    # nothing saved yet: eval and save every 100000 steps
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert rc == 128 + sig, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "Traceback" not in err, err
    import wavelm.train as wt
    from wavelm.model.config import ModelConfig

    last = wt.prepare_run_dir(run, resume=True, overwrite=False)
    model, state = wt.load_trainer_state(last, ModelConfig.from_name("tiny"))
    assert state["step"] >= 1 and not (run / ".wavelm.lock").exists()


# ----------------------------------------------------------------------------- C: the demo's temp folder

def test_prune_temp_removes_oldest_past_count_and_size_keeping_the_requests_own(tmp_path):
    from wavelm.demo_app import prune_temp

    for k in range(6):                       # Gradio's layout: one folder per upload or result
        d = tmp_path / f"hash{k}"
        d.mkdir()
        (d / "audio.wav").write_bytes(b"x" * 1000)
        os.utime(d, (1000 + k, 1000 + k))
    assert prune_temp(tmp_path, max_entries=10, max_bytes=10_000) == []
    removed = prune_temp(tmp_path, max_entries=4, max_bytes=10_000, keep=[tmp_path / "hash0" / "audio.wav"])
    assert [p.name for p in removed] == ["hash1", "hash2"]          # the oldest, but not the kept upload
    removed = prune_temp(tmp_path, max_entries=10, max_bytes=2_500)
    assert [p.name for p in removed] == ["hash0", "hash3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hash4", "hash5"]


def test_live_chunks_are_wav_bytes_not_files(tmp_path):
    import io
    import wave

    from wavelm.demo_app import to_int16, wav_bytes

    x = to_int16(np.linspace(-1, 1, 800, dtype=np.float32))
    with wave.open(io.BytesIO(wav_bytes(SR, x))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert np.array_equal(np.frombuffer(w.readframes(800), "<i2"), x)


def test_demo_removes_its_temp_folder_on_sigterm(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    import torch

    from conftest import tiny
    from wavelm import WaveLM, demo_app

    torch.manual_seed(0)
    WaveLM(tiny("conv", [2])).save_pretrained(tmp_path / "ck")
    seen = {}

    def fake_launch(demo, host, port):
        seen["tmp"] = os.environ["GRADIO_TEMP_DIR"]
        Path(seen["tmp"], "upload.wav").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)                        # the signal's handler raises before this ends
        seen["slept"] = True

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(demo_app, "launch", fake_launch)
    old = signal.getsignal(signal.SIGTERM)
    try:
        main(["demo", "--checkpoint", str(tmp_path / "ck")])
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen["tmp"] and not Path(seen["tmp"]).exists() and "slept" not in seen
