#!/usr/bin/env bash
# Redis layout for online rows: one string per (view version, entity) holding header + row,
# versus one hash per (view version, entity) with the header and the row as two fields, versus
# Feast's layout (one hash per entity, one field per feature, 28 fields). Measures bytes per
# entity (used_memory delta and MEMORY USAGE) and pipelined read throughput (GET vs HGETALL vs
# HMGET of 13 fields) with redis-benchmark on a private redis-server on a free loopback port.
#
#   bench/redis_layout.sh [KEYS=100000] [REPEATS=3]
set -euo pipefail
KEYS=${1:-100000}
REPEATS=${2:-3}
PAYLOAD=120        # encoded values of the demo's 13-feature views (see the bench binary output)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --dir "$DIR" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.05; done
cli() { redis-cli -p "$PORT" "$@"; }
used() { cli info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r'; }

load() { # layout
  cli eval "
    local header = string.rep('h', 17)
    local row = string.rep('v', $PAYLOAD - 1) .. ARGV[1]
    for i = 1, tonumber(ARGV[2]) do
      local key = string.format('%s:%012d', ARGV[1], i)
      if ARGV[1] == 'string' then redis.call('SET', key, header .. row)
      elseif ARGV[1] == 'hash2' then redis.call('HSET', key, 'h', header, 'v', row)
      else
        for f = 1, 28 do redis.call('HSET', key, 'fv:feature_name_' .. f, string.rep('x', 9)) end
        redis.call('HSET', key, '_ts:fv', string.rep('t', 12))
      end
    end
    return 1" 0 "$1" "$KEYS" >/dev/null
}

echo "layout | bytes/entity (used_memory delta) | MEMORY USAGE of one key"
for layout in string hash2 feast28; do
  before=$(used); load $layout; after=$(used)
  sample=$(printf '%s:%012d' $layout 7)
  echo "$layout | $(( (after - before) / KEYS )) | $(cli memory usage "$sample")"
done

echo
echo "pipelined reads (-P 100, -c 8, 1,000,000 requests, random keys), requests/s per repeat"
fields=$(for f in $(seq 1 13); do printf 'fv:feature_name_%d ' "$f"; done)
for repeat in $(seq 1 "$REPEATS"); do
  for command in "GET string:__rand_int__" "HGETALL hash2:__rand_int__" "HMGET feast28:__rand_int__ $fields"; do
    # shellcheck disable=SC2086
    rps=$(redis-benchmark -p "$PORT" -q -P 100 -c 8 -n 1000000 -r "$KEYS" $command | tr '\r' '\n' | awk '/requests per second/{v=$0} END{print v}')
    echo "repeat $repeat | ${command%% *} ${command#* } | $rps"
  done
done
