#!/usr/bin/env bash
# Batch-lane change detection benchmark: first run, a run where 2% of the entities changed
# (same event times), and a run where nothing changed. Prints online writes and wall time.
#
#   CARGO_TARGET_DIR=/work/rt cargo build --release -p larder-cli
#   LARDER=/work/rt/release/larder ENTITIES=1000000 bench/change_detection.sh
set -euo pipefail
LARDER=${LARDER:-target/release/larder}
ENTITIES=${ENTITIES:-1000000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$LARDER" init "$WORK/demo" --entities "$ENTITIES" --anchor 2026-01-10 >/dev/null
cd "$WORK/demo"
"$LARDER" apply >/dev/null
run() {
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  "$LARDER" materialize "$@" | grep -E 'rows scanned' | sed "s/^/$label  /"
  end=$(date +%s.%N)
  echo "$label  wall: $(echo "$end - $start" | bc) s"
}
run first
"$LARDER" demo-mutate --fraction 0.02 --seed 7
run changed-2pct
run unchanged
