#!/usr/bin/env bash
# Install what recipes/bach_piano needs on a Debian machine:
#   - libfluidsynth3 (Debian), the synthesiser pyfluidsynth loads;
#   - music21, pretty_midi, pyfluidsynth (PyPI) into $PYTHON (default .venv/bin/python).
# Idempotent: does nothing (and prints nothing) when all is already installed.
# Usage: bash recipes/bach_piano/install.sh        (PYTHON=/path/to/python to choose the env)
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
if ! command -v "$PYTHON" >/dev/null 2>&1 && [ ! -x "$PYTHON" ]; then
    echo "install.sh: python not found: $PYTHON (set PYTHON=...)" >&2
    exit 2
fi

have_libfluidsynth() {
    dpkg-query -W -f='${Status}' libfluidsynth3 2>/dev/null | grep -q "install ok installed" \
        || ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so\.3'
}

if ! have_libfluidsynth; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install.sh: installing libfluidsynth3 (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libfluidsynth3 >/dev/null
fi

# `import fluidsynth` also loads the shared library, so this checks both halves.
if ! "$PYTHON" -c "import music21, pretty_midi, fluidsynth" >/dev/null 2>&1; then
    echo "install.sh: installing music21 pretty_midi pyfluidsynth (pip)" >&2
    "$PYTHON" -m pip install -q music21 pretty_midi pyfluidsynth
fi
