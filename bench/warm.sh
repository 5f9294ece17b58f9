#!/usr/bin/env bash
# Warm starts vs cold starts for a PyTorch model: `mycel up` with one node of 12 cores,
# examples/mobilenet-v2 (torch + torchvision, random weights), each mode on a fresh
# data directory in the same run (uv's cache shared, so no environment is downloaded):
#
#   first replica: `deploy --copies local=1 --wait` (warm: includes starting the
#                  template, which imports torch once)
#   scale to 12:   `deploy --copies local=12 --wait`
#   rollout:       a one-line change to model.py pushed, then `deploy --wait` of the
#                  12 replicas (rolled in place: the node has no spare cores)
#
# cold and warm run unsandboxed (--sandbox off); sandboxed is the default where this
# machine allows it (root, bubblewrap, cgroups), whose workers always start cold.
#
# Usage: bash bench/warm.sh [REPLICAS]        # default 12
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-12}
cargo build --release --quiet --bin mycel
mycel=${CARGO_TARGET_DIR:-$PWD/target}/release/mycel
export PATH="$PWD/.venv/bin:$PATH"

seconds() { # CMD...: runs it, prints its wall time in seconds
  local start=$EPOCHREALTIME
  "$@" >/dev/null 2>&1
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$EPOCHREALTIME"
}

once() { # MODE: warm, cold or sandboxed
  local mode=$1 work up extra=()
  work=$(mktemp -d)
  case $mode in
    cold) extra=(--no-warm-start --sandbox off) ;;
    warm) extra=(--sandbox off) ;;
    sandboxed) extra=(--sandbox auto) ;;
  esac
  export MYCEL_DATA=$work/data
  cp -r examples/mobilenet-v2 "$work/model"
  MYCEL_LOG=warn setsid "$mycel" up --listen 127.0.0.1:0 --gateway 127.0.0.1:0 \
    --node-cpus "$replicas" --node-memory 20GiB "${extra[@]}" >"$work/up.log" 2>&1 &
  up=$!
  for _ in $(seq 300); do [ -s "$MYCEL_DATA/gateway.url" ] && break; sleep 0.1; done
  "$mycel" push "$work/model" >/dev/null
  first=$(seconds "$mycel" deploy mobilenet-v2 --copies local=1 --wait)
  scaled=$(seconds "$mycel" deploy mobilenet-v2 --copies "local=$replicas" --wait)
  echo "# changed" >>"$work/model/model.py"
  "$mycel" push "$work/model" >/dev/null
  rolled=$(seconds "$mycel" deploy mobilenet-v2 --copies "local=$replicas" --wait)
  echo "| $mode | $first s | $scaled s | $rolled s |"
  kill -TERM -- -"$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  rm -rf "$work"
}

echo "$(date -u +%F) $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); mobilenet-v2, $replicas replicas"
echo "| start | first replica | scale 1 → $replicas | code-only rollout of $replicas |"
echo "| --- | --- | --- | --- |"
once cold
once warm
once sandboxed
