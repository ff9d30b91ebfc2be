#!/usr/bin/env bash
# The benchmarks behind BENCHMARKS.md, in an optimised build kept in target-bench/ (CI never
# builds release). Needs ../shared for the 1000-image figures; falls back to data/ otherwise.
#   scripts/bench.sh             everything
#   scripts/bench.sh throughput  collector vs bare engine, bytes per row
#   scripts/bench.sh memory      collector peak memory, 100 vs 1000 images
#   scripts/bench.sh analyzer    rebuild, report and flip-matrix SQL on 100k/1M-row stores, against DuckDB
#   scripts/bench.sh fold        one more part folded into the derived tables, by store size
#   scripts/bench.sh follow      latency dispersion of collect with and without analyze --follow
#   scripts/bench.sh tui         first frame and key-press-to-frame on the 1M-row store
#   scripts/bench.sh live        commit-to-screen latency of the TUI on the 1M-row store, collect running
#   scripts/bench.sh scale       peak memory and open files at 50,000 images (analysis and collector)
#   scripts/bench.sh s3          sweep throughput into S3 on loopback vs a directory; store copy
#   scripts/bench.sh ballista    saved queries on Ballista (2 executors) vs local, 1M-row store
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-bench}"
what="${1:-all}"

scripts/fetch-onnxruntime.sh 1.32.0 >/dev/null
cargo build --release --bin deltann --example s3_loopback
bin="$CARGO_TARGET_DIR/release/deltann"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"

if [ "$what" = all ] || [ "$what" = throughput ]; then
  echo "== collector throughput vs bare engine (cargo bench -p deltann-collector --bench throughput)"
  cargo bench -p deltann-collector --bench throughput
fi

if [ "$what" = all ] || [ "$what" = analyzer ]; then
  echo "== analyzer against DuckDB (scripts/bench-analyzer.py; needs pip install duckdb)"
  python3 scripts/bench-analyzer.py --bin "$bin" --dir "$CARGO_TARGET_DIR/stores"
fi

if [ "$what" = all ] || [ "$what" = fold ]; then
  echo "== incremental fold by store size (cargo bench -p deltann-analyzer --bench fold)"
  DELTANN_BENCH_DIR="$(pwd)/$CARGO_TARGET_DIR/stores" cargo bench -p deltann-analyzer --bench fold
fi

if [ "$what" = all ] || [ "$what" = follow ]; then
  echo "== collect's latencies with and without a follower (scripts/bench-follow.sh)"
  scripts/bench-follow.sh "$bin"
fi

if [ "$what" = all ] || [ "$what" = tui ]; then
  echo "== TUI frames on the 1M-row store (cargo bench -p deltann-tui --bench frames)"
  store="$CARGO_TARGET_DIR/stores/synth-5250"
  case "$store" in /*) ;; *) store="$(pwd)/$store" ;; esac
  [ -f "$store/deltann-store.json" ] || "$bin" synth "$store" --images 5250
  DELTANN_BENCH_STORE="$store" cargo bench -p deltann-tui --bench frames
fi

if [ "$what" = all ] || [ "$what" = live ]; then
  echo "== live TUI: commit to screen on the 1M-row store (scripts/bench-live.sh)"
  store="$CARGO_TARGET_DIR/stores/synth-5250"
  [ -f "$store/deltann-store.json" ] || "$bin" synth "$store" --images 5250
  scripts/bench-live.sh "$bin" "$store" "$CARGO_TARGET_DIR/live"
fi

if [ "$what" = all ] || [ "$what" = scale ]; then
  echo "== 50,000 images: analysis and collector limits (scripts/bench-scale.sh)"
  scripts/bench-scale.sh "$bin" "$(pwd)/$CARGO_TARGET_DIR/scale"
fi

if [ "$what" = all ] || [ "$what" = memory ]; then
  echo "== collector peak memory by dataset size (full logits, ORT opt=all, 1 thread)"
  images="$(pwd)/../shared/images/imagenet-sample"
  [ -d "$images" ] || { echo "memory: ../shared absent, skipped"; exit 0; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  for n in 100 1000; do
    cat > "$tmp/sweep-$n.toml" <<TOML
store = "store-$n"
warmup = 1
[dataset]
images = "$images"
limit = $n
[[model]]
name = "efficientnet-lite0"
path = "$(pwd)/data/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
engine = ["ort"]
ort_library = ["1.32.0"]
TOML
    out="$("$bin" collect --quiet "$tmp/sweep-$n.toml" 2>/dev/null)"
    collector="$(grep -o 'collector peak memory [0-9]* MiB' <<<"$out")"
    worker="$(grep -o 'worker peak memory [0-9]* MiB' <<<"$out")"
    echo "$n images: $collector, $worker"
  done
fi

if [ "$what" = all ] || [ "$what" = s3 ]; then
  echo "== a sweep into S3 on loopback vs a directory (scripts/bench-s3.sh)"
  scripts/bench-s3.sh "$bin" "$CARGO_TARGET_DIR/release/examples/s3_loopback"
fi

if [ "$what" = all ] || [ "$what" = ballista ]; then
  echo "== saved queries on Ballista vs local DataFusion (scripts/bench-ballista.sh)"
  scripts/bench-ballista.sh "$bin" "$CARGO_TARGET_DIR/stores/synth-5250"
fi
