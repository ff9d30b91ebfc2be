#!/usr/bin/env bash
# Kill torture: SIGKILL `deltann collect` and its workers (the whole process group) at KILLS
# random instants of one sweep (preparing the tensor cache, in cells, in commits), resuming after
# each, with -j 1 and then -j 2; then let the sweep finish and have DuckDB (not deltann's code)
# prove exactly one row per (cell, image, repetition), the expected number of rows, and every
# part the manifest lists readable; `deltann store verify` must say sound after every kill.
# The test suite runs a 5-kill version (tests/resume.rs); this is the long one, for RELIABILITY.md.
#
#   scripts/torture-kill.sh [KILLS] [BIN]      defaults: 50, target/debug/deltann
# Needs: python3 with duckdb (pip install duckdb), data/ (the embedded photos and model).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
kills="${1:-50}"
bin="${2:-target/debug/deltann}"
[ -x "$bin" ] || cargo build --bin deltann
python3 -c 'import duckdb' 2>/dev/null || { echo "torture-kill: needs duckdb (pip install duckdb)" >&2; exit 2; }
scripts/fetch-onnxruntime.sh 1.32.0 >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 6 cells x 8 photos x 3 repetitions = 144 rows; tract's decluttered plan is slow enough that
# kills land inside cells.
data_sweep store 0 'engine = ["ort", "tract"]
ort_library = ["1.32.0"]
tract_plan = ["decluttered", "optimized"]
threads = [1, 2]
repetitions = [3]' > "$work/sweep.toml"
expected=144

# DuckDB, not deltann: every listed part readable with its listed rows; exactly one output row
# per (cell, image, repetition), and all of them.
check() {
  python3 - "$1" "$expected" <<'PY'
import json, sys, duckdb
store, expected = sys.argv[1], int(sys.argv[2])
entries = [json.loads(l) for l in open(f"{store}/_manifest.jsonl")]
con = duckdb.connect()
for e in entries:
    n = con.execute("SELECT count(*) FROM read_parquet(?)", [f"{store}/{e['path']}"]).fetchone()[0]
    assert n == e["rows"], (e["path"], n, e["rows"])
files = [f"{store}/{e['path']}" for e in entries if e["table"] == "outputs"]
rows, distinct = con.execute(
    "SELECT count(*), count(DISTINCT (cell_id, image_id, repetition)) FROM read_parquet(?)",
    [files]).fetchone()
assert rows == distinct, f"{rows - distinct} duplicated rows"
assert rows == expected, f"{rows} rows, expected {expected}"
print(f"  duckdb: {len(entries)} parts readable, {rows} output rows, one per (cell, image, repetition)")
PY
}

for jobs in 1 2; do
  rm -rf "$work/store"
  killed=0 sweeps=0
  started=$(date +%s)
  while ((killed < kills)); do
    setsid "$bin" collect --quiet -j "$jobs" --part-rows 2 "$work/sweep.toml" >/dev/null 2>&1 &
    pid=$!
    sleep "$(python3 -c "import random; print(random.uniform(0.02, 1.5))")"
    if ! kill -0 "$pid" 2>/dev/null; then
      # The sweep got to its end between kills: check it, and start another from scratch.
      wait "$pid"
      "$bin" store verify "$work/store" >/dev/null
      check "$work/store"
      sweeps=$((sweeps + 1))
      rm -rf "$work/store"
      continue
    fi
    kill -9 -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    killed=$((killed + 1))
    # (A kill before the store was created leaves nothing to verify.)
    if [ -e "$work/store" ] && ! "$bin" store verify "$work/store" >"$work/verify.log" 2>&1; then
      echo "torture-kill: -j $jobs: store not sound after kill $killed:" >&2
      cat "$work/verify.log" >&2
      exit 1
    fi
  done
  "$bin" collect --quiet -j "$jobs" --part-rows 2 "$work/sweep.toml" >/dev/null
  "$bin" store verify "$work/store" >/dev/null
  check "$work/store"
  sweeps=$((sweeps + 1))
  echo "torture-kill: -j $jobs: $killed kills over $sweeps sweeps, resumed after each, $(( $(date +%s) - started )) s: every store sound, nothing lost or doubled"
done
