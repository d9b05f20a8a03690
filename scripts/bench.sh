#!/usr/bin/env bash
# End-to-end overhead with a real load generator (issue 8): the release `nenya mock` answering
# at once (a plain completion, and a 20-event stream), hit directly and through `nenya serve`
# with the full default stack (auth, redaction, entropy, context budget, breaker, limiter,
# usage; cache off) and a lean one (auth, decode, routing; redaction and entropy off), by wrk at concurrency 1 and 64, each for a fixed time
# after a warm-up. Prints requests/s, p50, p99 and p99.9 for each, the added latency (through
# minus direct) and the throughput ratio, each of issue 8's targets as met or MISSED in this
# run, then the gateway's idle RSS.
#
#   scripts/bench.sh            # nenya only
#   scripts/bench.sh --peers    # also LiteLLM's proxy (PyPI) and Portkey's gateway (npm),
#                               # installed into .bench/ when missing, routed to the same mock
#   scripts/bench.sh --redis    # also the full stack with its limits shared in a local
#                               # redis-server (`state` backend redis: one round trip a request)
#   scripts/bench.sh --large    # also a ~100 KB conversation (20 turns of this repository's
#                               # sources): what redaction, entropy and the one parse cost on
#                               # the size of request coding agents send; `large` re-sends it
#                               # as it is, `turns` with a new ~4 KB message each request
#   scripts/bench.sh --nginx    # also a bare nginx reverse proxy (Debian's, installed when
#                               # missing) in front of the same mock: what one proxy hop costs
#                               # on this host with no work done in it, the floor under
#                               # nenya's added latency
#   scripts/bench.sh --floor    # also `benches/floor.rs`, a bare hyper proxy served the way
#                               # nenya serves (tokio, hyper, one thread per CPU) with none of
#                               # the gateway in it: what nenya's own work adds above hyper
#   scripts/bench.sh --pgo      # also both stacks on the profile-guided build of the same
#                               # source (scripts/pgo.sh, run when target/pgo/nenya is older
#                               # than the sources); the targets are judged on both builds
#
# DURATION (default 10 s) and WARMUP (default 3 s) tune the runs. wrk comes from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=""
with_redis=""
with_large=""
with_nginx=""
with_floor=""
with_pgo=""
for arg in "$@"; do
  case "$arg" in
    --peers) peers=1 ;;
    --redis) with_redis=1 ;;
    --large) with_large=1 ;;
    --nginx) with_nginx=1 ;;
    --floor) with_floor=1 ;;
    --pgo) with_pgo=1 ;;
    *) echo "unknown flag $arg" >&2; exit 2 ;;
  esac
done
duration="${DURATION:-10}"
warmup="${WARMUP:-3}"
work="$PWD/.bench"
mkdir -p "$work"

if ! command -v wrk >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bin nenya 2>&1 | tail -1
bin="$PWD/target/release/nenya"
if [ -n "$with_pgo" ]; then
  if [ ! -x target/pgo/nenya ] || [ -n "$(find src Cargo.toml Cargo.lock -newer target/pgo/nenya | head -1)" ]; then
    bash scripts/pgo.sh
  fi
  pgo_bin="$PWD/target/pgo/nenya"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

. scripts/lib.sh  # free_port, wait_port

mock_port=$(free_port)
"$bin" mock --listen "127.0.0.1:$mock_port" --chunks 20 >"$work/mock.log" 2>&1 &
pids+=($!)
wait_port "$mock_port"

token="bench-client-token-0123456789"
mkdir -p "$work/secrets"
cat >"$work/secrets/secrets.json" <<EOF
{"client_token": "$token", "provider_keys": {"up": "sk-bench-provider-key"}}
EOF
start_nenya() { # name, extra governance/bouncer JSON[, binary]; sets started_port and started_pid
  local port cfg
  port=$(free_port)
  cfg="$work/$1.json"
  cat >"$cfg" <<EOF
{"server": {"log_level": "warn"},
 "providers": {"up": {"url": "http://127.0.0.1:$mock_port/v1/chat/completions", "auth_style": "bearer"}},
 "agents": {"coder": {"strategy": "fallback", "models": [{"provider": "up", "model": "m"}]}},
 $2}
EOF
  NENYA_CONFIG_FILE="$cfg" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn \
    "${3:-$bin}" serve --listen "127.0.0.1:$port" >"$work/$1.log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
  wait_port "$port"
  started_port=$port
}
# The full default stack: redaction and entropy are on by default; limits high enough never
# to refuse, so they are checked on every request without shaping the load.
start_nenya full '"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}'
full_port=$started_port; full_pid=$started_pid
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
rss_start=$(rss_mib "$full_pid")
start_nenya authonly '"bouncer": {"enabled": false, "entropy_enabled": false}'
auth_port=$started_port

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = os.getenv("BODY")
dofile("scripts/wrk_turns.lua")  -- KIND=turns: a number per request in place of @@TURN@@
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %d %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), errors))
end
EOF

plain='{"model":"coder","messages":[{"role":"user","content":"Write a function that reverses a list."}]}'
stream='{"model":"coder","stream":true,"messages":[{"role":"user","content":"Write a function that reverses a list."}]}'
kinds=(plain stream)
if [ -n "$with_large" ]; then
  large=$(python3 scripts/large_body.py)
  turns=$(python3 scripts/large_body.py --turn)
  kinds+=(large turns)
fi

run() { # url body token conns -> "rps p50 p99 p999 errors"
  local threads=$(( $4 < 2 ? 1 : 2 ))
  BODY="$2" TOKEN="$3" wrk -t"$threads" -c"$4" -d"${warmup}s" -s "$work/post.lua" "$1" >/dev/null
  BODY="$2" TOKEN="$3" wrk -t"$threads" -c"$4" -d"${duration}s" -s "$work/post.lua" "$1" \
    | awk '/^RESULT/ {print $2, $3, $4, $5, $6}'
}

declare -A targets=(
  [direct]="http://127.0.0.1:$mock_port/v1/chat/completions|"
  [nenya-full]="http://127.0.0.1:$full_port/v1/chat/completions|$token"
  [nenya-lean]="http://127.0.0.1:$auth_port/v1/chat/completions|$token"
)
order=(direct nenya-full nenya-lean)

if [ -n "$with_pgo" ]; then
  start_nenya pgofull '"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}' "$pgo_bin"
  targets[pgo-full]="http://127.0.0.1:$started_port/v1/chat/completions|$token"
  pgo_pid=$started_pid; pgo_rss_start=$(rss_mib "$pgo_pid")
  start_nenya pgolean '"bouncer": {"enabled": false, "entropy_enabled": false}' "$pgo_bin"
  targets[pgo-lean]="http://127.0.0.1:$started_port/v1/chat/completions|$token"
  order+=(pgo-full pgo-lean)
fi

if [ -n "$with_redis" ]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  wait_port "$rport"
  start_nenya redis '"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000},
   "state": {"backend": "redis", "url": "redis://127.0.0.1:'"$rport"'"}'
  targets[nenya-redis]="http://127.0.0.1:$started_port/v1/chat/completions|$token"
  order+=(nenya-redis)
fi

if [ -n "$with_nginx" ]; then
  start_nginx
  targets[nginx]="http://127.0.0.1:$nginx_port/v1/chat/completions|"
  order+=(nginx)
fi

if [ -n "$with_floor" ]; then
  floor_bin=$(floor_binary)
  fport=$(free_port)
  "$floor_bin" --listen "127.0.0.1:$fport" --upstream "127.0.0.1:$mock_port" >"$work/floor.log" 2>&1 &
  pids+=($!)
  wait_port "$fport"
  targets[floor]="http://127.0.0.1:$fport/v1/chat/completions|"
  order+=(floor)
fi

if [ -n "$peers" ]; then
  # LiteLLM's proxy in a private venv, one model routed to the mock.
  if [ ! -x "$work/venv/bin/litellm" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet --disable-pip-version-check 'litellm[proxy]'
  fi
  lport=$(free_port)
  cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: coder
    litellm_params:
      model: openai/m
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: sk-bench-provider-key
general_settings:
  master_key: sk-litellm-bench-master-key-0123
EOF
  "$work/venv/bin/litellm" --config "$work/litellm.yaml" --port "$lport" --num_workers 1 \
    >"$work/litellm.log" 2>&1 &
  pids+=($!)
  wait_port "$lport" 3000
  targets[litellm]="http://127.0.0.1:$lport/v1/chat/completions|sk-litellm-bench-master-key-0123"
  order+=(litellm)
  # Portkey's gateway from npm, told per request where the OpenAI-compatible upstream is.
  if [ ! -d "$work/portkey/node_modules/@portkey-ai/gateway" ]; then
    mkdir -p "$work/portkey"
    (cd "$work/portkey" && npm install --silent --no-audit --no-fund @portkey-ai/gateway >/dev/null)
  fi
  pport=8787
  (cd "$work/portkey" && PORT=$pport npx --no-install @portkey-ai/gateway >"$work/portkey.log" 2>&1) &
  pids+=($!)
  wait_port "$pport" 3000
  sed -i 's|^local token = os.getenv("TOKEN")|if os.getenv("PORTKEY") then wrk.headers["x-portkey-provider"] = "openai"; wrk.headers["x-portkey-custom-host"] = os.getenv("PORTKEY") end\nlocal token = os.getenv("TOKEN")|' "$work/post.lua"
  targets[portkey]="http://127.0.0.1:$pport/v1/chat/completions|sk-bench-provider-key"
  order+=(portkey)
fi

echo
echo "machine: $(nproc) cores, $(uname -r); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); ${duration}s runs after ${warmup}s warm-up; $(date -u +%F)"
printf '%-12s %-7s %5s %10s %9s %9s %9s %7s\n' target kind conns "req/s" "p50 µs" "p99 µs" "p99.9 µs" errors
declare -A res
for kind in "${kinds[@]}"; do
  case $kind in plain) body=$plain ;; stream) body=$stream ;; large) body=$large ;; turns) body=$turns ;; esac
  for conns in 1 64; do
    for t in "${order[@]}"; do
      url=${targets[$t]%%|*}; tok=${targets[$t]#*|}
      if [ "$t" = portkey ]; then
        out=$(PORTKEY="http://127.0.0.1:$mock_port/v1" run "$url" "$body" "$tok" "$conns")
      else
        out=$(run "$url" "$body" "$tok" "$conns")
      fi
      res[$t,$kind,$conns]="$out"
      read -r rps p50 p99 p999 errs <<<"$out"
      printf '%-12s %-7s %5s %10s %9s %9s %9s %7s\n' "$t" "$kind" "$conns" "$rps" "$p50" "$p99" "$p999" "$errs"
    done
  done
done

echo
echo "added latency (p50, through minus direct) and throughput (through / direct):"
for kind in "${kinds[@]}"; do
  for t in "${order[@]:1}"; do
    read -r d_rps1 d_p50 _ <<<"${res[direct,$kind,1]}"
    read -r t_rps1 t_p50 _ <<<"${res[$t,$kind,1]}"
    read -r d_rps64 _ <<<"${res[direct,$kind,64]}"
    read -r t_rps64 _ <<<"${res[$t,$kind,64]}"
    awk -v t="$t" -v k="$kind" -v a="$t_p50" -v b="$d_p50" -v x="$t_rps64" -v y="$d_rps64" \
      'BEGIN { printf "%-12s %-7s +%d µs at c=1; %.0f%% of direct req/s at c=64\n", t, k, a - b, 100 * x / y }'
  done
done

# The issue's targets (issue 8), judged on this run's plain requests.
verdict() { if [ "$1" = 1 ]; then echo "met   "; else echo "MISSED"; fi; }  # 1 = met
read -r d_rps1 d_p50 _ <<<"${res[direct,plain,1]}"
read -r d_rps64 _ <<<"${res[direct,plain,64]}"
builds=(nenya)
[ -n "$with_pgo" ] && builds+=(pgo)
for build in "${builds[@]}"; do
read -r _ f_p50 _ <<<"${res[$build-full,plain,1]}"
read -r f_rps64 _ _ _ f_err64 <<<"${res[$build-full,plain,64]}"
read -r _ l_p50 _ <<<"${res[$build-lean,plain,1]}"
full_added=$((f_p50 - d_p50)); lean_added=$((l_p50 - d_p50))
ratio=$(awk -v x="$f_rps64" -v y="$d_rps64" 'BEGIN { printf "%.0f", 100 * x / y }')
echo
if [ "$build" = pgo ]; then echo "targets (issue 8), plain requests, profile-guided build:"; else echo "targets (issue 8), plain requests:"; fi
echo "  $(verdict $((full_added < 50))) full stack adds under 50 µs at c=1: +$full_added µs"
echo "  $(verdict $((lean_added < 25))) auth only (lean stack) adds under 25 µs at c=1: +$lean_added µs"
echo "  $(verdict $((ratio >= 50 && f_err64 == 0))) full stack at c=64 serves at least 50% of direct, no errors: $ratio%, $f_err64 errors"
done
read -r _ f_p50 _ <<<"${res[nenya-full,plain,1]}"
full_added=$((f_p50 - d_p50))
for peer in litellm:100 portkey:20; do
  name=${peer%%:*}; want=${peer#*:}
  [ -n "${res[$name,plain,1]:-}" ] || continue
  read -r _ p_p50 _ <<<"${res[$name,plain,1]}"
  times=$(awk -v a="$((p_p50 - d_p50))" -v b="$full_added" 'BEGIN { printf "%.0f", (b > 0 ? a / b : 0) }')
  echo "  $(verdict $((times >= want))) at least ${want}x less added latency than $name: ${times}x"
done

rss_loaded=$(rss_mib "$full_pid")
# Idle again: the gateway hands freed heap back to the system once its connections have
# drained (checked every second); read it after that, as a long-running gateway sits between
# bursts.
sleep 3
echo
echo "nenya (full stack) RSS: idle at start $rss_start MiB; right after the runs $rss_loaded MiB; idle after the runs $(rss_mib "$full_pid") MiB"
echo "  $(verdict "$(awk -v r="$rss_start" 'BEGIN { print (r < 20) ? 1 : 0 }')") idle RSS under 20 MiB: $rss_start MiB at start"
if [ -n "$with_pgo" ]; then
  echo "nenya (full stack, profile-guided build) RSS: idle at start $pgo_rss_start MiB; idle after the runs $(rss_mib "$pgo_pid") MiB"
fi
