#!/usr/bin/env bash
# What access control costs on the read path: the same demo repo (100,000 users, 26
# features) served by the same release binary with auth off, on (a token of every view) and
# on with a view-limited token (globs checked per request), interleaved over ROUNDS rounds;
# wrk, 1 entity × 1 connection and 100 entities × 8 connections.
#
#   bench/auth/run.sh                  # ROUNDS=3 DURATION=8
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LARDER="${LARDER:-${CARGO_TARGET_DIR:-$ROOT/target}/release/larder}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-bench-auth}"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-8}"; PORT="${PORT:-16650}"
OUT="$WORK/results.jsonl"
rm -rf "$WORK"; mkdir -p "$WORK"; : > "$OUT"
REPO="$WORK/demo"
"$LARDER" init "$REPO" --entities 100000 >/dev/null
(cd "$REPO" && "$LARDER" apply >/dev/null && "$LARDER" materialize >/dev/null)
FULL=$(cd "$REPO" && "$LARDER" token create reader --scope read 2>/dev/null)
LIMITED=$(cd "$REPO" && "$LARDER" token create ranker --scope read --views 'user_*,item_*' 2>/dev/null)
export FEATURES_JSON
FEATURES_JSON=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps([v + ":" + f["name"] for v in sorted(r["feature_views"]) for f in r["feature_views"][v]["features"]]))' "$REPO/data/registry.json")
BASE_CONFIG=$(cat "$REPO/larder.yaml")

for round in $(seq 1 "$ROUNDS"); do
  for mode in off on limited; do
    case $mode in
      off) printf '%s\n' "$BASE_CONFIG" > "$REPO/larder.yaml"; TOKEN="" ;;
      on) printf '%s\nauth: {tokens_file: data/tokens.yaml}\n' "$BASE_CONFIG" > "$REPO/larder.yaml"; TOKEN="$FULL" ;;
      limited) printf '%s\nauth: {tokens_file: data/tokens.yaml}\n' "$BASE_CONFIG" > "$REPO/larder.yaml"; TOKEN="$LIMITED" ;;
    esac
    export TOKEN
    (cd "$REPO" && exec "$LARDER" serve --port "$PORT" --grpc-port 0 > "$WORK/serve.log" 2>&1) &
    pid=$!
    until curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; do sleep 0.1; done
    BATCH=100 wrk -t1 -c8 -d2s -s "$ROOT/bench/auth/wrk_post.lua" "http://127.0.0.1:$PORT" > /dev/null
    for shape in "1 1" "100 8"; do
      set -- $shape
      line=$(BATCH=$1 wrk -t1 -c"$2" -d"${DURATION}s" -s "$ROOT/bench/auth/wrk_post.lua" "http://127.0.0.1:$PORT" | grep '^WRKJSON' | sed 's/^WRKJSON //')
      echo "{\"mode\":\"$mode\",\"round\":$round,\"entities\":$1,\"connections\":$2,\"wrk\":$line}" | tee -a "$OUT"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| shape | auth | p50 ms median (min–max) | p99 ms median (min–max) | req/s median | vs off (p50, req/s) | non-2xx |")
print("|---|---|---|---|---|---|---|")
for shape in [(1, 1), (100, 8)]:
    base = None
    for mode in ["off", "on", "limited"]:
        runs = [r["wrk"] for r in rows if (r["entities"], r["connections"]) == shape and r["mode"] == mode]
        p50 = [r["p50_ms"] for r in runs]; p99 = [r["p99_ms"] for r in runs]; rps = [r["rps"] for r in runs]
        m = (statistics.median(p50), statistics.median(rps))
        if mode == "off":
            base = m
        print(f"| {shape[0]}×{shape[1]} | {mode} | {m[0]:.3f} ({min(p50):.3f}–{max(p50):.3f}) | "
              f"{statistics.median(p99):.3f} ({min(p99):.3f}–{max(p99):.3f}) | {m[1]:.0f} | "
              f"{m[0]/base[0]:.2f}×, {m[1]/base[1]:.2f}× | {sum(r['non2xx'] for r in runs)} |")
PY
