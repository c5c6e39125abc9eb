# Sourced by results/*/*.sh: OUT checked and made, and `logged NAME PYTEST-ARGS...`, one pytest run
# with its JSON, journal and log in OUT, its exit status and wall time appended to OUT/walltime.txt.
# With LIMIT_S set, the run is stopped after that many seconds (its journal keeps what it measured).
# DLM_EXTRA_ARGS (split on spaces) is appended to every run's options: the scripts' own test runs
# them that way on tiny models on the CPU.
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
logged() {
  local name=$1 start=$SECONDS
  shift
  # shellcheck disable=SC2086  # DLM_EXTRA_ARGS is a list of options
  ${LIMIT_S:+timeout "$LIMIT_S"} python -m pytest -p no:cacheprovider -q --benchmark-json="$OUT/$name.json" \
    --dlm-journal="$OUT/$name.jsonl" "$@" ${DLM_EXTRA_ARGS:-} >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/walltime.txt"
}
