#!/usr/bin/env bash
# Python SDK benchmark, Larder's SDK vs Feast's, side by side in one run on the peers' data.
#
# 1. Online reads from Python, 1 / 100 / 1000 random users x the same 26 features: Larder's
#    larder.Client against a release `larder serve` (embedded store) -> to_dict() / to_df(),
#    plus the raw request through the same pool (server + transport, answer not decoded), vs
#    Feast 0.67's in-process SDK on its SQLite online store -> to_dict() / to_df().
#    Cells interleave Larder and Feast per repeat.
# 2. Training-set retrieval into pandas, 100k and 1M entity rows x 13 features over the 5M-row
#    history: client.get_historical_features(...).to_df() vs Feast's
#    store.get_historical_features(...).to_df() (the harness's bench_hist_feast.py).
#
#   bench/python_sdk.sh            # env: LARDER (release binary), REPEATS=3, SECONDS_PER_CELL=5,
#                                  # TRAINING_SIZES="100k 1m", SKIP_TRAINING=1, SKIP_FEAST=1
# Prerequisites: the harness venv (../shared/peers/feast/setup.sh) with Larder's SDK installed
# into it (this script does `pip install ./python`), a release build of larder.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/peers/feast}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-bench-python}"
export FEAST_BENCH_DIR="$WORK/feast" FEAST_BENCH_VENV="${FEAST_BENCH_VENV:-${TMPDIR:-/tmp}/feast-venv}"
source "$HARNESS/env.sh"
LARDER="${LARDER:-${CARGO_TARGET_DIR:-$ROOT/target}/release/larder}"
REPEATS="${REPEATS:-3}"; SECONDS_PER_CELL="${SECONDS_PER_CELL:-5}"
TRAINING_SIZES="${TRAINING_SIZES:-100k 1m}"
TRAINING_DATA="${TRAINING_DATA:-${TMPDIR:-/tmp}/larder-training-bench/data}"
PORT="${PORT:-16610}"; TRAINING_PORT="${TRAINING_PORT:-16612}"
OUT="$WORK/results.jsonl"
mkdir -p "$WORK"; : > "$OUT"

"$PY" -m pip install -q --disable-pip-version-check "$ROOT/python"
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$ROOT/python"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
# A Feast SQLite repo over DATA, applied (and materialized with a third argument), once.
feast_repo() { # dir data [materialize]
  [ "${SKIP_FEAST:-0}" != 1 ] && [ ! -f "$1/.ready" ] || return 0
  "$PY" "$HARNESS/make_repo.py" --store sqlite --repo "$1" --data "$2" >&2
  (cd "$1" && "$FEAST" apply >/dev/null)
  [ -z "${3:-}" ] || (cd "$1" && "$FEAST" materialize 2024-12-01T00:00:00 2025-02-01T00:00:00 >/dev/null)
  touch "$1/.ready"
}
wait_health() { for _ in $(seq 240); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.5; done; echo "no server at $1" >&2; exit 1; }

# --- 1. online reads --------------------------------------------------------------------
if [ "${SKIP_ONLINE:-0}" != 1 ]; then
if [ ! -f "$DATA_DIR/profile.parquet" ]; then
  "$PY" "$HARNESS/gen_data.py" --out "$DATA_DIR" --n-entities "$N_ENTITIES" --seed "$SEED" --hist-entities 1000 --hist-versions 2 >&2
fi
REPO="$WORK/larder-repo"
rm -rf "$REPO"; mkdir -p "$REPO"
python3 "$ROOT/bench/serving/make_larder_repo.py" --repo "$REPO" --data "$DATA_DIR"
"$LARDER" --repo "$REPO" apply >/dev/null
"$LARDER" --repo "$REPO" materialize | tail -1 >&2
"$LARDER" --repo "$REPO" serve --port "$PORT" --grpc-port $((PORT + 1)) > "$WORK/larder-serve.log" 2>&1 &
PIDS+=("$!")
wait_health "http://127.0.0.1:$PORT"

FEAST_REPO="$WORK/feast-repo"
feast_repo "$FEAST_REPO" "$DATA_DIR" materialize

for rep in $(seq "$REPEATS"); do
  "$PY" "$ROOT/bench/python_sdk.py" online-larder --url "http://127.0.0.1:$PORT" \
    --n-entities "$N_ENTITIES" --seconds "$SECONDS_PER_CELL" | sed "s/\"repeat\": 0/\"repeat\": $rep/" | tee -a "$OUT" >&2
  if [ "${SKIP_FEAST:-0}" != 1 ]; then
    "$PY" "$ROOT/bench/python_sdk.py" online-feast --repo "$FEAST_REPO" \
      --n-entities "$N_ENTITIES" --seconds "$SECONDS_PER_CELL" | sed "s/\"repeat\": 0/\"repeat\": $rep/" | tee -a "$OUT" >&2
  fi
done
fi

# --- 2. training sets into pandas ---------------------------------------------------------
if [ "${SKIP_TRAINING:-0}" != 1 ]; then
  if [ ! -f "$TRAINING_DATA/activity_history.parquet" ]; then
    "$PY" "$HARNESS/gen_data.py" --out "$TRAINING_DATA" --n-entities 1000 --seed 42 >&2
  fi
  # The training benchmark's repo (bench/training_set.sh builds and materializes it).
  TRAINING_REPO="${TRAINING_REPO:-$(dirname "$TRAINING_DATA")/repo}"
  [ -d "$TRAINING_REPO/data/offline/user_activity_hist" ] || { echo "materialize $TRAINING_REPO first: bench/training_set.sh" >&2; exit 1; }
  # A 1M-row entity table is 16 MB as Arrow: above the default serving.max_body_bytes (8 MiB).
  grep -q '^serving:' "$TRAINING_REPO/larder.yaml" || printf 'serving: {max_body_bytes: 268435456}\n' >> "$TRAINING_REPO/larder.yaml"
  "$LARDER" --repo "$TRAINING_REPO" serve --port "$TRAINING_PORT" --grpc-port $((TRAINING_PORT + 1)) > "$WORK/larder-training-serve.log" 2>&1 &
  PIDS+=("$!")
  wait_health "http://127.0.0.1:$TRAINING_PORT"
  FEAST_TRAINING_REPO="$WORK/feast-training-repo"
  feast_repo "$FEAST_TRAINING_REPO" "$TRAINING_DATA"
  for rep in $(seq "${TRAINING_REPEATS:-2}"); do
    for size in $TRAINING_SIZES; do
      "$PY" "$ROOT/bench/python_sdk.py" training-larder --url "http://127.0.0.1:$TRAINING_PORT" \
        --entity-df "$TRAINING_DATA/entity_df_$size.parquet" --label "$size/$rep" | tee -a "$OUT" >&2
      if [ "${SKIP_FEAST:-0}" != 1 ]; then
        timeout "${HIST_TIMEOUT:-900}" "$PY" "$HARNESS/bench_hist_feast.py" --repo "$FEAST_TRAINING_REPO" \
          --entity-df "$TRAINING_DATA/entity_df_$size.parquet" --label "$size/$rep" | tee -a "$OUT" >&2
      fi
    done
  done
fi
"$PY" "$ROOT/bench/python_sdk_summary.py" "$OUT"
