# Shared by the measuring scripts (ab.sh, bench.sh, instr.sh, profile.sh): sourced, not run. Each
# caller sets `work` (a scratch directory) and `pids` (processes to stop on exit) first.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT [TENTHS]: waits until something listens on the port (default up to 90 s).
wait_port() {
  for _ in $(seq 1 "${2:-900}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}

# The client token every gateway started here accepts.
bench_token=bench-client-token-0123456789

# start_mock BIN: `nenya mock` (20-event streams) on a free port; sets mock_port.
start_mock() {
  mock_port=$(free_port)
  "$1" mock --listen "127.0.0.1:$mock_port" --chunks 20 >"$work/mock.log" 2>&1 &
  pids+=($!)
  wait_port "$mock_port"
}

# gateway_config FILE [EXTRA_JSON]: a gateway routing the agent `coder` to the mock, with
# $work/secrets holding the client token and the provider key. EXTRA_JSON adds top-level
# sections (default: rate limits high enough never to refuse, so the limiter is checked on
# every request without shaping the load).
gateway_config() {
  local extra=${2:-'"governance": {"ratelimit_max_rpm": 100000000, "ratelimit_max_tpm": 2000000000}'}
  mkdir -p "$work/secrets"
  echo "{\"client_token\": \"$bench_token\", \"provider_keys\": {\"up\": \"sk-bench\"}}" >"$work/secrets/secrets.json"
  cat >"$1" <<J
{"server": {"log_level": "warn"}, "providers": {"up": {"url": "http://127.0.0.1:$mock_port/v1/chat/completions", "auth_style": "bearer"}},
 "agents": {"coder": {"strategy": "fallback", "models": [{"provider": "up", "model": "m"}]}},
 $extra}
J
}

# request_body KIND: plain, stream, large (bench.sh --large's ~100 KB conversation), turns
# (the same plus a new ~4 KB turn per request), secret (the ~100 KB conversation with an AWS
# key in its first user message), tools (20 tool definitions, ~35 KB, scripts/tools_body.py),
# file (BODY_FILE: any body of your own).
request_body() {
  local msg='"messages":[{"role":"user","content":"Write a function that reverses a list."}]'
  case $1 in
    stream) echo "{\"model\":\"coder\",\"stream\":true,$msg}" ;;
    large) python3 scripts/large_body.py ;;
    turns) python3 scripts/large_body.py --turn ;;
    secret) python3 scripts/large_body.py --secret ;;
    tools) python3 scripts/tools_body.py ;;
    file) cat "$BODY_FILE" ;;
    *) echo "{\"model\":\"coder\",$msg}" ;;
  esac
}

# post_lua FILE [LUA]: a wrk script posting $BODY with the bench token; LUA is appended (a
# `done` function printing what the caller reads).
post_lua() {
  cat >"$1" <<L
wrk.method = "POST"
wrk.body = os.getenv("BODY")
dofile("scripts/wrk_turns.lua")  -- KIND=turns: a number per request in place of @@TURN@@
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $bench_token"
${2:-}
L
}

# start_nginx: a bare nginx reverse proxy in front of the mock, set up as one would in front of
# an LLM API (one worker, pooled upstream connections, streams not buffered, no access log),
# installed from Debian when missing; sets nginx_port and nginx_pid (the worker process).
start_nginx() {
  if ! command -v nginx >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  fi
  nginx_port=$(free_port)
  mkdir -p "$work/nginx/logs"
  cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream mock { server 127.0.0.1:$mock_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    client_max_body_size 10m;
    client_body_buffer_size 256k;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' >"$work/nginx/logs/stdout.log" 2>&1 &
  local master=$!
  pids+=("$master")
  wait_port "$nginx_port"
  nginx_pid=""
  for _ in $(seq 1 50); do
    nginx_pid=$(pgrep -P "$master" | head -1 || true)
    [ -n "$nginx_pid" ] && return 0
    sleep 0.1
  done
}

# floor_binary: builds benches/floor.rs (the bare hyper proxy) and prints its path.
floor_binary() {
  cargo bench --locked --bench floor --no-run 2>&1 | sed -n 's/.*(\(target\/[^)]*floor-[0-9a-f]*\)).*/\1/p' | tail -1
}
