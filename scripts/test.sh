#!/usr/bin/env bash
# The whole test suite: Rust unit and end-to-end tests, then the Python worker's tests.
# Works on a fresh machine with Rust and Python 3: it makes .venv for the Python side.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e './python[test]'
.venv/bin/python -m pytest -q python/tests
