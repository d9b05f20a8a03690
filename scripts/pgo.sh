#!/usr/bin/env bash
# A profile-guided release build of the reference binary: `target/pgo/nenya`.
#
#   bash scripts/pgo.sh            TRAIN (4: seconds of load per workload)
#
# 1. builds nenya instrumented (`-Cprofile-generate`, its own target dir);
# 2. trains it: the full default stack and the lean one in front of `nenya mock`, driven by
#    wrk with each of bench.sh's workloads (plain, stream, large, secret, tools) and an
#    Anthropic Messages request, plain and streamed, at 1 and 16 connections (the Anthropic
#    client of an OpenAI upstream covers conversion both ways, and of streams);
# 3. merges the profiles with the toolchain's own `llvm-profdata` (rustup component
#    `llvm-tools`, added when missing: the profile format follows the compiler's LLVM);
# 4. rebuilds with `-Cprofile-use` and copies the binary to `target/pgo/nenya`.
#
# The profile steers inlining and code layout only; behaviour is the same as
# `cargo build --release`. Figures for both builds are in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
train=${TRAIN:-4}
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools >/dev/null
data=$(pwd)/target/pgo/data
rm -rf "$data"; mkdir -p "$data"

echo "pgo: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$data" cargo build --locked --release --target-dir target/pgo/gen --bin nenya
bin=target/pgo/gen/release/nenya

work=$(mktemp -d)
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }; trap cleanup EXIT
. scripts/lib.sh
start_mock "$bin"
anthropic='{"model":"coder","max_tokens":256,"messages":[{"role":"user","content":"Write a function that reverses a list."}]}'
for stack in full lean; do
  case $stack in
    full) extra='"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}' ;;
    lean) extra='"bouncer": {"enabled": false, "entropy_enabled": false}' ;;
  esac
  gateway_config "$work/c.json" "$extra"
  p=$(free_port)
  NENYA_CONFIG_FILE="$work/c.json" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn \
    "$bin" serve --listen "127.0.0.1:$p" >"$work/gw.log" 2>&1 &
  gw=$!; wait_port "$p"
  # A training run that fails would profile the error path: each must answer 2xx throughout.
  post_lua "$work/post.lua" 'function done(s, l, r) io.write(string.format("RESULT %d %d\n", s.requests, s.errors.status + s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout)) end'
  for kind in plain stream large secret tools anthropic anthropic-stream; do
    case $kind in
      anthropic) body=$anthropic; path=/v1/messages ;;
      anthropic-stream) body=${anthropic/\"model\"/\"stream\":true,\"model\"}; path=/v1/messages ;;
      *) body=$(request_body "$kind"); path=/v1/chat/completions ;;
    esac
    for c in 1 16; do
      echo "pgo: training $stack $kind c=$c" >&2
      read -r n errors < <(BODY="$body" wrk -t1 -c"$c" -d"${train}s" -s "$work/post.lua" "http://127.0.0.1:$p$path" | awk '/^RESULT/{print $2, $3}') || true
      if [ "${n:-0}" = 0 ] || [ "$errors" != 0 ]; then
        echo "pgo: training $stack $kind c=$c failed: ${n:-0} requests, ${errors:-?} errors" >&2; exit 1
      fi
    done
  done
  kill -INT "$gw"; wait "$gw" 2>/dev/null || true   # a clean exit writes the profile
done
kill -INT "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
pids=()

"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw
echo "pgo: optimised build" >&2
RUSTFLAGS="-Cprofile-use=$data/merged.profdata" cargo build --locked --release --target-dir target/pgo/use --bin nenya
cp target/pgo/use/release/nenya target/pgo/nenya
echo "pgo: target/pgo/nenya" >&2
