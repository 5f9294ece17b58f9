#!/usr/bin/env bash
# OIP over gRPC vs REST (binary and JSON) on a no-op and on MobileNetV2, and streaming
# generation through mycel vs in-process: `mycel up --grpc` on loopback with
# examples/echo, examples/mobilenet-v2 and examples/charlm deployed, measured by
# bench/protocols.py with tritonclient. Where bench/serving/setup.sh has installed
# MLServer, the same no-op and MobileNetV2 runtimes as bench/serving/ run in it and are
# measured the same way, one server at a time.
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
clients=${1:-8} seconds=${2:-10} tokens=${3:-500}
# One torch thread per model process, as in bench/serving.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

work=$(mktemp -d)
export MYCEL_DATA=$work/data
pid=
stop() { [ -z "$pid" ] || { kill -TERM -- -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }; }
trap 'stop; rm -rf "$work"' EXIT
MYCEL_LOG=warn setsid "$mycel" up --listen 127.0.0.1:0 --gateway 127.0.0.1:0 --grpc 127.0.0.1:0 \
  --node-cpus 4 >"$work/up.log" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -s "$MYCEL_DATA/gateway.url" ] && break; sleep 0.1; done
for example in echo charlm mobilenet-v2; do "$mycel" push "examples/$example" >/dev/null; done
"$mycel" deploy echo --copies local=1 --wait >/dev/null
"$mycel" deploy charlm --copies local=1 --wait >/dev/null
"$mycel" deploy mobilenet-v2 --copies local=1 --max-batch-size 8 --batch-wait-ms 5 --wait >/dev/null
http=$(sed 's#^http://##' "$MYCEL_DATA/gateway.url")
grpc=$(cat "$MYCEL_DATA/gateway.grpc")
echo "$(date -u +%F) $(getconf _NPROCESSORS_ONLN) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
.venv/bin/python bench/protocols.py --http "$http" --grpc "$grpc" --server mycel \
  --noop echo --mobilenet mobilenet-v2 --tokens "$tokens" --clients "$clients" --seconds "$seconds"
stop

mlserver=bench/serving/.venv/bin/mlserver
if [ ! -x "$mlserver" ]; then
  echo "no $mlserver: run bench/serving/setup.sh for the MLServer comparison" >&2
  exit 0
fi
for model in noop mobilenet; do
  # Ports from the model directory's settings.json: HTTP 18620, gRPC 18621.
  setsid "$mlserver" start "bench/serving/mlserver/$model" >"$work/mlserver-$model.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf -o /dev/null http://127.0.0.1:18620/v2/health/ready && break
    sleep 0.2
  done
  if [ "$model" = noop ]; then which=(--noop noop --mobilenet "")
  else which=(--noop "" --mobilenet mobilenet-v2); fi
  .venv/bin/python bench/protocols.py --http 127.0.0.1:18620 --grpc 127.0.0.1:18621 \
    --server "MLServer $(bench/serving/.venv/bin/python -c 'import mlserver; print(mlserver.__version__)')" \
    "${which[@]}" --tokens 0 --clients "$clients" --seconds "$seconds"
  stop
done
