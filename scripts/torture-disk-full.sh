#!/usr/bin/env bash
# Disk full: the store lives on a small tmpfs that fills up mid-sweep. `collect` must stop with a
# clear error, every committed part must stay sound (`deltann store verify`), and once space is
# freed the same command must resume to the result of an undisturbed run: the same (cell, image,
# repetition) keys with the same logits hashes, compared by DuckDB.
#
#   scripts/torture-disk-full.sh [BIN]      default: target/debug/deltann
# Needs: root (to mount a tmpfs), python3 with duckdb, data/ (the embedded photos and model).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
bin="$(pwd)/${1:-target/debug/deltann}"
[ -x "$bin" ] || cargo build --bin deltann
python3 -c 'import duckdb' 2>/dev/null || { echo "torture-disk-full: needs duckdb (pip install duckdb)" >&2; exit 2; }
work="$(mktemp -d)"
disk="$work/disk"
mkdir -p "$disk"
mount -t tmpfs -o size=4m tmpfs "$disk" || { echo "torture-disk-full: cannot mount a tmpfs (needs root)" >&2; exit 2; }
trap 'umount "$disk" 2>/dev/null || true; rm -rf "$work"' EXIT

sweep() { # $1: store directory
  data_sweep "$1" 0 'engine = ["tract"]
tract_plan = ["decluttered", "optimized"]
repetitions = [2]'
}
sweep "$work/reference" > "$work/reference.toml"
sweep "$disk/store" > "$work/full.toml"

"$bin" collect --quiet "$work/reference.toml" >/dev/null

# Fill the disk once the first outputs part is committed: the sweep is then inside its first
# cell (tract's decluttered plan, about 4 s), and its next write fails.
"$bin" collect --quiet --part-rows 4 "$work/full.toml" >"$work/full.log" 2>&1 &
pid=$!
until grep -qs '"table":"outputs"' "$disk/store/_manifest.jsonl"; do sleep 0.05; done
dd if=/dev/zero of="$disk/filler" bs=64k status=none 2>/dev/null || true
if wait "$pid"; then
  echo "torture-disk-full: collect finished before the disk filled" >&2
  exit 1
fi
echo "collect on a full disk stopped with:"
grep -iE "space|error" "$work/full.log" | head -3 | sed 's/^/  /'
grep -q "No space left on device" "$work/full.log"
"$bin" store verify "$disk/store" | tail -1

rm "$disk/filler"
"$bin" collect --quiet --part-rows 4 "$work/full.toml" >/dev/null
"$bin" store verify "$disk/store" | tail -1

python3 - "$work/reference" "$disk/store" <<'PY'
import json, sys, duckdb
def rows(store):
    entries = [json.loads(l) for l in open(f"{store}/_manifest.jsonl")]
    files = [f"{store}/{e['path']}" for e in entries if e["table"] == "outputs"]
    return duckdb.connect().execute(
        "SELECT cell_id, image_id, repetition, logits_hash FROM read_parquet(?) ORDER BY ALL",
        [files]).fetchall()
ref, got = rows(sys.argv[1]), rows(sys.argv[2])
assert len(set((c, i, r) for c, i, r, _ in got)) == len(got), "duplicated rows"
assert got == ref, f"{len(got)} rows differ from the undisturbed run's {len(ref)}"
print(f"duckdb: {len(got)} rows, the undisturbed run's keys and logits hashes exactly")
PY
echo "torture-disk-full: ok"
