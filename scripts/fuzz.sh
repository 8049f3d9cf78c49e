#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of what parses untrusted bytes (libFuzzer
# through cargo-fuzz, on the nightly toolchain installed beside stable):
# the CSV splitter, the NDJSON line reader, each type's encoder, Parquet and
# Arrow IPC files read and encoded, and a whole batch through
# parse · validate · encode · settle. Each run starts by replaying the
# committed corpus (fuzz/corpus/TARGET, findings included), then explores
# for FUZZ_SECONDS (default 20) per target; new inputs go to a scratch
# directory, not the repository. A crash or a failed invariant fails the
# run and leaves the input under fuzz/artifacts/TARGET: commit it to the
# corpus with the fix, and it is replayed every run after.
#
# The targets are built without a sanitizer: the code under test is safe
# Rust, where a sanitizer finds nothing a panic would not, at twice the time.
#
# usage: scripts/fuzz.sh [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked --quiet
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(csv_records values batch ndjson columnar)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build --sanitizer none 2>&1 | tail -3
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "fuzzing $t for ${seconds}s"
  cargo +nightly fuzz run --sanitizer none "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>"$scratch/$t.log" || { tail -40 "$scratch/$t.log"; echo "fuzz target $t failed"; exit 1; }
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$scratch/$t.log" | sed "s/^/  $t /"
done
