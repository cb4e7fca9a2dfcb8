#!/usr/bin/env bash
# The benchmark command: installs what the scenarios need (redis-server;
# wrk for the http scenario), builds the release binaries (the http
# scenario runs the release enqueuer) and runs stem-bench with the given
# arguments, e.g. `scripts/bench.sh all` or `scripts/bench.sh drain --only 128x1`.
# Figures only: nothing here fails on timing. Results: target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-packages.sh
ensure_packages "the bench starts its own redis-server; wrk drives the http scenario" \
  redis-server:redis-server redis-cli:redis-tools wrk:wrk

echo "==> cargo build --release --workspace"
cargo build --release --workspace --locked
exec target/release/stem-bench "${@:-all}"
