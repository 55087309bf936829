#!/usr/bin/env bash
# Serving benchmark, Larder vs Feast 0.67, side by side in one run on the same data.
#
# Uses the peer harness in ../shared/peers/feast (its venv, its seeded data generator and its
# wrk script), so both servers get byte-identical request bodies: 1, 100 and 1000 random
# user_ids x the same 26 features, at 1 and 8 connections. Larder serves from its embedded
# store (release build), or from Redis with LARDER_STORE=redis; Feast serves from SQLite with 2
# gunicorn workers (its best configuration on 2 cores, see RESULTS.md) unless FEAST_STORE=redis.
# LARDER_STORE=dynamodb serves from a moto server (DynamoDB-compatible, Python) it starts.
# Both on Redis share one private redis-server (the harness's redis_ctl.sh, its port), under
# different key prefixes:
#   LARDER_STORE=redis FEAST_STORE=redis BATCHES=100 bench/serving/run.sh
#
#   bench/serving/run.sh                         # DURATION=8 REPEATS=3
#   LARDER_CACHE=400000 bench/serving/run.sh     # with the write-through cache (online_cache)
#   DURATION=4 REPEATS=1 SKIP_FEAST=1 bench/serving/run.sh
#
# Prerequisites: the harness venv (../shared/peers/feast/setup.sh), wrk, a release build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/peers/feast}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-bench-serving}"
export FEAST_BENCH_DIR="$WORK/feast" FEAST_BENCH_VENV="${FEAST_BENCH_VENV:-${TMPDIR:-/tmp}/feast-venv}"
source "$HARNESS/env.sh"
DURATION="${DURATION:-8}"; REPEATS="${REPEATS:-3}"; BATCHES="${BATCHES:-1 100 1000}"; CONNECTIONS="${CONNECTIONS:-1 8}"
FEAST_STORE="${FEAST_STORE:-sqlite}"; FEAST_WORKERS="${FEAST_WORKERS:-2}"
LARDER_PORT="${LARDER_PORT:-16600}"; LARDER_GRPC_PORT="${LARDER_GRPC_PORT:-16601}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$WORK/results.jsonl"
mkdir -p "$WORK"; : > "$OUT"

[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p larder-cli -p larder-bench >&2)
LARDER="$TARGET_DIR/${PROFILE:-release}/larder"; LOADGEN="$TARGET_DIR/${PROFILE:-release}/larder-loadgen"

# 1. The harness's seeded data (100,000 users, two views, 26 features).
if [ ! -f "$DATA_DIR/profile.parquet" ]; then
  "$PY" "$HARNESS/gen_data.py" --out "$DATA_DIR" --n-entities "$N_ENTITIES" --seed "$SEED" --hist-entities 1000 --hist-versions 2 >&2  # Feast's repo needs a (small) history file
fi

# 2. Larder: a repo with the same entity, views and features, materialized.
REPO="$WORK/larder-repo"
rm -rf "$REPO"; mkdir -p "$REPO"
LARDER_STORE="${LARDER_STORE:-embedded}"
if [ "$LARDER_STORE" = redis ] || [ "$FEAST_STORE" = redis ]; then "$HARNESS/redis_ctl.sh" start >&2; fi
if [ "$LARDER_STORE" = dynamodb ]; then
  # A DynamoDB-compatible server (moto, Python) on a free loopback port.
  MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$MOTO_PORT" > "$WORK/moto.log" 2>&1 &
  MOTO_PID=$!
  until curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/"; do sleep 0.2; done
  python3 "$ROOT/bench/serving/make_larder_repo.py" --repo "$REPO" --data "$DATA_DIR" \
    --online-store "type: dynamodb
  endpoint: http://127.0.0.1:$MOTO_PORT
  access_key_id: test
  secret_access_key: test"
elif [ "$LARDER_STORE" = redis ]; then
  python3 "$ROOT/bench/serving/make_larder_repo.py" --repo "$REPO" --data "$DATA_DIR" \
    --online-store "type: redis
  urls: [\"redis://127.0.0.1:$REDIS_PORT\"]
  key_prefix: \"larder:\""
else
  python3 "$ROOT/bench/serving/make_larder_repo.py" --repo "$REPO" --data "$DATA_DIR"
fi
# LARDER_CACHE=N puts the write-through cache of N rows in front of the online store.
if [ -n "${LARDER_CACHE:-}" ]; then printf 'online_cache:\n  max_entries: %s\n' "$LARDER_CACHE" >> "$REPO/larder.yaml"; fi
"$LARDER" --repo "$REPO" apply >/dev/null
"$LARDER" --repo "$REPO" materialize | tail -3 >&2

export N_ENTITIES
export FEATURES_JSON="$(python3 -c 'import json; print(json.dumps([f"user_profile:p_float_{i}" for i in range(7)]+[f"user_profile:p_int_{i}" for i in range(5)]+["user_profile:p_segment"]+[f"user_activity:a_float_{i}" for i in range(8)]+[f"user_activity:a_int_{i}" for i in range(5)]))')"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [ "$LARDER_STORE" = redis ] || [ "$FEAST_STORE" = redis ]; then "$HARNESS/redis_ctl.sh" stop >&2 || true; fi
  if [ -n "${MOTO_PID:-}" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
wait_http() { for _ in $(seq 240); do curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' "$1/get-online-features" -d "{\"features\":$FEATURES_JSON,\"entities\":{\"user_id\":[1]}}" 2>/dev/null | grep -q 200 && return 0; sleep 0.5; done; echo "server at $1 did not come up" >&2; exit 1; }
cpu_of() { local t=0 p f; for p in "$@" $(for q in "$@"; do ps -o pid= --ppid "$q"; done); do read -r -a f < "/proc/$p/stat" 2>/dev/null || continue; t=$((t + f[13] + f[14])); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

"$LARDER" --repo "$REPO" serve --port "$LARDER_PORT" --grpc-port "$LARDER_GRPC_PORT" > "$WORK/larder-serve.log" 2>&1 &
LARDER_PID=$!; PIDS+=("$LARDER_PID")
wait_http "http://127.0.0.1:$LARDER_PORT"

if [ "${SKIP_FEAST:-0}" != 1 ]; then
  FEAST_REPO="$WORK/feast-repo"; [ "$FEAST_STORE" = redis ] && FEAST_REPO="$WORK/feast-repo-redis" && rm -f "$FEAST_REPO/.materialized"
  if [ ! -f "$FEAST_REPO/data/online.db" ] && [ ! -f "$FEAST_REPO/.materialized" ]; then
    "$PY" "$HARNESS/make_repo.py" --store "$FEAST_STORE" --repo "$FEAST_REPO" --data "$DATA_DIR" --redis-port "$REDIS_PORT" >&2
    (cd "$FEAST_REPO" && "$FEAST" apply >/dev/null && "$FEAST" materialize 2024-12-01T00:00:00 2025-02-01T00:00:00 >/dev/null)
    touch "$FEAST_REPO/.materialized"
  fi
  (cd "$FEAST_REPO" && exec "$FEAST" serve -h 127.0.0.1 -p "$FEAST_PORT" --no-access-log -w "$FEAST_WORKERS" --max-requests 10000000) > "$WORK/feast-serve.log" 2>&1 &
  FEAST_PID=$!; PIDS+=("$FEAST_PID")
  wait_http "http://127.0.0.1:$FEAST_PORT"
fi

run_wrk() { # system url pid batch connections repeat
  local c0 c1 line
  c0=$(cpu_of "$3")
  line=$(BATCH="$4" wrk -t1 -c"$5" -d"${DURATION}s" --timeout 30s -s "$HARNESS/wrk_post.lua" "$2" | grep '^WRKJSON' | sed 's/^WRKJSON //')
  c1=$(cpu_of "$3")
  echo "{\"system\":\"$1\",\"protocol\":\"http\",\"entities\":$4,\"connections\":$5,\"repeat\":$6,\"server_cpu_s\":$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}'),\"wrk\":$line}" | tee -a "$OUT" >&2
}

run_loadgen() { # batch connections repeat: gRPC, with the server's CPU time like run_wrk
  local c0 c1 line
  c0=$(cpu_of "$LARDER_PID")
  line=$("$LOADGEN" --url "http://127.0.0.1:$LARDER_GRPC_PORT" --entities "$1" --connections "$2" --seconds "$DURATION" \
    --max-entity "$N_ENTITIES" --label "{\"system\":\"larder\",\"protocol\":\"grpc\",\"entities\":$1,\"connections\":$2,\"repeat\":$3}")
  c1=$(cpu_of "$LARDER_PID")
  echo "$line" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['server_cpu_s']=round(($c1-$c0)/$HZ,2); print(json.dumps(d))" | tee -a "$OUT" >&2
}

# Warm-up, then interleave the systems cell by cell so that noise hits both alike.
BATCH=100 wrk -t1 -c8 -d2s -s "$HARNESS/wrk_post.lua" "http://127.0.0.1:$LARDER_PORT" >/dev/null 2>&1 || true
[ "${SKIP_FEAST:-0}" != 1 ] && { BATCH=100 wrk -t1 -c4 -d3s -s "$HARNESS/wrk_post.lua" "http://127.0.0.1:$FEAST_PORT" >/dev/null 2>&1 || true; }
for rep in $(seq "$REPEATS"); do
  for C in $CONNECTIONS; do
    for B in $BATCHES; do
      run_wrk larder "http://127.0.0.1:$LARDER_PORT" "$LARDER_PID" "$B" "$C" "$rep"
      [ "${SKIP_FEAST:-0}" != 1 ] && run_wrk feast "http://127.0.0.1:$FEAST_PORT" "$FEAST_PID" "$B" "$C" "$rep"
      run_loadgen "$B" "$C" "$rep"
    done
  done
done
# Overload: ~10x the connections that saturate the server, 1000 entities per request; then the
# normal load again. Reports shed requests (503), peak RSS, and whether latency recovers.
if [ "${SKIP_OVERLOAD:-0}" != 1 ]; then
  ulimit -n 65536 2>/dev/null || true
  rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$LARDER_PID/status"; }
  hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$LARDER_PID/status"; }
  before=$(rss_kib)
  overload=$(BATCH=1000 wrk -t2 -c"${OVERLOAD_CONNECTIONS:-1000}" -d"${DURATION}s" --timeout 30s -s "$HARNESS/wrk_post.lua" "http://127.0.0.1:$LARDER_PORT" | grep '^WRKJSON' | sed 's/^WRKJSON //')
  peak=$(hwm_kib)
  sleep 2
  recovered=$(BATCH=100 wrk -t1 -c8 -d"${DURATION}s" --timeout 30s -s "$HARNESS/wrk_post.lua" "http://127.0.0.1:$LARDER_PORT" | grep '^WRKJSON' | sed 's/^WRKJSON //')
  after=$(rss_kib)
  echo "{\"overload\":{\"connections\":${OVERLOAD_CONNECTIONS:-1000},\"entities\":1000,\"rss_before_kib\":$before,\"peak_rss_kib\":$peak,\"rss_after_kib\":$after,\"during\":$overload,\"recovery_100_entities_8_conns\":$recovered}}" | tee "$WORK/overload.json" >&2
fi
python3 "$ROOT/bench/serving/summarize.py" "$OUT"
