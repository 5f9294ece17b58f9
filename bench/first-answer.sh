#!/usr/bin/env bash
# The first ten minutes, timed: from `mycel up` on a fresh data directory to the first
# answer of the quickstart's model, and the longest the screen stays without a new
# line meanwhile:
#
#   mycel up &
#   mycel init hello && mycel push hello
#   mycel deploy hello --copies local=1 --wait
#   mycel predict hello --input 'input=[[1, 2, 3, 4]]'
#
# warm: uv's cache as it is (numpy cached); cold: an empty uv cache, so uv downloads
# numpy. Usage: bash bench/first-answer.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}

cargo build --release --quiet --bin mycel
mycel=${CARGO_TARGET_DIR:-$PWD/target}/release/mycel
if ! command -v uv >/dev/null; then
  [ -x .venv/bin/uv ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q uv; }
  export PATH="$PWD/.venv/bin:$PATH"
fi

# Reads lines, writes nothing; at the end prints the longest gap between two lines
# (the first measured from when it started), and when the last one came.
gaps='import sys, time
last = start = time.monotonic(); longest = 0.0
for _ in sys.stdin:
    now = time.monotonic(); longest = max(longest, now - last); last = now
print(f"{last - start:.2f} {longest:.2f}")'

once() {
  local kind=$1 work up
  work=$(mktemp -d)
  export MYCEL_DATA=$work/data
  if [ "$kind" = cold ]; then export UV_CACHE_DIR=$work/uv-cache; else unset UV_CACHE_DIR; fi
  read -r total silence < <(
    {
      MYCEL_LOG=warn "$mycel" up --listen 127.0.0.1:0 --gateway 127.0.0.1:0 >/dev/null 2>&1 &
      up=$!
      until [ -s "$MYCEL_DATA/gateway.url" ]; do sleep 0.02; done
      cd "$work"
      "$mycel" init hello
      "$mycel" push hello
      "$mycel" deploy hello --copies local=1 --wait
      "$mycel" predict hello --input 'input=[[1, 2, 3, 4]]'
      kill -INT $up; wait $up 2>/dev/null || true
    } 2>&1 | python3 -c "$gaps"
  )
  printf '%-5s first answer %6.2f s   longest silence %5.2f s\n' "$kind" "$total" "$silence"
  rm -rf "$work"
}

for _ in $(seq "$runs"); do once warm; done
once cold
