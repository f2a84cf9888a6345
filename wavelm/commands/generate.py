"""`wavelm generate`: generate audio sample by sample and write WAV files.

    wavelm generate --seconds 10 -o piano.wav                      # the bundled model
    wavelm generate --seconds 5 --num-samples 4 -o take.wav        # take_0.wav ... take_3.wav
    wavelm generate --seconds 5 --prompt intro.wav --prompt-seconds 2 --temperature 0.9
    wavelm generate --seconds 5 --checkpoint runs/piano --top-p 0.95 --seed 7

The N streams of --num-samples are generated together as one batch. With a prompt (any file
libsndfile reads, resampled to the model's rate) the output is the continuation only, unless
--keep-prompt. On CPU the numba decode step runs (see wavelm/decode); `--backend torch` forces the
reference step.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from wavelm.commands._common import (add_sampling_arguments, check_device, check_generation_flags, flag_names,
                                     model_sampling, sampling_options)
from wavelm.errors import UserError



def add_arguments(p):
    from wavelm.decode import BACKENDS
    from wavelm.generation import MAX_SECONDS

    p.add_argument("--seconds", type=float, default=5.0,
                   help=f"audio to generate per stream, 0 < S <= {MAX_SECONDS:g} (default 5)")
    p.add_argument("--checkpoint", metavar="DIR", default=None, help="model directory (default: the bundled model)")
    from wavelm.generation import MAX_PROMPT_SECONDS

    p.add_argument("--prompt", metavar="FILE", default=None,
                   help=f"audio to continue (resampled to the model's rate), at most {MAX_PROMPT_SECONDS:g} s")
    p.add_argument("--prompt-seconds", type=float, default=None, metavar="P",
                   help=f"use the first P seconds of the prompt, 0 < P <= {MAX_PROMPT_SECONDS:g} (default: all of it)")
    p.add_argument("--keep-prompt", action="store_true", help="write the prompt before the continuation")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="streams generated together; N > 1 writes OUT_0.wav ... (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="generated.wav", metavar="OUT.wav",
                   help="output file (default generated.wav)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="decode step: auto (default), fast (numba, CPU), torch (reference), cuda-graph")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_arguments(p, "sampling (wavelm/decode/sampling.py; README: Sampling)")


def check_args(args):
    """Every check that needs no model, so bad input fails before the model loads."""
    from wavelm.files import AUDIO_OUT, check_not_special, check_output

    check_generation_flags(args.seconds, args.num_samples, args.seed, **sampling_options(args))
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    from wavelm.generation import MAX_PROMPT_SECONDS

    if args.prompt_seconds is not None:
        if args.prompt is None:
            raise UserError("--prompt-seconds needs --prompt")
        if not (math.isfinite(args.prompt_seconds) and 0 < args.prompt_seconds <= MAX_PROMPT_SECONDS):
            raise UserError(f"--prompt-seconds must be > 0 and <= {MAX_PROMPT_SECONDS:g}, got {args.prompt_seconds:g}")
    if args.keep_prompt and args.prompt is None:
        raise UserError("--keep-prompt needs --prompt")
    if os.path.isdir(args.output):
        raise UserError(f"-o {args.output}: is a directory; give a file name such as out.wav")
    check_not_special(args.output)    # -o /dev/null: refused as it is, never /dev/null.wav
    for path in output_paths(args.output, args.num_samples):
        check_output(path, AUDIO_OUT)                     # before the work, not after it
    check_device(args.device)


def output_paths(output: str, n: int) -> list[Path]:
    p = Path(output)
    if p.suffix == "":
        p = p.with_name(p.name + ".wav")
    return [p] if n == 1 else [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(n)]


def run(args) -> int:
    check_args(args)

    from wavelm.audio import audio_writers, load_audio
    from wavelm.checkpoint import load_model
    from wavelm.generation import MAX_PROMPT_SECONDS, generate, stream

    model = load_model(args.checkpoint, map_location=args.device)
    sr = int(model.config.sample_rate)
    prompt = None
    if args.prompt is not None:
        # decoded only up to the cap (+1 s: a longer file is refused, not cut silently)
        prompt = load_audio(args.prompt, sr, max_seconds=args.prompt_seconds or MAX_PROMPT_SECONDS + 1)
        if len(prompt) == 0:
            raise UserError(f"--prompt {args.prompt}: holds no audio")
        if len(prompt) > MAX_PROMPT_SECONDS * sr:
            raise UserError(f"--prompt {args.prompt}: longer than {MAX_PROMPT_SECONDS:g} s; "
                            "use its first seconds with --prompt-seconds")
    threads = args.threads or (1 if args.device == "cpu" else None)
    progress = not args.no_progress and sys.stderr.isatty()
    t0 = time.perf_counter()
    sampling = model_sampling(model, args)
    check_generation_flags(args.seconds, args.num_samples, args.seed, sampling=sampling)   # its best_of too
    kw = dict(batch_size=args.num_samples, seed=args.seed, prompt=prompt, sampling=sampling,
              progress=progress, backend=args.backend, threads=threads)
    try:       # the memory check and the prompt's, before any work
        if sampling.best_of == 1:
            chunks = stream(model, args.seconds, **kw)
        else:  # a candidate is chosen at the end: the candidates' tokens are held (1 byte a sample)
            chunks = [generate(model, args.seconds, **kw)]
    except ValueError as e:
        raise UserError(flag_names(str(e))) from None
    paths = output_paths(args.output, args.num_samples)
    n = 0
    # written as it is made: memory does not grow with --seconds (each file is renamed into
    # place at the end, complete, or removed)
    with audio_writers(paths, sr) as write:
        if args.keep_prompt:
            for i in range(len(paths)):
                write(i, prompt)
            n += len(prompt)
        for chunk in chunks:                                         # (N, samples)
            for i, x in enumerate(chunk):
                write(i, x)
            n += chunk.shape[1]
    took = time.perf_counter() - t0
    gen = round(args.seconds * sr)
    print(f"wrote {', '.join(map(str, paths))}: {args.num_samples} x {n / sr:.2f} s at {sr} Hz "
          f"(generated {args.num_samples} x {gen} samples in {took:.1f} s, {gen / took / sr:.2f}x real time)")
    return 0
