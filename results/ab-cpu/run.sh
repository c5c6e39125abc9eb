#!/usr/bin/env bash
# Interleaved A/B on the CPU, from the repository root:
#   OUT=folder [PAIRS=5] [SLOW_PAIRS=$PAIRS] [GATE=tokens_per_s:5%] results/ab-cpu/run.sh
# Makes a git repository in $OUT/repo whose base commit benchmarks two tiny AR points (batch 1 and
# 2, 3 timed rounds each) and whose candidate commit adds tests/slowdown_plugin.py through a
# conftest, so every forward takes twice as long. Then `dlmbench ab` runs base against base (A/A,
# PAIRS pairs) and base against the candidate (SLOW_PAIRS pairs), ABBA, gated by GATE. Each experiment's folder holds its invocations' runs and logs and ab.json;
# exit-codes.txt has dlmbench's exit code of each (A/A: 0 expected, 2x slower: 1).
set -u
: "${OUT:?set OUT}"
pairs=${PAIRS:-5}
slow_pairs=${SLOW_PAIRS:-$pairs}
gate=${GATE:-tokens_per_s:5%}
root=$(pwd)
repo="$OUT/repo"
mkdir -p "$repo"
git -C "$repo" init -q
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
cat >"$repo/test_points.py" <<'PY'
import pytest
from pytest_dlmbench.core import BenchPoint

@pytest.mark.parametrize("batch", [1, 2])
def test_point(dlm_bench, batch):
    dlm_bench(BenchPoint("ar", "tiny-ar", 8, 16, batch))
PY
git -C "$repo" add . && git -C "$repo" commit -qm base
cp "$root/tests/slowdown_plugin.py" "$repo/"
cat >"$repo/conftest.py" <<'PY'
import os

os.environ["DLMBENCH_SLOWDOWN"] = "1.0"  # every forward takes twice as long
pytest_plugins = ["slowdown_plugin"]
PY
git -C "$repo" add . && git -C "$repo" commit -qm "slower forwards"
ab() {  # NAME CANDIDATE PAIRS
  dlmbench ab HEAD~1 "$2" --repo "$repo" --pairs "$3" --out "$OUT/$1" --format md --gate "$gate" -- --dlm-rounds=3 \
    --dlm-device=cpu >"$OUT/$1.md" 2>&1
  echo "$1 exit $?" | tee -a "$OUT/exit-codes.txt"
}
ab a-a HEAD~1 "$pairs"
ab 2x-slower HEAD "$slow_pairs"
