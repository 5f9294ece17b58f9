#!/usr/bin/env bash
# Fleet-scale simulation: a release `mycel server` on loopback and NODES simulated
# agents in one process (bench/scale/scale.rs) that register, heartbeat every 5 s,
# long-poll their assignments and report their replicas ready. Prints what the control
# plane needed: memory, CPU, heartbeat p99, deploy-to-every-node and re-placement times.
#
#   bash bench/scale/run.sh [NODES...]          # default: 1000 5000 10000
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bin mycel --example scale
target=${CARGO_TARGET_DIR:-$PWD/target}/release
# Every simulated node holds a long-poll and a heartbeat connection.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
lost_after=15
echo "$(date -u +%F) $(getconf _NPROCESSORS_ONLN) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "| nodes | RSS idle | CPU idle | heartbeat p99 | deploy → every node | re-place 10 % lost | RSS, replicas | CPU, replicas |"
for nodes in "${@:-1000 5000 10000}"; do
  work=$(mktemp -d)
  MYCEL_LOG=warn "$target/mycel" server --data "$work/data" --listen 127.0.0.1:0 \
    --gateway 127.0.0.1:0 --lost-after "${lost_after}s" >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do [ -s "$work/data/server.url" ] && break; sleep 0.1; done
  url=$(cat "$work/data/server.url") token=$(cat "$work/data/admin.token")
  mkdir -p "$work/sim"
  printf '[component]\nname = "sim"\nentrypoint = "model:Model"\n\n[resources]\ncpus = 1\nmemory = "64MiB"\n' >"$work/sim/mycel.toml"
  printf 'class Model:\n    def __init__(self, ctx):\n        pass\n' >"$work/sim/model.py"
  MYCEL_DATA=$work/data "$target/mycel" push "$work/sim" >/dev/null
  locations=$(( nodes < 100 ? 1 : 10 ))
  # Progress lines to stderr, the table row (the last line) to stdout.
  "$target/examples/scale" "$url" "$token" "$server" "$nodes" "$locations" "$lost_after" \
    | tee "$work/scale.out" | grep --line-buffered -v "^|" >&2 || true
  tail -1 "$work/scale.out"
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$work"
done
