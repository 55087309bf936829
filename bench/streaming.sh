#!/usr/bin/env bash
# Streaming lane benchmark (issue 6): events/s ingested by `larder serve` from NATS JetStream
# into a view with 1h and 24h count/sum aggregations over KEYS users, and the event-to-servable
# latency (p50/p99) at a paced RATE events/s. Every event is stamped with its publish time, so
# the lag covers broker, batching, aggregation, the online write and the state commit.
#
#   CARGO_TARGET_DIR=/work/rt-main bench/streaming.sh        (after a release build of
#   larder-cli and larder-bench: cargo build --release -p larder-cli -p larder-bench --bins)
#
# LARDER_STORE=redis writes to a redis-server started here instead of the embedded store;
# LARDER_STORE=memory (a diagnostic) to the in-process memory store.
# PROFILE=debug uses a debug build. EVENTS (backlog, default 2,000,000), KEYS (1,000,000), RATE (50,000), PACED_SECONDS (30),
# CHECKPOINT_INTERVAL (the repo's stream.checkpoint_interval; unset: the binary's default).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}/${PROFILE:-release}
LARDER=$(realpath "$TARGET/larder")
LOAD=$(realpath "$TARGET/larder-stream-load")
EVENTS=${EVENTS:-2000000}
KEYS=${KEYS:-1000000}
RATE=${RATE:-50000}
PACED_SECONDS=${PACED_SECONDS:-30}
WORK=$(mktemp -d /tmp/larder-stream-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # nats-server writes its store until it exits: removing it before would race.
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  cp "$WORK/serve.log" /tmp/larder-stream-bench-serve.log 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
sleep 1
NATS="nats://127.0.0.1:$NATS_PORT"

ONLINE_STORE="{type: embedded, path: data/online.redb}"
if [ "${LARDER_STORE:-embedded}" = "memory" ]; then
  ONLINE_STORE="{type: memory}"   # diagnostic: no online-store I/O at all
fi
if [ "${LARDER_STORE:-embedded}" = "redis" ]; then
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  sleep 0.5
  ONLINE_STORE="{type: redis, urls: [\"redis://127.0.0.1:$REDIS_PORT\"]}"
fi
mkdir -p "$WORK/repo"
cat >"$WORK/repo/larder.yaml" <<YAML
project: streambench
registry: data/registry.json
online_store: $ONLINE_STORE
offline_store: {type: parquet, path: data/offline}
YAML
if [ -n "${CHECKPOINT_INTERVAL:-}" ]; then
  echo "stream: {checkpoint_interval: $CHECKPOINT_INTERVAL}" >>"$WORK/repo/larder.yaml"
fi
cat >"$WORK/repo/features.yaml" <<YAML
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: clicks
    type: nats
    url: $NATS
    stream: CLICKS
    subject: clicks.all
    timestamp_field: ts
    timestamp_unit: ms
    fields:
      - {name: user_id, dtype: int64}
      - {name: amount, dtype: float64}
feature_views:
  - name: user_clicks
    version: 1
    entities: [user]
    source: clicks
    allowed_lateness: 10m
    freshness_sla: 1s
    aggregations:
      - {function: count, window: 1h}
      - {function: sum, column: amount, window: 1h}
      - {function: count, window: 24h}
      - {function: sum, column: amount, window: 24h}
YAML
(cd "$WORK/repo" && "$LARDER" apply >/dev/null)

echo "== machine: $(nproc) cores, $(uname -r); store=${LARDER_STORE:-embedded} events=$EVENTS keys=$KEYS rate=$RATE paced=${PACED_SECONDS}s"
echo "== backlog: publishing $EVENTS events"
"$LOAD" --nats "$NATS" --events "$EVENTS" --keys "$KEYS"

echo "== raw limit: a consumer that only pulls and acknowledges"
"$LOAD" --nats "$NATS" --events "$EVENTS" --consume

HTTP_PORT=$(free_port)
GRPC_PORT=$(free_port)
(cd "$WORK/repo" && exec "$LARDER" serve --port "$HTTP_PORT" --grpc-port "$GRPC_PORT" >"$WORK/serve.log" 2>&1) &
SERVER=$!
PIDS+=($SERVER)
BASE="http://127.0.0.1:$HTTP_PORT"
applied() {
  curl -s "$BASE/metrics" 2>/dev/null | awk '/^larder_stream_events_total\{view="user_clicks",outcome="applied"\}/ {print $2}' | head -1
}
until curl -s "$BASE/health" >/dev/null 2>&1; do sleep 0.1; done
first_time=""; first_count=0
while true; do
  count=$(applied); count=${count:-0}
  now=$(date +%s.%N)
  if [ -z "$first_time" ] && [ "$count" != "0" ]; then first_time=$now; first_count=$count; fi
  if [ "$count" -ge "$EVENTS" ] 2>/dev/null; then break; fi
  if [ "$count" != "${last_count:-}" ]; then last_count=$count; last_change=$now; fi
  if python3 -c "import sys; sys.exit(0 if float('$now') - float('$last_change') > 60 else 1)"; then
    echo "STALLED: $count of $EVENTS events applied, no progress for 60 s (server log: /tmp/larder-stream-bench-serve.log)"
    curl -s "$BASE/metrics" | grep -E '^larder_stream' || true
    exit 1
  fi
  sleep 0.2
done
CPU=$(ps -o times= -p "$SERVER" | tr -d ' ')
RSS=$(ps -o rss= -p "$SERVER" | tr -d ' ')
python3 - "$first_time" "$now" "$first_count" "$EVENTS" "$CPU" "$RSS" <<'PY'
import sys
first, done, first_count, events, cpu, rss = sys.argv[1:]
seconds = float(done) - float(first)
consumed = int(events) - int(first_count)
print(f"backlog ingest: {consumed} events in {seconds:.2f} s = {consumed/seconds:,.0f} events/s "
      f"(server CPU {int(cpu)} s so far, RSS {int(rss)/1024:.0f} MiB)")
PY

# Where a batch's time goes: the mean of each pipeline stage (prepare runs beside the previous
# batch's online write and state commit, which run one after the other).
curl -s "$BASE/metrics" | python3 -c '
import re, sys
stages = {}
for line in sys.stdin:
    m = re.match(r"larder_stream_batch_stage_duration_seconds_(sum|count)\{(.*)\} (\S+)", line)
    if m:
        stage = re.search(r"stage=\"([^\"]+)\"", m.group(2)).group(1)
        stages.setdefault(stage, {})[m.group(1)] = float(m.group(3))
parts = []
for stage, v in sorted(stages.items()):
    total, count = v.get("sum", 0.0), v.get("count", 0.0)
    if count:
        parts.append("%s %.0f ms x %d (total %.1f s)" % (stage, total / count * 1000, count, total))
print("backlog stages (mean per batch): " + ", ".join(parts))
'

echo "== paced: $RATE events/s for ${PACED_SECONDS}s"
curl -s "$BASE/metrics" >"$WORK/before.txt"
"$LOAD" --nats "$NATS" --events $((RATE * PACED_SECONDS)) --keys "$KEYS" --rate "$RATE" --offset "$EVENTS"
sleep 2
curl -s "$BASE/metrics" >"$WORK/after.txt"
curl -s "$BASE/status" >"$WORK/status.json"
python3 - "$WORK/before.txt" "$WORK/after.txt" "$WORK/status.json" <<'PY'
import json, re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'larder_event_to_servable_duration_seconds_bucket\{view="user_clicks",lane="stream",le="([^"]+)"\} (\S+)', line)
        if m:
            out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return out
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
edges = sorted(after)
counts = [after[e] - before.get(e, 0.0) for e in edges]
total = counts[-1]
def quantile(q):
    target = q * total
    previous_edge, previous_count = 0.0, 0.0
    for edge, count in zip(edges, counts):
        if count >= target:
            if edge == float("inf"):
                return f"> {previous_edge}"
            share = (target - previous_count) / max(count - previous_count, 1e-9)
            return f"{(previous_edge + share * (edge - previous_edge)) * 1000:.0f} ms"
        previous_edge, previous_count = edge, count
def stages(path):
    out = {}
    for line in open(path):
        m = re.match(r"larder_stream_batch_stage_duration_seconds_(sum|count)\{(.*)\} (\S+)", line)
        if m:
            stage = re.search(r'stage="([^"]+)"', m.group(2)).group(1)
            out.setdefault(stage, {})[m.group(1)] = float(m.group(3))
    return out
stage_before, stage_after = stages(sys.argv[1]), stages(sys.argv[2])
parts = []
for stage, v in sorted(stage_after.items()):
    was = stage_before.get(stage, {})
    seconds = v.get("sum", 0.0) - was.get("sum", 0.0)
    batches = v.get("count", 0.0) - was.get("count", 0.0)
    if batches:
        parts.append("%s %.0f ms x %d" % (stage, seconds / batches * 1000, batches))
print("paced stages (mean per batch): " + ", ".join(parts))
within = sum(count for edge, count in zip(edges, counts) if edge == 0.5)
print(f"paced run: share of rows servable within 500 ms (the histogram's 0.5 s bucket): {100 * within / max(total, 1):.2f} %")
print(f"paced run: {total:,.0f} rows written; event-to-servable from the histogram "
      f"(interpolated in its buckets): p50 {quantile(0.5)}, p99 {quantile(0.99)}")
view = json.load(open(sys.argv[3]))["views"][0]
print(f"/status (last {view['lag_samples']} rows, exact): p50 {view['lag_p50_seconds']*1000:.0f} ms, "
      f"p99 {view['lag_p99_seconds']*1000:.0f} ms, status {view['status']} (SLA {view['freshness_sla_seconds']} s)")
PY
CPU=$(ps -o times= -p "$SERVER" | tr -d ' ')
RSS=$(ps -o rss= -p "$SERVER" | tr -d ' ')
echo "server CPU total ${CPU} s, RSS $((RSS / 1024)) MiB"
