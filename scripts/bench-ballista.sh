#!/usr/bin/env bash
# Saved queries on Apache Ballista (a scheduler and two executors on loopback, each its own
# process) against the local DataFusion session, on the 1M-row synthetic store. On one machine
# the executors share its cores with each other and the scheduler, so this measures what
# distribution costs (planning, gRPC, Arrow Flight shuffles), not what more machines gain.
#   scripts/bench-ballista.sh [BIN] [STORE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target-bench/release/deltann}")"
store="${2:-target-bench/stores/synth-5250}"
rounds="${3:-3}"
[ -f "$store/deltann-store.json" ] || "$bin" synth "$store" --images 5250
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
"$bin" ballista scheduler > "$work/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/scheduler.log" && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$work/scheduler.log")"
for i in 1 2; do
  "$bin" ballista executor --scheduler "$url" > "$work/executor-$i.log" 2>&1 &
  pids+=($!)
done
sleep 1
"$bin" analyze "$store" > /dev/null   # derived tables up to date: both sides read them
echo "store: $store ($(du -sh "$store" | cut -f1)); Ballista: $url, 2 executors of 1 task"
for query in flip_matrix flip_matrix_raw accuracy_per_cell slowest_cells; do
  for round in $(seq 1 "$rounds"); do
    /usr/bin/time -f "$query round $round local    %e s wall, %U s user, %M KB" \
      "$bin" query "$store" --saved "$query" --format csv > "$work/local.csv"
    /usr/bin/time -f "$query round $round ballista %e s wall, %U s user (client), %M KB" \
      "$bin" query "$store" --saved "$query" --format csv --ballista "$url" > "$work/ballista.csv"
    cmp -s <(tail -n +2 "$work/local.csv" | sort) <(tail -n +2 "$work/ballista.csv" | sort) \
      || echo "$query: the answers differ"
  done
done
