#!/usr/bin/env bash
# Batch-lane change detection benchmark: first run, a run where 2% of the entities changed,
# and a run where nothing changed. Prints online writes and wall time. Two scenarios:
#   correct  the sources are single files, rewritten with 2% of the users' values changed at
#            their event times (a correction: every file changes, so every row is read);
#   append   the sources are folders, and 2% of the users' rows arrive as new events in a new
#            file of each (new data in a lake: only the new files are read).
#
#   CARGO_TARGET_DIR=/work/rt cargo build --release -p larder-cli
#   LARDER=/work/rt/release/larder ENTITIES=1000000 bench/change_detection.sh
#   SCENARIOS=append LARDER=... bench/change_detection.sh
#
# STORE=embedded (default) or STORE=redis (starts a redis-server on a free loopback port, as
# Feast's harness uses Redis). REPEATS=N repeats the three runs on fresh repos.
set -euo pipefail
LARDER=${LARDER:-target/release/larder}
# The binary that creates and mutates the demo data (`init`, `demo-mutate`); default $LARDER.
# Set it to a newer binary to time an older $LARDER on the append scenario.
LARDER_TOOL=${LARDER_TOOL:-$LARDER}
ENTITIES=${ENTITIES:-1000000}
STORE=${STORE:-embedded}
REPEATS=${REPEATS:-1}
SCENARIOS=${SCENARIOS:-correct append}
WORK=$(mktemp -d)
REDIS_PID=""
cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

run() {
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  "$LARDER" materialize "$@" | grep -E 'rows scanned' | sed "s/^/$label  /"
  end=$(date +%s.%N)
  echo "$label  wall: $(echo "$end - $start" | bc) s"
}

for repeat in $(seq 1 "$REPEATS"); do
for scenario in $SCENARIOS; do
  echo "== repeat $repeat, $scenario ($STORE store, $ENTITIES users)"
  REPO="$WORK/demo$repeat"
  "$LARDER_TOOL" init "$REPO" --entities "$ENTITIES" --anchor 2026-01-10 >/dev/null
  MUTATE_FLAGS=""
  if [ "$scenario" = append ]; then
    for name in profiles activity; do
      mkdir "$REPO/data/sources/$name"
      mv "$REPO/data/sources/$name.parquet" "$REPO/data/sources/$name/part-0.parquet"
      sed -i "s#data/sources/$name.parquet#data/sources/$name/#" "$REPO/features/users.yaml"
    done
    MUTATE_FLAGS="--append-events"
  fi
  if [ "$STORE" = redis ]; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
    REDIS_PID=$!
    until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
    python3 - "$REPO/larder.yaml" "$PORT" <<'PY'
import re, sys
path, port = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"online_store:\n  type: embedded\n  path: [^\n]*\n",
              f"online_store:\n  type: redis\n  urls: [\"redis://127.0.0.1:{port}\"]\n", text)
open(path, "w").write(text)
PY
  fi
  (
    cd "$REPO"
    "$LARDER" apply >/dev/null
    run "$scenario first"
    # shellcheck disable=SC2086
    "$LARDER_TOOL" demo-mutate --fraction 0.02 --seed 7 $MUTATE_FLAGS
    run "$scenario changed-2pct"
    run "$scenario unchanged"
  )
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""; fi
  rm -rf "$REPO"
done
done
