#!/bin/sh
# standin NAME PORT...: serve a page naming NAME on every PORT, at the
# root and under /NAME/ (the gateway proxies /grafana/ and /jaeger/ with
# their prefix), Grafana's health path, and an empty /metrics for
# Prometheus. Exits when any server does; SIGTERM stops them all.
set -eu
name=$1
shift
www=/tmp/www
mkdir -p "$www/$name/api"
echo "stand-in for $name (tests/containers/standin)" > "$www/index.html"
cp "$www/index.html" "$www/$name/index.html"
echo '{"database":"ok"}' > "$www/$name/api/health"
: > "$www/metrics"
pids=""
for port in "$@"; do
  busybox httpd -f -p "$port" -h "$www" &
  pids="$pids $!"
done
# shellcheck disable=SC2086
trap 'kill $pids 2>/dev/null; exit 0' TERM INT
wait
