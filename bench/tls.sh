#!/usr/bin/env bash
# What TLS costs: `mycel up` serving a no-op, plain and then with --tls, under the same
# closed-loop load (CLIENTS connections, REQUESTS requests after a tenth as warmup),
# in one run; then a standalone agent's idle RSS, plain and TLS.
#
#   bench/tls.sh            # CLIENTS=16 REQUESTS=20000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .venv/bin/uv ] && export PATH=$root/.venv/bin:$PATH
cargo test --release --locked -p mycel --test tls -- --ignored bench_tls_cost --nocapture 2>&1 |
  grep -v '^\s*\(Compiling\|Finished\|Running\)'
