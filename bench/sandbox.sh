#!/usr/bin/env bash
# What the serving sandbox costs: `mycel up` with --sandbox off and then auto, in one
# run: the time to scale a numpy no-op from 1 to 4 replicas (warm forks when off, cold
# sandboxed starts when on), then the same closed-loop load (CLIENTS connections,
# REQUESTS requests after a tenth as warmup) through the gateway.
#
#   bench/sandbox.sh            # CLIENTS=16 REQUESTS=20000; as root, with bubblewrap
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .venv/bin/uv ] && export PATH=$root/.venv/bin:$PATH
cargo test --release --locked -p mycel --test sandbox -- --ignored bench_sandbox_cost --nocapture 2>&1 |
  grep -v '^\s*\(Compiling\|Finished\|Running\)'
