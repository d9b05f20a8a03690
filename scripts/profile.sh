#!/usr/bin/env bash
# Where the gateway's time goes under load, kernel included: `perf record -e cpu-clock` of
# `nenya serve` (full default stack) while wrk drives it, then perf's report by inclusive
# time. Complements scripts/instr.sh (user-space instructions, exact but blind to the kernel
# and to how fast the instructions run).
#
#   bash scripts/profile.sh [BINARY]     KIND=plain|stream|large|turns (plain), CONNS (1),
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
work=$(mktemp -d); mkdir -p "$work/secrets"
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }; trap cleanup EXIT
free_port(){ python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port(){ for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
mp=$(free_port); "$bin" mock --listen "127.0.0.1:$mp" --chunks 20 >"$work/mock.log" 2>&1 & pids+=($!); wait_port "$mp"
token=bench-client-token-0123456789
echo "{\"client_token\": \"$token\", \"provider_keys\": {\"up\": \"sk-bench\"}}" > "$work/secrets/secrets.json"
cat >"$work/c.json" <<J
{"server": {"log_level": "warn"}, "providers": {"up": {"url": "http://127.0.0.1:$mp/v1/chat/completions", "auth_style": "bearer"}},
 "agents": {"coder": {"strategy": "fallback", "models": [{"provider": "up", "model": "m"}]}},
 "governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}}
J
p=$(free_port)
NENYA_WORKERS=${WORKERS:-0} NENYA_CONFIG_FILE="$work/c.json" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn \
  "$bin" serve --listen "127.0.0.1:$p" >"$work/gw.log" 2>&1 & gp=$!; pids+=($gp); wait_port "$p"
msg='"messages":[{"role":"user","content":"Write a function that reverses a list."}]'
case $kind in
  stream) body="{\"model\":\"coder\",\"stream\":true,$msg}" ;;
  large) body=$(python3 scripts/large_body.py) ;;
  turns) body=$(python3 scripts/large_body.py --turn) ;;
  *) body="{\"model\":\"coder\",$msg}" ;;
esac
cat >"$work/post.lua" <<L
wrk.method = "POST"
wrk.body = os.getenv("BODY")
dofile("scripts/wrk_turns.lua")  -- KIND=turns: a number per request in place of @@TURN@@
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
L
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
