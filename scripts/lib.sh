# Shared by the benchmark and torture scripts (source it from the repository root).

# data_sweep STORE WARMUP ENVIRONMENTS [IMAGES]: a sweep file, on stdout, running data/'s model
# over a folder of photos (default data/images, labels beside it) with the given [environments]
# lines.
data_sweep() {
  local store="$1" warmup="$2" environments="$3" images="${4:-$(pwd)/data/images}"
  cat <<SWEEP
store = "$store"
warmup = $warmup
[dataset]
images = "$images"
labels = "$images/../labels.csv"
[[model]]
name = "efficientnet-lite0"
path = "$(pwd)/data/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
$environments
SWEEP
}
