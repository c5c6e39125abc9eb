#!/usr/bin/env bash
# OOM boundaries (gen 256) under both runtimes, from the repository root:
#   OUT=folder LIMIT_S=seconds results/boundary-h200/run.sh
# dual-parallel: dlm's dual_cache+parallel on the whole card; baseline24: the standard grid's
# baselines under a 24 GiB cap (--dlm-memory-limit), as results/boundary-h100/'s boundary24-* under eager.
# Probes run in process; a boundary's full generation is timed (one round) where it would take
# under 20 s, else saved untimed. LIMIT_S stops each invocation; its journal keeps what it found.
. "$(dirname "$0")/../lib.sh"
boundary() {  # NAME PYTEST-OPTIONS...
  local name=$1
  shift
  logged "$name" benchmarks/test_oom_boundary.py --dlm-grid=standard --dlm-boundary --dlm-gen=256 --dlm-runtime=all \
    --dlm-isolate=off --dlm-warmup=0 --dlm-rounds=1 --dlm-max-time=20 -rs "$@"
}
boundary dual-parallel --dlm-paradigms=dlm --dlm-strategies=dual_cache+parallel
boundary baseline24 --dlm-strategies=baseline --dlm-memory-limit=24
