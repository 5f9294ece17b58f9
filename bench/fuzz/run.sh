#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer for a fixed time and prints, per target, the
# executions and what crashed. Usage: bash bench/fuzz/run.sh [SECONDS_EACH] [TARGET...]
# (default 60 s, every target). A crash leaves its input in fuzz/artifacts/TARGET/;
# once fixed, it goes to fuzz/regressions/TARGET/ so the test suite replays it.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes flags only a nightly compiler takes; this lets the stable one take
# them. No sanitizer: those need a nightly standard library. Debug assertions stay on,
# so an overflow is a crash.
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

cargo fuzz build --fuzz-dir fuzz --sanitizer none --debug-assertions

printf '%-20s %12s %10s %s\n' target executions exec/s crashes
status=0
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  log=fuzz/artifacts/$target/last-run.log
  if cargo fuzz run --fuzz-dir fuzz --sanitizer none --debug-assertions "$target" "$corpus" \
      -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=$(find "fuzz/artifacts/$target" -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  printf '%-20s %12s %10s %s\n' "$target" "${runs:-?}" "${rate:-?}" "$crashes"
  if [ "$crashes" != 0 ]; then
    grep -m1 -A3 'panicked\|ERROR: libFuzzer' "$log" | sed 's/^/    /' || true
  fi
done
exit $status
