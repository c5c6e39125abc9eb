#!/usr/bin/env bash
# The new shapes' standard-grid points (prompt 40 and 920; gen 64, 256 and 1024 at batch 1; batch 4
# and 16 at gen 256) under both runtimes, from the repository root:
#   OUT=folder DEADLINE_S=560 results/new-models/standard.sh PART     PART: ar | dlm
# ar: qwen2.5-7b and qwen3-8b, one warm-up and one timed round (an ar step meets a new length each
# forward, so a cold one measures cuDNN's plan building); dlm: llada-moe-7b-a1b under eager (the
# graphs runtime refuses it, which moe-graphs-refused.log shows) and dream-7b under both runtimes,
# one timed round, no warm-up (each point forwards one shape). Every run keeps a journal: points
# cut by DEADLINE_S (seconds from the start, for all runs together) are missing, never half-written.
source "$(dirname "$0")/../lib.sh"
deadline=${DEADLINE_S:-560}
standard() {  # NAME, then pytest options: one run, limited to what is left of the deadline
  local left=$((deadline - SECONDS))
  if ((left < 30)); then echo "$1 skipped: ${left}s left" | tee -a "$OUT/walltime.txt"; return; fi
  LIMIT_S=$left logged "$1" benchmarks/test_generation.py --dlm-grid=standard --dlm-runtime=all --dlm-rounds=1 "${@:2}"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
case "${1:?PART: ar or dlm}" in
  ar)
    standard qwen2.5-7b --dlm-models=qwen2.5-7b --dlm-warmup=1
    standard qwen3-8b --dlm-models=qwen3-8b --dlm-warmup=1 ;;
  dlm)
    python -m pytest benchmarks/test_generation.py --dlm-models=llada-moe-7b-a1b --dlm-grid=standard \
      -p no:cacheprovider >"$OUT/moe-graphs-refused.log" 2>&1
    echo "exit $?" >>"$OUT/moe-graphs-refused.log"
    standard llada-moe-7b-a1b --dlm-models=llada-moe-7b-a1b --dlm-runtime=eager --dlm-warmup=0
    standard dream-7b --dlm-models=dream-7b --dlm-warmup=0 ;;
esac
