#!/usr/bin/env bash
# Materialization benchmark: a demo repo of N users (default 1,000,000: 1M profile rows and
# 2M activity rows, 26 features) materialized into the embedded online store and the Parquet
# offline store. Reports wall time, rows/s and peak RSS for REPEATS runs, each from an empty
# store. Uses a release build (`cargo build --release -p larder-cli`).
#
#   bench/materialize.sh            # N=1000000 REPEATS=3
#   N=100000 REPEATS=5 bench/materialize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
REPEATS=${REPEATS:-3}
WORK=${WORK:-${TMPDIR:-/tmp}/larder-bench-materialize}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p larder-cli >&2
LARDER="$(realpath "$TARGET_DIR/${PROFILE:-release}/larder")"

rm -rf "$WORK" && mkdir -p "$WORK"
"$LARDER" init "$WORK/repo" --entities "$N" --anchor "$(date -u +%Y-%m-%d)" >/dev/null
"$LARDER" --repo "$WORK/repo" apply >/dev/null
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "rows: $N profile + $((2 * N)) activity = $((3 * N)) source rows, 26 features"
for run in $(seq 1 "$REPEATS"); do
  rm -rf "$WORK/repo/data/online.redb" "$WORK/repo/data/offline"
  /usr/bin/time -v "$LARDER" --repo "$WORK/repo" materialize > "$WORK/out.txt" 2> "$WORK/time.txt"
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$WORK/time.txt")
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.1f", u+s}' "$WORK/time.txt")
  echo "run $run: wall $wall, cpu ${cpu}s, peak RSS ${rss} MiB"
  grep -E "rows/s" "$WORK/out.txt" | sed 's/^/  /'
done
du -sh "$WORK/repo/data/online.redb" "$WORK/repo/data/offline" | sed 's/^/size: /'
