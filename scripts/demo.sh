#!/usr/bin/env bash
# The main job on one machine: `mycel up` with three nodes (new-york, london, tokyo),
# ResNet-50, InceptionV3 and MobileNetV2 pushed as source and deployed 5 + 3 + 4
# copies (examples/fleet.toml), the fleet's status, one prediction per model through
# the gateway, then Ctrl-C. Needs only Rust, Python 3 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin mycel
mycel=$PWD/target/release/mycel
# Agents build model environments with uv; keep it in the repository's .venv.
if [ ! -x .venv/bin/uv ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
export PATH="$PWD/.venv/bin:$PATH"

data=$(mktemp -d)
export MYCEL_DATA=$data
cleanup() {
  if kill -0 "$up" 2>/dev/null; then kill -INT "$up"; wait "$up" || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

# Three nodes on one machine; each offers 8 cpus and 16 GiB to its replicas.
MYCEL_LOG=warn "$mycel" up --nodes new-york,london,tokyo --listen 127.0.0.1:0 --gateway 127.0.0.1:0 \
  --node-cpus 8 --node-memory 16GiB &
up=$!
for _ in $(seq 600); do [ -s "$data/gateway.url" ] && break; sleep 0.1; done

for model in resnet50 inception-v3 mobilenet-v2; do
  echo "== mycel push examples/$model"
  "$mycel" push "examples/$model"
done
echo "== mycel deploy --file examples/fleet.toml --wait   (first run: uv installs torch once)"
"$mycel" deploy --file examples/fleet.toml --wait
echo "== mycel status"
"$mycel" status
for model in resnet50 inception-v3 mobilenet-v2; do
  echo "== mycel predict $model --input image=examples/images/gradient.png"
  "$mycel" predict "$model" --input image=examples/images/gradient.png
done

echo "== Ctrl-C: every role and worker stops"
kill -INT "$up"
wait "$up"
if pgrep -f "mycel_worker.*$data" >/dev/null; then
  echo "workers left behind:" >&2; pgrep -af "mycel_worker.*$data" >&2; exit 1
fi
echo "stopped cleanly; no worker left"
