#!/usr/bin/env bash
# Sampling options measured alone and combined with `wavelm bench quality` (3 clips x 30 s,
# 3 continuations), on one model: the bundled one unless CHECKPOINT is set.
#   recipes/piano/sampling/run.sh                 # -> recipes/piano/sampling/<tag>.json
#   CHECKPOINT=runs/piano6/best OUT=... recipes/piano/sampling/run.sh
#   ONLY="plain floor0.0005" CLIPS=6 MAXFILES=8 NOSCORE=1 ...  # some configs, more clips, no scores
# Then: python recipes/piano/sampling/table.py recipes/piano/sampling/*.json
set -euo pipefail
OUT=${OUT:-recipes/piano/sampling/bundle}
DATA=${DATA:-data/piano}
CLIPS=${CLIPS:-3}
MAXFILES=${MAXFILES:-3}
mkdir -p "$OUT"
ck=()
[ -n "${CHECKPOINT:-}" ] && ck=(--checkpoint "$CHECKPOINT")
configs=(
  "plain|"                # the model's own sampling (the defaults where it ships none)
  "t0.9|--temperature 0.9"
  "tonal0.5|--tonal-temperature 0.5"
  "floor|--floor 0.002"
  "floor0.0005|--floor 0.0005"
  "floor0.001|--floor 0.001"
  "floor0.0003|--floor 0.0003"
  "minp0.02|--min-p 0.02"
  "minp0.005|--min-p 0.005"
  "minp0.002|--min-p 0.002"
  "floor0.0005+minp0.005|--floor 0.0005 --min-p 0.005"
  "tonal0.5+floor|--tonal-temperature 0.5 --floor 0.002"
  "tonal0.5th0.15|--tonal-temperature 0.5 --tonal-threshold 0.15"
  "tonal0.6th0|--tonal-temperature 0.6 --tonal-threshold 0"
  "best4r0|--best-of 4 --best-rank 0"
  "best4r0.5|--best-of 4 --best-rank 0.5"
  "best4r0.25|--best-of 4 --best-rank 0.25"
  "tonal0.5+floor+best4r0.25|--tonal-temperature 0.5 --floor 0.002 --best-of 4 --best-rank 0.25"
)
for c in "${configs[@]}"; do
  tag=${c%%|*}; flags=${c#*|}
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $tag "* ]] && continue
  [ -s "$OUT/$tag.json" ] && { echo "have $OUT/$tag.json"; continue; }
  echo "== $tag: $flags"
  # shellcheck disable=SC2086
  wavelm bench quality "${ck[@]}" --data "$DATA" --max-files "$MAXFILES" --unseen '' --clips "$CLIPS" $([ "${NOSCORE:-0}" = 1 ] && echo --no-score) $flags --json "$OUT/$tag.json"
done
