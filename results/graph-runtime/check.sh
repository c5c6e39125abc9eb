#!/usr/bin/env bash
# First check of the graphs runtime on a GPU: the fused-attention tests under both runtimes, then
# batch-1 gen-64 points of the standard grid under both. Usage: OUT=folder results/graph-runtime/check.sh
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
python -m pytest tests/test_gpu_kernels.py -q -p no:cacheprovider >"$OUT/kernels.log" 2>&1; echo "kernels rc=$?"
tail -3 "$OUT/kernels.log"
start=$SECONDS
python -m pytest benchmarks/test_generation.py -q -p no:cacheprovider --dlm-grid=standard --dlm-batch=1 --dlm-gen=64 \
  --dlm-rounds=2 --dlm-runtime=all --benchmark-json="$OUT/quick.json" --dlm-journal="$OUT/quick.jsonl" "$@" \
  >"$OUT/quick.log" 2>&1
echo "quick rc=$? $((SECONDS - start))s"
grep -E "^(ar|dlm|block) " "$OUT/quick.log" | head -20
grep -iE "warn|error" "$OUT/quick.log" | head -10
