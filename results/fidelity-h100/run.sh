#!/usr/bin/env bash
# Reference-fidelity measurements on the GPU. Usage, from the repository root:
#   OUT=folder results/fidelity-h100/run.sh boundary NAME [options]  # dlm OOM boundaries, p40 and p920, gen 256
#   OUT=folder results/fidelity-h100/run.sh sweep NAME [options]     # parallel strategies at batch 1, 4, 16, 64
# Each invocation's wall time is printed and kept in OUT/walltime.txt.
. "$(dirname "$0")/../lib.sh"
run() {  # NAME TEST [options]
  logged "$1" "$2" -rs "${@:3}"
}
case $1 in
  boundary)  # the largest batch whose probe fits; no full generation is timed (--dlm-max-time=1)
    run "$2" benchmarks/test_oom_boundary.py --dlm-grid=standard --dlm-boundary --dlm-paradigms=dlm --dlm-gen=256 \
      --dlm-strategies=baseline,dual_cache --dlm-isolate=off --dlm-warmup=0 --dlm-rounds=1 --dlm-max-time=1 \
      --dlm-max-batch=256 "${@:3}" ;;
  sweep)  # the seed's batch sweep for the parallel strategies, prompt 40, gen 256
    run "$2" benchmarks/test_generation.py --dlm-grid=paper --dlm-prompt=40 --dlm-gen=256 --dlm-batch=1,4,16,64 \
      --dlm-paradigms=dlm,block --dlm-strategies=parallel,dual_cache+parallel,parallel+subblock_cache \
      --dlm-warmup=0 --dlm-rounds=1 "${@:3}" ;;
esac
