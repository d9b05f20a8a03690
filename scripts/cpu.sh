#!/usr/bin/env bash
# CPU time per request of each proxy on one host, next to its p50: the mock hit directly, a bare
# nginx reverse proxy, benches/floor.rs (a bare hyper proxy) and nenya's lean stack (auth,
# budget, breaker, limiter, usage; no redaction), all in front of the same `nenya mock`. User
# and system time come from each process's /proc stat around a wrk run; three rounds,
# interleaved. For the mock ("direct") it is the mock's own time.
#
#   bash scripts/cpu.sh            C (connections, 1), DUR (4 s per run), KIND (plain)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
bin=target/release/nenya; work=$(mktemp -d)
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }; trap cleanup EXIT
. scripts/lib.sh
cargo build --release --locked --bin nenya 2>&1 | tail -1
floor_bin=$(floor_binary)
start_mock "$bin"; mock_pid=${pids[0]}
gateway_config "$work/c.json" '"bouncer": {"enabled": false, "entropy_enabled": false}'
p=$(free_port)
NENYA_CONFIG_FILE="$work/c.json" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$p" >"$work/gw.log" 2>&1 &
nenya_pid=$!; pids+=($nenya_pid); wait_port "$p"
fport=$(free_port)
"$floor_bin" --listen "127.0.0.1:$fport" --upstream "127.0.0.1:$mock_port" >"$work/floor.log" 2>&1 &
floor_pid=$!; pids+=($floor_pid); wait_port "$fport"
start_nginx; nport=$nginx_port
body=$(request_body "${KIND:-plain}")
post_lua "$work/post.lua" 'function done(s, l, r) io.write(string.format("RESULT %d %d\n", s.requests, l:percentile(50))) end'
c=${C:-1}; th=$(( c < 2 ? 1 : 2 )); dur=${DUR:-4}
for _ in 1 2 3; do
  for t in "direct:$mock_port:$mock_pid" "nginx:$nport:$nginx_pid" "floor:$fport:$floor_pid" "nenya-lean:$p:$nenya_pid"; do
    IFS=: read -r name port pid <<<"$t"
    url="http://127.0.0.1:$port/v1/chat/completions"
    BODY="$body" wrk -t$th -c"$c" -d1s -s "$work/post.lua" "$url" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    read -r _ n p50 < <(BODY="$body" wrk -t$th -c"$c" -d"${dur}s" -s "$work/post.lua" "$url" | grep RESULT)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    tick=$(getconf CLK_TCK)
    echo "$name c=$c req/s=$((n / dur)) p50=${p50}us user=$(( (u1 - u0) * 1000000 / tick * 1000 / n ))ns/req system=$(( (s1 - s0) * 1000000 / tick * 1000 / n ))ns/req"
  done
done
