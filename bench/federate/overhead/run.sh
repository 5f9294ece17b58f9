#!/usr/bin/env bash
# Round overhead: round wall time minus the slowest client's own train time, for mycel
# and for Flower with the same clients (component/work.py: sleep TRAIN_MS, nudge the
# weights) on 127.0.0.1, every client in every round, FedAvg, federated evaluation.
#
#   bench/federate/overhead/run.sh
#
# Knobs (defaults in brackets): CLIENTS [5], ROUNDS [10], PARAMS float32 values [100000],
# TRAIN_MS [200]. Uses bench/federate/.venv (flwr, numpy, safetensors; made by
# bench/federate/run.sh or here) and writes results/<date>.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$here"
CLIENTS=${CLIENTS:-5} ROUNDS=${ROUNDS:-10} PARAMS=${PARAMS:-100000} TRAIN_MS=${TRAIN_MS:-200}
py=../.venv/bin/python
if [[ ! -x $py ]]; then
  command -v uv >/dev/null || python3 -m pip install -q uv
  uv venv -q ../.venv
  uv pip install -q --python $py flwr numpy safetensors
fi
(cd "$root" && cargo build -q --release -p mycel)
mycel=$root/target/release/mycel
$py make_weights.py "$PARAMS"

work=$(mktemp -d)
pids=()
cleanup() {
  # Agents first, so none complains about a vanished server.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export MYCEL_DATA=$work/server MYCEL_LOG=warn
$mycel server --listen 127.0.0.1:0 --gateway 127.0.0.1:0 --data "$work/server" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/server/server.url ]] && break; sleep 0.1; done
url=$(cat "$work/server/server.url")
token=$(cat "$work/server/admin.token")
for ((i = 0; i < CLIENTS; i++)); do
  mkdir -p "$work/data/$i"
  MYCEL_TOKEN=$token $mycel agent --server "$url" --name "client-$i" --location bench \
    --data "$work/agent-$i" --envs "$work/envs" --dataset "bench=$work/data/$i" --heartbeat 1s &
  pids+=($!)
done
$mycel push component >/dev/null
# One round first, so the measured federation finds the environment built.
$mycel federate overhead@1 --dataset bench --rounds 1 --min-clients "$CLIENTS" --json >/dev/null
mycel_result=$($mycel federate overhead@1 --dataset bench --rounds "$ROUNDS" --min-clients "$CLIENTS" \
  --config "train_ms=$TRAIN_MS" --json | $py -c '
import json, sys
f = json.load(sys.stdin)
rounds = []
for r in f["rounds"]:
    wall = r["ended_ms"] - r["started_ms"]
    train = max(c["metrics"]["train_ms"] for c in r["clients"])
    rounds.append({"round": r["number"], "wall_ms": wall, "train_ms": train, "overhead_ms": wall - train})
overheads = sorted(r["overhead_ms"] for r in rounds)
print(json.dumps({"system": "mycel", "rounds": rounds, "median_overhead_ms": overheads[len(overheads) // 2]}))
')
flower_result=$($py flower_overhead.py --clients "$CLIENTS" --rounds "$ROUNDS" --params "$PARAMS" --train-ms "$TRAIN_MS" 2>/dev/null)

mkdir -p results
out=results/$(date +%F)-$PARAMS.json
$py - "$mycel_result" "$flower_result" "$CLIENTS" "$ROUNDS" "$PARAMS" "$TRAIN_MS" >"$out" <<'PY'
import json, sys
mycel, flower = json.loads(sys.argv[1]), json.loads(sys.argv[2])
clients, rounds, params, train_ms = map(float, sys.argv[3:7])
print(json.dumps({
    "clients": int(clients), "rounds": int(rounds), "params": int(params), "train_ms": train_ms,
    "mycel": mycel, "flower": flower,
    "ratio_flower_over_mycel": flower["median_overhead_ms"] / max(mycel["median_overhead_ms"], 1e-9),
}, indent=1))
PY
$py - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name in ("mycel", "flower"):
    s = r[name]
    print(f"{s['system']:>14}: median overhead {s['median_overhead_ms']:7.1f} ms per round; "
          f"per round {[round(x['overhead_ms']) for x in s['rounds']]}")
print(f"Flower / mycel overhead: {r['ratio_flower_over_mycel']:.2f}x  ({sys.argv[1]})")
PY
