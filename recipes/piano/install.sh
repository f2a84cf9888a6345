#!/usr/bin/env bash
# Install what recipes/piano needs on a Debian machine:
#   - libfluidsynth3 and the soundfonts fluid-soundfont-gm (FluidR3_GM) and
#     musescore-general-soundfont-lossless (MuseScore_General_Full) from Debian;
#   - music21, pretty_midi (ships TimGM6mb), pyfluidsynth and librosa (for `wavelm bench quality`)
#     from PyPI into $PYTHON (default .venv/bin/python).
# Idempotent: prints nothing when all is there.
# Usage: bash recipes/piano/install.sh        (PYTHON=/path/to/python to choose the env)
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
if ! command -v "$PYTHON" >/dev/null 2>&1 && [ ! -x "$PYTHON" ]; then
    echo "install.sh: python not found: $PYTHON (set PYTHON=...)" >&2
    exit 2
fi

need=()
dpkg-query -W -f='${Status}' libfluidsynth3 2>/dev/null | grep -q "install ok installed" \
    || ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so\.3' || need+=(libfluidsynth3)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
[ -f /usr/share/sounds/sf2/MuseScore_General_Full.sf2 ] || need+=(musescore-general-soundfont-lossless)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "install.sh: installing ${need[*]} (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! "$PYTHON" -c "import music21, pretty_midi, fluidsynth, librosa" >/dev/null 2>&1; then
    echo "install.sh: installing music21 pretty_midi pyfluidsynth librosa (pip)" >&2
    "$PYTHON" -m pip install -q -c constraints.txt music21 pretty_midi pyfluidsynth librosa
fi
