#!/usr/bin/env bash
# Listening screen of checkpoints on the val split (never the test split the ship rule uses):
# `wavelm bench quality --split val --no-score`, 6 clips x 30 s and 6 continuations each, the
# sampling given in FLAGS; one report per checkpoint, skipped when it exists. The listening
# measures do not follow the val bits (docs/bundled_model.md, "Round 6"), so the candidate is
# chosen among the kept checkpoints (`wavelm train --keep-every N`) by these, then measured once
# on test with recipes/piano/ship.py, with other seeds (--seed 100: the clips from silence do not
# depend on the split, so the screen's seeds 0-5 would measure the very clips it chose by).
#   recipes/piano/select.sh runs/piano6/steps/* wavelm/pretrained       # -> runs/select/<name>.json
#   FLAGS="--min-p 0.002" OUT=runs/select_minp recipes/piano/select.sh runs/piano6/steps/*
#   python recipes/piano/sampling/table.py --by-name runs/select/*.json
#   python recipes/piano/ship.py --listening-only runs/select/wavelm-pretrained.json runs/select/runs-piano6-steps-20000.json
set -euo pipefail
OUT=${OUT:-runs/select}
DATA=${DATA:-data/piano}
CLIPS=${CLIPS:-6}
mkdir -p "$OUT"
for ck in "$@"; do
  name=$(echo "${ck%/}" | tr '/' '-')                       # runs/piano6/steps/500 -> runs-piano6-steps-500
  [ -s "$OUT/$name.json" ] && { echo "have $OUT/$name.json"; continue; }
  echo "== $ck ${FLAGS:-}"
  # shellcheck disable=SC2086
  wavelm bench quality --checkpoint "$ck" --data "$DATA" --split val --unseen '' --no-score \
    --clips "$CLIPS" --max-files 12 ${FLAGS:-} --json "$OUT/$name.json" --plot "$OUT/$name.png"
done
