#!/usr/bin/env bash
# The main job on one machine: build mycel, start a control plane with a fresh data
# directory, push examples/echo, change nothing and push again (nothing travels), then
# list the versions. Needs only Rust and this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin mycel
bin=$PWD/target/release/mycel
data=$(mktemp -d)
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT

"$bin" server --data "$data" --listen 127.0.0.1:0 &
server=$!
for _ in $(seq 100); do [ -s "$data/server.url" ] && break; sleep 0.05; done
export MYCEL_DATA=$data

echo "== mycel push examples/echo"
"$bin" push examples/echo
echo "== mycel push examples/echo (again: identical content, nothing sent)"
"$bin" push examples/echo
echo "== mycel components"
"$bin" components
echo "== mycel versions echo"
"$bin" versions echo
echo "== mycel show echo@1"
"$bin" show echo@1
