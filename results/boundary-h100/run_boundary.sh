#!/usr/bin/env bash
# One boundary invocation: OUT=FOLDER run_boundary.sh NAME TIMEOUT_S [pytest options...]
# Writes $OUT/NAME.{json,jsonl,log} and appends "NAME rc=.. Ns" to $OUT/walltimes.txt.
set -u
if [ $# -lt 2 ] || [ -z "${OUT:-}" ]; then
  echo "usage: OUT=FOLDER $0 NAME TIMEOUT_S [pytest options...]" >&2
  exit 2
fi
name=$1 limit=$2
shift 2
start=$SECONDS
timeout "$limit" python -m pytest benchmarks/test_oom_boundary.py -p no:cacheprovider -q -rs \
  --dlm-grid=standard --dlm-boundary --dlm-gen=256 --dlm-rounds=1 --dlm-warmup=0 \
  --dlm-journal="$OUT/$name.jsonl" --benchmark-json="$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
echo "$name rc=$? $((SECONDS - start))s" >>"$OUT/walltimes.txt"
tail -4 "$OUT/$name.log"
