#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting,
# lints and every test (unit, contract suite over memory and Redis,
# black-box tests of the real binaries against private redis-servers).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-packages.sh
ensure_packages "tests start their own private redis-server instances" \
  redis-server:redis-server redis-cli:redis-tools openssl:openssl

start=$(date +%s)
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (the black-box tests run these binaries)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked
echo "==> scripts/generate_tls_assets.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/generate_tls_assets.sh "$tmp/certs" redis "redis,localhost,127.0.0.1" >/dev/null
openssl verify -CAfile "$tmp/certs/ca.crt" "$tmp/certs/server.crt" "$tmp/certs/client.crt"
echo "==> all checks passed in $(( $(date +%s) - start ))s"
