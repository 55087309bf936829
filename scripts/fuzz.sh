#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input with libFuzzer (cargo-fuzz, on
# the stable toolchain: no sanitizer, so it finds panics, hangs, 5xx answers and round-trip
# failures, not memory errors, which safe Rust rules out anyway).
#   RUNS=1000000 bash scripts/fuzz.sh [target...]     (default: every target, 1M cases each)
#   MAX_SECONDS=180 stops each target after that long instead (0, the default: no limit).
# The corpus grows in fuzz/corpus/<target>; a failing input is saved in fuzz/artifacts/ and
# the script fails. Per-target figures go to target/fuzz-<target>.log (libFuzzer's stats).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${RUNS:-1000000}
max_seconds=${MAX_SECONDS:-0}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^larder-fuzz-libfuzzer$')
fi

# Binary seeds (gRPC messages, Arrow bodies, codec rows) are generated from the real types.
cargo run -q -p larder-fuzz --bin larder-fuzz-seeds -- "$root/fuzz/corpus"
flags=(-s none --codegen-units 16)
(cd fuzz && cargo fuzz build "${flags[@]}")
mkdir -p target
for target in "${targets[@]}"; do
  corpus="$root/fuzz/corpus/$target"
  mkdir -p "$corpus"
  if [ -d "fuzz/seeds/$target" ]; then
    cp -n fuzz/seeds/"$target"/* "$corpus"/
  fi
  echo "== $target: $runs cases"
  started=$(date +%s)
  (cd fuzz && cargo fuzz run "${flags[@]}" "$target" "$corpus" -- \
    -runs="$runs" -max_total_time="$max_seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1) \
    > "target/fuzz-$target.log" 2>&1 || { tail -40 "target/fuzz-$target.log"; exit 1; }
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "target/fuzz-$target.log" | tail -1)
  echo "$target: ${executed:-?} cases in $(( $(date +%s) - started )) s, 0 crashes, 0 timeouts"
done
