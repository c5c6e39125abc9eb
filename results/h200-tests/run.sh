#!/usr/bin/env bash
# The README's test command on a GPU machine, from the repository root:
#   OUT=folder results/h200-tests/run.sh
# The device image has no `datasets`: its wheels travel in .whl (see the README beside this).
# Writes the machine (nvidia-smi), the log, the junit XML and the wall time under OUT. Reporting
# options only: --timeout (pytest-timeout, on that image) fails a hung test instead of the run.
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" \
  >>"$OUT/nvidia-smi.txt" 2>&1
start=$SECONDS
timeout "${LIMIT_S:-570}" python -m pytest tests benchmarks --dlm-grid=smoke -ra --durations=25 --timeout=240 \
  --junitxml="$OUT/junit.xml" \
  >"$OUT/test-log.txt" 2>&1
echo "rc=$? $((SECONDS - start)) s" | tee "$OUT/walltime.txt"
