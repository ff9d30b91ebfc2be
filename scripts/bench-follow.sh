#!/usr/bin/env bash
# Does `deltann analyze --follow` disturb the latencies `collect` measures next to it?
# Runs the same sweep (EfficientNet-Lite0 on the first N photos of ../shared, ORT disabled/all and
# tract optimized, one thread each, parts of 32 rows so the follower folds all the time) into
# fresh stores, alternating without and with a follower, and prints each cell's p50 and
# dispersion (1.4826 MAD / median of per-image latency) from `deltann report --format json`.
#   scripts/bench-follow.sh [BIN] [IMAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target-bench/release/deltann}"
images="${2:-300}"
rounds="${3:-3}"
photos="$(pwd)/../shared/images/imagenet-sample"
[ -d "$photos" ] || { echo "bench-follow: ../shared absent, skipped"; exit 0; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/sweep.toml" <<TOML
warmup = 3
[dataset]
images = "$photos"
labels = "$photos/../labels.csv"
limit = $images
[[model]]
name = "efficientnet-lite0"
path = "$(pwd)/data/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
engine = ["ort", "tract"]
ort_optimization = ["disabled", "all"]
ort_library = ["1.32.0"]
tract_plan = ["optimized"]
threads = [1]
TOML
summary() {
  python3 - "$1" "$2" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for p in report["performance"]:
    c = report["cells"][p["cell"]]
    env = f'{c["engine"]}:{c.get("ort_optimization") or c.get("tract_plan")}'
    print(f'{sys.argv[2]:<14} {env:<16} p50 {p["p50_ms"]["value"]:8.3f} ms  dispersion {100 * p["dispersion"]:5.2f}%')
PY
}
for round in $(seq "$rounds"); do
  for mode in alone follower; do
    store="$work/$mode-$round"
    follower=""
    if [ "$mode" = follower ]; then
      mkdir -p "$store"
      # The follower waits for the store to exist, then folds every commit.
      ( while [ ! -f "$store/deltann-store.json" ]; do sleep 0.05; done
        exec "$bin" analyze "$store" --follow --poll-ms 200 --idle-exit 3 >"$work/follow-$round.log" 2>&1 ) &
      follower=$!
    fi
    "$bin" collect --quiet --part-rows 32 --store "$store" "$work/sweep.toml" >/dev/null
    [ -n "$follower" ] && wait "$follower"
    "$bin" report --format json "$store" >"$work/$mode-$round.json"
    summary "$work/$mode-$round.json" "$mode (round $round)"
  done
  grep -c "^folded" "$work/follow-$round.log" | sed 's/^/follower folds in round '"$round"': /'
done
