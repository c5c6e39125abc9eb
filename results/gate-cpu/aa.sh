#!/usr/bin/env bash
# A/A on CPU: five back-to-back smoke runs of the ar grid, each gated in pytest against the one
# before with the default gate (tokens_per_s:5%), then every pair gated with `dlmbench compare`.
# Usage, from the repository root: OUT=folder results/gate-cpu/aa.sh
set -u
: "${OUT:?set OUT to the folder for the runs}"
mkdir -p "$OUT"
previous=""
for index in 0 1 2 3 4; do
  gate=()
  [ -n "$previous" ] && gate=(--dlm-baseline="$previous")
  python -m pytest benchmarks -q -p no:cacheprovider --dlm-paradigms=ar --benchmark-json="$OUT/run$index.json" \
    "${gate[@]}" > "$OUT/run$index.log" 2>&1
  echo "run$index: pytest exit $? $(grep -E 'regression\(s\)' "$OUT/run$index.log")"
  previous="$OUT/run$index.json"
done
for first in 0 1 2 3 4; do
  for second in $(seq $((first + 1)) 4); do
    dlmbench compare "$OUT/run$first.json" "$OUT/run$second.json" > "$OUT/compare-$first-$second.txt" 2>&1
    echo "compare run$first run$second: exit $? $(tail -1 "$OUT/compare-$first-$second.txt")"
  done
done
