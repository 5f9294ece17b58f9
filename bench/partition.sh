#!/usr/bin/env bash
# Time from a healed partition to a converged fleet, and the requests failed meanwhile.
#
# Twelve replicas of a numpy model over three locations of two nodes each, every host
# in its own network namespace (root and iproute2 needed); tokyo's nodes and gateway
# are cut off from the control plane until it calls them lost (--lost-after 4s), then
# the partition heals. Measured: from healing until every replica is ready again with
# the same id and process as before, and the requests two clients sent to tokyo's own
# gateway during the partition and the healing, with how many failed.
#
# The timing is heartbeats and long-polls, not code speed, so the debug build the
# tests use is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null; then
  [ -x .venv/bin/uv ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q uv; }
  export PATH="$PWD/.venv/bin:$PATH"
fi
# The test hosts reach no package index: warm uv's cache with numpy first.
uv pip install --quiet --python .venv/bin/python numpy
for run in $(seq "${1:-3}"); do
  CI=true cargo test --quiet -p mycel --test hosts bench_partition_heal -- --ignored --nocapture 2>&1 \
    | grep 'partition healed' | sed "s/^/run $run: /"
done
