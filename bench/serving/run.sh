#!/usr/bin/env bash
# Serving benchmark: mycel's gateway, Ray Serve and MLServer side by side on this machine,
# over loopback, under the same closed-loop load (oha, fixed connections, fixed request
# count), one server at a time, each with one replica of the same model code.
#
#   bench/serving/setup.sh                      # once: .venv (Ray Serve, MLServer, torch), oha
#   bench/serving/run.sh [noop|mobilenet|all]   # default: all
#
# Environment knobs (defaults in brackets):
#   SERVERS          which servers, in order ["mycel mycel_binary ray mlserver"];
#                    mycel_binary is mycel sent the same tensors with the binary data
#                    extension instead of JSON
#   THREADS          torch / OpenMP threads in every model process [1]; mycel derives it
#                    from the component's `cpus`, so change both together
#   NOOP_CONNS NOOP_REQUESTS NOOP_WARMUP                 [16 20000 2000]
#   MOBILENET_CONNS MOBILENET_REQUESTS MOBILENET_WARMUP  [8 800 80]
#   LOOP_SECONDS     how long each torch-loop measurement runs [10]
#   OHA_THREADS      the load generator's threads [1]
#   MYCEL_BIN        the mycel binary [target/release/mycel, built with cargo unless
#                    MYCEL_BUILD=0]
#   RAY_PORT MLSERVER_PORT                               [18610 18620]
#
# Writes results/<date>-<target>.json (every oha summary, the torch loop, the machine)
# and prints a markdown table with the mycel/peer ratios.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

target=${1:-all}
case $target in noop | mobilenet | all) ;; *)
  echo "usage: $0 [noop|mobilenet|all]" >&2
  exit 2
  ;;
esac

SERVERS=${SERVERS:-mycel mycel_binary ray mlserver}
THREADS=${THREADS:-1}
NOOP_CONNS=${NOOP_CONNS:-16} NOOP_REQUESTS=${NOOP_REQUESTS:-20000} NOOP_WARMUP=${NOOP_WARMUP:-2000}
MOBILENET_CONNS=${MOBILENET_CONNS:-8} MOBILENET_REQUESTS=${MOBILENET_REQUESTS:-800} MOBILENET_WARMUP=${MOBILENET_WARMUP:-80}
LOOP_SECONDS=${LOOP_SECONDS:-10}
OHA_THREADS=${OHA_THREADS:-1}
RAY_PORT=${RAY_PORT:-18610} MLSERVER_PORT=${MLSERVER_PORT:-18620}
MYCEL_BIN=${MYCEL_BIN:-$root/target/release/mycel}

py=$here/.venv/bin/python
[ -x "$py" ] || { echo "no $py: run bench/serving/setup.sh first" >&2; exit 1; }
command -v oha >/dev/null || { echo "no oha on PATH: run bench/serving/setup.sh first" >&2; exit 1; }
[ -s payloads/mobilenet-uint8.json ] && [ -s payloads/mobilenet-uint8.bin.len ] ||
  python3 payloads/make.py >/dev/null

# Every model process gets the same thread count; Python output unbuffered for the logs.
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0

work=$(mktemp -d /tmp/serving-bench.XXXXXX)
raw=$work/raw # one oha JSON per (target, server), the torch loop's JSON
mkdir -p "$raw" results
server_pid=

# Each server runs in its own session (setsid), so stopping it stops everything it
# started: Ray's raylet and workers, MLServer's worker, mycel's agents and Python workers.
start_server() { # NAME CMD...: starts CMD, logging to $work/NAME.log
  local name=$1
  shift
  echo "== $name: starting" >&2
  setsid "$@" >"$work/$name.log" 2>&1 &
  server_pid=$!
}

stop_server() { # the leader first (a clean shutdown), then whatever is left in its session
  [ -n "$server_pid" ] || return 0
  local pid=$server_pid
  server_pid=
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do # 20 s
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

failed=
cleanup() {
  local rc=$?
  stop_server
  if [ $rc -ne 0 ] || [ -n "$failed" ]; then
    echo "failed; server logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Posts PAYLOAD to URL until it answers 200 with the outputs the target returns, or the
# server exits, or TIMEOUT seconds pass.
wait_ready() { # NAME URL PAYLOAD TARGET [TIMEOUT]
  local name=$1 url=$2 payload=$3 what=$4 timeout=${5:-300} t0=$SECONDS
  while :; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$name exited while starting; its log:" >&2
      tail -n 40 "$work/$name.log" >&2
      return 1
    fi
    if curl -sf -m 30 -o "$work/answer.json" -H 'content-type: application/json' \
      --data-binary "@$payload" "$url" 2>/dev/null &&
      python3 - "$work/answer.json" "$what" 2>"$work/check.txt" <<'PY'; then
import json, sys
outputs = {o["name"]: o for o in json.load(open(sys.argv[1]))["outputs"]}
want = {"noop": {"x": [1, 4]}, "mobilenet": {"probabilities": [1, 1000], "class": [1]}}[sys.argv[2]]
got = {n: outputs[n]["shape"] for n in want if n in outputs}
assert got == want, f"expected outputs {want}, got {got}"
PY
      echo "== $name: ready after $((SECONDS - t0)) s" >&2
      return 0
    fi
    if ((SECONDS - t0 > timeout)); then
      echo "$name did not answer $url as expected within $timeout s" >&2
      tail -n 1 "$work/check.txt" >&2 2>/dev/null || true
      echo "its log:" >&2
      tail -n 40 "$work/$name.log" >&2
      return 1
    fi
    sleep 1
  done
}

# oha prints JSON with -j (older releases) or --output-format json (1.x).
if oha --help 2>&1 | grep -q -- '--output-format'; then
  oha_json=(--output-format json)
else
  oha_json=(-j)
fi

load() { # NAME TARGET URL PAYLOAD: warmup, then the measured run into $raw/TARGET-NAME.json
  # A PAYLOAD.len beside a PAYLOAD is the JSON header's length: binary data follows it.
  local name=$1 what=$2 url=$3 payload=$4 conns requests warmup type=(-T application/json)
  if [ -s "$payload.len" ]; then
    type=(-T application/octet-stream -H "Inference-Header-Content-Length: $(cat "$payload.len")")
  fi
  if [ "$what" = noop ]; then
    conns=$NOOP_CONNS requests=$NOOP_REQUESTS warmup=$NOOP_WARMUP
  else
    conns=$MOBILENET_CONNS requests=$MOBILENET_REQUESTS warmup=$MOBILENET_WARMUP
  fi
  local args=(-c "$conns" -m POST "${type[@]}" -D "$payload" --disable-compression
    --worker-threads "$OHA_THREADS" --no-tui "${oha_json[@]}")
  echo "== $name: warmup, $warmup requests" >&2
  oha -n "$warmup" "${args[@]}" "$url" >/dev/null || return 1
  echo "== $name: $requests requests over $conns connections" >&2
  oha -n "$requests" "${args[@]}" "$url" >"$raw/$what-$name.json" || return 1
}

payload_of() { [ "$1" = noop ] && echo "$here/payloads/noop.json" || echo "$here/payloads/mobilenet-uint8.json"; }
model_of() { [ "$1" = noop ] && echo noop || echo mobilenet-v2; }

run_ray() { # TARGET
  local what=$1
  start_server ray "$py" "ray_$what.py" --port "$RAY_PORT"
  local url=http://127.0.0.1:$RAY_PORT/v2/models/$(model_of "$what")/infer
  wait_ready ray "$url" "$(payload_of "$what")" "$what" || return 1
  load ray "$what" "$url" "$(payload_of "$what")" || return 1
  stop_server
}

run_mlserver() { # TARGET
  local what=$1
  # MLServer reads MLSERVER_* variables over settings.json: this run's ports.
  MLSERVER_HTTP_PORT=$MLSERVER_PORT MLSERVER_GRPC_PORT=$((MLSERVER_PORT + 1)) \
    MLSERVER_METRICS_PORT=$((MLSERVER_PORT + 2)) \
    start_server mlserver "$here/.venv/bin/mlserver" start "mlserver/$what"
  local url=http://127.0.0.1:$MLSERVER_PORT/v2/models/$(model_of "$what")/infer
  wait_ready mlserver "$url" "$(payload_of "$what")" "$what" || return 1
  load mlserver "$what" "$url" "$(payload_of "$what")" || return 1
  stop_server
}

# mycel: control plane, gateway and one agent ("bench") in one `mycel up` process; the
# component is pushed and deployed with one copy, then loaded through the gateway, with
# JSON requests or (as mycel_binary) the same tensors in the binary data extension.
run_mycel_binary() { run_mycel "$1" mycel_binary; }

run_mycel() { # TARGET [NAME]
  local what=$1 as=${2:-mycel} data=$work/mycel-$1-${2:-mycel} component name deploy_args=()
  local payload
  payload=$(payload_of "$what")
  [ "$as" = mycel ] || payload=${payload%.json}.bin
  if [ "$what" = noop ]; then
    component=$here/noop name=noop
  else
    component=$root/examples/mobilenet-v2 name=mobilenet-v2
    deploy_args=(--max-batch-size 8 --batch-wait-ms 5)
  fi
  start_server mycel "$MYCEL_BIN" up --nodes bench --data "$data" \
    --listen 127.0.0.1:0 --gateway 127.0.0.1:0 --node-cpus 8 --node-memory 16GiB
  for _ in $(seq 300); do
    [ -s "$data/server.url" ] && [ -s "$data/gateway.url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! [ -s "$data/gateway.url" ]; then
    echo "mycel up wrote no $data/gateway.url; its log:" >&2
    tail -n 40 "$work/mycel.log" >&2
    return 1
  fi
  MYCEL_DATA=$data "$MYCEL_BIN" push "$component" >&2 || return 1
  MYCEL_DATA=$data "$MYCEL_BIN" deploy "$name" --copies bench=1 "${deploy_args[@]}" --wait >&2 || return 1
  local url
  url=$(head -n1 "$data/gateway.url")/v2/models/$name/infer
  wait_ready mycel "$url" "$(payload_of "$what")" "$what" || return 1
  load "$as" "$what" "$url" "$payload" || return 1
  # The batch sizes the agent actually formed, so the torch loop can run at the same.
  local agent
  agent=$(MYCEL_DATA=$data "$MYCEL_BIN" status --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["nodes"][0]["node"]["spec"]["agent_url"])')
  curl -sf "$agent/metrics" | python3 -c '
import json, sys
total = count = 0.0
for line in sys.stdin:
    if line.startswith("mycel_agent_batch_size_sum"):
        total += float(line.split()[-1])
    elif line.startswith("mycel_agent_batch_size_count"):
        count += float(line.split()[-1])
json.dump({"mean_batch": total / count if count else None, "calls": count}, sys.stdout)
' >"$raw/$what-$as-batches.json" || true
  stop_server
}

prepare_mycel() {
  if [ "${MYCEL_BUILD:-1}" != 0 ] && [ "$MYCEL_BIN" = "$root/target/release/mycel" ]; then
    echo "== building mycel (cargo build --release --bin mycel)" >&2
    (cd "$root" && cargo build --release --quiet --bin mycel)
  fi
  [ -x "$MYCEL_BIN" ] || { echo "no mycel binary at $MYCEL_BIN" >&2; return 1; }
  "$MYCEL_BIN" up --help 2>/dev/null | grep -q -- '--gateway' ||
    { echo "$MYCEL_BIN up has no --gateway: this mycel has no gateway to measure" >&2; return 1; }
}

servers=()
for s in $SERVERS; do
  if [[ $s == mycel* ]] && ! prepare_mycel; then
    echo "== skipping mycel" >&2
    continue
  fi
  servers+=("$s")
done

targets=(noop mobilenet)
[ "$target" = all ] || targets=("$target")

cat >"$raw/load.json" <<JSON
{"noop": {"connections": $NOOP_CONNS, "requests": $NOOP_REQUESTS, "warmup": $NOOP_WARMUP},
 "mobilenet": {"connections": $MOBILENET_CONNS, "requests": $MOBILENET_REQUESTS, "warmup": $MOBILENET_WARMUP},
 "servers": "${servers[*]}", "tool": "$(oha --version | head -n1)", "tool_threads": $OHA_THREADS}
JSON
"$py" - "$raw/versions.json" "$([[ " ${servers[*]} " == *" mycel"* ]] && "$MYCEL_BIN" --version 2>/dev/null)" <<'PY'
import json, sys
from importlib.metadata import PackageNotFoundError, version
def installed(package):
    try:
        return version(package)
    except PackageNotFoundError:  # a peer not installed: SERVERS leaves it out
        return None
v = {p: installed(p) for p in ("ray", "mlserver", "torch", "torchvision", "numpy")}
if sys.argv[2]:
    v["mycel"] = sys.argv[2]
json.dump(v, open(sys.argv[1], "w"))
PY
for what in "${targets[@]}"; do
  if [ "$what" = mobilenet ]; then
    echo "== torch loop: batch 8, $THREADS thread(s), ${LOOP_SECONDS} s per loop" >&2
    "$py" torch_loop.py --batch 8 --threads "$THREADS" --seconds "$LOOP_SECONDS" --json "$raw/torch-loop.json" >&2
  fi
  for s in "${servers[@]}"; do
    if ! "run_$s" "$what"; then
      echo "== $s: failed on $what, left out of the results (logs in $work)" >&2
      rm -f "$raw/$what-$s.json"
      stop_server
      failed=1
    fi
  done
  # Per-image cost depends on the batch size, so the limit is also measured at the
  # batch size mycel's agent formed on average, with JSON and with binary requests.
  for as in mycel mycel_binary; do
    [ "$what" = mobilenet ] && [ -s "$raw/mobilenet-$as-batches.json" ] || continue
    observed=$(python3 -c 'import json, sys; m = json.load(open(sys.argv[1]))["mean_batch"]; print(max(1, round(m)) if m else "")' "$raw/mobilenet-$as-batches.json")
    if [ -n "$observed" ] && ! [ -s "$raw/torch-loop-batch-$observed.json" ]; then
      echo "== torch loop: batch $observed ($as's mean batch)" >&2
      "$py" torch_loop.py --batch "$observed" --threads "$THREADS" --seconds "$LOOP_SECONDS" \
        --json "$raw/torch-loop-batch-$observed.json" >&2
    fi
  done
done

out=results/$(date +%Y-%m-%dT%H%M%S)-$target.json
python3 report.py "$raw" "$out" "$THREADS"
echo "wrote bench/serving/$out" >&2
