"""`wavelm demo`: the browser demo (Gradio) on this machine only, by default.

    wavelm demo                                   # bundled model, http://127.0.0.1:7860
    wavelm demo --checkpoint runs/piano --port 8000

Needs the `demo` extra (`pip install 'wavelm[demo]'`); live playback during generation needs
the `ffmpeg` program. See wavelm/demo_app.py for the limits on lengths and uploads.
"""
from __future__ import annotations

import importlib.util
import logging
import os

from wavelm.errors import UserError

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p):
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="checkpoint directory (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")


def run(args) -> int:
    import shutil
    import tempfile

    from wavelm import demo_app

    demo_app.offline_env()  # before anything imports gradio
    # uploads and generated files go to a folder of this run's own, removed when it stops (Ctrl-C
    # or SIGTERM: wavelm.interrupt), its oldest results pruned (unless the user chose GRADIO_TEMP_DIR)
    own_tmp = None
    if "GRADIO_TEMP_DIR" not in os.environ:
        own_tmp = tempfile.mkdtemp(prefix="wavelm-demo-")
        os.environ["GRADIO_TEMP_DIR"] = own_tmp
    try:
        return _serve(args, demo_app, own_tmp)
    finally:
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)


def _serve(args, demo_app, own_tmp=None) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the demo needs gradio: pip install 'wavelm[demo]'")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    from wavelm.checkpoint import load_model

    model = load_model(args.checkpoint, map_location=args.device)
    if args.host not in LOOPBACK:
        log.warning("binding %s: the demo is reachable from other machines", args.host)
    if not demo_app.streaming_available():
        log.info("ffmpeg not found: audio plays when generation ends, not while it runs")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    demo = demo_app.build_demo(model, temp_dir=own_tmp)     # pruned while it serves
    try:
        demo_app.launch(demo, host=args.host, port=args.port)
    except OSError as e:
        why = "the port is in use: pick another with --port" if "empty port" in str(e) else str(e)
        raise UserError(f"cannot serve on {args.host}:{args.port}: {why}") from None
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
