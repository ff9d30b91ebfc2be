#!/usr/bin/env bash
# The collector's throughput with a Python engine against the same engine in a bare Python loop.
#
#   scripts/bench-python-engines.sh [BIN] [ENGINE...]     default: target/debug/deltann, openvino torch
#   N=400 ROUNDS=5 (defaults) set the photo count and how many interleaved rounds are run
#
# Collector: the same one-cell sweep (EfficientNet-Lite0, 1 thread, batch 1) over the first N and
# the first 2N photos of ../shared (or data/'s eight, repeated by the image count); throughput is
# N / (wall_2N - wall_N), which cancels what every cell pays once (process start, imports, model
# load, warm-up). Bare loop: the engine class of the shipped worker, loaded once in the engine's
# own environment, timed over 2N - N calls on ready float32 tensors of the model's input shape
# (these CNNs do the same work whatever the pixel values). Needs the engines installed
# (`deltann engines install ENGINE`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(pwd)/${1:-target/debug/deltann}"
shift || true
engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(openvino torch)
shared="$(pwd)/../shared"
[ -d "$shared/images/imagenet-sample" ] || { echo "bench-python-engines: needs ../shared" >&2; exit 2; }
n=${N:-400}
rounds=${ROUNDS:-5}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for engine in "${engines[@]}"; do
  wall() { # $1: image count -> the cell's wall seconds
    cat > "$work/s$1.toml" <<TOML
store = "store-$engine-$1"
warmup = 1
[dataset]
images = "$shared/images/imagenet-sample"
limit = $1
[[model]]
name = "efficientnet-lite0"
path = "$shared/models/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
engine = ["$engine"]
TOML
    "$bin" collect --quiet "$work/s$1.toml" > /dev/null
    "$bin" query "$work/store-$engine-$1" "SELECT wall_s FROM cells_latest" --format csv | tail -1
  }
  bare_loop() { # the engine alone, on n ready tensors -> images per second
    "$python" - "$(dirname "$python")/../deltann_worker.py" "$shared/models/efficientnet-lite0.onnx" "$engine" "$n" <<'PY'
import importlib.util, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("w", sys.argv[1]); w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)
config = {"engine": sys.argv[3], "model_path": sys.argv[2], "input_shape": [3, 224, 224], "batch_size": 1, "threads": 1, "settings": {}}
engine = w.ENGINES[sys.argv[3]](config)
n = int(sys.argv[4])
xs = [np.random.RandomState(i).rand(1, 3, 224, 224).astype(np.float32) for i in range(n)]
engine.run(xs[0])
started = time.perf_counter()
for x in xs:
    engine.run(x)
print(n / (time.perf_counter() - started))
PY
  }
  python="$(ls -d "${DELTANN_HOME:-$HOME/.cache/deltann}"/python/"$engine"-*/bin/python | head -1)"
  results=()
  # Rounds interleave the collector's two cells and the bare loop, so that a slow spell of the
  # machine touches both sides; the median round is the figure.
  for round in $(seq "$rounds"); do
    rm -rf "$work"/store-*
    w1=$(wall "$n"); w2=$(wall $((2 * n)))
    bare=$(bare_loop)
    results+=("$w1 $w2 $bare")
  done
  python3 - "$engine" "$n" "${results[@]}" <<'PY'
import statistics, sys
engine, n = sys.argv[1], int(sys.argv[2])
ratios = []
for r in sys.argv[3:]:
    w1, w2, bare = map(float, r.split())
    collector = n / (w2 - w1)
    ratios.append(collector / bare)
    print(f"{engine}: collector {collector:.1f} img/s (cells of {n} and {2*n} photos: {w1:.2f} s, {w2:.2f} s), bare loop {bare:.1f} img/s, ratio {collector / bare:.2f}")
print(f"{engine}: median ratio over {len(ratios)} rounds {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
PY
done
