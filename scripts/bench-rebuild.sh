#!/usr/bin/env bash
# `analyze --rebuild` on the 1M-row synthetic store, release binaries alternated round by round
# (so each pair of rounds shares the machine's minute), each with its wall, user and system
# time, peak memory and the CPU steal `vmstat 1` saw during it: on this VM the hypervisor's steal
# is what makes "slow hours", and a figure is read against it. After each rebuild the derived
# tables' contents are summarised (row count, integer sums of every measure, the pairs' counts)
# so that two binaries computing the same analysis show the same checksum.
#   scripts/bench-rebuild.sh ROUNDS STORE BIN [BIN...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:?rounds}"
store="${2:?store (e.g. target-bench/stores/synth-5250)}"
shift 2
[ "$#" -ge 1 ] || { echo "give at least one binary" >&2; exit 2; }
[ -f "$store/deltann-store.json" ] || "$1" synth "$store" --images 5250
derived_sum() {
  for sql in \
    "SELECT count(*) FROM comparisons" \
    "SELECT sum(CAST(max_abs_logit*1e6 AS BIGINT)), sum(CAST(mean_abs_logit*1e9 AS BIGINT)), sum(CAST(kl_ab*1e9 AS BIGINT)), sum(CAST(kl_ba*1e9 AS BIGINT)), sum(CAST(rbo_top5*1e12 AS BIGINT)), sum(CAST(jaccard_top5*1e12 AS BIGINT)), sum(CAST(coalesce(kendall_tau, 7)*1e12 AS BIGINT)), sum(CAST(flip AS INT)), sum(CAST(identical AS INT)), sum(top1_a), sum(top1_b) FROM comparisons" \
    "SELECT * FROM cell_images ORDER BY cell_id, image_id" \
    "SELECT * EXCLUDE (pair) FROM pairs ORDER BY cell_a, cell_b"; do
    "$1" query "$store" "$sql" --format csv
  done | sha256sum | cut -c1-16
}
vm="$(mktemp)"
trap 'rm -f "$vm"' EXIT
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    vmstat 1 > "$vm" &
    pid=$!
    times="$(/usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KB" "$bin" analyze "$store" --rebuild 2>&1 >/dev/null | tail -1)"
    kill "$pid"
    steal="$(awk 'NR > 3 { st += $17; n++ } END { printf "%.0f%%", n ? st / n : 0 }' "$vm")"
    echo "round $round $bin: $times, steal $steal, derived $(derived_sum "$bin")"
  done
done
