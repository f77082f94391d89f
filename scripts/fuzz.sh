#!/usr/bin/env bash
# `make fuzz`: libFuzzer on every fuzz target in fuzz/ (record_to_envelope,
# event, stall), FUZZ_SECONDS each (default 60). cargo-fuzz wants nightly flags (-Zsanitizer=address);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. A crash fails the
# run and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" "seeds/$target"
  echo "==> fuzzing $target for ${seconds}s"
  # New inputs go to corpus/ (not committed); seeds/ holds the regressions
  # found so far, and the whole-event target also starts from events/.
  seeds=("seeds/$target")
  [ "$target" = event ] && seeds+=(../events)
  cargo fuzz run -O "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
    2>"corpus/$target.log" || { tail -50 "corpus/$target.log"; exit 1; }
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done" "corpus/$target.log"
done
