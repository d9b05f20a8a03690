#!/usr/bin/env bash
# Where the gateway's time goes under load, kernel included: `perf record -e cpu-clock` of
# `nenya serve` (full default stack) while wrk drives it, then perf's report by inclusive
# time. Complements scripts/instr.sh (user-space instructions, exact but blind to the kernel
# and to how fast the instructions run).
#
#   bash scripts/profile.sh [BINARY]     KIND=plain|stream|large|turns|file (plain), CONNS (1),
#                                        DUR (8 s recorded), WORKERS (NENYA_WORKERS, default 0:
#                                        one connection thread per CPU), CG (perf's call-graph
#                                        option, default -g: frame pointers)
#
# Call stacks need a binary built with frame pointers (without them the report is flat):
#   RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#     cargo build --release --target-dir /tmp/fp-target --bin nenya
#   bash scripts/profile.sh /tmp/fp-target/release/nenya
# The recording stays in target/profile.data for `perf report -i target/profile.data`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
bin=${1:-target/release/nenya}; kind=${KIND:-plain}; conns=${CONNS:-1}; dur=${DUR:-8}
work=$(mktemp -d)
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }; trap cleanup EXIT
. scripts/lib.sh
start_mock "$bin"
gateway_config "$work/c.json"
p=$(free_port)
NENYA_WORKERS=${WORKERS:-0} NENYA_CONFIG_FILE="$work/c.json" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn \
  "$bin" serve --listen "127.0.0.1:$p" >"$work/gw.log" 2>&1 & gp=$!; pids+=($gp); wait_port "$p"
body=$(request_body "$kind")
post_lua "$work/post.lua"
url="http://127.0.0.1:$p/v1/chat/completions"
th=$(( conns < 2 ? 1 : 2 ))
BODY="$body" wrk -t$th -c"$conns" -d2s -s "$work/post.lua" "$url" >/dev/null   # warm-up
BODY="$body" wrk -t$th -c"$conns" -d"$((dur + 2))s" -s "$work/post.lua" "$url" >"$work/wrk.txt" &
wp=$!
sleep 1
# shellcheck disable=SC2086
perf record -F 4999 -e cpu-clock ${CG:--g} -p "$gp" -o target/profile.data -- sleep "$dur" >/dev/null 2>&1
wait "$wp"
grep -E "Requests/sec" "$work/wrk.txt"
perf report -i target/profile.data --children --sort symbol -g none --percent-limit 1.5 2>/dev/null \
  | grep -v '^#' | grep '%' | cut -c1-160
