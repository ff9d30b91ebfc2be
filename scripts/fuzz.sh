#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of what deltann reads from outside: sweep files,
# the store's manifest, a worker's output stream, image files.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 s each, every target
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). The corpus grows in fuzz/corpus/<target>/ (not committed); a crash
# is saved in fuzz/artifacts/<target>/ and the run of that target stops. Each crash found is fixed
# and kept as a regression test (collector/tests/random_inputs.rs, store/src/manifest.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# Seeds (fuzz/seeds/, committed): valid inputs to mutate from; the worker_output one is what a
# worker prints for two images, one failed (written with pyarrow, as an external worker would).
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sweep manifest worker_output image)

cargo +nightly fuzz build --sanitizer none --debug-assertions
for t in sweep manifest worker_output image; do mkdir -p "corpus/$t"; done
cp seeds/sweep/* corpus/sweep/
cp seeds/manifest/* corpus/manifest/
cp seeds/worker_output/* corpus/worker_output/
cp ../data/images/* corpus/image/

for t in "${targets[@]}"; do
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run --sanitizer none --debug-assertions "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 \
        2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|==|SUMMARY|Test unit written|panicked)" || true
done
