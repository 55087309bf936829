#!/usr/bin/env bash
# Time from `git clone` to the first served feature, as a newcomer meets it: a clone of
# this checkout's HEAD into a temporary folder, an empty cargo home (every crate is
# downloaded again), README command 1 (scripts/quickstart.sh, 100,000 users), stopped once
# the script has printed the server's first answer. Prints the seconds of each step and
# keeps cargo's --timings report (where the build time goes).
#
#   bench/clone_to_serve.sh            # REPEATS=N for several runs
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
REPEATS=${REPEATS:-1}
KEEP=${KEEP:-/tmp/larder-clone-to-serve}
mkdir -p "$KEEP"

for run in $(seq 1 "$REPEATS"); do
  work=$(mktemp -d)
  log="$KEEP/run-$run.log"
  started=$(date +%s.%N)
  git clone -q "$repo" "$work/larder"
  (
    cd "$work/larder"
    CARGO_HOME="$work/cargo-home" PATH="$(dirname "$(command -v cargo)"):$PATH" \
      LARDER_BUILD_ARGS=--timings exec ./scripts/quickstart.sh
  ) >"$log" 2>&1 &
  script_pid=$!
  until grep -q "^== first features served" "$log" 2>/dev/null; do
    if ! kill -0 "$script_pid" 2>/dev/null; then
      echo "run $run: quickstart.sh stopped before serving; see $log" >&2
      exit 1
    fi
    sleep 0.5
  done
  answered=$(date +%s.%N)
  kill -TERM "$script_pid"
  wait "$script_pid" || true
  build=$(sed -n 's/.*Finished `dev` profile .* in \(.*\)$/\1/p' "$log")
  grep -q '"statuses":\["PRESENT","PRESENT","PRESENT"\]' "$log" || {
    echo "run $run: the first answer holds no PRESENT values; see $log" >&2
    exit 1
  }
  cp "$work"/larder/target/cargo-timings/cargo-timing-*.html "$KEEP/timings-run-$run.html"
  printf 'run %s: clone to first served feature %.0f s (cargo build %s)\n' \
    "$run" "$(echo "$answered - $started" | bc)" "$build"
  rm -rf "$work"
done
echo "logs and cargo --timings reports: $KEEP"
