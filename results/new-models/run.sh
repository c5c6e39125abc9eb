#!/usr/bin/env bash
# The new model shapes on a GPU under both runtimes, from the repository root:
#   OUT=folder results/new-models/run.sh PART     PART: ar | dlm | kernels
# ar: qwen2.5-7b and qwen3-8b; dlm: dream-7b under both runtimes, llada-moe-7b-a1b under eager
# (and the graphs runtime's refusal of it); kernels: one forward of each, profiled.
# Standard-grid points at gen 256: prompt 40 at batch 1 and 16, prompt 920 at batch 1; 3 rounds.
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
run() {  # NAME, then pytest options
  local name=$1
  shift
  python -m pytest benchmarks/test_generation.py --dlm-gen=256 --dlm-rounds=3 -p no:cacheprovider -q \
    --benchmark-json="$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" | tail -25
}
case "${1:?PART: ar, dlm or kernels}" in
  ar)
    run ar-p40 --dlm-models=qwen2.5-7b,qwen3-8b --dlm-runtime=all --dlm-prompt=40 --dlm-batch=1,16
    run ar-p920 --dlm-models=qwen2.5-7b,qwen3-8b --dlm-runtime=all --dlm-prompt=920 --dlm-batch=1 ;;
  dlm)
    run dream-p40 --dlm-models=dream-7b --dlm-runtime=all --dlm-prompt=40 --dlm-batch=1,16
    run dream-p920 --dlm-models=dream-7b --dlm-runtime=all --dlm-prompt=920 --dlm-batch=1
    run moe-p40 --dlm-models=llada-moe-7b-a1b --dlm-runtime=eager --dlm-prompt=40 --dlm-batch=1,16
    run moe-p920 --dlm-models=llada-moe-7b-a1b --dlm-runtime=eager --dlm-prompt=920 --dlm-batch=1
    python -m pytest benchmarks/test_generation.py --dlm-models=llada-moe-7b-a1b -p no:cacheprovider \
      >"$OUT/moe-graphs-refused.log" 2>&1
    echo "exit $?" >>"$OUT/moe-graphs-refused.log" ;;
  kernels)
    python results/new-models/kernels.py 2>&1 | tee "$OUT/kernels.txt" ;;
esac
