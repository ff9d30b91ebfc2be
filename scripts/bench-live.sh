#!/usr/bin/env bash
# Commit-to-screen latency of the live TUI (issue 9): `deltann tui` runs in tmux on a copy of the
# 1,008,000-row synthetic store while `collect` commits small parts into the same store (the data/
# model on ONNX Runtime, --part-rows sized for a commit every second or two). A loop samples,
# every 0.1 s, the manifest's committed part count and the TUI's status line (" · N parts ",
# shown once an analysis that includes N parts is on screen), and prints, for each commit, the
# seconds until the screen showed it.
#   scripts/bench-live.sh BIN STORE_1M WORKDIR
set -euo pipefail
bin="$(realpath "$1")"
src="$(realpath "$2")"
work="$3"
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v tmux >/dev/null || { echo "live: tmux not installed, skipped"; exit 0; }
rm -rf "$work"
mkdir -p "$work"
work="$(realpath "$work")"
store="$work/store"
# Hard links: parts and derived files are only ever created and renamed, never rewritten; the
# manifest, appended in place, is copied.
cp -al "$src" "$store"
cp --remove-destination "$src/_manifest.jsonl" "$store/_manifest.jsonl"
rm -rf "$store/_cache"
"$bin" analyze "$store" >/dev/null

session="deltann-live-$$"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT
tmux new-session -d -s "$session" -x 200 -y 50 \
  "DELTANN_TUI_IMAGES=halfblocks $bin tui $store"
parts() { wc -l < "$store/_manifest.jsonl"; }
shown() { tmux capture-pane -p -t "$session" | grep -o ' · [0-9]* parts ' | grep -o '[0-9]*' | tail -1; }
start=$(parts)
for _ in $(seq 1 300); do
  [ "$(shown)" = "$start" ] && break
  sleep 0.1
done
[ "$(shown)" = "$start" ] || { echo "live: the TUI never showed $start parts"; exit 1; }
echo "TUI up on $start parts"

data_sweep "$store" 1 'engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "basic", "all"]
threads = [1]
repetitions = [60]' > "$work/sweep.toml"
"$bin" collect --quiet --part-rows "${LIVE_PART_ROWS:-80}" "$work/sweep.toml" > "$work/collect.log" 2>&1 &
collector=$!

# commit time per part count, and the first time the screen showed at least that count.
declare -A committed seen
last=$start
while kill -0 "$collector" 2>/dev/null || [ "${s:-0}" -lt "$(parts)" ]; do
  now=$(date +%s.%N)
  p=$(parts)
  while [ "$last" -lt "$p" ]; do last=$((last + 1)); committed[$last]=$now; done
  s=$(shown || true)
  s=${s:-0}
  for n in "${!committed[@]}"; do
    if [ -z "${seen[$n]:-}" ] && [ "$s" -ge "$n" ]; then seen[$n]=$now; fi
  done
  # Give up 30 s after the collector ended.
  if ! kill -0 "$collector" 2>/dev/null; then
    ended=${ended:-$now}
    awk -v a="$now" -v b="$ended" 'BEGIN {exit !(a - b > 30)}' && break
  fi
  sleep 0.1
done
wait "$collector" || { echo "collect failed:"; cat "$work/collect.log"; exit 1; }
echo "commit  interval_s  shown_after_s"
prev=""
for n in $(printf '%s\n' "${!committed[@]}" | sort -n); do
  c=${committed[$n]}
  gap=$([ -n "$prev" ] && awk -v a="$c" -v b="$prev" 'BEGIN {printf "%.1f", a - b}' || echo "-")
  if [ -n "${seen[$n]:-}" ]; then
    lag=$(awk -v a="${seen[$n]}" -v b="$c" 'BEGIN {printf "%.1f", a - b}')
  else
    lag="never"
  fi
  echo "$n  $gap  $lag"
  prev=$c
done | tee "$work/lags.txt"
awk '$3 != "never" {n++; s+=$3; if ($3 > m) m=$3} $3 == "never" {never++}
     END {printf "commits %d, shown %d, mean %.1f s, max %.1f s, never shown %d\n", n + never, n, s / n, m, never}' "$work/lags.txt"
