#!/usr/bin/env bash
# Interleaved A/B on one machine against a candidate that does more work per forward, from the
# repository root:
#   OUT=folder [PAIRS=4] [EXTRA_LAYERS=4] [GATE=tokens_per_s:5%] [EXPERIMENTS="a-a deeper"] \
#     results/ab-gpu/run.sh MODELS PYTEST_ARGS...
# Makes a git repository in $OUT/repo holding a copy of benchmarks/ (the base commit) and a
# candidate commit whose conftest.py re-registers each of MODELS (comma-separated) with
# EXTRA_LAYERS more decoder layers, through the public API: a change that slows every forward of
# every shape by about EXTRA_LAYERS / num_layers (4 of 32: about 12 % more time per forward), inside
# the captured CUDA graphs, with no host-side wait. Then `dlmbench ab` runs base against base (A/A)
# and base against the candidate (EXPERIMENTS picks either), PAIRS pairs each, ABBA, every invocation
# with PYTEST_ARGS.
# Each experiment's folder keeps its runs, logs and ab.json; exit-codes.txt has dlmbench's exit code
# of each (A/A: 0 expected, deeper: 1).
source "$(dirname "$0")/../lib.sh"
models=${1:?MODELS: comma-separated model names}
shift
pairs=${PAIRS:-4}
extra=${EXTRA_LAYERS:-4}
gate=${GATE:-tokens_per_s:5%}
experiments=${EXPERIMENTS:-a-a deeper}
repo="$OUT/repo"
make_repo() {  # made once: a second call with the same OUT runs the other experiment on it
  scratch_repo "$repo"
  cp -r benchmarks "$repo/"
  commit_all "$repo" base
  cat >"$repo/conftest.py" <<PY
import dataclasses

from pytest_dlmbench.api import get_spec, register_model

for name in "$models".split(","):  # $extra more decoder layers in each
    spec = get_spec(name)
    register_model(dataclasses.replace(spec, num_layers=spec.num_layers + $extra), replace=True)
PY
  commit_all "$repo" "deeper models"
}
[[ -d "$repo/.git" ]] || make_repo
for experiment in $experiments; do
  case $experiment in
    a-a) ab_experiment a-a "$repo" HEAD~1 "$pairs" "$gate" "$@" ;;
    deeper) ab_experiment deeper "$repo" HEAD "$pairs" "$gate" "$@" ;;
    *) echo "EXPERIMENTS: unknown $experiment (a-a, deeper)" >&2; exit 2 ;;
  esac
done
