#!/usr/bin/env bash
# Makes data/efficientnet-lite0-int8.onnx, the demo's precision variant, from
# data/efficientnet-lite0.onnx: ONNX Runtime 1.32.0's static quantizer, QDQ format, per-channel
# int8 weights, uint8 activations, MinMax calibration on the eight photos of data/images (the
# model's tf127 preprocessing: shorter side to 256 bilinear, centre crop 224, (p - 127) / 128).
# Inputs and outputs stay float32, so the sweep runs it exactly as the fp32 file.
#
# The demo needs a variant that disagrees with the fp32 model for the report and the TUI to have
# something to show; int8 does on these photos (it calls the astronaut a football helmet where
# fp32 says bobsled, a near tie). The pinned packages live in
# a virtual environment under ${DELTANN_HOME:-~/.cache/deltann}/venv/demo-int8, made once.
#
# Usage: scripts/make-demo-int8.sh [OUTPUT]   (default data/efficientnet-lite0-int8.onnx)
set -euo pipefail
out="$(realpath -m "${1:-$(dirname "$0")/../data/efficientnet-lite0-int8.onnx}")"
cd "$(dirname "$0")/.."
home="${DELTANN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/deltann}"
venv="$home/venv/demo-int8"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    onnxruntime==1.32.0 onnx==1.20.0 numpy==2.4.6 pillow==13.0.0
fi
"$venv/bin/python" - data/efficientnet-lite0.onnx data/images "$out" <<'PY'
import hashlib, pathlib, sys
import numpy as np
from PIL import Image
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

model, images, out = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]

def tf127(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    x = (np.asarray(im, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]

class Photos(CalibrationDataReader):
    def __init__(self):
        self.items = iter(sorted(p for p in images.iterdir() if p.is_file()))
    def get_next(self):
        p = next(self.items, None)
        return None if p is None else {"input": tf127(p)}

quantize_static(model, out, Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax)
data = pathlib.Path(out).read_bytes()
print(f"{out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
PY
