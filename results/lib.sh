# Sourced by results/*/*.sh: OUT checked and made, and `logged NAME PYTEST-ARGS...`, one pytest run
# with its JSON, journal and log in OUT, its exit status and wall time appended to OUT/walltime.txt;
# for the A/B scripts, `scratch_repo DIR`, `commit_all DIR MESSAGE` and `ab_experiment`.
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
scratch_repo() {  # DIR: a new git repository there, with a committer
  mkdir -p "$1"
  git -C "$1" init -q
  git -C "$1" config user.email bench@example.com
  git -C "$1" config user.name bench
}
commit_all() {  # DIR MESSAGE
  git -C "$1" add . && git -C "$1" commit -qm "$2"
}
ab_experiment() {  # NAME REPO CANDIDATE PAIRS GATE PYTEST-ARGS...: `dlmbench ab` of REPO's HEAD~1 against
  # CANDIDATE; its verdicts in OUT/NAME.md, its runs in OUT/NAME/, its exit code appended to OUT/exit-codes.txt
  dlmbench ab HEAD~1 "$3" --repo "$2" --pairs "$4" --out "$OUT/$1" --format md --gate "$5" -- "${@:6}" \
    >"$OUT/$1.md" 2>&1
  echo "$1 exit $?" | tee -a "$OUT/exit-codes.txt"
}
