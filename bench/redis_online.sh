#!/usr/bin/env bash
# Larder's Redis online store vs raw redis-benchmark, on a private redis-server (loopback,
# free port): the demo shape (2 views x 13 features, 100,000 users), 100-entity requests.
#
# Raw: `redis-benchmark GET` pipelined 100 deep (-P 100), 8 connections, on values of the same
# size as Larder's stored rows; its requests/s is keys/s. Larder: the in-process bench binary
# (release build), 8 concurrent tasks, each request = 100 keys from each of the 2 views (two
# MGETs, concurrently), every row decoded; keys/s = requests/s x 200.
#
#   CARGO_TARGET_DIR=/work/rt bench/redis_online.sh [REPEATS=3] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
SECONDS_PER_RUN=${2:-8}
ENTITIES=100000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/rt}
cargo build --release -p larder-online-redis --bench redis_read_throughput >/dev/null 2>&1
BENCH=$(ls -t "$CARGO_TARGET_DIR"/release/deps/redis_read_throughput-* | grep -v '\.d$' | head -1)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --dir "$DIR" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.05; done
# Same payload: the average stored row of the two views (header + encoded values).
VALUE_BYTES=$(REDIS_URL="redis://127.0.0.1:$PORT" ENTITIES=1000 SECONDS=1 "$BENCH" | awk '/stored value bytes/{print int(($7+$10)/2)}')
echo "value size: $VALUE_BYTES bytes"
redis-benchmark -p "$PORT" -q -t set -d "$VALUE_BYTES" -n "$ENTITIES" -r "$ENTITIES" -P 100 >/dev/null
for repeat in $(seq 1 "$REPEATS"); do
  raw=$(redis-benchmark -p "$PORT" -q -t get -d "$VALUE_BYTES" -n 2000000 -r "$ENTITIES" -P 100 -c 8 | tr '\r' '\n' | awk '/requests per second/{v=$0} END{print v}')
  echo "repeat $repeat raw: $raw"
  REDIS_URL="redis://127.0.0.1:$PORT" ENTITIES=$ENTITIES SECONDS=$SECONDS_PER_RUN BATCH=100 CONCURRENCY=8 "$BENCH" | sed "s/^/repeat $repeat larder: /"
done
