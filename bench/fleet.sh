#!/usr/bin/env bash
# Replica cold start and agent memory.
#
# 1. Cold start with the environment cached: examples/echo is deployed once (building
#    its uv environment), then undeployed and deployed again N times. For each, the
#    time from the agent receiving the assignment ("starting replica" in its log) to
#    the worker being ready ("replica ready"), and the wall time of `mycel deploy
#    --wait` (the CLI polls status every 250 ms, so it overstates).
# 2. Agent idle RSS: a standalone `mycel agent` registered with no replicas, and the
#    same agent while it supervises 4 echo replicas (the workers' own memory is not
#    the agent's and is not counted).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}

cargo build --release --quiet --bin mycel
mycel=${CARGO_TARGET_DIR:-$PWD/target}/release/mycel
if ! command -v uv >/dev/null; then
  [ -x .venv/bin/uv ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q uv; }
  export PATH="$PWD/.venv/bin:$PATH"
fi

data=$(mktemp -d)
export MYCEL_DATA=$data
trap 'kill $server $agent 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
MYCEL_LOG=warn "$mycel" server --data "$data" --listen 127.0.0.1:0 --gateway 127.0.0.1:0 &
server=$!
for _ in $(seq 100); do [ -s "$data/server.url" ] && break; sleep 0.05; done
MYCEL_LOG=info "$mycel" agent --server "$(cat "$data/server.url")" --token "$(cat "$data/admin.token")" \
  --name bench --location bench --cpus 8 --memory 16GiB --data "$data/node" 2>"$data/agent.log" &
agent=$!
sleep 3
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$agent/status"; }
echo "agent idle RSS (no replicas): $(rss)"

"$mycel" push examples/echo >/dev/null
"$mycel" deploy echo --copies bench=1 --wait >/dev/null 2>&1   # builds the environment
"$mycel" undeploy echo >/dev/null
sleep 1

ms() { date -d "$1" +%s%3N; }
for i in $(seq "$runs"); do
  : >"$data/agent.log.mark"
  lines=$(wc -l <"$data/agent.log")
  start=$(date +%s%3N)
  "$mycel" deploy echo --copies bench=1 --wait >/dev/null 2>&1
  wall=$(( $(date +%s%3N) - start ))
  log=$(tail -n +"$((lines + 1))" "$data/agent.log" | sed 's/\x1b\[[0-9;]*m//g')
  assigned=$(echo "$log" | grep -m1 'starting replica' | awk '{print $1}')
  ready=$(echo "$log" | grep -m1 'replica ready' | awk '{print $1}')
  echo "run $i: assignment to ready $(( $(ms "$ready") - $(ms "$assigned") )) ms; deploy --wait wall ${wall} ms"
  "$mycel" undeploy echo >/dev/null
  sleep 1
done

"$mycel" deploy echo --copies bench=4 --wait >/dev/null 2>&1
sleep 2
echo "agent RSS with 4 echo replicas: $(rss)"
