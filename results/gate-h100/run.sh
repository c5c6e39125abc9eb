#!/usr/bin/env bash
# The gate on the H100: an A/A pair and a run slowed by 10 % per forward, gated at tokens_per_s:5%
# with the default rounds (6). Usage, from the repository root:
#   OUT=folder [RUNS="a1 a2 slow10"] results/gate-h100/run.sh [selection options, e.g. --dlm-batch=16]
set -u
: "${OUT:?set OUT to the folder for the runs}"
mkdir -p "$OUT"
P=(python -m pytest benchmarks/test_generation.py -p no:cacheprovider -q --dlm-grid=standard --dlm-gen=64 "$@")
run() {  # NAME [options]: one invocation, timed, with a journal
  local name=$1 start=$SECONDS
  shift
  "${P[@]}" --benchmark-json="$OUT/$name.json" --dlm-journal="$OUT/$name.jsonl" "$@" >"$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start))s $(grep -E 'regression\(s\)' "$OUT/$name.log")"
}
for name in ${RUNS:-a1 a2 slow10}; do
  case $name in
    a1) run a1 ;;
    a2) run a2 --dlm-baseline="$OUT/a1.json" ;;
    slow10) DLMBENCH_SLOWDOWN=0.1 PYTHONPATH=tests run slow10 -p slowdown_plugin --dlm-baseline="$OUT/a1.json" ;;
  esac
done
for name in a2 slow10; do
  [ -f "$OUT/$name.json" ] || continue
  dlmbench compare "$OUT/a1.json" "$OUT/$name.json" >"$OUT/compare-a1-$name.txt"; echo "compare a1 $name: exit $?"
done
[ -f "$OUT/a2.json" ] && dlmbench noise "$OUT/a1.json" "$OUT/a2.json" >"$OUT/noise-a1-a2.txt"
