#!/usr/bin/env bash
# The stack in real containers: makes the base images no registry gives us
# (scripts/base-images.sh), builds the Stem image from deploy/Dockerfile
# exactly as `docker-compose build` would, then runs the container tests
# (tests/containers.rs): every shipped profile up with docker-compose,
# used through the gateway, Redis restarted, stopped, taken down.
#
# Needs a running Docker Engine and docker-compose. Without an engine this
# fails saying how to get one, unless STEM_SKIP_CONTAINERS=1, which skips
# (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${STEM_SKIP_CONTAINERS:-}" = 1 ]; then
  echo "==> containers: SKIPPED (STEM_SKIP_CONTAINERS=1): no image was built or run"
  exit 0
fi

. scripts/ensure-packages.sh
ensure_packages "the container tests build base images with debootstrap and run the stack with docker-compose" \
  debootstrap:debootstrap docker-compose:docker-compose docker:docker.io

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker Engine answers ('docker info' failed). Install and start one" >&2
  echo "  (apt-get install docker.io && service docker start), or set STEM_SKIP_CONTAINERS=1 to skip the container tests." >&2
  exit 1
fi
for port in 8080 6379; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: 127.0.0.1:$port is in use; the stack publishes it (docker-compose.yml). Stop what listens there." >&2
    exit 1
  fi
done

t0=$(date +%s)
scripts/base-images.sh
t1=$(date +%s)
echo "==> containers: building stem:local from deploy/Dockerfile"
# What `docker-compose build` does for the x-stem services, with the
# host's network for cargo's downloads.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! docker build --network host -f deploy/Dockerfile -t stem:local . >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "error: building stem:local failed (output above)" >&2
  exit 1
fi
t2=$(date +%s)
size=$(docker image inspect --format '{{.Size}}' stem:local)
echo "==> containers: base images $((t1 - t0))s, stem:local built in $((t2 - t1))s, $((size / 1000000)) MB"

cargo test -p stem-stack-tests --test containers --locked -- --ignored --test-threads 1 --nocapture
echo "==> containers: journeys passed in $(($(date +%s) - t2))s"
