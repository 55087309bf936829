#!/usr/bin/env bash
# Serving under hostile clients: wrk's throughput and latency for 100-entity reads, alone and
# while 300 connections stall mid-body and 50 mid-headers (the issue-23 attack: each
# promises a body it never sends). Side by side in one run, REPEATS times each.
#
#   LARDER=/work/rt/release/larder REPEATS=3 DURATION=10 bench/stalled_clients.sh
#
# Needs wrk and python3. The server runs the 100,000-user demo on the embedded store.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LARDER=${LARDER:-$ROOT/target/release/larder}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
WORK=$(mktemp -d)
SERVER_PID=""
STALLER_PID=""
cleanup() {
  [ -z "$STALLER_PID" ] || kill "$STALLER_PID" 2>/dev/null || true
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$LARDER" init "$WORK/demo" --entities 100000 >/dev/null
(cd "$WORK/demo" && "$LARDER" apply >/dev/null && "$LARDER" materialize >/dev/null)
(cd "$WORK/demo" && exec "$LARDER" serve --port 0 --grpc-port 0) >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
until grep -q "^Larder is serving" "$WORK/serve.log"; do sleep 0.2; done
ADDRESS=$(sed -n "s/^Larder is serving project '.*' on http:\/\/\(.*\)$/\1/p" "$WORK/serve.log")

python3 - "$WORK/body.json" <<'PY'
import json, random, sys
random.seed(7)
features = ["user_profile:age", "user_profile:country", "user_activity:clicks_7d", "user_activity:ctr_7d"]
body = {"features": features, "entities": {"user_id": random.sample(range(1, 100001), 100)}}
open(sys.argv[1], "w").write(json.dumps(body))
PY
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = io.open("$WORK/body.json"):read("*a")
wrk.headers["Content-Type"] = "application/json"
LUA

run_wrk() {
  wrk -t2 -c8 -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://$ADDRESS/get-online-features" \
    | awk -v label="$1" '
        /Requests\/sec/ {rps=$2}
        /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
        /Non-2xx/ {errors=$NF}
        END {printf "%-22s req/s %8s  p50 %8s  p99 %8s  non-2xx %s\n", label, rps, p50, p99, (errors==""?0:errors)}'
}

stall() {
  python3 - "$ADDRESS" <<'PY' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
held = []
for _ in range(300):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /get-online-features HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"features\":")
    held.append(s)
for _ in range(50):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /push HTTP/1.1\r\nHost: x\r\n")
    held.append(s)
time.sleep(3600)
PY
  STALLER_PID=$!
  sleep 2
}

for repeat in $(seq 1 "$REPEATS"); do
  run_wrk "alone #$repeat"
  stall
  run_wrk "350 stalled #$repeat"
  kill "$STALLER_PID"; wait "$STALLER_PID" 2>/dev/null || true; STALLER_PID=""
done
