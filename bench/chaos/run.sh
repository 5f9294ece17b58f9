#!/usr/bin/env bash
# A chaos run under load: a default `mycel up` serves a model with two replicas while
# 8 clients send good requests; one fault at a time (frozen workers, poison requests,
# a leaking model, stalled clients) is injected once a second for SECONDS_PER_FAULT
# (20). Prints, per fault, the good requests sent and failed and their p50 and p99.
#
#   bench/chaos/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -x .venv/bin/uv ] && export PATH=$root/.venv/bin:$PATH
cargo test --release --locked -p mycel --test chaos -- --ignored bench_chaos --nocapture 2>&1 |
  grep -v '^\s*\(Compiling\|Finished\|Running\)'
