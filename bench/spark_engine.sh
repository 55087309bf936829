#!/usr/bin/env bash
# The Spark offline engine vs the in-process DataFusion engine (issue 19), side by side in one
# run, same binary, same data, same 2 cores:
#   1. `larder materialize` of a demo repo of N users (1M: 1M profile + 2M activity rows,
#      26 features) into the embedded online store and the Parquet offline store, each run
#      from empty stores;
#   2. `larder training-set` of the training-set benchmark (bench/training_set.sh): 5M history
#      rows (250k users x 20 versions) joined point in time to an entity table of 1M rows.
# A local Spark Connect server (local[2], driver heap SPARK_MEMORY) is started once and stays
# up, as a cluster would; each run is one larder process under /usr/bin/time -v. Checksums
# (rows, non-null a_float_0, sums) show the engines agree.
#
# Usage: bench/spark_engine.sh   (env: LARDER=release larder; PY=python with pyarrow, pandas,
#        numpy for the data generator; N=1000000; REPEATS=2; WORK=scratch folder;
#        SPARK_MEMORY=6g; SPARK_PARTITIONS=8 (spark.sql.shuffle.partitions); STEPS="materialize
#        training")
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="${PEERS:-$HERE/../../shared/peers/feast}"
LARDER="$(realpath "${LARDER:-${CARGO_TARGET_DIR:-$HERE/../target}/release/larder}")"
PY="${PY:-python3}"
N="${N:-1000000}"
REPEATS="${REPEATS:-2}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-spark-bench}"
DATA="${DATA:-$WORK/data}"
STEPS="${STEPS:-materialize training}"
mkdir -p "$WORK" "$DATA"
OUT="$WORK/results.jsonl"
: > "$OUT"

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "larder: $LARDER ($(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo '?'))"

# The Spark Connect server: pyspark's spark-submit, on a free loopback port.
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SPARK_DIR="$WORK/spark"
rm -rf "$SPARK_DIR" && mkdir -p "$SPARK_DIR"
(
  cd "$SPARK_DIR"
  exec spark-submit --master 'local[2]' --driver-memory "${SPARK_MEMORY:-6g}" \
    --class org.apache.spark.sql.connect.service.SparkConnectServer \
    --conf spark.connect.grpc.binding.address=127.0.0.1 --conf "spark.connect.grpc.binding.port=$PORT" \
    --conf spark.ui.enabled=false --conf "spark.sql.shuffle.partitions=${SPARK_PARTITIONS:-8}" \
    --conf "spark.local.dir=$SPARK_DIR" --conf "spark.driver.extraJavaOptions=-Djava.io.tmpdir=$SPARK_DIR" \
    spark-internal
) > "$SPARK_DIR/server.log" 2>&1 &
SPARK_PID=$!
trap 'kill "$SPARK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.2
done
REMOTE="sc://127.0.0.1:$PORT"
echo "spark: $(spark-submit --version 2>&1 | grep -m1 -o 'version [0-9.]*'), $REMOTE, local[2], driver heap ${SPARK_MEMORY:-6g}, shuffle partitions ${SPARK_PARTITIONS:-8}"

wall_of() { grep 'Elapsed (wall clock)' "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }
rss_of() { grep 'Maximum resident set size' "$1" | awk '{print $NF}'; }
spark_rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SPARK_PID/status" 2>/dev/null || echo 0; }
spark_cpu_s() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$SPARK_PID/stat" 2>/dev/null || echo 0; }

# Writes larder.yaml's engine: `datafusion` (nothing) or `spark`.
use_engine() {
  local repo="$1" engine="$2"
  sed -i '/^offline_engine:/,$d' "$repo/larder.yaml"
  if [ "$engine" = spark ]; then
    printf 'offline_engine:\n  type: spark\n  remote: "%s"\n' "$REMOTE" >> "$repo/larder.yaml"
  fi
}

# One timed larder run; prints a JSON line.
timed() {
  local step="$1" engine="$2" rep="$3" log="$4"; shift 4
  local cpu_before; cpu_before=$(spark_cpu_s)
  /usr/bin/time -v "$LARDER" "$@" > "$log" 2>&1 || { tail -20 "$log"; exit 1; }
  local spark_cpu; spark_cpu=$(awk -v a="$cpu_before" -v b="$(spark_cpu_s)" 'BEGIN {printf "%.1f", b - a}')
  local larder_cpu; larder_cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.1f", u+s}' "$log")
  echo "{\"step\":\"$step\",\"engine\":\"$engine\",\"repeat\":$rep,\"wall_s\":$(wall_of "$log"),\"larder_rss_kb\":$(rss_of "$log"),\"larder_cpu_s\":$larder_cpu,\"spark_cpu_s\":$spark_cpu,\"spark_rss_kb\":$(spark_rss_kb)${EXTRA:-}}" | tee -a "$OUT"
}

if [[ " $STEPS " == *" materialize "* ]]; then
  REPO="$WORK/demo"
  if [ ! -f "$REPO/.applied" ]; then
    rm -rf "$REPO"
    "$LARDER" init "$REPO" --entities "$N" --anchor 2026-01-01 > /dev/null
    "$LARDER" --repo "$REPO" apply > /dev/null && touch "$REPO/.applied"
  fi
  echo "== materialize: $N users ($((3 * N)) source rows, 26 features)"
  for rep in $(seq "$REPEATS"); do
    for engine in datafusion spark; do
      rm -rf "$REPO/data/online.redb" "$REPO/data/offline" "$REPO/data/digests.redb" "$REPO/data/runs"
      use_engine "$REPO" "$engine"
      EXTRA="" timed materialize "$engine" "$rep" "$WORK/materialize_${engine}_${rep}.log" --repo "$REPO" materialize
    done
  done
  use_engine "$REPO" datafusion
fi

if [[ " $STEPS " == *" training "* ]]; then
  if [ ! -f "$DATA/activity_history.parquet" ]; then
    "$PY" "$PEERS/gen_data.py" --out "$DATA" --n-entities 1000 --seed 42
  fi
  REPO="$WORK/history"
  if [ ! -d "$REPO/data/offline/user_activity_hist" ]; then
    rm -rf "$REPO" && mkdir -p "$REPO/features"
    printf 'project: training_bench\nregistry: data/registry.json\nonline_store: {type: memory}\noffline_store: {type: parquet, path: data/offline}\n' > "$REPO/larder.yaml"
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
    (cd "$REPO" && "$LARDER" apply > /dev/null && "$LARDER" materialize > /dev/null)
  fi
  FEATURES=$(printf 'user_activity_hist:a_float_%s,' 0 1 2 3 4 5 6 7; printf 'user_activity_hist:a_int_%s,' 0 1 2 3 4)
  echo "== training set: 1M entity rows x 5M history rows, 13 features"
  for rep in $(seq "$REPEATS"); do
    for engine in datafusion spark; do
      use_engine "$REPO" "$engine"
      output="$WORK/training_${engine}.parquet"
      log="$WORK/training_${engine}_${rep}.log"
      EXTRA="" timed training "$engine" "$rep" "$log" --repo "$REPO" training-set \
        --entities "$DATA/entity_df_1m.parquet" --features "${FEATURES%,}" --output "$output"
      echo "  checksum: $("$PY" "$HERE/training_set_checksum.py" "$output")" | tee -a "$WORK/checksums.txt"
    done
  done
  use_engine "$REPO" datafusion
  if cmp -s "$WORK/training_datafusion.parquet" "$WORK/training_spark.parquet"; then
    echo "training sets: byte-identical files"
  else
    echo "training sets: files differ in bytes (compare the checksums)"
  fi
fi
echo "results: $OUT"
