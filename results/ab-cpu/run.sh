#!/usr/bin/env bash
# Interleaved A/B on the CPU, from the repository root:
#   OUT=folder [PAIRS=5] [SLOW_PAIRS=$PAIRS] [GATE=tokens_per_s:5%] results/ab-cpu/run.sh
# Makes a git repository in $OUT/repo whose base commit benchmarks two tiny AR points (batch 1 and
# 2, 3 timed rounds each) and whose candidate commit adds tests/slowdown_plugin.py through a
# conftest, so every forward takes twice as long. Then `dlmbench ab` runs base against base (A/A,
# PAIRS pairs) and base against the candidate (SLOW_PAIRS pairs), ABBA, gated by GATE. Each experiment's folder holds its invocations' runs and logs and ab.json;
# exit-codes.txt has dlmbench's exit code of each (A/A: 0 expected, 2x slower: 1).
source "$(dirname "$0")/../lib.sh"
pairs=${PAIRS:-5}
slow_pairs=${SLOW_PAIRS:-$pairs}
gate=${GATE:-tokens_per_s:5%}
root=$(pwd)
repo="$OUT/repo"
scratch_repo "$repo"
cat >"$repo/test_points.py" <<'PY'
import pytest
from pytest_dlmbench.core import BenchPoint

@pytest.mark.parametrize("batch", [1, 2])
def test_point(dlm_bench, batch):
    dlm_bench(BenchPoint("ar", "tiny-ar", 8, 16, batch))
PY
commit_all "$repo" base
cp "$root/tests/slowdown_plugin.py" "$repo/"
cat >"$repo/conftest.py" <<'PY'
import os

os.environ["DLMBENCH_SLOWDOWN"] = "1.0"  # every forward takes twice as long
pytest_plugins = ["slowdown_plugin"]
PY
commit_all "$repo" "slower forwards"
ab_experiment a-a "$repo" HEAD~1 "$pairs" "$gate" --dlm-rounds=3 --dlm-device=cpu
ab_experiment 2x-slower "$repo" HEAD "$slow_pairs" "$gate" --dlm-rounds=3 --dlm-device=cpu
