#!/usr/bin/env bash
# Push benchmark: a component with a large weights file, pushed once, then again after a
# one-line edit to model.py. Prints first-push throughput and the second push's bytes
# sent and wall time. Usage: bench/push.sh [WEIGHTS_MB]   (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-500}
cargo build --release --quiet --bin mycel
bin=$PWD/target/release/mycel
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT

"$bin" server --data "$work/data" --listen 127.0.0.1:0 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do [ -s "$work/data/server.url" ] && break; sleep 0.05; done
export MYCEL_DATA=$work/data

comp=$work/big
mkdir -p "$comp/weights"
cat >"$comp/mycel.toml" <<TOML
[component]
name = "big"
entrypoint = "model:Model"
[weights]
files = ["weights/model.safetensors"]
TOML
printf 'class Model:\n    def __init__(self, ctx):\n        pass\n' >"$comp/model.py"
head -c "${mb}M" /dev/urandom >"$comp/weights/model.safetensors"
sync

now() { date +%s.%N; }
t0=$(now)
"$bin" push "$comp" --json >"$work/first.json"
t1=$(now)
echo "# edited" >>"$comp/model.py"
t2=$(now)
"$bin" push "$comp" --json >"$work/second.json"
t3=$(now)

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
awk -v mb="$mb" -v a="$t0" -v b="$t1" 'BEGIN { printf "first push:  %d MiB in %.2f s = %.0f MiB/s\n", mb, b - a, mb / (b - a) }'
awk -v a="$t2" -v b="$t3" -v sent="$(field "$work/second.json" bytes_sent)" -v reused="$(field "$work/second.json" bytes_reused)" \
  'BEGIN { printf "second push: %d bytes sent, %d bytes reused, %.3f s wall\n", sent, reused, b - a }'
echo "model.py is $(stat -c %s "$comp/model.py") bytes"
