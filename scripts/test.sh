#!/usr/bin/env bash
# The test suite, as the README and CI run it: fetch ONNX Runtime (two versions, for the test that
# runs them side by side), then run every test with cargo-nextest when it is installed, else with
# cargo test. Extra arguments go to nextest (e.g. -E 'not test(slow_)').
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-onnxruntime.sh 1.32.0 1.31.1 1.20.1

if [ -d ../shared/models ] || [ -n "${DELTANN_SHARED:-}" ]; then
  echo "test: ../shared found: the reference-accuracy test runs (about 2 minutes)"
else
  echo "test: ../shared not found: tests that need it will print SKIPPED and pass"
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --profile ci "$@"
else
  echo "test: cargo-nextest not installed, using cargo test" >&2
  exec cargo test --workspace -- --nocapture "$@"
fi
