#!/usr/bin/env bash
# Same-host A/B of gateway builds or settings, for changes smaller than this machine's
# run-to-run noise: one `nenya mock`, one `nenya serve` per target (full default stack), short
# wrk runs interleaved across targets, medians printed, with the gateway's CPU per request
# (user + system, from /proc) next to its latency.
#
#   bash scripts/ab.sh NAME=ENV@BINARY ...       e.g.
#   bash scripts/ab.sh "shared=NENYA_WORKERS=-1@target/release/nenya" "threads=NENYA_WORKERS=0@target/release/nenya"
#
# Environment: KIND=plain|stream|large|turns|secret|tools|file (file: BODY_FILE), CONNS (1), REPS (5), DUR (3 s per run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
work=$(mktemp -d)
mock_bin=${MOCKBIN:-$PWD/target/release/nenya}
reps=${REPS:-5}; dur=${DUR:-3}; conns=${CONNS:-1}; kind=${KIND:-plain}
pids=(); cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }; trap cleanup EXIT
. scripts/lib.sh
cpu(){ awk '{print $14, $15}' "/proc/$1/stat"; }  # user and system ticks
start_mock "$mock_bin"
declare -A url pid
names=(direct); url[direct]="http://127.0.0.1:$mock_port/v1/chat/completions"; pid[direct]=${pids[0]}
for spec in "$@"; do
  name=${spec%%=*}; rest=${spec#*=}; envs=${rest%%@*}; b=${rest#*@}
  p=$(free_port); cfg=$work/$name.json
  gateway_config "$cfg"
  # shellcheck disable=SC2086
  env $envs NENYA_CONFIG_FILE="$cfg" NENYA_SECRETS_DIR="$work/secrets" RUST_LOG=warn "$b" serve --listen "127.0.0.1:$p" >"$work/$name.log" 2>&1 & pids+=($!)
  pid[$name]=$!; wait_port "$p"; url[$name]="http://127.0.0.1:$p/v1/chat/completions"; names+=("$name")
done
post_lua "$work/post.lua" 'function done(summary, latency, requests)
  io.write(string.format("RESULT %.0f %d %d\n", summary.requests / (summary.duration / 1e6), latency:percentile(50), summary.requests))
end'
body=$(request_body "$kind")
th=$(( conns < 2 ? 1 : 2 ))
for n in "${names[@]}"; do BODY="$body" wrk -t$th -c"$conns" -d1s -s "$work/post.lua" "${url[$n]}" >/dev/null; done
declare -A P R C U S
for _ in $(seq 1 "$reps"); do for n in "${names[@]}"; do
  read -r au as < <(cpu "${pid[$n]}")
  read -r rps p50 reqs < <(BODY="$body" wrk -t$th -c"$conns" -d"${dur}s" -s "$work/post.lua" "${url[$n]}" | awk '/^RESULT/{print $2, $3, $4}')
  read -r bu bs < <(cpu "${pid[$n]}")
  q=$(( reqs > 0 ? reqs : 1 ))
  P[$n]+="$p50 "; R[$n]+="$rps "; C[$n]+="$(( (bu + bs - au - as) * 10000 / q )) "
  U[$n]+="$(( (bu - au) * 10000 / q )) "; S[$n]+="$(( (bs - as) * 10000 / q )) "
done; done
med(){ tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
dp=$(echo "${P[direct]}" | med)
for n in "${names[@]}"; do
  p=$(echo "${P[$n]}" | med); r=$(echo "${R[$n]}" | med); c=$(echo "${C[$n]}" | med)
  u=$(echo "${U[$n]}" | med); sy=$(echo "${S[$n]}" | med)
  echo "$n kind=$kind c=$conns p50=${p}us (+$((p - dp))) req/s=$r cpu_us/req=$c (user $u, system $sy; the mock's for direct)  runs: ${P[$n]}"
done
