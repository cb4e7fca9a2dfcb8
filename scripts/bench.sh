#!/usr/bin/env bash
# The benchmark command: installs what the scenarios need (redis-server;
# wrk for the http scenario), builds the release binaries (the http
# scenario runs the release enqueuer) and runs stem-bench with the given
# arguments, e.g. `scripts/bench.sh all` or `scripts/bench.sh drain --only 128x1`.
# Figures only: nothing here fails on timing. Results: target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

echo "==> cargo build --release --workspace"
cargo build --release --workspace --locked
exec target/release/stem-bench "${@:-all}"
