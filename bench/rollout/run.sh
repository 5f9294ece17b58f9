#!/usr/bin/env bash
# Rollout benchmark: 12 echo replicas over 3 nodes, clients sending requests without
# pause, and one code change (the answer's version number) rolled out. Measured from
# the moment the update command starts: the time until the last answer by old code
# (after which every answer is new code), the command's own time, and the requests
# that failed meanwhile. The same change is then rolled out with Ray Serve (`serve
# deploy` of the same config after the code changed), 12 replicas, in the same run.
#
#   bench/rollout/run.sh [mycel|ray|all]
#
# Needs bench/serving/setup.sh once (its .venv has Ray Serve). Knobs: THREADS (load
# clients, 8), SURGES (mycel surges to try, "25% 100%"), RAY_PORT (18710).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${1:-all}
THREADS=${THREADS:-8}
SURGES=${SURGES:-25% 100%}
RAY_PORT=${RAY_PORT:-18710}
venv=$root/bench/serving/.venv
work=$(mktemp -d /tmp/rollout-bench.XXXXXX)
results=()
cleanup() {
  [ -n "${up_pid:-}" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
  [ "$target" != mycel ] && "$venv/bin/ray" stop --force >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

now() { python3 -c 'import time; print(time.time())'; }

# load.py in the background against URL until `stop_load`; answers in $work/answers.json.
start_load() {
  rm -f "$work/stop"
  python3 "$here/load.py" "$1" "$THREADS" "$work/stop" "$work/answers.json" &
  load_pid=$!
  sleep 2
}
stop_load() {
  sleep 1
  touch "$work/stop"
  wait "$load_pid"
}

component() { # DIR VERSION
  mkdir -p "$1"
  cat >"$1/mycel.toml" <<TOML
[component]
name = "echo-roll"
entrypoint = "model:Echo"

[python]
requirements = ["numpy"]

[resources]
cpus = 0.1
memory = "64MiB"
TOML
  cat >"$1/model.py" <<PY
import numpy as np

VERSION = $2


class Echo:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        return {"version": np.array([VERSION], dtype=np.int64)}
PY
}

run_mycel() {
  (cd "$root" && cargo build --release --quiet --bin mycel)
  local mycel=$root/target/release/mycel data=$work/mycel
  export PATH="$root/.venv/bin:$PATH" MYCEL_DATA=$data
  MYCEL_LOG=warn "$mycel" up --nodes a,b,c --data "$data" --listen 127.0.0.1:0 \
    --gateway 127.0.0.1:0 --node-cpus 4 --node-memory 8GiB &
  up_pid=$!
  for _ in $(seq 200); do [ -s "$data/gateway.url" ] && break; sleep 0.05; done
  local version=1
  component "$work/echo-roll" 1
  "$mycel" push "$work/echo-roll" >/dev/null
  "$mycel" deploy echo-roll --copies a=4 --copies b=4 --copies c=4 --wait 2>/dev/null
  start_load "$(cat "$data/gateway.url")/v2/models/echo-roll/infer"
  local windows=()
  for surge in $SURGES; do
    version=$((version + 1))
    component "$work/echo-roll" "$version"
    "$mycel" push "$work/echo-roll" >/dev/null
    local t0 t1
    t0=$(now)
    "$mycel" deploy "echo-roll@$version" --copies a=4 --copies b=4 --copies c=4 \
      --surge "$surge" --wait 2>/dev/null
    t1=$(now)
    windows+=("$surge $t0 $version $(python3 -c "print($t1 - $t0)")")
    sleep 2
  done
  stop_load
  local i=0
  for w in "${windows[@]}"; do
    read -r surge t0 v cmd <<<"$w"
    local end=0
    i=$((i + 1))
    [ "$i" -lt "${#windows[@]}" ] && end=$(echo "${windows[$i]}" | cut -d' ' -f2)
    echo "mycel, surge $surge: $(python3 "$here/summarize.py" "$work/answers.json" "$t0" "$end" "$v" "$cmd")"
  done
  kill -INT "$up_pid"
  wait "$up_pid" || true
  up_pid=
}

run_ray() {
  local app=$work/ray_app
  cp -r "$here/ray_app" "$app"
  cat >"$work/serve.yaml" <<YAML
proxy_location: HeadOnly
http_options:
  host: 127.0.0.1
  port: $RAY_PORT
applications:
  - name: echo
    route_prefix: /
    import_path: app:app
    runtime_env:
      working_dir: file://$work/app-REVISION.zip
    deployments:
      - name: Echo
        num_replicas: 12
        ray_actor_options:
          num_cpus: 0.1
YAML
  export RAY_USAGE_STATS_ENABLED=0
  # Serve configs take the code as a package URI: each revision is a zip of the app
  # directory, and the updated config names the new one.
  (cd "$app" && python3 -m zipfile -c "$work/app-1.zip" app.py)
  sed -i 's/REVISION/1/' "$work/serve.yaml"
  "$venv/bin/ray" start --head --num-cpus 2 --dashboard-host 127.0.0.1 \
    --disable-usage-stats >/dev/null
  "$venv/bin/serve" deploy "$work/serve.yaml" >/dev/null
  for _ in $(seq 600); do
    curl -sf -X POST "http://127.0.0.1:$RAY_PORT/" -d '{}' >/dev/null 2>&1 &&
      "$venv/bin/serve" status 2>/dev/null | grep -q 'status: RUNNING' && break
    sleep 0.5
  done
  start_load "http://127.0.0.1:$RAY_PORT/"
  sed -i 's/^VERSION = 1$/VERSION = 2/' "$app/app.py"
  (cd "$app" && python3 -m zipfile -c "$work/app-2.zip" app.py)
  sed -i 's/app-1.zip/app-2.zip/' "$work/serve.yaml"
  local t0 t1
  t0=$(now)
  "$venv/bin/serve" deploy "$work/serve.yaml" >/dev/null
  # `serve deploy` returns once the config is accepted; wait until new code answers and
  # Serve reports the application running (the load's answers say when old code stopped).
  for _ in $(seq 480); do
    curl -sf -X POST "http://127.0.0.1:$RAY_PORT/" -d '{}' 2>/dev/null | grep -q '"version":2' &&
      "$venv/bin/serve" status 2>/dev/null | grep -q 'status: RUNNING' && break
    sleep 0.25
  done
  t1=$(now)
  stop_load
  echo "Ray Serve: $(python3 "$here/summarize.py" "$work/answers.json" "$t0" 0 2 "$(python3 -c "print($t1 - $t0)")")"
}

case $target in
  mycel) run_mycel ;;
  ray) run_ray ;;
  all) run_mycel; run_ray ;;
  *) echo "usage: $0 [mycel|ray|all]" >&2; exit 2 ;;
esac
