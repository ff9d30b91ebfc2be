#!/usr/bin/env bash
# Sweep throughput into a store on object storage against a local directory, and `store copy`
# both ways. The S3 server is examples/s3_loopback.rs (s3s over s3s-fs, its own process, HTTP on
# loopback), so the figures are deltann's overhead (spool, push thread, SigV4, uploads), not a
# network's. The same sweep (MobileNetV2 on the first N photos of ../shared, ORT disabled/all and
# tract optimized at one thread, parts of 256 rows) runs into fresh stores, alternating.
#   scripts/bench-s3.sh [BIN] [S3_SERVER_BIN] [IMAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target-bench/release/deltann}")"
server="$(realpath "${2:-target-bench/release/examples/s3_loopback}")"
images="${3:-300}"
rounds="${4:-3}"
photos="$(pwd)/../shared/images/imagenet-sample"
[ -d "$photos" ] || { echo "bench-s3: ../shared absent, skipped"; exit 0; }
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
"$server" --root "$work/s3" --bucket bench --port "$port" > "$work/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=deltann AWS_SECRET_ACCESS_KEY=deltann-secret
# Mirrors and spools under the work folder; ONNX Runtime from where it is installed.
home="${DELTANN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/deltann}"
mkdir -p "$work/home"
ln -s "$home/onnxruntime" "$work/home/onnxruntime"
export DELTANN_HOME="$work/home"
sleep 0.5
cat > "$work/sweep.toml" <<TOML
warmup = 3
[dataset]
images = "$photos"
labels = "$photos/../labels.csv"
limit = $images
[[model]]
name = "mobilenetv2"
path = "$(pwd)/../shared/models/mobilenetv2.onnx"
preset = "torchvision"
[environments]
engine = ["ort", "tract"]
ort_optimization = ["disabled", "all"]
ort_library = ["1.32.0"]
tract_plan = ["optimized"]
TOML
echo "sweep: mobilenetv2, $images photos, 3 cells (ORT disabled, ORT all, tract optimized; 1 thread)"
for round in $(seq 1 "$rounds"); do
  /usr/bin/time -f "round $round local  %e s wall, %U s user, %M KB" \
    "$bin" collect "$work/sweep.toml" --quiet --part-rows 256 --store "$work/local-$round" >/dev/null
  /usr/bin/time -f "round $round s3     %e s wall, %U s user, %M KB" \
    "$bin" collect "$work/sweep.toml" --quiet --part-rows 256 --store "s3://bench/run-$round" \
    --spool "$work/spool-$round" > "$work/s3-$round.log"
  grep "^pushed" "$work/s3-$round.log"
done
mb=$(du -sm "$work/local-1" | cut -f1)
/usr/bin/time -f "store copy dir -> s3: %e s wall ($mb MB store)" \
  "$bin" store copy "$work/local-1" s3://bench/copied
/usr/bin/time -f "store copy s3 -> dir: %e s wall" \
  "$bin" store copy s3://bench/copied "$work/back"
/usr/bin/time -f "report s3:// (mirror fetched, then analysed): %e s wall" \
  "$bin" report s3://bench/run-1 >/dev/null
/usr/bin/time -f "report s3:// again (mirror up to date): %e s wall" \
  "$bin" report s3://bench/run-1 >/dev/null
