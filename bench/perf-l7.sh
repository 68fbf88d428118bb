#!/usr/bin/env bash
# CPU profile of the L7 proxies with perf (docs/benchmarks/l7-cost.md, "Method"): runs
# `l7-micro --proxy LIST --backend nginx` (14 s per proxy) and records 8 s of each Node
# proxy's CPU with `perf record -e cpu-clock -g` (JIT frames named via --perf-basic-prof),
# then prints the split of bench/perf-split.mjs. V8's --cpu-prof samples wall-clock time
# and charges time spent descheduled to the syscalls; perf samples CPU.
#
#   bash bench/perf-l7.sh OUTDIR [weft,floor]
set -euo pipefail
out=$1
proxies=${2:-weft,floor}
cd "$(dirname "$0")/.."
source scripts/node-env.sh
mkdir -p "$out"
NODE_OPTIONS=--perf-basic-prof-only-functions node dist/bench/l7-micro.js --proxy "$proxies" --backend nginx --duration 14 --runs 1 >"$out/run.txt" 2>&1 &
bench=$!
for p in ${proxies//,/ }; do
  pid=""
  for _ in $(seq 1 120); do
    pid=$(pgrep -f "l7-micro.js serve-$p" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.5
  done
  [ -n "$pid" ] || { echo "no $p process" >&2; exit 1; }
  sleep 4 # past the 2 s warm-up, into the measured run
  perf record -e cpu-clock -g -p "$pid" -o "$out/$p.data" -- sleep 8 >/dev/null 2>&1
  while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
done
wait $bench
grep -v '^{' "$out/run.txt"
for p in ${proxies//,/ }; do
  echo "== $p: CPU by thread"
  perf report -i "$out/$p.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
  echo "== $p: main thread, by what is on the stack"
  perf script -i "$out/$p.data" --comm node-MainThread 2>/dev/null | node bench/perf-split.mjs
done
