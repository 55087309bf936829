#!/usr/bin/env bash
# Soak (issue 21): `larder serve` on the demo repo (USERS users) under mixed load for SECONDS:
# paced HTTP reads (READ_RATE/s, 20 users each, the demo's 26-feature service), direct writes
# (WRITE_RATE/s), stream events to NATS JetStream (STREAM_RATE/s, count and sum over
# SHORT_WINDOW and LONG_WINDOW, 1h and 24h by default) and a
# scheduled batch run of `user_profile` every minute; at 60% of the run, an overload phase of
# OVERLOAD_CONNECTIONS closed-loop clients asking for 1,000 users each (the server admits
# serving.max_concurrent_requests = 16 at once) for OVERLOAD_SECONDS.
#
#   CARGO_TARGET_DIR=/work/rel-target bash bench/soak.sh      (release build of larder-cli
#   and larder-bench first: cargo build --release -p larder-cli -p larder-bench)
#
# Writes OUT/soak.jsonl (one line a second, see larder-soak), OUT/soak.png (latency
# percentiles, RSS and shed requests over time) and prints a summary; fails on any error.
# PY: a Python with matplotlib (for the plot; PLOT=- skips it). PROFILE=debug uses a debug build;
# LARDER and SOAK name the two binaries directly (larder-bench's soak test does).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}/${PROFILE:-release}
LARDER=$(realpath "${LARDER:-$TARGET/larder}")
SOAK=$(realpath "${SOAK:-$TARGET/larder-soak}")
SECONDS_TOTAL=${SECONDS_TOTAL:-1800}
USERS=${USERS:-100000}
READ_RATE=${READ_RATE:-200}
WRITE_RATE=${WRITE_RATE:-50}
STREAM_RATE=${STREAM_RATE:-1000}
OVERLOAD_CONNECTIONS=${OVERLOAD_CONNECTIONS:-160}
OVERLOAD_SECONDS=${OVERLOAD_SECONDS:-30}
# The stream view's two windows. The stream state holds each active user's tiles of the
# longest window, so it (and RSS) levels off once the run is longer than LONG_WINDOW.
SHORT_WINDOW=${SHORT_WINDOW:-1h}
LONG_WINDOW=${LONG_WINDOW:-24h}
OUT=${OUT:-$PWD/target/soak}
PY=${PY:-python3}
PLOT=${PLOT:-$OUT/soak.png}   # -: no plot (no matplotlib needed)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/larder-soak.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
NATS="nats://127.0.0.1:$NATS_PORT"

(cd "$WORK" && "$LARDER" init demo --entities "$USERS" >/dev/null)
REPO="$WORK/demo"
HTTP_PORT=$(free_port)
sed -i "s/^  port: 6566$/  port: $HTTP_PORT\n  max_concurrent_requests: 16/" "$REPO/larder.yaml"
# Every minute, at second 30: a full scheduled run of user_profile while the load goes on.
sed -i 's/^    source: user_profiles$/&\n    schedule: "30 * * * * *"/' "$REPO/features/users.yaml"
cat >"$REPO/features/soak.yaml" <<YAML
sources:
  - name: soak_push
    type: push
  - name: soak_clicks
    type: nats
    url: $NATS
    stream: SOAK
    subject: soak.clicks
    timestamp_field: ts
    timestamp_unit: ms
    fields:
      - {name: user_id, dtype: int64}
      - {name: amount, dtype: float64}
feature_views:
  - name: soak_scores
    version: 1
    entities: [user]
    source: soak_push
    features:
      - {name: score, dtype: int64}
  - name: soak_clicks
    version: 1
    entities: [user]
    source: soak_clicks
    allowed_lateness: 10m
    aggregations:
      - {function: count, window: $SHORT_WINDOW}
      - {function: sum, column: amount, window: $SHORT_WINDOW}
      - {function: count, window: $LONG_WINDOW}
      - {function: sum, column: amount, window: $LONG_WINDOW}
YAML
(cd "$REPO" && "$LARDER" apply >/dev/null && "$LARDER" materialize >/dev/null)
(cd "$REPO" && exec "$LARDER" serve --grpc-port 0 >"$WORK/serve.log" 2>&1) &
SERVE_PID=$!
PIDS+=($SERVE_PID)
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null && break
  sleep 0.5
done
echo "== soak: ${SECONDS_TOTAL}s, $READ_RATE reads/s, $WRITE_RATE writes/s, $STREAM_RATE events/s, overload at $((SECONDS_TOTAL * 6 / 10))s"
"$SOAK" --http "127.0.0.1:$HTTP_PORT" --pid "$SERVE_PID" --seconds "$SECONDS_TOTAL" \
  --read-rate "$READ_RATE" --write-rate "$WRITE_RATE" --users "$USERS" \
  --nats "$NATS" --subject soak.clicks --stream-rate "$STREAM_RATE" \
  --overload-at $((SECONDS_TOTAL * 6 / 10)) --overload-seconds "$OVERLOAD_SECONDS" \
  --overload-connections "$OVERLOAD_CONNECTIONS" >"$OUT/soak.jsonl"
kill -0 "$SERVE_PID" || { echo "larder serve died:"; tail -20 "$WORK/serve.log"; exit 1; }
(cd "$REPO" && "$LARDER" runs user_profile | tail -5) > "$OUT/runs.txt" || true
grep -c "succeeded" "$OUT/runs.txt" >/dev/null || echo "warning: no scheduled run recorded"
"$PY" bench/soak_report.py "$OUT/soak.jsonl" "$PLOT" "$((SECONDS_TOTAL * 6 / 10))" "$OVERLOAD_SECONDS"
