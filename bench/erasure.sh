#!/usr/bin/env bash
# Erasure cost (issue 15): `larder forget` of 1 and of 10,000 entities in a 30-day offline
# history of 1M entities, with the time, the files read and rewritten and the bytes written.
#
# The history: USERS users × DAYS days, each (user, day) present with probability DENSITY
# (default 0.2: a user is active one day in five, ~6M rows for 1M users); DENSITY=1 is a daily
# snapshot of every user (30M rows). Materialized by `larder materialize` (release build), so
# the files are the ones Larder writes: one file per day, row groups of 256k rows, bloom
# filters on the join key. With BASELINE=path/to/older/larder the same data is also
# materialized by that binary (files without bloom filters) to show what the filters cost.
#
# Usage: bench/erasure.sh   (env: LARDER=release larder, PY=python with pyarrow+numpy,
#        WORK=scratch folder, USERS=1000000, DAYS=30, DENSITY=0.2, REPEATS=3, BASELINE=)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
LARDER="${LARDER:-${CARGO_TARGET_DIR:-$HERE/../target}/release/larder}"
PY="${PY:-python3}"
WORK="${WORK:-${TMPDIR:-/tmp}/larder-erasure-bench}"
USERS="${USERS:-1000000}"
DAYS="${DAYS:-30}"
DENSITY="${DENSITY:-0.2}"
REPEATS="${REPEATS:-3}"
DATA="$WORK/data-$USERS-$DAYS-$DENSITY"
mkdir -p "$WORK" "$DATA"

if [ ! -f "$DATA/history.parquet" ]; then
  "$PY" - "$DATA" "$USERS" "$DAYS" "$DENSITY" <<'PYTHON'
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

folder, users, days, density = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(15)
start = np.datetime64("2026-11-01T00:00:00", "us")
writer = None
for day in range(days):
    present = np.flatnonzero(rng.random(users) < density) if density < 1 else np.arange(users)
    rng.shuffle(present)
    count = len(present)
    seconds = rng.integers(0, 86_400, count)
    table = pa.table({
        "user_id": pa.array(present.astype(np.int64)),
        "event_timestamp": pa.array(start + np.timedelta64(day, "D") + seconds.astype("timedelta64[s]"), pa.timestamp("us", tz="UTC")),
        "spend_1d": pa.array(rng.random(count) * 100),
        "score": pa.array(rng.random(count)),
        "orders_1d": pa.array(rng.integers(0, 20, count)),
        "sessions_1d": pa.array(rng.integers(0, 50, count)),
    })
    if writer is None:
        writer = pq.ParquetWriter(f"{folder}/history.parquet", table.schema)
    writer.write_table(table)
writer.close()
all_users = np.arange(users, dtype=np.int64)
for label, size in (("1", 1), ("10k", 10_000)):
    for repeat in range(1, 6):
        chosen = rng.choice(all_users, size=size, replace=False)
        pq.write_table(pa.table({"user_id": pa.array(chosen)}), f"{folder}/forget_{label}_{repeat}.parquet")
print(f"{pq.ParquetFile(f'{folder}/history.parquet').metadata.num_rows} history rows", file=sys.stderr)
PYTHON
fi

make_repo() {
  local repo="$1"
  rm -rf "$repo" && mkdir -p "$repo/features"
  cat > "$repo/larder.yaml" <<YAML
project: erasure_bench
registry: data/registry.json
online_store: {type: embedded, path: data/online.redb}
offline_store: {type: parquet, path: data/offline}
YAML
  cat > "$repo/features/daily.yaml" <<YAML
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: daily_history
    type: file
    path: $DATA/history.parquet
    timestamp_field: event_timestamp
feature_views:
  - name: user_daily
    version: 1
    entities: [user]
    source: daily_history
    ttl: 30d
    features:
      - {name: spend_1d, dtype: float64}
      - {name: score, dtype: float64}
      - {name: orders_1d, dtype: int64}
      - {name: sessions_1d, dtype: int64}
YAML
}

materialize() {
  local binary="$1" repo="$2" label="$3"
  make_repo "$repo"
  (cd "$repo" && "$binary" apply >/dev/null)
  local log="$WORK/materialize-$label.log"
  (cd "$repo" && /usr/bin/time -v "$binary" materialize > "$log" 2>&1)
  local wall bytes files
  wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  bytes=$(du -sb "$repo/data/offline" | cut -f1)
  files=$(find "$repo/data/offline" -name '*.parquet' | wc -l)
  echo "{\"step\":\"materialize\",\"binary\":\"$label\",\"wall_s\":$wall,\"offline_bytes\":$bytes,\"offline_files\":$files}"
}

[ -n "${BASELINE:-}" ] && materialize "$BASELINE" "$WORK/repo-baseline" baseline
materialize "$LARDER" "$WORK/repo" larder
# Every forget starts from the materialized state (a rewrite adds bloom filters to the
# baseline's files, and erased entities would shrink later runs' work).
rm -rf "$WORK/pristine" && mkdir -p "$WORK/pristine"
cp -a "$WORK/repo" "$WORK/pristine/repo"
[ -n "${BASELINE:-}" ] && cp -a "$WORK/repo-baseline" "$WORK/pristine/repo-baseline"

# Each forget runs the release `larder` under test; on the baseline's files (no bloom
# filters) it must read every file, which is what the filters save.
forget() {
  local repo="$1" files="$2" label="$3" repeat="$4"
  local log="$WORK/forget-$files-$label-$repeat.log"
  rm -rf "$repo" && cp -a "$WORK/pristine/$(basename "$repo")" "$repo" && sync
  (cd "$repo" && /usr/bin/time -f "%e %M" -o "$log.time" "$LARDER" forget --json \
    --entities-file "$DATA/forget_${label}_${repeat}.parquet" > "$log")
  read -r wall rss < "$log.time"
  "$PY" - "$log" "$files" "$label" "$repeat" "$wall" "$rss" <<'PYTHON'
import json, sys
report = json.load(open(sys.argv[1]))
offline = report["stores"].get("offline", {})
print(json.dumps({"step": "forget", "files": sys.argv[2], "entities": sys.argv[3],
                  "repeat": int(sys.argv[4]), "wall_s": float(sys.argv[5]),
                  "peak_rss_kb": int(sys.argv[6]),
                  "online_rows": report["stores"].get("online", {}).get("rows", 0),
                  "offline_rows": offline.get("rows", 0),
                  "files_read": offline.get("files_scanned", 0),
                  "files_pruned": offline.get("files_pruned", 0),
                  "files_rewritten": offline.get("files_rewritten", 0),
                  "bytes_written": offline.get("bytes_written", 0)}))
PYTHON
}

for repeat in $(seq "$REPEATS"); do
  for label in 1 10k; do
    forget "$WORK/repo" bloom "$label" "$repeat"
    [ -n "${BASELINE:-}" ] && forget "$WORK/repo-baseline" plain "$label" "$repeat"
  done
done
# Proof of absence for the last 10k: every store reads zero.
(cd "$WORK/repo" && /usr/bin/time -f "verify of 10k entities: %e s" "$LARDER" forget --verify \
  --entities-file "$DATA/forget_10k_$REPEATS.parquet")
