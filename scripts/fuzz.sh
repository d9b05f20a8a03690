#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for SECONDS (default 15) from the committed seed
# corpus. Long runs: `scripts/fuzz.sh 3600`. Installs cargo-fuzz when missing.
#
# The toolchain here is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and
# `-s none` builds without AddressSanitizer (its runtime ships only with nightly). Panics,
# failed assertions and timeouts are still caught by libFuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -O
for target in sse_decoder stream_convert request_decode config_load redact; do
  echo "fuzzing $target for ${seconds}s"
  # Run on a scratch copy of the seeds so the committed corpus only ever holds seeds.
  work="$(mktemp -d)"
  cp fuzz/corpus/"$target"/seed-* "$work"/
  cargo fuzz run -s none -O "$target" "$work" -- -max_total_time="$seconds" -max_len=8192 2>&1 \
    | grep -E "^(Done|INFO: Seed|==|SUMMARY)|panicked|ERROR" || true
  # libFuzzer exits non-zero on a finding; pipefail is masked by grep, so check artifacts.
  if ls fuzz/artifacts/"$target"/ 2>/dev/null | grep -q .; then
    echo "FUZZ FAILURE in $target: see fuzz/artifacts/$target/"
    exit 1
  fi
  rm -rf "$work"
done
echo "fuzz: all targets ran clean"
