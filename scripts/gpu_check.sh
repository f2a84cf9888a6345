#!/usr/bin/env bash
# One command that exercises wavelm's GPU paths on a CUDA machine and writes a JSON of results.
# Needs nothing from the network there: run it in a checkout whose .venv was built here
# (`make setup-test`), copied over with the tree.
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu_check)
# What it does, in about 5 minutes on one H200:
#   1. checks that torch sees a GPU (a CPU-only torch wheel cannot: see the message it prints);
#   2. scripts/gpu_check.py: CUDA == CPU forward, streaming == full forward on CUDA, the
#      CUDA-graph decoder == the torch step (same tokens), bf16 training steps are finite;
#   3. wavelm bench generate --device cuda --batch 1,256, with the CUDA graph and without;
#   4. wavelm bench train --device cuda (bf16) for the small and piano presets.
# Everything lands in OUT_DIR: gpu_check.json plus one log per step; the script goes on after a
# failed step and exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-.venv/bin/python}"
WAVELM="${WAVELM:-.venv/bin/wavelm}"
fail=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda build:', torch.version.cuda)" 2>&1 | tee "$OUT_DIR/torch.txt"
    echo "gpu_check: torch sees no GPU. A CPU wheel (torch.version.cuda None) cannot use one: on a machine" \
         "with network, 'pip download torch==<version> --index-url https://download.pytorch.org/whl/cu128 -d wheels/'," \
         "copy wheels/ over, then '.venv/bin/pip install --no-index wheels/torch-*.whl'." >&2
    exit 2
fi

step() {  # step NAME CMD...: run, log, remember failures
    local name=$1; shift
    echo "== $name: $*"
    if timeout 300 "$@" > "$OUT_DIR/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $OUT_DIR/$name.log)"; fail=1; fi
}

step correctness "$PY" scripts/gpu_check.py --json "$OUT_DIR/correctness.json"
step generate_graph "$WAVELM" bench generate --device cuda --backend cuda-graph --batch 1,256 --seconds 2 --repeat 3
step generate_torch "$WAVELM" bench generate --device cuda --backend torch --batch 1,256 --seconds 0.5 --repeat 2
step train_small "$WAVELM" bench train --device cuda --presets small,piano --batch-size 16 --seq-len 16384 --steps 10

"$PY" - "$OUT_DIR" <<'PYEOF'
import json, pathlib, sys, torch
out = pathlib.Path(sys.argv[1])
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
       "steps": {p.stem: p.read_text()[-4000:] for p in sorted(out.glob("*.log"))}}
c = out / "correctness.json"
if c.is_file():
    res["correctness"] = json.loads(c.read_text())
(out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
print(f"wrote {out / 'gpu_check.json'}")
PYEOF
exit $fail
