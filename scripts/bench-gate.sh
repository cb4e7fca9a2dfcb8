#!/usr/bin/env bash
# The performance gate (issue 25): instructions per task (valgrind's
# callgrind, release build) and Redis commands per task of the enqueue,
# bulk-enqueue and drain/settle phases, against the committed baseline
# crates/stem-bench/gate-baseline.json. Fails when either figure of a
# phase rises more than 10 %. Deterministic figures only: no wall clock.
#
#   scripts/bench-gate.sh            # check (scripts/test.sh runs this)
#   STEM_GATE_NOTE="why" scripts/bench-gate.sh --update
#                                    # rewrite the baseline; commit it saying why
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-packages.sh
ensure_packages "the gate counts instructions with valgrind's callgrind against its own redis-server" \
  valgrind:valgrind redis-server:redis-server redis-cli:redis-tools

cargo build --release -p stem-bench --locked
args=(gate --baseline crates/stem-bench/gate-baseline.json)
[ "${1:-}" = "--update" ] && args+=(--update)
exec target/release/stem-bench "${args[@]}"
