#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting,
# lints and every test (unit, contract suite over memory and Redis,
# black-box and fault tests of the real binaries against private
# redis-servers, the compose stack on loopback and in containers),
# printing how long each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-packages.sh
ensure_packages "tests start private redis-servers, check metrics pages with promtool and dashboards against prometheus, drive the web dashboard in headless chromium; the fault proxy kills processes with kill; the compose stack is checked with docker-compose config, nginx -t and shellcheck" \
  redis-server:redis-server redis-cli:redis-tools openssl:openssl kill:procps \
  promtool:prometheus prometheus:prometheus chromium:chromium chromedriver:chromium-driver \
  docker-compose:docker-compose nginx:nginx shellcheck:shellcheck unshare:util-linux
ensure_packages "the performance gate counts instructions with valgrind's callgrind" \
  valgrind:valgrind

start=$(date +%s)
phase_start=$start
phase() {
  local now; now=$(date +%s)
  [ -n "${phase_name:-}" ] && echo "==> ${phase_name}: $(( now - phase_start ))s"
  phase_name=$1; phase_start=$now
  echo "==> $1"
}

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo doc (libraries; broken links and bad markup fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib --locked --quiet
# `cargo test` does not rebuild another package's binaries; the black-box
# tests run these, and stem-testkit refuses a binary older than its sources.
phase "cargo build --bins (the black-box tests run these binaries)"
cargo build --workspace --bins --locked
phase "cargo test"
cargo test --workspace --locked --no-fail-fast
phase "scripts/bench-gate.sh (instructions and Redis commands per task against crates/stem-bench/gate-baseline.json)"
scripts/bench-gate.sh
phase "scripts/check-stack.sh (compose, nginx, prometheus, collector, grafana, shellcheck)"
scripts/check-stack.sh
phase "scripts/test-containers.sh (the stack in real containers; STEM_SKIP_CONTAINERS=1 skips)"
scripts/test-containers.sh
phase "scripts/generate_tls_assets.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/generate_tls_assets.sh "$tmp/certs" redis "redis,localhost,127.0.0.1" >/dev/null
openssl verify -CAfile "$tmp/certs/ca.crt" "$tmp/certs/server.crt" "$tmp/certs/client.crt"
phase "done"
echo "==> all checks passed in $(( $(date +%s) - start ))s"
