"""Bad input, as a table: every row is a command that must end in one clear line on stderr
(exit code 2) naming the path or value, or succeed; files the command must not touch stay
byte-identical, and no temp file is left behind. Then a property-based fuzz of the audio
loader, the checkpoint loader and the CLI's numeric flags: a clear error or success, never a
traceback."""
import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavelm.cli import main

SR = 16000
NON_UTF8 = os.fsdecode(b"caf\xe9.wav")    # a Latin-1 file name, as Python sees it (surrogate escape)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny checkpoint, good and bad audio, bad checkpoints and a run."""
    from wavelm import WaveLM
    from conftest import tiny

    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    WaveLM(tiny("conv", [2])).save_pretrained(d / "ck")
    t = np.arange(SR // 4) / SR
    sf.write(d / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    nan = np.zeros(SR // 4, np.float32)
    nan[10] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "huge.wav", np.full(SR // 100, 3e299), SR, subtype="DOUBLE")   # finite, far beyond float32
    (d / NON_UTF8).write_bytes((d / "tone.wav").read_bytes())
    (d / "garbage.wav").write_bytes(b"RIFF\x00\x00not audio at all" * 10)
    (d / "empty.wav").write_bytes(b"")
    (d / "afile").write_text("a file, not a folder\n")
    (d / "emptydir").mkdir()
    for name, change in (("heads0", {"n_heads": 0}), ("huge", {"stage_dims": [16, 192000]}),
                         ("format", None), ("notjson", None), ("pickle", None), ("shapes", None)):
        ck = d / name
        ck.mkdir()
        (ck / "model.safetensors").write_bytes((d / "ck" / "model.safetensors").read_bytes())
        meta = json.loads((d / "ck" / "config.json").read_text())
        if change:
            meta["model"].update(change)
        if name == "format":
            meta["format"] = "1"
        if name == "shapes":
            meta["model"]["d_model"] = 32
            meta["model"]["stage_dims"] = [32, 64]
        (ck / "config.json").write_text("{not json" if name == "notjson" else json.dumps(meta))
        if name == "pickle":
            (ck / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    run = d / "run"
    run.mkdir()
    (run / "run.json").write_text("{ corrupt")
    return d


CK = ["--checkpoint", "{d}/ck"]
BQ = ["bench", "quality", *CK, "--data", "{d}/emptydir"]   # the data would fail: flags must fail first
# (id, argv with {d} for the work folder, expected rc, fragment of stderr, files that must stay)
ROWS = [
    # outputs
    ("gen-txt", ["generate", *CK, "--seconds", "0.01", "-o", "{d}/out.txt"], 2, "unsupported output extension .txt", []),
    ("gen-under-file", ["generate", *CK, "--seconds", "0.01", "-o", "{d}/afile/x.wav"], 2, "is not a folder", ["afile"]),
    ("gen-dir", ["generate", *CK, "--seconds", "0.01", "-o", "{d}/emptydir"], 2, "is a directory", []),
    ("gen-dev-null", ["generate", *CK, "--seconds", "0.01", "-o", "/dev/null"], 2, "/dev/null: is a device", []),
    ("gen-dev-full", ["generate", *CK, "--seconds", "0.01", "-o", "/dev/full"], 2, "/dev/full: is a device", []),
    ("gen-name-too-long", ["generate", *CK, "--seconds", "0.01", "-o", "{d}/" + "n" * 252 + ".wav"], 2,
     "file name of 256 bytes; this file system allows 255", []),
    ("score-plot-ext", ["score", *CK, "{d}/tone.wav", "--plot", "{d}/p.jpg"], 2, ".png", []),
    ("score-per-sample-ext", ["score", *CK, "{d}/tone.wav", "--per-sample", "{d}/p.txt"], 2, ".npy or .csv", []),
    ("score-plot-under-file", ["score", *CK, "{d}/tone.wav", "--plot", "{d}/afile/p.png"], 2, "is not a folder", []),
    ("prepare-out-file", ["prepare", "{d}/emptydir", "--out", "{d}/afile"], 2, "afile", ["afile"]),
    ("train-out-file", ["train", "--data", "{d}/emptydir", "--out", "{d}/afile"], 2, "exists and is not a folder", ["afile"]),
    # checkpoints
    ("ck-heads0", ["generate", "--checkpoint", "{d}/heads0", "--seconds", "0.01", "-o", "{d}/o.wav"], 2, "n_heads must be from 1", []),
    ("ck-huge", ["score", "--checkpoint", "{d}/huge", "{d}/tone.wav"], 2, "stage_dims entry must be from 1 to 8192", []),
    ("ck-format-str", ["score", "--checkpoint", "{d}/format", "{d}/tone.wav"], 2, "format must be an integer", []),
    ("ck-not-json", ["score", "--checkpoint", "{d}/notjson", "{d}/tone.wav"], 2, "corrupt config", []),
    ("ck-pickle", ["score", "--checkpoint", "{d}/pickle", "{d}/tone.wav"], 2, "corrupt weights", []),
    ("ck-shapes", ["score", "--checkpoint", "{d}/shapes", "{d}/tone.wav"], 2, "do not fit the config", []),
    ("ck-missing", ["score", "--checkpoint", "{d}/nope", "{d}/tone.wav"], 2, "not a wavelm checkpoint", []),
    ("ck-is-file", ["score", "--checkpoint", "{d}/afile", "{d}/tone.wav"], 2, "is a directory (with config.json), not a file", []),
    ("score-cuda", ["score", *CK, "{d}/tone.wav", "--device", "cuda"], 2, "no CUDA device", []),
    ("score-device-bogus", ["score", *CK, "{d}/tone.wav", "--device", "tpu9"], 2, "--device tpu9", []),
    # audio
    ("score-nan", ["score", *CK, "{d}/nan.wav"], 2, "NaN", []),
    ("score-huge-float64", ["score", *CK, "{d}/huge.wav"], 2, "huge.wav: audio holds samples far outside [-1, 1] (up to 3e+299)", []),
    ("score-garbage", ["score", *CK, "{d}/garbage.wav"], 2, "garbage.wav", []),
    ("score-empty", ["score", *CK, "{d}/empty.wav"], 2, "empty.wav", []),
    ("score-missing", ["score", *CK, "{d}/none.wav"], 2, "no such file", []),
    ("prompt-missing", ["generate", *CK, "--seconds", "0.01", "--prompt", "{d}/none.wav", "-o", "{d}/o.wav"], 2, "none.wav", []),
    ("prepare-empty", ["prepare", "{d}/emptydir", "--out", "{d}/cache"], 2, "emptydir: folder is empty", []),
    # numbers
    ("seed-huge", ["generate", *CK, "--seconds", "0.01", "--seed", "99999999999999999999999", "-o", "{d}/o.wav"], 2, "--seed must be an integer from 0", []),
    ("seed-negative", ["generate", *CK, "--seconds", "0.01", "--seed", "-1", "-o", "{d}/o.wav"], 2, "--seed must be an integer from 0", []),
    ("seconds-zero", ["generate", *CK, "--seconds", "0", "-o", "{d}/o.wav"], 2, "--seconds must be > 0", []),
    ("seconds-nan", ["generate", *CK, "--seconds", "nan", "-o", "{d}/o.wav"], 2, "--seconds must be a finite number", []),
    ("temperature-zero", ["generate", *CK, "--seconds", "0.01", "--temperature", "0", "-o", "{d}/o.wav"], 2, "--temperature", []),
    ("top-p-two", ["generate", *CK, "--seconds", "0.01", "--top-p", "2", "-o", "{d}/o.wav"], 2, "--top-p", []),
    ("num-samples-zero", ["generate", *CK, "--seconds", "0.01", "--num-samples", "0", "-o", "{d}/o.wav"], 2, "--num-samples", []),
    ("max-minutes-nan", ["train", "--data", "{d}/emptydir", "--out", "{d}/r2", "--max-minutes", "nan"], 2, "max_minutes must be a finite float", []),
    ("max-minutes-neg", ["train", "--data", "{d}/emptydir", "--out", "{d}/r2", "--max-minutes", "-1"], 2, "max_minutes must be >= 0", []),
    ("resume-corrupt-run", ["train", "--out", "{d}/run", "--resume"], 2, "run.json: unreadable run file", ["run/run.json"]),
    ("resume-nothing", ["train", "--out", "{d}/emptydir", "--resume"], 2, "nothing to resume", []),
    ("input-noise-huge", ["train", "--data", "{d}/emptydir", "--out", "{d}/r2", "--input-noise", "1e300"], 2,
     "input_noise must be from 0 to 64 mu-law steps", []),
    ("input-noise-nan", ["train", "--data", "{d}/emptydir", "--out", "{d}/r2", "--input-noise", "nan"], 2,
     "input_noise must be a finite float", []),
    ("bq-temperature-zero", [*BQ, "--temperature", "0"], 2, "--temperature must be a finite number > 0", []),
    ("bq-seconds-700", [*BQ, "--seconds", "700"], 2, "--seconds must be > 0 and <= 600", []),
    ("bq-seconds-nan", [*BQ, "--seconds", "nan"], 2, "--seconds must be a finite number", []),
    ("bq-top-p-nan", [*BQ, "--top-p", "nan"], 2, "--top-p must be a finite number", []),
    ("bq-prompt-seconds-nan", [*BQ, "--prompt-seconds", "nan"], 2, "--prompt-seconds must be > 0", []),
    ("bq-clips-zero", [*BQ, "--clips", "0"], 2, "--clips must be >= 1", []),
    # and what works
    ("gen-mp3", ["generate", *CK, "--seconds", "0.05", "-o", "{d}/take.mp3"], 0, "", []),
    ("gen-flac", ["generate", *CK, "--seconds", "0.05", "-o", "{d}/take.flac"], 0, "", []),
    ("gen-long-name", ["generate", *CK, "--seconds", "0.01", "-o", "{d}/" + "l" * 251 + ".wav"], 0, "", []),  # 255 bytes
    ("score-non-utf8-name", ["score", *CK, "{d}/" + NON_UTF8], 0, "", []),
    ("prompt-non-utf8-name", ["generate", *CK, "--seconds", "0.01", "--prompt", "{d}/" + NON_UTF8,
                              "-o", "{d}/cont.wav"], 0, "", []),
]


def _snapshot(d: Path, names):
    return {n: (d / n).read_bytes() for n in names}


def _temps(d: Path):
    return [p for p in d.rglob("*") if ".tmp" in p.name or p.name.startswith(".wavelm-probe")]


@pytest.mark.parametrize("argv, rc, fragment, keep", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_table(work, capsys, argv, rc, fragment, keep):
    before = _snapshot(work, keep)
    got = main([a.format(d=work) for a in argv])
    err = capsys.readouterr().err.strip()
    assert got == rc, err
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.startswith("wavelm")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert fragment in lines[0], err
    assert _snapshot(work, keep) == before
    assert not _temps(work)


def test_mp3_is_really_mp3(work):
    assert main(["generate", "--checkpoint", str(work / "ck"), "--seconds", "0.05", "-o", str(work / "x.mp3")]) == 0
    assert sf.info(str(work / "x.mp3")).format == "MP3"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_failure_while_writing_is_one_line_and_leaves_no_temp(work, tmp_path, capsys, monkeypatch, err):
    """The disk fills up (or turns read-only) after the checks passed: one line, rc 2, no temp."""
    import wavelm.files

    real = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith((".wav", ".png", ".npy")):
            raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst)

    monkeypatch.setattr(wavelm.files.os, "replace", failing_replace)
    out = tmp_path / "o.wav"
    assert main(["generate", "--checkpoint", str(work / "ck"), "--seconds", "0.01", "-o", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"wavelm generate: error: {out}: {os.strerror(err)}"), line
    assert not list(tmp_path.iterdir())
    # score prints its table before the plot fails
    assert main(["score", "--checkpoint", str(work / "ck"), str(work / "tone.wav"),
                 "--plot", str(tmp_path / "p.png")]) == 2
    cap = capsys.readouterr()
    assert "bits/sample" in cap.out and f"{tmp_path / 'p.png'}: {os.strerror(err)}" in cap.err
    assert not list(tmp_path.iterdir())


def test_unwritable_folder_fails_before_the_work(work, tmp_path, capsys, monkeypatch):
    """A read-only (or immutable) folder: the probe fails, nothing is generated."""
    import tempfile

    import wavelm.generation

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", ro)
    monkeypatch.setattr(wavelm.generation, "stream", lambda *a, **k: pytest.fail("generated before checking"))
    assert main(["generate", "--checkpoint", str(work / "ck"), "--seconds", "1", "-o", str(tmp_path / "o.wav")]) == 2
    assert "Read-only file system" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wavelm ") and "Traceback" not in err, err
    return lines[0]


def test_full_disk_while_writing_audio_is_one_line(work, tmp_path, capfd, monkeypatch):
    """soundfile writes to the temp path itself: a full disk (the temp name is made a link to
    /dev/full) is one error line, not an AssertionError and callback tracebacks."""
    import wavelm.files

    full = tmp_path / ".full"
    monkeypatch.setattr(wavelm.files, "temp_path", lambda p: full)
    out = tmp_path / "o.wav"
    for ext in (".wav", ".flac"):
        full.symlink_to("/dev/full")
        out = out.with_suffix(ext)
        assert main(["generate", "--checkpoint", str(work / "ck"), "--seconds", "0.05", "-o", str(out)]) == 2
        line = _one_error_line(capfd.readouterr().err)
        assert line.startswith(f"wavelm generate: error: {out}: "), line
        assert not list(tmp_path.iterdir())            # the temp name is gone, no output written


def test_fifo_output_is_refused_and_a_symlink_is_written_through(work, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.wav")
    ck = ["generate", "--checkpoint", str(work / "ck"), "--seconds", "0.01"]
    assert main(ck + ["-o", str(tmp_path / "pipe.wav")]) == 2
    assert "pipe.wav: is a FIFO" in _one_error_line(capsys.readouterr().err)
    assert (tmp_path / "pipe.wav").is_fifo()
    (tmp_path / "take.wav").symlink_to("real.wav")    # dangling: the target is created
    assert main(ck + ["-o", str(tmp_path / "take.wav")]) == 0
    assert (tmp_path / "take.wav").is_symlink() and sf.info(str(tmp_path / "real.wav")).frames == 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.wav", "real.wav", "take.wav"]


def test_prepare_keeps_a_file_whose_name_is_not_utf8(work, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / NON_UTF8).write_bytes((work / "tone.wav").read_bytes())
    (tmp_path / "d" / "tone.wav").write_bytes((work / "tone.wav").read_bytes())
    assert main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "c"), "--workers", "1"]) == 0
    from wavelm.data.folder import TokenCache

    cache = TokenCache(tmp_path / "c")
    assert sorted(f["path"] for f in cache.files()) == [NON_UTF8, "tone.wav"]
    assert cache.meta["skipped"] == [] and cache.num_samples() == 2 * (SR // 4)


# ----------------------------------------------------------------------------- one writer

@pytest.fixture(scope="module")
def cache(work):
    from wavelm.data.folder import prepare_folder

    (work / "audio").mkdir()
    (work / "audio" / "tone.wav").write_bytes((work / "tone.wav").read_bytes())
    return prepare_folder(work / "audio", work / "cache", workers=1, progress=False)


def test_second_train_on_a_locked_run_is_refused_naming_the_holder(cache, tmp_path, capsys):
    from wavelm.files import hold_lock
    from wavelm.train.rundir import LOCK_NAME

    run = tmp_path / "run"
    with hold_lock(run / LOCK_NAME, run):
        assert main(["train", "--data", str(cache.path), "--out", str(run), "--steps", "1"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{run}: in use by another wavelm process (PID {os.getpid()}" in line, line
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]      # nothing written
    assert not run.joinpath(LOCK_NAME).exists()                    # released and removed


def test_prepare_into_a_cache_being_written_is_refused(work, tmp_path, capsys):
    from wavelm.files import hold_lock

    out = tmp_path / "c"
    with hold_lock(tmp_path / ".c.lock", out):
        assert main(["prepare", str(work / "audio"), "--out", str(out), "--workers", "1"]) == 2
        assert f"in use by another wavelm process (PID {os.getpid()}" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
    """Two processes: the holder's PID is named while it lives; SIGKILL frees the lock (the
    kernel drops flocks), though the lock file stays behind."""
    import signal
    import subprocess
    import sys

    from wavelm.files import BusyError, hold_lock

    lock = tmp_path / "run" / ".wavelm.lock"
    code = ("import sys; from pathlib import Path; from wavelm.files import hold_lock\n"
            f"with hold_lock(Path({str(lock)!r}), 'run'):\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"               # the child prints once it holds the lock
        with pytest.raises(BusyError, match=f"PID {holder.pid}"):
            with hold_lock(lock, "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert lock.exists()                                          # a stale file, but no stale lock
    with hold_lock(lock, "run"):
        assert lock.read_text() == f"{os.getpid()}\n"


def test_scratch_folders_of_killed_prepares_are_removed(work, tmp_path):
    import subprocess
    import sys

    from wavelm.data.folder import prepare_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for name in (f".c.parts-{dead}-0a1b2c3d", f".c.tmp-{dead}-0a1b2c3d", f".c.parts-{os.getpid()}-00ff00ff"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.u8").write_bytes(b"\x80" * 100)
    prepare_folder(work / "audio", tmp_path / "c", workers=1, progress=False)
    # the dead process's parts and temp cache are gone; a live process's (ours) stay
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".c.parts-{os.getpid()}-00ff00ff", "c"]


def test_init_may_change_dropout_but_not_shapes(work, cache, tmp_path):
    import dataclasses

    from wavelm.checkpoint import CheckpointError
    from wavelm.model.lm import load_model
    from wavelm.train import TrainConfig, train

    base = load_model(work / "ck").config
    cfg = TrainConfig(steps=1, batch_size=1, seq_len=64, eval_every=1, val_crops=1, warmup=0, lr=1e-12,
                      device="cpu", init=str(work / "ck"))
    res = train(cfg, dataclasses.replace(base, dropout=0.25), cache, tmp_path / "a", progress=False)
    assert res["step"] == 1 and load_model(tmp_path / "a" / "last").config.dropout == 0.25
    with pytest.raises(CheckpointError, match=r"weights do not fit .*d_model=16 \(requested 32\)"):
        train(cfg, dataclasses.replace(base, d_model=32, stage_dims=[32, *base.stage_dims[1:]]), cache,
              tmp_path / "b", progress=False)


def test_demo_refuses_nan_upload_and_checks_like_the_cli(work):
    from wavelm import demo_app

    with pytest.raises(demo_app.InputError, match="nan.wav: audio holds NaN"):
        demo_app.read_upload(str(work / "nan.wav"), SR, 10)
    for seed in (-1, 2**64):
        with pytest.raises(demo_app.InputError, match="seed must be an integer from 0"):
            demo_app.check_generate_args(1.0, 1, 1.0, 1.0, seed)


def test_demo_removes_its_temp_folder(monkeypatch, work):
    """`wavelm demo` keeps uploads in a folder of its own and removes it when it stops."""
    pytest.importorskip("gradio")
    from wavelm import demo_app

    seen = {}

    def fake_launch(demo, host, port):
        seen["tmp"] = os.environ["GRADIO_TEMP_DIR"]
        Path(seen["tmp"], "upload.wav").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(demo_app, "launch", fake_launch)
    assert main(["demo", "--checkpoint", str(work / "ck")]) == 0
    assert seen["tmp"] and not Path(seen["tmp"]).exists()
    assert "GRADIO_TEMP_DIR" not in os.environ


# ----------------------------------------------------------------------------- fuzz

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".aiff"]))
def test_fuzz_audio_loader(tmp_path_factory, data, ext):
    from wavelm.audio import AudioError, load_audio

    p = tmp_path_factory.mktemp("fz") / f"f{ext}"
    p.write_bytes(b"RIFF" + data if ext == ".wav" else data)
    try:
        x = load_audio(p, SR)
    except AudioError as e:
        assert str(p) in str(e)
    else:
        assert x.dtype == np.float32 and np.isfinite(x).all()


scalars = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(-5, 50), max_size=4))


@FUZZ
@given(st.dictionaries(st.sampled_from(["d_model", "n_heads", "n_layers", "attn_window", "pool", "stage_dims",
                                        "stage_layers", "stage_windows", "stage_archs", "conv_kernel", "ffn_mult",
                                        "arch", "dropout", "conv_dilations", "vocab_size"]), scalars, max_size=4))
def test_fuzz_checkpoint_config(work, tmp_path_factory, change):
    from wavelm.model.lm import load_model

    ck = tmp_path_factory.mktemp("ck")
    meta = json.loads((work / "ck" / "config.json").read_text())
    meta["model"].update(change)
    (ck / "config.json").write_text(json.dumps(meta))
    (ck / "model.safetensors").write_bytes((work / "ck" / "model.safetensors").read_bytes())
    try:
        model = load_model(ck)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert model.num_parameters() > 0


@FUZZ
@given(flag=st.sampled_from(["--seconds", "--temperature", "--top-p", "--top-k", "--seed", "--num-samples",
                             "--prompt-seconds"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-2**80, 2**80).map(str),
                       st.text(alphabet="0123456789.-e+naif", max_size=8)))
def test_fuzz_generate_numeric_flags(work, tmp_path_factory, capsys, flag, value):
    try:
        hypothesis.assume(flag != "--seconds" or not 0.05 < float(value) <= 600)   # keep runs short
    except ValueError:
        pass
    out = tmp_path_factory.mktemp("o") / "o.wav"
    argv = ["generate", "--checkpoint", str(work / "ck"), "-o", str(out), "--no-progress"]
    if flag != "--seconds":
        argv += ["--seconds", "0.002"]
    if flag == "--prompt-seconds":
        argv += ["--prompt", str(work / "tone.wav")]
    if flag == "--num-samples":
        argv += ["--seconds", "0.002"]
    try:
        rc = main(argv + [flag, value])
    except SystemExit as e:          # argparse: not a number at all (its own one-line usage error)
        rc = e.code
    err = capsys.readouterr().err
    assert rc in (0, 2) and "Traceback" not in err, err
    if rc == 0 and flag == "--seconds":
        assert float(value) <= 600


# ----------------------------------------------------------------------------- bounded resources

def test_memory_estimate_refuses_before_the_work(work, monkeypatch, capsys):
    """More streams than memory: refused with the numbers, naming the flags, nothing written."""
    import wavelm
    from wavelm import hardware
    from wavelm.model.lm import load_model

    monkeypatch.setattr(hardware, "available_memory", lambda: 64 << 20)      # 64 MiB left
    model = load_model(work / "ck")
    with pytest.raises(ValueError, match="available"):
        wavelm.generate(model, seconds=600, batch_size=64)
    wavelm.generate(model, seconds=0.01)                                     # small: fine
    out = work / "mem.wav"
    assert main(["generate", "--checkpoint", str(work / "ck"), "--seconds", "600", "--num-samples", "8",
                 "--best-of", "8", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--num-samples x --best-of" in err and "MiB is available" in err and "Traceback" not in err
    assert not list(work.glob("mem*"))


def test_prompt_longer_than_the_cap_is_refused(work, monkeypatch, capsys):
    from wavelm import generation

    monkeypatch.setattr(generation, "MAX_PROMPT_SECONDS", 0.1)
    assert main(["generate", "--checkpoint", str(work / "ck"), "--prompt", str(work / "tone.wav"),
                 "-o", str(work / "long.wav")]) == 2
    assert "longer than 0.1 s" in capsys.readouterr().err
    with pytest.raises(ValueError, match="longer than"):
        generation.prompt_tokens(np.zeros(SR), 1, SR)


def test_read_only_package_caches_the_decoder_elsewhere(tmp_path, monkeypatch, caplog):
    """No writable __pycache__: the numba cache goes to ~/.cache/wavelm/numba, said in one line,
    never a silent fallback to the slow step."""
    from wavelm.decode import fast

    monkeypatch.setenv("NUMBA_CACHE_DIR", "")            # recorded, so the test's own setting is undone
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).is_relative_to(pkg) else real(p, mode))
    import numba

    before = numba.config.CACHE_DIR
    try:
        with caplog.at_level("INFO", logger="wavelm.decode.fast"):
            where = fast.cache_dir(pkg)
        assert where == str(tmp_path / "cache" / "wavelm" / "numba") == os.environ["NUMBA_CACHE_DIR"]
        assert "read-only" in caplog.text
    finally:
        numba.config.CACHE_DIR = before


def test_float_samples_beyond_full_scale_are_clipped_with_a_warning(tmp_path, caplog):
    from wavelm.audio import load_audio

    sf.write(tmp_path / "loud.wav", np.linspace(-3, 3, 400, dtype=np.float32), SR, subtype="FLOAT")
    with caplog.at_level("WARNING", logger="wavelm.audio"):
        x = load_audio(tmp_path / "loud.wav", SR)
    assert x.max() == 1.0 and "reach 3" in caplog.text and "clipped" in caplog.text
