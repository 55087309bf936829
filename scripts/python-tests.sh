#!/usr/bin/env bash
# The Python SDK's tests (python/tests) against the larder binary: a venv under
# target/python-venv (created once, reused), the SDK reinstalled from ./python each run, then
# pytest. LARDER_BIN defaults to the debug build; a missing binary fails the run.
# Run from anywhere: bash scripts/python-tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=target/python-venv
export LARDER_BIN="${LARDER_BIN:-$root/target/debug/larder}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "./python[test]"
# Reinstall the SDK itself every run (its version does not change between edits).
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./python

set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "python-tests: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
