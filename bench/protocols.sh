#!/usr/bin/env bash
# OIP over gRPC vs REST (binary and JSON) on a no-op, and streaming generation through
# mycel vs in-process: `mycel up --grpc` on loopback with examples/echo and
# examples/charlm deployed, measured by bench/protocols.py with tritonclient.
#
#   bash bench/protocols.sh [CLIENTS] [SECONDS] [TOKENS]      # defaults: 8 10 500
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin mycel
mycel=${CARGO_TARGET_DIR:-$PWD/target}/release/mycel
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/test.sh once first" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -c 'import tritonclient.grpc, tritonclient.http' 2>/dev/null ||
  uv pip install --quiet --python .venv/bin/python 'tritonclient[http,grpc]'

work=$(mktemp -d)
export MYCEL_DATA=$work/data
MYCEL_LOG=warn setsid "$mycel" up --listen 127.0.0.1:0 --gateway 127.0.0.1:0 --grpc 127.0.0.1:0 \
  --node-cpus 2 >"$work/up.log" 2>&1 &
up=$!
trap 'kill -TERM -- -$up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 300); do [ -s "$MYCEL_DATA/gateway.url" ] && break; sleep 0.1; done
"$mycel" push examples/echo >/dev/null
"$mycel" push examples/charlm >/dev/null
"$mycel" deploy echo --copies local=1 --wait >/dev/null
"$mycel" deploy charlm --copies local=1 --wait >/dev/null
http=$(sed 's#^http://##' "$MYCEL_DATA/gateway.url")
grpc=$(cat "$MYCEL_DATA/gateway.grpc")
echo "$(date -u +%F) $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
.venv/bin/python bench/protocols.py "$http" "$grpc" "${1:-8}" "${2:-10}" "${3:-500}"
