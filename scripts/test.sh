#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and end-to-end tests, then the
# Python worker's tests.
# Works on a fresh machine with Rust and Python 3: it makes .venv, which holds the
# worker's test tools and `uv` (the agents build model environments with it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check uv
export PATH="$PWD/.venv/bin:$PATH"
# The torchvision examples' tests run their models here; the gateway tests drive
# tritonclient from here; the digits example's test splits scikit-learn's digits here;
# the signing tests sign and verify with model-signing from here.
uv pip install --quiet --python .venv/bin/python -e './python[test]' \
  'tritonclient[http,grpc]' torch torchvision safetensors scikit-learn \
  model-signing pyopenssl

# The workspace denies unwrap/expect outside tests; clippy is what holds it.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
python -m pytest -q python/tests examples/tests
