#!/usr/bin/env bash
# README command 1: from a fresh clone to served features, on a Debian machine with rustup.
#
#   ./scripts/quickstart.sh [PATH] [--entities N] [--port P] [--grpc-port P]
#
# 1. installs what the build needs and is missing (apt-get: build-essential, curl; on most
#    machines with rustup, nothing);
# 2. builds the `larder` binary in the dev profile (~9 minutes on 2 cores the first time;
#    the release build, ~25 minutes, is for benchmarks and production);
# 3. runs `larder quickstart` (init a demo repo of 100,000 users, apply, materialize, serve
#    on 127.0.0.1:6566), asks the server for three users' features with curl, prints the
#    answer and the time it took, and keeps serving until Ctrl-C.
#
# LARDER_BUILD_ARGS adds cargo flags to the build (BENCHMARKS.md uses --timings).
# With --smoke (what CI runs): a 2,000-user demo in a temporary folder on free ports; the
# answer must hold PRESENT, non-null values for every feature, then the server is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/system-packages.sh
source scripts/system-packages.sh

started_at=$(date +%s)
smoke=false
quickstart_args=()
for argument in "$@"; do
  if [ "$argument" = "--smoke" ]; then smoke=true; else quickstart_args+=("$argument"); fi
done

larder_require_cargo
missing_packages=()
mapfile -t missing_packages < <(larder_missing_build_packages)
command -v curl >/dev/null 2>&1 || missing_packages+=(curl)
larder_apt_install "${missing_packages[@]}"

echo "== building larder (cargo build -p larder-cli, dev profile)"
# shellcheck disable=SC2086 # LARDER_BUILD_ARGS: extra cargo flags, e.g. --timings
cargo build --locked -p larder-cli ${LARDER_BUILD_ARGS:-}
larder_binary="$(cargo metadata --format-version 1 --no-deps --locked \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/larder"

work_dir=""
if $smoke; then
  work_dir=$(mktemp -d)
  quickstart_args=("$work_dir/demo" --entities 2000 --port 0 --grpc-port 0)
fi
log_file=$(mktemp)
"$larder_binary" quickstart "${quickstart_args[@]}" >"$log_file" 2>&1 &
server_pid=$!
tail -n +1 -f --pid="$server_pid" "$log_file" &
tail_pid=$!

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  kill "$tail_pid" 2>/dev/null || true
  rm -f "$log_file"
  [ -z "$work_dir" ] || rm -rf "$work_dir"
}
trap stop_server EXIT
trap 'exit 130' INT TERM

address=""
while [ -z "$address" ]; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    wait "$server_pid" || true
    echo "error: larder quickstart stopped before serving (its output is above)" >&2
    exit 1
  fi
  address=$(sed -n "s/^Larder is serving project '.*' on \(http:[^ ]*\)$/\1/p" "$log_file")
  [ -n "$address" ] || sleep 0.2
done

request='{"features":["user_profile:age","user_profile:country","user_activity:clicks_7d"],"entities":{"user_id":[1,2,3]}}'
answer=$(curl -sS --fail-with-body "$address/get-online-features" -d "$request")
elapsed=$(($(date +%s) - started_at))
echo
echo "\$ curl -s $address/get-online-features -d '$request'"
echo "$answer"
echo "== first features served $((elapsed / 60)) min $((elapsed % 60)) s after this script started"

if $smoke; then
  python3 - "$answer" <<'PY'
import json, sys
answer = json.loads(sys.argv[1])
names = answer["metadata"]["feature_names"]
assert names == ["user_id", "age", "country", "clicks_7d"], names
for name, column in zip(names, answer["results"]):
    assert column["statuses"] == ["PRESENT"] * 3, (name, column)
    assert all(value is not None for value in column["values"]), (name, column)
print("quickstart smoke: every feature PRESENT and non-null")
PY
  exit 0
fi
echo "Serving until Ctrl-C. Next: README.md, 'What a user does'."
wait "$server_pid"
