#!/usr/bin/env bash
# Federated learning on one machine: `mycel up` with five edge nodes, each holding its
# own non-IID share of scikit-learn's digits (examples/digits-fl/split.py), the digits
# model pushed as source and deployed, ten rounds of FedAvg that roll the result out,
# the rounds' log, one prediction, and the held-out accuracy against central training.
# Needs only Rust, Python 3 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin mycel
mycel=$PWD/target/release/mycel
if [ ! -x .venv/bin/uv ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
export PATH="$PWD/.venv/bin:$PATH"
# split.py and central.py run here, outside mycel; the nodes only see their own files.
uv pip install --quiet --python .venv/bin/python numpy scikit-learn safetensors

data=$(mktemp -d)
export MYCEL_DATA=$data/mycel
cleanup() {
  if kill -0 "$up" 2>/dev/null; then kill -INT "$up"; wait "$up" || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

echo "== split the digits over five nodes (label skew), a quarter held out"
python examples/digits-fl/split.py --out "$data/digits"
nodes=edge-0,edge-1,edge-2,edge-3,edge-4
datasets=()
for i in 0 1 2 3 4; do datasets+=(--dataset "edge-$i:digits=$data/digits/node-$i"); done
MYCEL_LOG=warn "$mycel" up --nodes "$nodes" --listen 127.0.0.1:0 --gateway 127.0.0.1:0 \
  --node-cpus 2 --node-memory 4GiB "${datasets[@]}" &
up=$!
for _ in $(seq 600); do [ -s "$MYCEL_DATA/gateway.url" ] && break; sleep 0.1; done

echo "== mycel push examples/digits-fl && mycel deploy digits-fl --copies edge-0=1"
"$mycel" push examples/digits-fl
"$mycel" deploy digits-fl --copies edge-0=1 --wait
"$mycel" status
echo "== mycel federate digits-fl --dataset digits --rounds 10 --local-epochs 20 --deploy"
"$mycel" federate digits-fl --dataset digits --rounds 10 --local-epochs 20 --deploy
"$mycel" federation rounds 1
echo "== mycel predict digits-fl (a blank image)"
"$mycel" predict digits-fl --input "pixels=[[$(printf '0,%.0s' $(seq 63))0]]"

echo "== held-out accuracy: the published weights against central training"
"$mycel" show digits-fl@2 --json | python -c '
import json, sys
f = next(f for f in json.load(sys.stdin)["files"] if f["path"] == "weights/model.safetensors")
print(f["hash"])' >"$data/hash"
curl -sf -H "Authorization: Bearer $(cat "$MYCEL_DATA/admin.token")" \
  "$(cat "$MYCEL_DATA/server.url")/v1/blobs/$(cat "$data/hash")" -o "$data/federated.safetensors"
echo "federated: $(python examples/digits-fl/central.py --data "$data/digits" --weights "$data/federated.safetensors")"
echo "central:   $(python examples/digits-fl/central.py --data "$data/digits")"
