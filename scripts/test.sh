#!/usr/bin/env bash
# The whole test suite, from a fresh checkout. Installs what the tests need when it is missing
# (a Python venv with the official OpenAI/Anthropic SDKs, cargo-deny, Debian's
# systemd-socket-activate, redis-server, Prometheus' promtool and the reference MCP servers
# from npm), then runs the format
# check, clippy, every test (unit, property, black-box, examples, SDK, doc tests), the docs
# build and cargo-deny. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-shot build gains nothing from incremental compilation, and its cache was the largest
# thing in target/ (2-4 GB); CI's disk is small.
export CARGO_INCREMENTAL=0

step() { printf '\n==> %s\n' "$*"; }

step "Python venv with the official SDKs (.venv)"
if ! .venv/bin/python -c "import openai, anthropic" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi
export NENYA_SDK_PYTHON="$PWD/.venv/bin/python"

step "systemd-socket-activate (socket-activation test) and promtool (metrics format test)"
apt_ready=""
apt_update() { [ -n "$apt_ready" ] || { apt-get update -qq && apt_ready=1; }; }
if ! command -v systemd-socket-activate >/dev/null 2>&1; then
  apt_update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# promtool comes in Debian's prometheus package; only the one binary is unpacked (installing
# the package would also set up a Prometheus server).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .tools/promtool ]; then
  apt_update
  rm -rf .tools/deb && mkdir -p .tools/deb
  (cd .tools/deb && apt-get download -qq prometheus)
  dpkg-deb -x .tools/deb/prometheus_*.deb .tools/deb/x
  cp .tools/deb/x/usr/bin/promtool .tools/promtool
  rm -rf .tools/deb
fi
if [ -x .tools/promtool ]; then export PATH="$PWD/.tools:$PATH"; fi
promtool --version | head -1
export NENYA_REQUIRE_PROMTOOL=1

step "redis-server (shared-state tests start their own on loopback ports)"
if ! command -v redis-server >/dev/null 2>&1; then
  apt_update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version
export NENYA_REQUIRE_REDIS=1

step "the reference MCP servers from npm (.tools/mcp): memory (stdio), everything (HTTP)"
mcp_js=.tools/mcp/node_modules/@modelcontextprotocol
if [ ! -f "$mcp_js/server-memory/dist/index.js" ] || [ ! -f "$mcp_js/server-everything/dist/index.js" ]; then
  mkdir -p .tools/mcp
  (cd .tools/mcp && npm install --silent --no-audit --no-fund \
    @modelcontextprotocol/server-memory@2026.8.31 @modelcontextprotocol/server-everything@2026.8.31 >/dev/null)
fi
node --version
export NENYA_REQUIRE_MCP_MEMORY=1

step "cargo-deny"
if ! command -v cargo-deny >/dev/null 2>&1; then
  cargo install --locked cargo-deny
fi

step "the bench and build scripts parse (bash -n; they run outside CI)"
for f in scripts/*.sh; do bash -n "$f"; done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "the lean build (no default features: no Redis back end) passes clippy"
cargo clippy --locked --no-default-features --lib -- -D warnings

step "cargo build --examples (tests/it/examples.rs runs the real example binaries)"
# `cargo test --all-targets` builds examples only in test mode (under deps/), so the runnable
# example binaries are built here first; they share every dependency artifact with the tests.
cargo build --examples --locked

step "cargo test (lib, binary, integration, examples, benches in test mode)"
cargo test --all-targets --locked

step "the otlp feature: clippy and its export test against the real binary"
cargo clippy --locked --features otlp --bin nenya --test otlp -- -D warnings
cargo test --locked --features otlp --test otlp

step "doc tests"
cargo test --doc --locked

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet

step "fuzz targets: build and a short run of each (scripts/fuzz.sh)"
bash scripts/fuzz.sh 15

step "cargo deny"
cargo deny --log-level error check licenses bans sources
# The advisory database is fetched from GitHub; where that host is unreachable, say so loudly
# rather than fail the suite on the network (licences, bans and sources are checked above).
if cargo deny --log-level error check advisories 2>/tmp/nenya-deny-advisories.log; then
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" /tmp/nenya-deny-advisories.log; then
  echo "WARNING: advisories NOT checked: the RustSec database could not be fetched from this network"
else
  cat /tmp/nenya-deny-advisories.log
  exit 1
fi

step "all checks passed"
