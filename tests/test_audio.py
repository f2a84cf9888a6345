"""The mu-law codec (torchaudio's formula, s4's variant) and audio file I/O."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from wavelm.audio import (AudioError, iter_audio, load_audio, mulaw_decode, mulaw_decode_s4,
                          mulaw_encode, mulaw_encode_s4, save_audio)


def torchaudio_formula_encode(x: torch.Tensor) -> torch.Tensor:
    # torchaudio.functional.mu_law_encoding, transcribed (float32, mu = 255)
    mu = torch.tensor(255.0)
    y = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).to(torch.int64)


def torchaudio_formula_decode(q: torch.Tensor) -> torch.Tensor:
    mu = torch.tensor(255.0)
    y = q.to(torch.float32) / mu * 2 - 1
    return torch.sign(y) * (torch.exp(torch.abs(y) * torch.log1p(mu)) - 1.0) / mu


def points():
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.linspace(-1, 1, 100_001), torch.rand(100_000, generator=g) * 2 - 1,
                      torch.randn(50_000, generator=g) * 0.01]).clamp(-1, 1)


def test_encode_matches_torchaudio_formula_on_250k_points():
    x = points()
    ref = torchaudio_formula_encode(x)
    assert torch.equal(mulaw_encode(x), ref)
    assert np.array_equal(mulaw_encode(x.numpy()), ref.numpy())  # numpy in -> same codes


def test_decode_matches_torchaudio_formula():
    q = torch.arange(256)
    torch.testing.assert_close(mulaw_decode(q), torchaudio_formula_decode(q), rtol=0, atol=1e-6)
    assert isinstance(mulaw_decode(q.numpy()), np.ndarray) and mulaw_decode(q.numpy()).dtype == np.float32


def test_matches_torchaudio_itself_when_it_imports():
    try:
        import torchaudio.functional as AF
    except (ImportError, OSError) as e:  # the CPU torch wheel cannot load torchaudio's CUDA build
        pytest.skip(f"torchaudio unavailable: {e}")
    x = points()
    assert torch.equal(mulaw_encode(x), AF.mu_law_encoding(x, 256))
    torch.testing.assert_close(mulaw_decode(torch.arange(256)), AF.mu_law_decoding(torch.arange(256), 256))


def test_round_trip_error_is_bounded_by_half_a_step():
    x = points()
    x_hat = mulaw_decode(mulaw_encode(x))
    err = (x_hat - x).abs()

    def compand(v):
        return torch.sign(v) * torch.log1p(255 * v.abs()) / math.log1p(255)

    # rounding to the nearest code: at most half a code step (1/255) in the companded domain
    assert (compand(x_hat) - compand(x)).abs().max() <= 1 / 255 + 1e-5
    assert err.max() < 0.022  # ~half the widest step (near |x| = 1)
    small = x.abs() < 0.01
    assert err[small].max() < 1e-3  # fine resolution near zero, the point of mu-law


def test_edge_values():
    assert mulaw_encode(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    assert mulaw_encode(np.array([-5.0, 5.0])).tolist() == [0, 255]   # finite out-of-range: clipped
    assert mulaw_decode(np.array([0, 255])).tolist() == [-1.0, 1.0]
    assert abs(mulaw_decode(np.array([128]))[0]) < 0.005


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_rejected(bad):
    with pytest.raises(ValueError, match="NaN or inf"):
        mulaw_encode(np.array([0.0, bad]))
    with pytest.raises(ValueError, match="NaN or inf"):
        mulaw_encode(torch.tensor([bad]))


def test_s4_variant_is_minmax_scaled_and_floor_quantised():
    x = np.random.default_rng(0).normal(0, 0.1, 10_000).astype(np.float32)
    q = mulaw_encode_s4(x)
    assert q.min() == 0 and q.max() == 255          # min-max scaling spans the codes
    assert (mulaw_encode_s4(x * 7) == q).mean() > 0.999   # gain-invariant (up to s4's 1e-6 eps)
    assert abs(mulaw_decode_s4(np.array([128]))[0]) < 1e-6  # 128 / 128 - 1 = 0


def test_load_audio_mixes_resamples_and_names_bad_files(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([tone, tone], 1), 44100)
    x = load_audio(tmp_path / "stereo.wav", 16000)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 16000) <= 1
    assert abs(np.abs(x).max() - 0.5) < 0.01
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.flac")


def test_iter_audio_blocks_concatenate_to_whole_file(tmp_path):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 50_000).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000)
    blocks = list(iter_audio(tmp_path / "a.flac", 16000, block_seconds=0.3))
    assert len(blocks) > 5
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(tmp_path / "a.flac", 16000))


def test_save_audio_is_atomic_and_round_trips(tmp_path):
    x = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    p = save_audio(tmp_path / "o.wav", x, 16000)
    assert [f.name for f in tmp_path.iterdir()] == ["o.wav"]
    np.testing.assert_allclose(load_audio(p, 16000), x, atol=1 / 32768)
