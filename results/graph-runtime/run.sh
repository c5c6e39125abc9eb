#!/usr/bin/env bash
# Graph-runtime measurements on the GPU. Usage, from the repository root:
#   OUT=folder results/graph-runtime/run.sh gpu             # the GPU tests, then per-forward profiles
#   OUT=folder results/graph-runtime/run.sh aa NAME        # one run of the A/A pair under graphs
#   OUT=folder results/graph-runtime/run.sh aa-dlm920 NAME # its dlm batch-16 prompt-920 point (2.6 min a round)
#   OUT=folder results/graph-runtime/run.sh grid PROMPT     # B=1 grid and strategy table, both runtimes
#   OUT=folder results/graph-runtime/run.sh agree           # equal-token shares, both runtimes, both prompts
#   OUT=folder results/graph-runtime/run.sh batch           # the batch sweep (4, 16) at gen 256, both runtimes
#   OUT=folder results/graph-runtime/run.sh b1 RUNTIME [PROMPT]     # batch 1 under RUNTIME: every strategy at gen 64/256
#   OUT=folder results/graph-runtime/run.sh g1024 RUNTIME [PROMPT]  # the gen-1024 points at batch 1 under RUNTIME, one round
#   OUT=folder results/graph-runtime/run.sh sweep RUNTIME PROMPT BATCHES PARADIGMS  # batch points at gen 256, one round
#   OUT=folder results/graph-runtime/run.sh decode NAME    # ar's split-KV decode points under graphs: B 1 and 4, g256
# Each invocation's wall time is printed and kept in OUT/walltime.txt; each point saves point_wall_s
# (start-up, captures, warm-up and rounds), so a runtime's share of a mixed invocation is their sum.
. "$(dirname "$0")/../lib.sh"
run() {  # NAME [options]: the standard grid's generation points
  local name=$1
  shift
  logged "$name" benchmarks/test_generation.py --dlm-grid=standard "$@"
}
warmup() {  # RUNTIME -> warm-up rounds: graphs capture in an untimed run of their own; eager timed without a
  # warm-up round is timed cold (cuDNN plans per new length: its decode read ~4x slower in agree/ and g1024-eager)
  if [ "$1" = graphs ]; then echo 0; else echo 1; fi
}
case $1 in
  gpu)
    python -m pytest -q -p no:cacheprovider tests/test_gpu_kernels.py tests/test_gpu_runtime.py >"$OUT/gpu-tests.txt" 2>&1
    echo "gpu tests rc=$?" | tee -a "$OUT/walltime.txt"
    python results/graph-runtime/profile_forward.py >"$OUT/profile.txt" 2>&1
    echo "profile rc=$?" | tee -a "$OUT/walltime.txt" ;;
  aa)  # ar, dlm, block; p40, p920; g256; B 1 and 16 (dlm at p920: aa-dlm920); capture in an untimed run
    run "$2-b1" --dlm-gen=256 --dlm-batch=1 --dlm-rounds=4 --dlm-warmup=0
    run "$2-b16" --dlm-gen=256 --dlm-batch=16 --dlm-paradigms=ar,block --dlm-rounds=4 --dlm-warmup=0
    run "$2-b16-dlm" --dlm-gen=256 --dlm-batch=16 --dlm-paradigms=dlm --dlm-prompt=40 --dlm-rounds=3 --dlm-warmup=0
    dlmbench merge "$OUT/$2-b1.json" "$OUT/$2-b16.json" "$OUT/$2-b16-dlm.json" --out "$OUT/$2.json" ;;
  aa-dlm920)
    run "$2-b16-dlm920" --dlm-gen=256 --dlm-batch=16 --dlm-paradigms=dlm --dlm-prompt=920 --dlm-rounds=2 \
      --dlm-warmup=0 ;;
  grid)  # every strategy, gen 64 and 256, batch 1, each point under graphs then eager (point_wall_s: each's time)
    run "grid-p$2" --dlm-prompt="$2" --dlm-gen=64,256 --dlm-batch=1 --dlm-strategies=all --dlm-runtime=all \
      --dlm-rounds=2 ;;
  agree)  # the share of equal tokens under both runtimes: every strategy, gen 256, batch 1, one round
    run agree --dlm-gen=256 --dlm-batch=1 --dlm-strategies=all --dlm-runtime=all --dlm-rounds=1 --dlm-warmup=1 ;;
  batch)
    run batch --dlm-gen=256 --dlm-batch=4,16 --dlm-prompt=40 --dlm-runtime=all --dlm-rounds=2 ;;
  b1)
    run "b1-strategies-$2${3:+-p$3}" --dlm-gen=64,256 --dlm-batch=1 --dlm-strategies=all --dlm-runtime="$2" \
      --dlm-rounds=2 --dlm-warmup="$(warmup "$2")" ${3:+--dlm-prompt="$3"} ;;
  g1024)
    run "g1024-$2${3:+-p$3}" --dlm-gen=1024 --dlm-batch=1 --dlm-runtime="$2" --dlm-rounds=1 \
      --dlm-warmup="$(warmup "$2")" ${3:+--dlm-prompt="$3"} ;;
  decode)
    run "decode-$2" --dlm-gen=256 --dlm-batch=1,4 --dlm-paradigms=ar --dlm-rounds=4 --dlm-warmup=0 ;;
  sweep)
    run "sweep-$2-p$3-b${4//,/_}-${5//,/_}" --dlm-gen=256 --dlm-prompt="$3" --dlm-batch="$4" --dlm-paradigms="$5" \
      --dlm-runtime="$2" --dlm-rounds=1 --dlm-warmup="$(warmup "$2")" ;;
esac
