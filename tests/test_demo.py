"""The Gradio demo served on a free 127.0.0.1 port, driven through its API with gradio_client."""
import re
import socket

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client.exceptions import AppError  # noqa: E402

from wavelm import demo_app  # noqa: E402
from wavelm.model.lm import load_model  # noqa: E402
from wavelm.model.config import ModelConfig  # noqa: E402
from wavelm.model.lm import WaveLM  # noqa: E402

SR = 16000
CARD = "# Tiny test model\n\nTrained on nothing at all.\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(root):
    """A tiny random model saved like a release: config.json with training metadata + card."""
    cfg = ModelConfig(arch="conv", d_model=16, n_layers=1, n_heads=2, attn_window=64)
    path = root / "tiny"
    WaveLM(cfg).save_pretrained(path, extra={"train": {"data": "white noise", "steps": 3},
                                             "test_bits_per_sample": 7.95})
    (path / "README.md").write_text("---\nlicense: mit\n---\n" + CARD)
    return load_model(path)


def serve(model, **kw):
    demo = demo_app.build_demo(model, **kw)
    port = free_port()
    demo_app.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def client(model):
    demo, url = serve(model)  # live playback iff ffmpeg is installed
    try:
        yield gradio_client.Client(url, verbose=False)
    finally:
        demo.close()


def sine(path, seconds=1.0, sr=SR, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.25 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([x] * channels, axis=1), sr)
    return str(path)


def generate(client, seconds=0.2, samples=1, prompt=None, seed=1):
    return client.predict(seconds, samples, 1.0, 0.9, seed, prompt, api_name="/generate")


def test_generate_endpoint_returns_int16_wav_at_model_rate(client, model):
    from wavelm.generation import generate as generate_audio

    out = generate(client, seconds=0.2, samples=2)
    status, players = out[0], out[1:1 + demo_app.MAX_SAMPLES]
    assert status.startswith("Done")
    assert players[2] is None and players[3] is None  # only the samples asked for
    for i, p in enumerate(players[:2]):
        info = sf.info(p)
        assert (info.samplerate, info.frames, info.subtype) == (SR, 3200, "PCM_16")
    # real level, not peak-normalised: exactly what the library generates for this seed
    want = generate_audio(model, 0.2, batch_size=2, temperature=1.0, top_p=0.9, seed=1)
    got, _ = sf.read(players[1], dtype="int16")
    np.testing.assert_array_equal(got, demo_app.to_int16(want[1]))


def test_generate_continues_an_uploaded_prompt(client, tmp_path):
    out = generate(client, prompt=gradio_client.handle_file(sine(tmp_path / "p.wav", 0.1, sr=44100)))
    assert sf.info(out[1]).samplerate == SR and sf.info(out[1]).frames > 0


def test_live_player_streams_when_ffmpeg_is_installed(client):
    if not demo_app.streaming_available():
        pytest.skip("ffmpeg not installed: the demo has no live player")
    out = generate(client, seconds=1.0)
    assert len(out) == 2 + demo_app.MAX_SAMPLES and out[-1]  # the live stream, combined


def test_plain_demo_without_ffmpeg_has_no_live_player(model):
    demo, url = serve(model, streaming=False)
    try:
        out = gradio_client.Client(url, verbose=False).predict(
            0.1, 1, 1.0, 1.0, 0, None, api_name="/generate")
        assert len(out) == 1 + demo_app.MAX_SAMPLES and sf.info(out[1]).frames == 1600
    finally:
        demo.close()


def test_score_endpoint_reports_bits_and_plot(client, tmp_path):
    bps, summary, plot = client.predict(gradio_client.handle_file(sine(tmp_path / "a.wav", 0.5, 22050, 2)),
                                        api_name="/score")
    shown = float(re.search(r"([0-9.]+) bits per sample", summary).group(1))
    assert 0 < bps < 16 and abs(shown - bps) < 1.5e-3   # the page rounds to 3 decimals
    assert "8,000 samples" in summary and plot


def test_bad_uploads_show_errors_and_server_keeps_serving(client, tmp_path):
    text, empty, long = tmp_path / "notes.txt", tmp_path / "empty.wav", tmp_path / "long.flac"
    text.write_bytes(b"not audio at all")
    sf.write(empty, np.zeros(0, np.float32), SR)
    # silence compresses: 10 min + 1 s of FLAC is small and quick to write
    sf.write(long, np.zeros(int((demo_app.MAX_SCORE_SECONDS + 1) * 8000), np.int16), 8000)
    for path, message in [(text, "cannot read this file as audio"), (empty, "holds no audio"),
                          (long, "too long; the demo takes audio to score up to 10.0 min")]:
        with pytest.raises(AppError, match=message):
            client.predict(gradio_client.handle_file(str(path)), api_name="/score")
    assert generate(client, seconds=0.1)[0].startswith("Done")  # still serving


@pytest.mark.parametrize("args, message", [
    ((demo_app.MAX_SECONDS + 1, 1), "seconds must be"),
    ((1.0, demo_app.MAX_SAMPLES + 1), "number of samples"),
])
def test_generate_refuses_values_beyond_the_limits(client, args, message):
    with pytest.raises(AppError):
        client.predict(*args, 1.0, 1.0, 0, None, api_name="/generate")
    with pytest.raises(demo_app.InputError, match=message):
        demo_app.check_generate_args(*args, 1.0, 1.0, 0)


def test_prompt_longer_than_limit_is_refused(client, tmp_path):
    long = sine(tmp_path / "long.wav", demo_app.MAX_PROMPT_SECONDS + 0.5, sr=8000)
    with pytest.raises(AppError, match="too long"):
        generate(client, prompt=gradio_client.handle_file(long))


def test_to_int16_keeps_the_level():
    np.testing.assert_array_equal(demo_app.to_int16(np.array([0.0, 0.5, -1.0, 2.0])),
                                  [0, 16384, -32767, 32767])


def test_model_info_reads_config_and_card(model):
    table, card, config = demo_app.model_info(model)
    assert "white noise" in table and "7.950" in table and "- **Training steps**: 3" in table
    assert str(model.checkpoint_path) in table and "parameters" in table
    assert card.strip() == CARD.strip() and '"arch": "conv"' in config


def test_model_info_of_an_unsaved_model():
    table, card, _ = demo_app.model_info(WaveLM(ModelConfig(arch="conv", d_model=16, n_layers=1, n_heads=2)))
    assert "not saved" in table and "No model card" in card


def test_demo_command_refuses_a_missing_checkpoint(tmp_path, capsys):
    from wavelm.cli import main

    assert main(["demo", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "not a wavelm checkpoint" in capsys.readouterr().err
