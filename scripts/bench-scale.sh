#!/usr/bin/env bash
# ImageNet-scale limits (issue 9): peak memory, peak open files and bytes on disk
#  - of the analysis, on a synthetic store of 50,000 images x 48 cells (2.4M outputs rows, full
#    1000-class logits): `analyze --rebuild`, then `report`;
#  - of the collector, on 50,000 images (the 1000 photos of ../shared under 50 folder names) x
#    SCALE_CELLS cells of MobileNetV2 on ONNX Runtime (default 2: the cells run one after the
#    other, so memory and open files do not grow with their number; the time does).
# Every command runs under `ulimit -n 256`: a descriptor leak fails it. Peak memory is
# /usr/bin/time's maximum resident set; open files are sampled from /proc every 0.2 s (the
# process and its children).
#   scripts/bench-scale.sh BIN DIR [analysis|collector|all]
set -euo pipefail
bin="$1"
dir="$2"
what="${3:-all}"
mkdir -p "$dir"
cd "$(dirname "$0")/.."

# A process and its descendants.
tree() {
  echo "$1"
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do tree "$c"; done
}

# Runs a command under the descriptor limit; prints wall time, peak RSS and peak open files.
measure() {
  local label="$1"
  shift
  local log="$dir/time.log"
  ( ulimit -n 256; exec /usr/bin/time -v "$@" ) > "$dir/out.log" 2> "$log" &
  local pid=$! max=0
  while kill -0 "$pid" 2>/dev/null; do
    local n=0
    for p in $(tree "$pid"); do
      n=$((n + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    [ "$n" -gt "$max" ] && max=$n
    sleep 0.2
  done
  wait "$pid" || { echo "$label: FAILED"; tail -n 20 "$dir/out.log" "$log"; exit 1; }
  local rss wall
  rss=$(awk -F: '/Maximum resident/ {print int($2/1024)}' "$log")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$log")
  printf '%-46s %10s wall  %6s MiB peak RSS  %4s open files (peak, with workers)\n' \
    "$label" "$wall" "$rss" "$max"
}

if [ "$what" = all ] || [ "$what" = analysis ]; then
  store="$dir/synth-50000x48"
  if [ ! -f "$store/deltann-store.json" ]; then
    measure "synth 50,000 images x 48 cells" "$bin" synth "$store" --images 50000 --families 1
  fi
  echo "store: $(du -sh "$store" | cut -f1), $(grep -c "\"table\":\"outputs\"" "$store/_manifest.jsonl") outputs parts"
  measure "analyze --rebuild (2.4M rows)" "$bin" analyze --rebuild "$store"
  grep -E "rebuilt|folded" "$dir/out.log" || true
  echo "derived: $(du -sh "$store/derived" | cut -f1)"
  measure "report --no-cache (native frames)" "$bin" report "$store" --no-cache --frames native
  measure "report --no-cache (polars frames)" "$bin" report "$store" --no-cache --frames polars
fi

if [ "$what" = all ] || [ "$what" = collector ]; then
  photos="$(pwd)/../shared/images/imagenet-sample"
  model="$(pwd)/../shared/models/mobilenetv2.onnx"
  [ -d "$photos" ] && [ -f "$model" ] || { echo "collector: ../shared absent, skipped"; exit 0; }
  images="$dir/images-50000"
  mkdir -p "$images"
  for i in $(seq -w 0 49); do
    [ -e "$images/copy$i" ] || ln -s "$photos" "$images/copy$i"
  done
  cells="${SCALE_CELLS:-2}"
  opts='"all"'
  [ "$cells" -ge 2 ] && opts='"all", "disabled"'
  rm -rf "$dir/collect-50000"
  cat > "$dir/sweep-50000.toml" <<TOML
store = "$dir/collect-50000"
warmup = 1
[dataset]
images = "$images"
[[model]]
name = "mobilenetv2"
path = "$model"
preset = "torchvision"
[environments]
engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = [$opts]
threads = [2]
batch_size = [1]
TOML
  # The tensor cache is removed when the run ends: sample its size while it runs.
  echo 0 > "$dir/cache.max"
  rm -f "$dir/cache.stop"
  (
    while [ ! -f "$dir/cache.stop" ]; do
      b=$(du -sb "$dir/collect-50000/_cache" 2>/dev/null | cut -f1 || true)
      [ -n "$b" ] && [ "$b" -gt "$(cat "$dir/cache.max")" ] && echo "$b" > "$dir/cache.max"
      sleep 2
    done
  ) &
  measure "collect 50,000 images x $cells cells" "$bin" collect --quiet "$dir/sweep-50000.toml"
  touch "$dir/cache.stop"
  wait
  grep -E "peak memory|rows" "$dir/out.log" | head -5 || true
  cache=$(cat "$dir/cache.max")
  echo "tensor cache at its largest: $cache bytes = $(awk -v b="$cache" 'BEGIN {printf "%.3f", b / (50000 * 3 * 224 * 224)}') bytes per input element"
fi
