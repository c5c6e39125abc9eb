#!/usr/bin/env bash
# pytest-xdist on the GPU. Usage, from the repository root:
#   OUT=folder results/xdist-h100/run.sh pair       # one process, then -n 1 --dlm-devices=0, same points
#   OUT=folder results/xdist-h100/run.sh shared     # -n 2 --dlm-devices=0,0: two workers on one GPU (the flow, not speed)
#   OUT=folder results/xdist-h100/run.sh multi      # the standard grid, -n 2 --dlm-devices=all, then one process
# Each invocation's wall time is kept in OUT/walltime.txt.
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
P=(python -m pytest benchmarks/test_generation.py -p no:cacheprovider -q --dlm-grid=standard)
run() {  # NAME [options]
  local name=$1 start=$SECONDS
  shift
  "${P[@]}" --benchmark-json="$OUT/$name.json" --dlm-journal="$OUT/$name.jsonl" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/walltime.txt"
}
SUBSET=(--dlm-prompt=40 --dlm-gen=256 --dlm-batch=1,4 --dlm-rounds=3)
case $1 in
  pair)
    run one-process "${SUBSET[@]}"
    run n1-devices0 "${SUBSET[@]}" -n 1 --dlm-devices=0
    dlmbench noise "$OUT/one-process.json" "$OUT/n1-devices0.json" | tee "$OUT/noise-one-vs-n1.txt" ;;
  shared)
    run n2-devices00 --dlm-prompt=40 --dlm-gen=64 --dlm-batch=1 --dlm-rounds=2 -n 2 --dlm-devices=0,0 ;;
  multi)
    run multi-n2 -n 2 --dlm-devices=all
    run multi-one-process
    dlmbench noise "$OUT/multi-one-process.json" "$OUT/multi-n2.json" | tee "$OUT/noise-multi.txt" ;;
esac
