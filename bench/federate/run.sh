#!/usr/bin/env bash
# Federated aggregation benchmark, on this machine:
#
# (a) FedAvg throughput: 10 clients × 25 M float32 values (5 tensors of 5 M) as
#     safetensors files, page cache warm, in GB/s of update bytes, against memcpy
#     bandwidth measured in the same run (the better of one thread and all threads).
# (b) Equality with Flower: the same updates through flwr's FedAvg `aggregate`
#     (relative error ≤ 1e-6), and the robust strategies against Flower's.
#
#   bench/federate/run.sh
#
# Environment knobs (defaults in brackets): CLIENTS [10], TENSORS [5], VALUES per
# tensor [5000000], REPEAT timed aggregations [7], FOLD_EVERY [16], CHUNK_LEN [32768].
# Installs flwr, numpy and safetensors into bench/federate/.venv with uv once, writes
# the updates into bench/federate/data/ (about 1.1 GB) and the results into
# bench/federate/results/<date>.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

CLIENTS=${CLIENTS:-10} TENSORS=${TENSORS:-5} VALUES=${VALUES:-5000000}
REPEAT=${REPEAT:-7} FOLD_EVERY=${FOLD_EVERY:-16} CHUNK_LEN=${CHUNK_LEN:-32768}

if [[ ! -x .venv/bin/python ]]; then
  command -v uv >/dev/null || python3 -m pip install -q uv
  uv venv -q .venv
  uv pip install -q --python .venv/bin/python flwr numpy safetensors
fi

(cd "$root" && cargo build -q --release -p mycel-federate --example federate_bench)
bin=$root/target/release/examples/federate_bench

params="$CLIENTS $TENSORS $VALUES"
if [[ "$(cat data/params 2>/dev/null)" != "$params" ]]; then
  rm -rf data
  .venv/bin/python make_updates.py data --clients "$CLIENTS" --tensors "$TENSORS" --values "$VALUES"
  echo "$params" >data/params
fi
updates=()
for ((k = 0; k < CLIENTS; k++)); do updates+=("data/update-$k.safetensors"); done

# Warm the page cache: the benchmark measures aggregation, not the disk.
cat data/global.safetensors "${updates[@]}" >/dev/null

echo "== (a) FedAvg throughput against memcpy" >&2
throughput=$("$bin" throughput --repeat "$REPEAT" --fold-every "$FOLD_EVERY" --chunk-len "$CHUNK_LEN" \
  data/global.safetensors "${updates[@]}")
echo "$throughput"

echo "== (b) mycel against Flower on the same updates" >&2
set +e
comparison=$(.venv/bin/python compare_flower.py data "$bin")
compared=$?
set -e
echo "$comparison"

mkdir -p results
date=$(date +%F)
machine="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB"
{
  echo "{\"date\": \"$date\", \"machine\": \"$machine\", \"throughput\": $throughput, \"comparisons\": ["
  echo "$comparison" | paste -sd, -
  echo "]}"
} >"results/$date.json"

.venv/bin/python - "results/$date.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["throughput"]
print(f"\n{r['date']}, {r['machine']}")
print(f"FedAvg, {t['clients']} clients x {t['update_bytes'] / t['clients'] / 4e6:.0f} M float32: "
      f"{t['fedavg_gbps_median']:.2f} GB/s median, {t['fedavg_gbps_best']:.2f} best "
      f"({len(t['seconds'])} runs, {min(t['seconds']):.3f}-{max(t['seconds']):.3f} s)")
print(f"memcpy: {t['memcpy_gbps_single_thread']:.2f} GB/s one thread, "
      f"{t['memcpy_gbps_all_threads']:.2f} GB/s {t['threads']} threads")
print(f"ratio to the better memcpy: {t['ratio_median']:.0%} median, {t['ratio_best']:.0%} best (goal >= 50%)")
for c in r["comparisons"][1:]:
    print(f"vs Flower {c['comparison']}: relative error {c['relative_error']:.2e} "
          f"(max abs {c['max_abs_difference']:.2e}) {'ok' if c['ok'] else 'ABOVE 1e-6'}")
PY
exit $compared
