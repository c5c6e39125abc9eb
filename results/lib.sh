# Sourced by results/*/run.sh: OUT checked and made, and `logged NAME PYTEST-ARGS...`, one pytest run
# with its JSON, journal and log in OUT, its exit status and wall time appended to OUT/walltime.txt.
set -u
: "${OUT:?set OUT}"
mkdir -p "$OUT"
logged() {
  local name=$1 start=$SECONDS
  shift
  python -m pytest -p no:cacheprovider -q --benchmark-json="$OUT/$name.json" --dlm-journal="$OUT/$name.jsonl" \
    "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/walltime.txt"
}
