#!/usr/bin/env bash
# pytest-xdist on the GPU. Usage, from the repository root:
#   OUT=folder results/xdist-h100/run.sh pair       # one process, then -n 1 --dlm-devices=0, same points
#   OUT=folder results/xdist-h100/run.sh shared     # -n 2 --dlm-devices=0,0: two workers on one GPU (the flow, not speed)
#   OUT=folder results/xdist-h100/run.sh kill       # -n 1 --dlm-devices=0, the worker killed (SIGKILL) 45 s in
#   OUT=folder results/xdist-h100/run.sh refuse     # -n 2 on CUDA without --dlm-devices: a usage error
#   OUT=folder results/xdist-h100/run.sh multi      # the standard grid, -n 2 --dlm-devices=all, then one process
# Each invocation's wall time is kept in OUT/walltime.txt.
. "$(dirname "$0")/../lib.sh"
run() {  # NAME [options]: the standard grid's generation points
  local name=$1
  shift
  logged "$name" benchmarks/test_generation.py --dlm-grid=standard "$@"
}
SUBSET=(--dlm-prompt=40 --dlm-gen=256 --dlm-batch=1,4 --dlm-rounds=3)
case $1 in
  pair)
    run one-process "${SUBSET[@]}"
    run n1-devices0 "${SUBSET[@]}" -n 1 --dlm-devices=0
    dlmbench noise "$OUT/one-process.json" "$OUT/n1-devices0.json" | tee "$OUT/noise-one-vs-n1.txt" ;;
  shared)
    run n2-devices00 --dlm-prompt=40 --dlm-gen=64 --dlm-batch=1 --dlm-rounds=2 -n 2 --dlm-devices=0,0 ;;
  kill)
    run killed "${SUBSET[@]}" --dlm-batch=1 -n 1 --dlm-devices=0 &
    sleep 45
    worker=$(pgrep -f "sys.stdin.readline" | head -1)
    echo "killing worker process $worker: $(ps -o args= -p "$worker" | cut -c1-80)" | tee "$OUT/killed.txt"
    kill -9 "$worker"
    wait ;;
  refuse)
    run refused --dlm-models=llama-3.1-8b --dlm-prompt=40 --dlm-gen=64 --dlm-batch=1 -n 2
    cat "$OUT/refused.log" ;;
  multi)
    run multi-n2 -n 2 --dlm-devices=all
    run multi-one-process
    dlmbench noise "$OUT/multi-one-process.json" "$OUT/multi-n2.json" | tee "$OUT/noise-multi.txt" ;;
esac
