"""The wavelm browser demo as a script; the same as `wavelm demo`.

    python demo/app.py [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]

The app itself lives in the package (wavelm/demo_app.py), so installed copies have it too.
"""
import sys

from wavelm.demo_app import build_demo, launch  # noqa: F401  (re-exported for scripts)

if __name__ == "__main__":
    from wavelm.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
