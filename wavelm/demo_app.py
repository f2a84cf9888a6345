"""Browser demo (Gradio): generate audio, score a file, see which model is loaded.

    wavelm demo                                  # the bundled model on http://127.0.0.1:7860
    wavelm demo --checkpoint runs/piano --port 8000
    python demo/app.py --checkpoint runs/piano   # the same, as a script

    demo = build_demo(model)                     # a gr.Blocks
    launch(demo, port=7860)                      # local only: 127.0.0.1, share=False

Limits, checked on every request (the HTTP API included): MAX_SECONDS of audio per generation,
MAX_SAMPLES samples at once, prompts up to MAX_PROMPT_SECONDS, scoring up to MAX_SCORE_SECONDS.
Bad input shows an error in the page; the server keeps serving.

Generated audio is served as 16-bit WAV at the model's rate with its real level (Gradio
peak-normalises float arrays; int16 passes through untouched). When the `ffmpeg` program is
installed, playback starts while generation is still running (Gradio's streaming audio needs
ffmpeg); without it the players fill in when generation ends.

Temp files. `wavelm demo` keeps uploads and results in a folder of its own (removed when it
stops, by Ctrl-C or SIGTERM); before each request the oldest results there are removed past
MAX_TEMP_ENTRIES entries or MAX_TEMP_BYTES (`prune_temp`). Live-stream chunks are sent as WAV
bytes and never written to disk.

Gradio is imported inside build_demo() (it takes seconds), after offline_env() has set
GRADIO_ANALYTICS_ENABLED=False, HF_HUB_OFFLINE=1 and HF_HUB_DISABLE_TELEMETRY=1.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from wavelm.audio import AudioError, audio_info, load_audio
from wavelm.generation import check_args, generate, model_sampling, stream
from wavelm.plot import plot_score
from wavelm.scoring import score

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0          # audio per generation
MAX_SAMPLES = 4             # samples generated at once (one player each)
MAX_BEST_OF = 8             # candidates per sample (best-of)
MAX_BEST_STREAMS = MAX_SAMPLES * MAX_BEST_OF
MAX_PROMPT_SECONDS = 30.0   # prompt upload or recording
MAX_SCORE_SECONDS = 600.0   # file to score (10 minutes)
MAX_FILE_SIZE = "200mb"     # uploads larger than this are refused by Gradio itself
CHUNK_SECONDS = 0.5         # streaming: audio per chunk sent to the live player
MAX_TEMP_ENTRIES = 100      # uploads and results kept in the demo's own temp folder (oldest go first)
MAX_TEMP_BYTES = 500 << 20  # and their total size
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


class InputError(ValueError):
    """Bad input from the page: shown to the user as an error message."""


def offline_env():
    """Keep Gradio and huggingface_hub from calling home (unless the user set otherwise)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def streaming_available() -> bool:
    return shutil.which("ffmpeg") is not None


def to_int16(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM at the same level (Gradio would peak-normalise floats)."""
    return np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def wav_bytes(sample_rate: int, x: np.ndarray) -> bytes:
    """int16 mono samples as a 16-bit WAV file in memory (a live-stream chunk: Gradio streams
    bytes as they are, where a (rate, array) chunk would be written to its cache first)."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.ascontiguousarray(x, dtype="<i2").tobytes())
    return buf.getvalue()


def _tree_bytes(p: Path) -> int:
    if not p.is_dir() or p.is_symlink():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if not f.is_dir() or f.is_symlink())


def prune_temp(folder, max_entries: int = MAX_TEMP_ENTRIES, max_bytes: int = MAX_TEMP_BYTES,
               keep=()) -> list[Path]:
    """Remove the oldest entries of `folder` (Gradio keeps each upload or result in a folder of
    its own) until at most `max_entries` entries and `max_bytes` bytes remain; entries holding a
    path in `keep` (the request's own uploads) stay. Returns the removed entries."""
    folder = Path(folder)
    keep = [Path(k).resolve() for k in keep if k]
    entries = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                entries.append((p.lstat().st_mtime, p, _tree_bytes(p)))
    entries.sort(key=lambda e: e[0])
    count, total, removed = len(entries), sum(e[2] for e in entries), []
    for _, p, size in entries:
        if count <= max_entries and total <= max_bytes:
            break
        if any(k == p.resolve() or p.resolve() in k.parents for k in keep):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        count, total = count - 1, total - size
        removed.append(p)
    if removed:
        log.info("%s: removed %d old demo file(s)", folder, len(removed))
    return removed


# ----------------------------------------------------------------------------- input checks

def read_upload(path, sample_rate: int, max_seconds: float, what: str = "audio") -> np.ndarray:
    """Decode an uploaded file to float32 mono at `sample_rate`, or raise InputError saying why.

    libsndfile formats are read directly; others (m4a, webm from a microphone) go through the
    `ffmpeg` program when it is installed. Files longer than `max_seconds` are refused
    before they are decoded in full.
    """
    if not path:
        raise InputError(f"no {what}: upload a file first")
    name = Path(path).name
    try:
        sr, _, frames = audio_info(path)
    except AudioError as e:     # not a libsndfile format: ffmpeg may read it
        x = _ffmpeg_decode(path, sample_rate, max_seconds, name, what, e)
    else:
        if frames / sr > max_seconds:
            raise InputError(_too_long(name, frames / sr, max_seconds, what))
        try:                    # read by libsndfile: its verdict stands (NaN samples are refused)
            x = load_audio(path, sample_rate)
        except AudioError as e:
            raise InputError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
    if len(x) == 0:
        raise InputError(f"{name}: holds no audio (0 samples)")
    return x


def _too_long(name, seconds, limit, what):
    return (f"{name}: {_fmt_duration(seconds)} is too long; the demo takes {what} up to "
            f"{_fmt_duration(limit)}")


def _ffmpeg_decode(path, sample_rate, max_seconds, name, what, error):
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise InputError(f"{name}: cannot read this file as audio (WAV, FLAC, OGG, MP3 work)") from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.wav"
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-t", f"{max_seconds + 1:.3f}",
               "-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", str(out)]
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        if r.returncode != 0 or not out.exists():
            log.info("could not decode %s: %s / ffmpeg: %s", name, error, r.stderr[-300:])
            raise InputError(f"{name}: cannot read this file as audio") from None
        x = load_audio(out, sample_rate)
    if len(x) > max_seconds * sample_rate:
        raise InputError(_too_long(name, len(x) / sample_rate, max_seconds, what) + " or more")
    return x


def check_generate_args(seconds, samples, temperature, top_p, seed, base=None, **options) -> tuple:
    """Validate the Generate tab's values (they may come from the API, not the sliders) with
    the same rules as the CLI and the Python API (wavelm.generation.check_args): (seconds,
    samples, seed, Sampling). `options`: more Sampling fields (tonal_temperature 0: off), set
    on `base` (the model's own sampling; default the Sampling defaults)."""
    if isinstance(seed, float) and seed.is_integer():    # gr.Number sends floats
        seed = int(seed)
    if isinstance(samples, float) and samples.is_integer():
        samples = int(samples)
    if options.get("tonal_temperature") == 0:
        options["tonal_temperature"] = None
    if isinstance(options.get("best_of"), float) and options["best_of"].is_integer():
        options["best_of"] = int(options["best_of"])
    try:
        a, sampling = check_args(seconds, samples, seed, base, max_seconds=MAX_SECONDS, max_batch_size=MAX_BEST_STREAMS,
                                 temperature=temperature, top_p=top_p, **options)
        if a["batch_size"] > MAX_SAMPLES:
            raise ValueError(f"batch_size must be an integer from 1 to {MAX_SAMPLES}, got {a['batch_size']}")
    except ValueError as e:
        raise InputError(str(e).replace("batch_size", "number of samples")) from None
    return a["seconds"], a["batch_size"], a["seed"], sampling


# ----------------------------------------------------------------------------- text and plots

def _fmt_duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _find(meta, names, skip=("model",)):
    """First value in nested dict `meta` under a key in `names` (depth-first, in order)."""
    if not isinstance(meta, dict):
        return None
    for n in names:
        if meta.get(n) not in (None, "", {}, []):
            return meta[n]
    for k, v in meta.items():
        if k not in skip and isinstance(v, dict):
            found = _find(v, names, skip)
            if found is not None:
                return found
    return None


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    return str(v).replace("\n", " ")


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


def model_info(model) -> tuple[str, str, str]:
    """(summary as a markdown list, model card markdown, config.json text) of a loaded model."""
    cfg = model.config
    path = getattr(model, "checkpoint_path", None)
    meta = getattr(model, "checkpoint_meta", None) or {}
    n = model.num_parameters()
    weights = Path(path) / "model.safetensors" if path else None
    mb = weights.stat().st_size / 1e6 if weights and weights.exists() else n * 4 / 1e6
    pool = f", pooling {cfg.pool}" if cfg.pool else ""
    rows = [("Checkpoint", f"`{path}`" if path else "(built in memory, not saved)"),
            ("Size", f"{n / 1e6:.2f} M parameters, {mb:.{1 if mb >= 10 else 2}f} MB"),
            ("Architecture", f"{cfg.arch_name}, width {cfg.d_model}, {cfg.n_layers} layers per stage, "
                             f"attention window {cfg.attn_window}{pool}"),
            ("Audio", f"{cfg.sample_rate} Hz, 8-bit {cfg.codec} (256 classes)")]
    if getattr(model, "sampling", None) is not None:
        rows.append(("Sampling it ships with", str(model.sampling)))
    wanted = [("Training data", ("data", "dataset", "train_data", "data_name", "corpus")),
              ("Training steps", ("steps", "step", "train_steps", "max_steps")),
              ("Test NLL (bits/sample)", ("test_bits_per_sample", "test_bpb", "test_bits",
                                          "test_nll_bits", "test_nll", "bits_per_sample_test")),
              ("Validation NLL (bits/sample)", ("val_bits_per_sample", "val_bpb", "val_bits")),
              ("wavelm version", ("wavelm_version",))]
    for label, names in wanted:
        v = _find(meta, names)
        if v is not None:
            rows.append((label, _fmt_value(v)))
    table = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    card_file = Path(path) / "README.md" if path else None
    card = ""
    if card_file and card_file.exists():
        card = _strip_front_matter(card_file.read_text(errors="replace"))
    return table, card or "_No model card (README.md) next to this checkpoint._", json.dumps(meta, indent=2)


def score_summary(res, sample_rate: int) -> str:
    secs = res.num_samples / sample_rate
    return (f"**{res.bits_per_sample:.3f} bits per sample** over {_fmt_duration(secs)} "
            f"({res.num_samples:,} samples at {sample_rate} Hz): {res.total_bits / 8e3:,.1f} kB "
            f"as an ideal code, {res.bits_per_sample * sample_rate / 1e3:.1f} kbit/s "
            f"(8-bit mu-law is 8 bits per sample).")


def score_image(x: np.ndarray, nll_bits: np.ndarray, sample_rate: int, title: str):
    """wavelm.plot's figure (waveform, smoothed NLL, spectrogram) as a PIL image."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_score(x, nll_bits, Path(tmp) / "score.png", sample_rate=sample_rate, title=title)
        with Image.open(png) as im:
            return im.convert("RGB")


# ----------------------------------------------------------------------------- the app

def build_demo(model, streaming: bool | None = None, temp_dir=None):
    """The Gradio app for `model`. streaming=None: live playback iff `ffmpeg` is installed.
    temp_dir: the demo's own temp folder (GRADIO_TEMP_DIR), pruned before each request
    (`prune_temp`); None prunes nothing (a folder that others may share)."""
    offline_env()
    import gradio as gr

    sr = model.config.sample_rate
    live_ok = streaming_available() if streaming is None else bool(streaming)
    table, card, config_text = model_info(model)
    own = model_sampling(model)       # the sliders start at the model's own sampling (its card)

    def tidy(*inputs):
        if temp_dir is not None:
            prune_temp(temp_dir, keep=inputs)

    def on_generate(seconds, samples, temperature, top_p, seed, prompt, min_p=0.0, floor=0.0,
                    tonal_temperature=0.0, best_of=1, progress=gr.Progress()):
        try:
            seconds, samples, seed, sampling = check_generate_args(
                seconds, samples, temperature, top_p, seed, base=own, min_p=min_p, floor=floor,
                tonal_temperature=tonal_temperature, best_of=best_of)
            x_prompt = read_upload(prompt, sr, MAX_PROMPT_SECONDS, "prompts") if prompt else None
        except InputError as e:
            raise gr.Error(str(e)) from None
        tidy(prompt)
        total = int(round(seconds * sr))
        yield {status: "Starting... (the first run after installing compiles the fast decoder: "
                       "up to a minute)", **{p: None for p in players}}
        parts, done, t0 = [], 0, time.perf_counter()
        kw = dict(batch_size=samples, seed=seed, prompt=x_prompt, sampling=sampling)
        if sampling.best_of > 1:      # a candidate is chosen at the end: nothing to stream
            progress(0.0, desc=f"generating {sampling.best_of} candidates per sample")
            chunks = [generate(model, seconds, **kw)]
        else:
            chunks = stream(model, seconds, chunk_samples=max(1, int(CHUNK_SECONDS * sr)), **kw)
        try:
            for chunk in chunks:
                parts.append(chunk)
                done += chunk.shape[1]
                took = time.perf_counter() - t0
                progress(min(done / total, 1.0), desc="generating")
                out = {status: f"Generating: {done / sr:.1f} / {seconds:g} s "
                               f"({done / sr / took:.2f}x real time)"}
                if live is not None:
                    out[live] = wav_bytes(sr, to_int16(chunk[0]))
                yield out
        except ValueError as e:  # the library's message for input it refuses
            raise gr.Error(str(e)) from None
        took = time.perf_counter() - t0
        audio = np.concatenate(parts, axis=1) if parts else np.zeros((samples, 0), np.float32)
        yield {status: f"Done: {samples} x {audio.shape[1] / sr:.2f} s in {took:.1f} s "
                       f"({audio.shape[1] / sr / max(took, 1e-9):.2f}x real time).",
               **{p: (sr, to_int16(audio[i])) if i < samples else None
                  for i, p in enumerate(players)}}

    def on_score(path, progress=gr.Progress(track_tqdm=True)):  # score()'s tqdm bar -> page
        tidy(path)
        try:
            x = read_upload(path, sr, MAX_SCORE_SECONDS, "audio to score")
            res = score(model, x, progress=True)
        except (InputError, ValueError) as e:
            raise gr.Error(str(e)) from None
        title = f"{Path(path).name}: {res.bits_per_sample:.3f} bits/sample"
        return round(float(res.bits_per_sample), 4), score_summary(res, sr), \
            score_image(x, res.nll_bits, sr, title)

    with gr.Blocks(title="wavelm demo") as demo:
        gr.Markdown(f"# wavelm\nAn autoregressive language model over raw audio: 8-bit mu-law "
                    f"samples at {sr} Hz, generated one sample at a time. "
                    f"Model: {model.config.arch_name}, {model.num_parameters() / 1e6:.2f} M parameters.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    seconds = gr.Slider(0.1, MAX_SECONDS, value=min(5.0, MAX_SECONDS), step=0.1,
                                        label="Seconds", elem_id="seconds",
                                        info=f"at most {MAX_SECONDS:g} s")
                    samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Number of samples",
                                        elem_id="samples")
                    # each slider's range holds the model's own value (it starts there)
                    temperature = gr.Slider(min(0.05, own.temperature), max(2.0, own.temperature), step=0.05,
                                            value=own.temperature, label="Temperature")
                    top_p = gr.Slider(min(0.05, own.top_p), 1.0, value=own.top_p, step=0.05, label="Top-p")
                    with gr.Accordion("More sampling (README: Sampling)", open=False):
                        min_p = gr.Slider(0.0, max(0.5, own.min_p), value=own.min_p, step=0.001, label="Min-p",
                                          info="drop values less likely than this times the most likely")
                        floor = gr.Slider(0.0, max(0.003, own.floor), value=own.floor, step=0.0001,
                                          label="Probability floor",
                                          info="subtracted from every probability (LPCNet: 0.002)")
                        t2 = own.tonal_temperature or 0.0
                        tonal = gr.Slider(0.0, max(2.0, t2), value=t2, step=0.05, label="Tonal temperature",
                                          info="temperature where the audio is periodic (0: off)")
                        best_of = gr.Slider(1, max(MAX_BEST_OF, own.best_of), value=own.best_of, step=1,
                                            label="Best of", info="candidates per sample, ranked by the model's bits")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    prompt = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                      label=f"Prompt to continue (optional, at most {MAX_PROMPT_SECONDS:g} s)",
                                      elem_id="prompt")
                    with gr.Row():
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                        stop_btn = gr.Button("Stop", elem_id="stop-btn")
                with gr.Column(scale=2):
                    status = gr.Markdown("Press **Generate**." + (
                        " Playback starts while the model is still generating." if live_ok else
                        " (Install `ffmpeg` to hear audio while it is generated.)"),
                        elem_id="gen-status")
                    live = gr.Audio(label="Live (sample 1)", streaming=True, autoplay=True,
                                    interactive=False, elem_id="live") if live_ok else None
                    players = [gr.Audio(label=f"Sample {i + 1}", type="numpy", interactive=False,
                                        buttons=["download"], visible=i == 0,
                                        elem_id=f"sample-{i + 1}") for i in range(MAX_SAMPLES)]
        with gr.Tab("Score"):
            with gr.Row():
                with gr.Column(scale=1):
                    score_in = gr.Audio(sources=["upload"], type="filepath", elem_id="score-audio",
                                        label=f"Audio to score (at most {_fmt_duration(MAX_SCORE_SECONDS)})")
                    score_btn = gr.Button("Score", variant="primary", elem_id="score-btn")
                with gr.Column(scale=1):
                    bps = gr.Number(label="Bits per sample", interactive=False, elem_id="bps")
                    summary = gr.Markdown(elem_id="score-summary")
            plot = gr.Image(label="Waveform, NLL per sample, spectrogram", type="pil",
                            format="png", interactive=False, elem_id="score-plot")
        with gr.Tab("Model"):
            gr.Markdown(table, elem_id="model-info")
            with gr.Accordion("Model card", open=True):
                gr.Markdown(card)
            with gr.Accordion("config.json", open=False):
                gr.Code(config_text, language="json")

        outputs = [status, *players] + ([live] if live is not None else [])
        gen = gen_btn.click(on_generate, [seconds, samples, temperature, top_p, seed, prompt, min_p, floor, tonal,
                                          best_of],
                            outputs, api_name="generate", concurrency_id="model")
        stop_btn.click(None, cancels=[gen])
        samples.change(lambda n: [gr.update(visible=i < n) for i in range(MAX_SAMPLES)],
                       samples, players, api_visibility="private")
        score_btn.click(on_score, [score_in], [bps, summary, plot], api_name="score",
                        concurrency_id="model")
    demo.queue(default_concurrency_limit=1)  # one job at a time: they all want the CPU
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Serve locally: no share link, errors shown in the page, uploads capped."""
    kwargs = {"share": False, "show_error": True, "max_file_size": MAX_FILE_SIZE,
              "ssr_mode": False, "inbrowser": False, **kwargs}
    return demo.launch(server_name=host, server_port=port, **kwargs)
