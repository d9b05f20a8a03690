#!/usr/bin/env bash
# Instructions per request of the gateway (user space, full default stack), counted by
# valgrind's callgrind: the same figure run after run whatever else the machine is doing, so a
# change too small for this host's wall-clock noise (scripts/ab.sh) still shows. Kernel work
# (the sockets) is not counted; wall-clock and CPU figures stay with bench.sh / ab.sh.
#
#   bash scripts/instr.sh [BINARY]        KIND=plain|stream|large|turns|secret|tools|file (plain; file: BODY_FILE), DUR (10 s of load),
#                                         STACK=full|lean|floor (full, lean: bench.sh's two stacks; floor:
#                                         benches/floor.rs, the bare hyper proxy), REMEMBER (texts
#                                         remembered clean; 0: every text scanned every time)
#
# Prints requests, total instructions and instructions per request; the callgrind file is
# kept for `callgrind_annotate --inclusive=yes FILE` (build with
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for source-level names).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
bin=${1:-target/release/nenya}; kind=${KIND:-plain}; dur=${DUR:-10}; stack=${STACK:-full}
case $stack in
  full) extra='"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}'
        # REMEMBER=0: scan every text of every request (bouncer.remember_clean_texts).
        if [ -n "${REMEMBER:-}" ]; then extra+=", \"bouncer\": {\"remember_clean_texts\": $REMEMBER}"; fi ;;
  lean) extra='"bouncer": {"enabled": false, "entropy_enabled": false}' ;;
  floor) extra='' ;;
  *) echo "STACK is full, lean or floor"; exit 2 ;;
esac
work=$(mktemp -d)
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }; trap cleanup EXIT
. scripts/lib.sh
start_mock "$bin"
gateway_config "$work/c.json" "$extra"
p=$(free_port)
if [ "$stack" = floor ]; then
  floor_bin=$(floor_binary)
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$floor_bin" --listen "127.0.0.1:$p" \
    --upstream "127.0.0.1:$mock_port" >"$work/gw.log" 2>&1 &
else
  NENYA_WORKERS=1 NENYA_CONFIG_FILE="$work/c.json" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$bin" serve --listen "127.0.0.1:$p" >"$work/gw.log" 2>&1 &
fi
vp=$!; pids+=($vp); wait_port "$p"
body=$(request_body "$kind")
post_lua "$work/post.lua" 'function done(s, l, r) io.write(string.format("RESULT %d\n", s.requests)) end'
url="http://127.0.0.1:$p/v1/chat/completions"
BODY="$body" wrk -t1 -c1 -d3s -s "$work/post.lua" "$url" >/dev/null   # warm-up: pools, caches
callgrind_control -z "$vp" >/dev/null 2>&1
n=$(BODY="$body" wrk -t1 -c1 -d"${dur}s" -s "$work/post.lua" "$url" | awk '/^RESULT/{print $2}')
callgrind_control -d "$vp" >/dev/null 2>&1; sleep 1
f=$(ls -t "$work"/cg.*.1 | head -1); out=target/instr-$kind-$stack.callgrind; cp "$f" "$out"
tot=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "kind=$kind stack=$stack requests=$n instructions=$tot per_request=$((tot / n)) file=$out"
