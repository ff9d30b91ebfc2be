#!/usr/bin/env bash
# The GPU study (studies/torch-cuda.toml): torch on CUDA in fp32, TF32, fp16 and bf16 against
# ONNX Runtime on the CPU, on the 1000 photos of ../shared. For a machine with an NVIDIA GPU;
# installs what it needs (ONNX Runtime 1.32.0, torch's environment: several GB, once), runs the
# sweep, and prints the flip rates against ORT and the report.
#
#   scripts/gpu-study.sh            writes results/torch-cuda and results/torch-cuda.json
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d ../shared/images/imagenet-sample ] || { echo "gpu-study: needs ../shared" >&2; exit 2; }
[ -d /proc/driver/nvidia/gpus ] || echo "gpu-study: no NVIDIA GPU here: the CUDA cells will be skipped" >&2
scripts/fetch-onnxruntime.sh 1.32.0 >/dev/null
cargo build --bin deltann
bin=target/debug/deltann
"$bin" engines install torch
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
"$bin" collect studies/torch-cuda.toml
"$bin" report results/torch-cuda --format json > results/torch-cuda.json
"$bin" query results/torch-cuda \
  "SELECT a.model, b.tag AS cell, count(*) AS images, sum(CAST(c.flip AS INT)) AS flips,
          round(avg(CAST(c.flip AS INT)) * 100, 2) AS flip_pct
   FROM comparisons c
   JOIN cells_latest a ON a.cell_id = c.cell_a JOIN cells_latest b ON b.cell_id = c.cell_b
   WHERE a.engine = 'ort' AND b.engine = 'torch'
   GROUP BY a.model, b.tag ORDER BY a.model, b.tag"
"$bin" report results/torch-cuda
