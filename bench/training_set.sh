#!/usr/bin/env bash
# Point-in-time training sets: Larder vs DuckDB's ASOF JOIN (and optionally Feast), on the
# dataset of ../shared/peers/feast (gen_data.py --seed 42: 5M history rows = 250k users x 20
# versions, entity tables of 100k and 1M rows). Each run is a fresh process under
# /usr/bin/time -v (wall clock including start-up, peak RSS); a checksum per run shows that
# the engines agree (rows, non-null a_float_0, sum a_float_0, sum a_int_4).
#
# Usage: bench/training_set.sh   (env: LARDER=path/to/release/larder, PY=python with duckdb,
#        pandas, pyarrow; DATA=folder with gen_data.py output; WORK=scratch; REPEATS=3;
#        SIZES="100k 1m"; ENGINES="larder duckdb feast" — feast needs PY with feast 0.67, e.g.
#        the harness venv /tmp/feast-venv/bin/python; HIST_TIMEOUT seconds per run, default 900)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="${PEERS:-$HERE/../../shared/peers/feast}"
LARDER="${LARDER:-${CARGO_TARGET_DIR:-$HERE/../target}/release/larder}"
PY="${PY:-python3}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-training-bench}"
DATA="${DATA:-$WORK/data}"
REPEATS="${REPEATS:-3}"
SIZES="${SIZES:-100k 1m}"
ENGINES="${ENGINES:-larder duckdb}"
OUT="$WORK/results.jsonl"
mkdir -p "$WORK" "$DATA"

if [ ! -f "$DATA/activity_history.parquet" ]; then
  "$PY" "$PEERS/gen_data.py" --out "$DATA" --n-entities 1000 --seed 42
fi

# A Larder repo whose one view is the 5M-row history (TTL 30 days, offline only).
REPO="$WORK/repo"
if [ ! -d "$REPO/data/offline/user_activity_hist" ]; then
  rm -rf "$REPO" && mkdir -p "$REPO/features"
  cat > "$REPO/larder.yaml" <<YAML
project: training_bench
registry: data/registry.json
online_store: {type: memory}
offline_store: {type: parquet, path: data/offline}
YAML
  {
    echo "entities:"
    echo "  - name: user"
    echo "    join_keys: [{name: user_id, dtype: int64}]"
    echo "sources:"
    echo "  - name: activity_history"
    echo "    type: file"
    echo "    path: $DATA/activity_history.parquet"
    echo "    timestamp_field: event_timestamp"
    echo "feature_views:"
    echo "  - name: user_activity_hist"
    echo "    version: 1"
    echo "    entities: [user]"
    echo "    source: activity_history"
    echo "    ttl: 30d"
    echo "    online: false"
    echo "    offline: true"
    echo "    features:"
    for i in 0 1 2 3 4 5 6 7; do echo "      - {name: a_float_$i, dtype: float32}"; done
    for i in 0 1 2 3 4; do echo "      - {name: a_int_$i, dtype: int64}"; done
  } > "$REPO/features/history.yaml"
  (cd "$REPO" && "$LARDER" apply >/dev/null && /usr/bin/time -f "materialize: %e s wall, %M KB peak RSS" "$LARDER" materialize)
fi
if [[ " $ENGINES " == *" feast "* ]] && [ ! -f "$WORK/feast_repo/.applied" ]; then
  # The peers' Feast repo over the same files (file offline store: Dask), applied once.
  rm -rf "$WORK/feast_repo"
  "$PY" "$PEERS/make_repo.py" --store sqlite --repo "$WORK/feast_repo" --data "$DATA" >/dev/null
  (cd "$WORK/feast_repo" && "$(dirname "$PY")/feast" apply >/dev/null 2>&1) && touch "$WORK/feast_repo/.applied"
fi
FEATURES=$(printf 'user_activity_hist:a_float_%s,' 0 1 2 3 4 5 6 7; printf 'user_activity_hist:a_int_%s,' 0 1 2 3 4)
FEATURES="${FEATURES%,}"

wall_of() { grep 'Elapsed (wall clock)' "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }
rss_of() { grep 'Maximum resident set size' "$1" | awk '{print $NF}'; }

for rep in $(seq "$REPEATS"); do
  for size in $SIZES; do
    for engine in $ENGINES; do
      log="$WORK/${engine}_${size}_${rep}.log"
      case "$engine" in
        larder)
          output="$WORK/larder_${size}.parquet"
          /usr/bin/time -v "$LARDER" --repo "$REPO" training-set --entities "$DATA/entity_df_${size}.parquet" \
            --features "$FEATURES" --output "$output" > "$log" 2>&1
          check=$("$PY" "$HERE/training_set_checksum.py" "$output")
          ;;
        duckdb)
          /usr/bin/time -v "$PY" "$PEERS/bench_hist_duckdb.py" --history "$DATA/activity_history.parquet" \
            --entity-df "$DATA/entity_df_${size}.parquet" --label "$size" > "$log" 2>&1
          check=$(grep '^{' "$log" | tail -1 | "$PY" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"rows": r["result_rows"], "non_null_a_float_0": r["non_null_a_float_0"], "sum_a_float_0": r["sum_a_float_0"], "sum_a_int_4": r["sum_a_int_4"]}))')
          ;;
        feast)
          set +e
          timeout "${HIST_TIMEOUT:-900}" /usr/bin/time -v "$PY" "$PEERS/bench_hist_feast.py" --repo "$WORK/feast_repo" \
            --entity-df "$DATA/entity_df_${size}.parquet" --label "$size" > "$log" 2>&1
          set -e
          check=$(grep '^{' "$log" | tail -1 | "$PY" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"rows": r["result_rows"], "non_null_a_float_0": r["non_null_a_float_0"], "sum_a_float_0": r["sum_a_float_0"], "sum_a_int_4": r["sum_a_int_4"]}))' 2>/dev/null || echo null)
          ;;
        *) echo "unknown engine $engine" >&2; exit 2 ;;
      esac
      echo "{\"engine\":\"$engine\",\"size\":\"$size\",\"repeat\":$rep,\"wall_s\":$(wall_of "$log"),\"peak_rss_kb\":$(rss_of "$log"),\"checksum\":$check}" | tee -a "$OUT"
    done
  done
done
"$PY" "$HERE/training_set_summary.py" "$OUT"
