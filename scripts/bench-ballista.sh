#!/usr/bin/env bash
# The derived-table build and the saved queries on Apache Ballista (a scheduler and two
# executors on loopback, each its own process) against the local fold and DataFusion session, on
# the 1M-row synthetic store: times, and whether the answers are the same (every saved query's
# rows; the derived tables' rows and running sums, by checksum of their sorted CSV). On one
# machine the executors share its cores with each other and the scheduler, so this measures what
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
  # Shuffle files go to the executor's temporary folder: under $work, removed at the end.
  TMPDIR="$work" "$bin" ballista executor --scheduler "$url" > "$work/executor-$i.log" 2>&1 &
  pids+=($!)
done
sleep 1
echo "store: $store ($(du -sh "$store" | cut -f1)); Ballista: $url, 2 executors of 1 task"

# The derived tables' rows and running sums, as one checksum.
derived_sum() {
  for sql in \
    "SELECT count(*) FROM comparisons" \
    "SELECT * FROM cell_images ORDER BY cell_id, image_id" \
    "SELECT * EXCLUDE (pair) FROM pairs ORDER BY cell_a, cell_b"; do
    "$bin" query "$store" "$sql" --format csv
  done | sha256sum | cut -c1-16
}
for round in $(seq 1 "$rounds"); do
  /usr/bin/time -f "derived build round $round local    %e s wall, %U s user, %M KB" \
    "$bin" analyze "$store" --rebuild > /dev/null
  here="$(derived_sum)"
  /usr/bin/time -f "derived build round $round ballista %e s wall, %U s user (client), %M KB" \
    "$bin" analyze "$store" --ballista "$url" > /dev/null
  there="$(derived_sum)"
  echo "derived tables: local $here, ballista $there$([ "$here" = "$there" ] || echo ': DIFFER')"
done

# Every saved query's rows, once.
for query in $("$bin" query --list 2>/dev/null | grep -E '^[a-z0-9_]+ ' | awk '{print $1}'); do
  "$bin" query "$store" --saved "$query" --format csv > "$work/local.csv"
  "$bin" query "$store" --saved "$query" --format csv --ballista "$url" > "$work/ballista.csv"
  if cmp -s <(tail -n +2 "$work/local.csv" | sort) <(tail -n +2 "$work/ballista.csv" | sort); then
    echo "$query: same $(($(wc -l < "$work/local.csv") - 1)) rows"
  else
    echo "$query: the answers differ"
  fi
done
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
